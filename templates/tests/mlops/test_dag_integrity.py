"""DAG integrity: the DAG folder imports cleanly, every DAG is tagged and retries, parsing stays light."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import DAGS_FOLDER

#: Libraries only a running task may import: the DAG processor parses every file every few seconds.
HEAVY = ("pandas", "sklearn", "mlflow", "great_expectations", "scipy", "matplotlib", "fairlearn")
#: Tasks that never retry on purpose: a retry cannot change their answer (the gate's decision, a rollback a
#: person asked for, a bad spec's stand-in, the notification outbox that tries again on its next run).
NO_RETRY = {"gate", "rollback", "invalid_spec", "deliver", "replay"}


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert dagbag.dags, f"{DAGS_FOLDER} produced no DAG"


def test_every_dag_has_tags(dagbag):
    untagged = sorted(dag_id for dag_id, dag in dagbag.dags.items() if not dag.tags)
    assert untagged == []


def test_every_task_retries(dagbag):
    once = [
        f"{dag_id}.{task.task_id}"
        for dag_id, dag in dagbag.dags.items()
        for task in dag.tasks
        if task.retries < 1 and task.task_id not in NO_RETRY
    ]
    assert once == [], "tasks without retries"


def test_parsing_imports_no_heavy_library():
    """A fresh interpreter parses the DAG folder as the DAG processor does; no heavy library gets imported."""
    code = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"DagBag(dag_folder={str(DAGS_FOLDER)!r})\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
