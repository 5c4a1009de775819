"""DAG integrity: the DAG folder imports cleanly, every model spec yields its DAGs, parsing stays pure."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlops_airflow.core.config import load_all_specs, models_dir

REPO = Path(__file__).resolve().parents[2]
HEAVY = ["pandas", "sklearn", "mlflow", "great_expectations", "scipy", "matplotlib"]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert dagbag.dags, "the DAG folder produced no DAG"


def test_every_model_spec_yields_its_dags(dagbag):
    specs = load_all_specs(models_dir())
    assert [s.name for s in specs] == sorted(p.stem for p in models_dir().glob("*.yaml"))
    for spec in specs:
        for prefix in ("ct_", "monitor_", "predict_", "rollback_"):
            assert f"{prefix}{spec.name}" in dagbag.dags


def test_dag_policies(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.catchup is False, dag_id
        assert dag.max_active_runs == 1, dag_id
        assert dag.doc_md, dag_id
        for task in dag.tasks:
            if dag_id.startswith("ct_") and task.task_id != "gate":
                assert task.retries >= 2, f"{dag_id}.{task.task_id} has {task.retries} retries"


def test_ct_dag_shape(dagbag):
    dag = dagbag.dags["ct_credit_default"]
    order = [
        "snapshot", "validate_data", "train", "select_candidate", "evaluate_vs_champion", "gate",
        "register_challenger", "smoke_test", "promote",
    ]  # fmt: skip
    for upstream, downstream in itertools.pairwise(order):
        assert downstream in dag.get_task(upstream).downstream_task_ids
    assert dag.get_task("promote").pool == "mlflow_registry"
    assert dagbag.dags["rollback_credit_default"].get_task("rollback").pool == "mlflow_registry"
    assert "data_uri" in dag.params


def test_parsing_imports_no_heavy_library():
    """A fresh interpreter imports the DAG files and the plugin; none of the heavy libraries is loaded."""
    code = f"""
import importlib.util, json, sys
for path in {[str(p) for p in sorted((REPO / "dags").glob("*.py"))] + [str(REPO / "plugins" / "mlops_plugin.py")]!r}:
    spec = importlib.util.spec_from_file_location("m" + str(abs(hash(path))), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ.copy()
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_plugin_scanner_skips_the_package():
    ignore = (REPO / "plugins" / ".airflowignore").read_text().split()
    assert "mlops_airflow/" in ignore
    from airflow.utils.file import find_path_from_directory

    scanned = [Path(p).relative_to(REPO / "plugins").as_posix()
               for p in find_path_from_directory(str(REPO / "plugins"), ".airflowignore")
               if p.endswith(".py")]  # fmt: skip
    assert scanned == ["mlops_plugin.py"]
