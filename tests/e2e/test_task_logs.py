"""Every task log states its decision: one CT run of the demo model, then its monitor and batch scoring runs,
and each task's log (``dag.test()`` writes them to the console, between its ``[DAG TEST] starting`` and ``end
task`` lines) has a line in its own words saying what it decided, with the figures it decided on, checked
against what the task returned (XCom): snapshot rows and batches, expectations passed, each candidate's metric,
the chosen candidate and why, candidate vs champion on the same rows, the gate's verdict and reason, the
registered version and its alias, the smoke test and the promotion; drift and the retrain decision; what was
scored with which version.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest

from mlops_airflow.core import demo_data

pytestmark = pytest.mark.e2e
MODEL = "credit_default"
PRIMARY = "roc_auc"  # include/models/credit_default.yaml's primary metric (the binary default)

TASK_LOG = re.compile(
    r"\[DAG TEST\] starting task_id=(?P<task>\S+) map_index=(?P<index>-?\d+)(?P<log>.*?)"
    r"\[DAG TEST\] end task task_id=(?P=task) map_index=(?P=index)",
    re.S,
)


def logs_of(output: str) -> dict[str, str]:
    """Each task's log in a DAG run's console output, by task id (``train[0]`` for a mapped one)."""
    found = TASK_LOG.finditer(output)
    return {m["task"] if m["index"] == "-1" else f"{m['task']}[{m['index']}]": m["log"] for m in found}


def run_logged(dag_id: str) -> tuple[Any, dict[str, str]]:
    """Run ``dag_id`` with ``dag.test()`` in a fresh interpreter (this test's Airflow home and MLflow store) and
    read its console: what an earlier test did to this process's logging cannot hide a task's lines."""
    from airflow.models.dagrun import DagRun
    from e2e_support import DagRunResult

    code = "import sys\nfrom mlops_airflow.dag_factory import build_dags\nbuild_dags()[sys.argv[1]].test()\n"
    done = subprocess.run([sys.executable, "-c", code, dag_id], capture_output=True, text=True, timeout=1200)
    runs = sorted(DagRun.find(dag_id=dag_id), key=lambda r: r.start_date)
    assert runs, f"{dag_id} did not run:\n{done.stderr[-3000:]}"
    return DagRunResult(runs[-1]), logs_of(done.stdout + done.stderr)


def line_with(logs: dict[str, str], task: str, *needles: str) -> str:
    """The first line of ``task``'s log holding every one of ``needles``."""
    log = logs[task]
    found = [line for line in log.splitlines() if all(n in line for n in needles)]
    assert found, f"no line of {task}'s log says {needles}; its log:\n{log[-4000:]}"
    return found[0]


def test_every_task_log_states_what_it_decided_with_its_figures(
    airflow_db: Any, demo_batches: Any, mlops_home: Any
) -> None:
    demo_batches(range(15))
    ct, logs = run_logged(f"ct_{MODEL}")
    assert ct.state == "success", ct.tasks
    assert set(logs) == set(ct.tasks), "every task instance of the run has its log section"

    snap = ct.xcom("snapshot")
    line_with(
        logs,
        "snapshot",
        "snapshot ",
        f"'train_rows': {snap['train_rows']}",
        f"'eval_rows': {snap['eval_rows']}",
        f"'batches': {snap['batches']}",
    )

    valid = re.search(r"data valid: (\d+) file\(s\), (\d+) rows, (\d+) expectations", logs["validate_data"])
    assert valid, logs["validate_data"][-4000:]
    assert int(valid[1]) == snap["batches"] and int(valid[2]) == snap["train_rows"] + snap["eval_rows"]
    assert int(valid[3]) > 0

    trained = sorted(task for task in ct.tasks if task.startswith("train["))
    assert len(trained) > 1
    for task in trained:
        candidate = ct.xcom("train", map_index=int(task[6:-1]))
        line = line_with(logs, task, f"candidate {candidate['index']} (")
        logged = re.search(rf"'{PRIMARY}': ([-+0-9.eE]+)", line)
        assert logged and float(logged[1]) == pytest.approx(candidate["metrics"][PRIMARY]), line

    chosen = ct.xcom("select_candidate")
    line_with(
        logs,
        "select_candidate",
        f"chose candidate {chosen['candidate_index']} of {len(trained)}: the best "
        f"{PRIMARY} on the selection rows, {chosen['validation_metrics'][PRIMARY]}",
    )

    evaluation = ct.xcom("evaluate_vs_champion")
    line_with(
        logs,
        "evaluate_vs_champion",
        f"on the same {evaluation['rows']} evaluation rows: candidate {PRIMARY} "
        f"{evaluation['candidate'][PRIMARY]}, champion none (first run)",
    )

    decision = ct.xcom("gate")
    assert decision["blessed"] is True
    line_with(logs, "gate", "Gate: **BLESSED**")
    line_with(logs, "gate", "Reason: ", decision["reason"].split(": ", 1)[-1])

    registered = ct.xcom("register_challenger")
    version = registered["version"]
    line_with(
        logs, "register_challenger", f"registered {MODEL} version {version}, signed by the gate, alias challenger"
    )
    line_with(logs, "smoke_test", f"smoke test of {MODEL} version {version} (alias challenger): passed")
    line_with(
        logs, "promote", f"champion of {MODEL}: ", "alias='champion'", f"to_version='{version}'", "outcome='promoted'"
    )

    # monitor_: drift of a new day against the champion's reference, and whether it asks for a retrain
    demo_batches(range(15, 16))
    monitored, logs = run_logged(f"monitor_{MODEL}")
    assert monitored.state_of("monitor") == "success", monitored.tasks
    drift = monitored.xcom("monitor")
    verdict = "request a retrain" if drift["request"] else "no retrain request"
    line_with(logs, "monitor", f"decided {verdict} because {drift['reason']}")
    if drift["request"]:
        line_with(logs, "request_retrain", f"retrain of {MODEL} requested: ")
    else:
        line_with(logs, "request_retrain", "no retrain requested: ")

    # predict_: what was scored, with which version
    demo_data.write_batches(mlops_home / "data" / "scoring" / MODEL, range(15, 16))
    scored, logs = run_logged(f"predict_{MODEL}")
    assert scored.state_of("predict") == "success", scored.tasks
    out = scored.xcom("predict")
    line_with(logs, "predict", f"scored {out['written']} batch(es) with {MODEL} v{version}")
