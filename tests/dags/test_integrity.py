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
        for prefix in ("ct_", "monitor_", "predict_", "rollback_", "replay_"):
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
import mlops_airflow.plugin  # the plugin class itself, whichever way it is registered (entry point or file)
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


def test_require_approval_puts_a_person_between_smoke_test_and_promote(tmp_path):
    import yaml

    from mlops_airflow.core.config import load_model_spec
    from mlops_airflow.dag_factory import build_ct_dag

    data = yaml.safe_load((models_dir() / "credit_default.yaml").read_text())
    data["gate"]["require_approval"] = True
    path = tmp_path / "credit_default.yaml"
    path.write_text(yaml.safe_dump(data))
    dag = build_ct_dag(load_model_spec(path))
    approve = dag.get_task("approve")
    assert type(approve).__name__ == "ApprovalOperator"
    assert approve.upstream_task_ids == {"smoke_test"} and approve.downstream_task_ids == {"promote"}
    assert "approve" in dag.get_task("promote").upstream_task_ids


def test_ct_runs_on_its_cron_or_on_a_retrain_request(dagbag):
    timetable = dagbag.dags["ct_credit_default"].timetable
    assert type(timetable).__name__ == "AssetOrTimeSchedule"
    assert timetable.asset_condition.uri == "mlops://credit_default/retrain-request"
    assert timetable.timetable.expression == "0 2 * * *"  # the YAML's cron


def test_a_fit_without_end_is_stopped_by_the_specs_fit_timeout(tmp_path):
    # n_estimators: 1e9 is a valid value: the train and refit tasks end at the spec's fit timeout, not never
    import datetime as dt

    import yaml

    from mlops_airflow.core.config import load_model_spec
    from mlops_airflow.dag_factory import build_ct_dag

    default = build_ct_dag(load_model_spec(models_dir() / "credit_default.yaml"))
    for task_id in ("train", "select_candidate"):
        assert default.get_task(task_id).execution_timeout == dt.timedelta(hours=6), task_id
    data = yaml.safe_load((models_dir() / "credit_default.yaml").read_text())
    data["estimator"]["fit_timeout_minutes"] = 45
    path = tmp_path / "credit_default.yaml"
    path.write_text(yaml.safe_dump(data))
    dag = build_ct_dag(load_model_spec(path))
    assert {dag.get_task(t).execution_timeout for t in ("train", "select_candidate")} == {dt.timedelta(minutes=45)}
