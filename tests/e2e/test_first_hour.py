"""A new user's first hour, as the README leads it: ``make demo`` (in-process, then again with ``make up``
running), the task logs and candidate labels in Airflow, a re-run on the same data, predict and rollback
out of the box. Real Airflow (``dag.test()``, and a real api-server + scheduler for ``make up``), real MLflow.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

REPO = Path(__file__).resolve().parents[2]
MAX_TASK_LOG_LINES = 200  # a task says what it did in tens of lines; skops' probe warnings made 3,500


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}  # warnings show, as for a user
    env.update(extra)
    return env


def run_demo(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "mlops_airflow.demo"], env=env, capture_output=True, text=True, timeout=1200
    )
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "[error" in line or "Error" in line]
    assert proc.returncode == 0, "make demo failed:\n" + "\n".join(errors[:40]) + "\n" + proc.stdout[-3000:]
    return proc


def task_instances(dag_id: str, run_id: str) -> list[Any]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id).all()
        session.expunge_all()
        return tis


def demo_log(output: str) -> str:
    """The whole output of an in-process ``make demo``, from the file it names."""
    found = re.search(r"full log: (\S+)", output)
    assert found, output[-3000:]
    return Path(found.group(1)).read_text()


def demo_run_id(output: str) -> str:
    found = re.search(r"ct_credit_default run (\S+): success", output)
    assert found, output[-3000:]
    return found.group(1)


@pytest.mark.e2e
def test_make_demo_in_process_then_again_on_the_same_data(
    airflow_db: Path,
    mlops_home: Path,
    demo_batches: Callable[..., list[Path]],
    mlflow_client: Any,
    run_dag: Callable[..., Any],
) -> None:
    demo_batches(range(15))
    env = demo_env(MLOPS_AIRFLOW_URL=f"http://127.0.0.1:{free_port()}", MLOPS_GIT_COMMIT="c0ffee" * 6)
    first = run_demo(env)
    run_id = demo_run_id(first.stdout)
    assert "[DAG TEST]" in demo_log(first.stdout)  # no Airflow up: it ran in this process
    assert len(first.stdout.splitlines()) < 50 and "  promote " in first.stdout  # one line per task, a summary

    # 5: every task instance of the run has a log file where the UI reads it; 1: each is short
    from airflow.configuration import conf

    base = Path(conf.get("logging", "base_log_folder"))
    tis = task_instances("ct_credit_default", run_id)
    assert len(tis) >= 11  # snapshot .. promote, 4 of them train
    for ti in tis:
        files = list(base.glob(f"dag_id=ct_credit_default/run_id={run_id}/task_id={ti.task_id}/**/attempt=*.log"))
        assert files, f"{ti.task_id}[{ti.map_index}]: no log file under {base} for the Airflow UI"
        for file in files:
            lines = file.read_text().splitlines()
            assert len(lines) < MAX_TASK_LOG_LINES, f"{file}: {len(lines)} lines, e.g. {lines[len(lines) // 2]}"
            assert not any("DeprecatedImportWarning" in line for line in lines), file
    evaluate = next(base.glob(f"dag_id=ct_credit_default/run_id={run_id}/task_id=evaluate_vs_champion/*.log"))
    assert "evaluate_vs_champion" in evaluate.read_text()

    # 2: mapped train instances are labelled with their hyperparameters, not 0..3
    labels = sorted(str(ti.rendered_map_index) for ti in tis if ti.task_id == "train")
    assert labels == sorted(f"learning_rate={lr}, max_leaf_nodes={n}" for lr in (0.05, 0.1) for n in (15, 31)), labels

    # 6: the same data and code again: nothing new, nothing registered, champion stays
    second = run_demo(env)
    again = demo_run_id(second.stdout)
    states = {ti.task_id: str(ti.state) for ti in task_instances("ct_credit_default", again) if ti.map_index < 0}
    assert states["gate"] == "success"
    assert states["register_challenger"] == states["smoke_test"] == states["promote"] == "skipped", states
    assert [str(v.version) for v in mlflow_client.search_model_versions("name = 'credit_default'")] == ["1"]
    assert str(mlflow_client.get_model_version_by_alias("credit_default", "champion").version) == "1"
    experiment = mlflow_client.get_experiment_by_name("credit_default").experiment_id
    runs = mlflow_client.search_runs([experiment], f"tags.`airflow.run_id` = '{again}' and tags.`mlops.kind` = 'ct'")
    tags = runs[0].data.tags
    assert tags["mlops.verdict"] == "nothing new" and tags["mlops.gate.blessed"] == "false"
    assert "nothing new" in tags["mlflow.note.content"] and quote(again, safe="") in tags["mlflow.source.name"]
    assert "NOTHING NEW: nothing new: snapshot hash" in demo_log(second.stdout)  # the task log says so

    # 8: predict out of the box: a missing scoring zone fails at once (no retries), a landed batch is scored
    missing = run_dag("predict_credit_default")
    assert missing.state_of("predict") == "failed"
    (predict_ti,) = task_instances("predict_credit_default", missing.run_id)
    assert predict_ti.try_number == 1, "a missing folder was retried"
    from mlops_airflow.core import demo_data

    demo_data.write_batches(mlops_home / "data" / "scoring" / "credit_default", range(15, 16))
    scored = run_dag("predict_credit_default")
    assert scored.state_of("predict") == "success" and scored.xcom("predict")["written"] == 1

    # 7: the first champion has nothing good before it: a default rollback says so and lists the choices
    rollback = run_dag("rollback_credit_default", conf={"reason": "first hour"})
    assert rollback.state_of("rollback") == "failed"
    assert str(mlflow_client.get_model_version_by_alias("credit_default", "champion").version) == "1"


def command_line(process: Any) -> list[str]:
    """A process's command line; empty for one that ended while the tree was walked (a task process that
    just exited is a zombie until its parent reaps it)."""
    import psutil

    try:
        return process.cmdline()
    except psutil.NoSuchProcess:  # ZombieProcess is one
        return []


def listening_addresses(pid: int) -> set[str]:
    import psutil

    addresses = set()
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    addresses.add(conn.laddr.ip)
        except psutil.Error:
            continue
    return addresses


@pytest.mark.e2e
@pytest.mark.timeout(2400)
def test_make_demo_with_make_up_running_triggers_through_airflow(tmp_path: Path) -> None:
    """``make up`` then ``make demo``: the demo triggers the run through the REST API and the scheduler runs
    it (no second executor on the database); ``make up`` listens on loopback only, has one task slot per core
    and stops cleanly on TERM."""
    import psutil
    import requests

    local = tmp_path / "local"
    port, mlflow_port = free_port(), free_port()
    make = ["make", "-C", str(REPO), f"LOCAL={local}", f"AIRFLOW_PORT={port}", f"MLFLOW_UI_PORT={mlflow_port}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLOPS", "MLFLOW"))}
    up_log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen([*make, "up"], env=env, stdout=up_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while True:
            try:
                if requests.get(f"{url}/api/v2/monitor/health", timeout=3).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert up.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "make up: the api-server never answered"
            time.sleep(3)

        demo = subprocess.run([*make, "demo"], env=env, capture_output=True, text=True, timeout=1800)
        output = demo.stdout + demo.stderr
        assert demo.returncode == 0, output[-4000:]
        assert f"Airflow is up at {url}: triggered ct_credit_default run" in output
        assert "[DAG TEST]" not in output  # the scheduler ran it, not a second executor in the demo
        assert "MLflow store: migrated for this uv.lock already" in output  # make up migrated them: not again
        run_id = demo_run_id(output)

        # the task logs are served by Airflow, short, and the mapped instances carry their labels
        password = __import__("json").loads((local / "airflow" / "passwords.json").read_text())["admin"]
        token = requests.post(f"{url}/auth/token", json={"username": "admin", "password": password}, timeout=30)
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        api = f"{url}/api/v2/dags/ct_credit_default/dagRuns/{run_id}/taskInstances"
        log = requests.get(f"{api}/evaluate_vs_champion/logs/1", headers=headers, timeout=30).json()["content"]
        assert 3 < len(log) < MAX_TASK_LOG_LINES, log[:20]
        tis = requests.get(api, headers=headers, timeout=30).json()["task_instances"]
        assert all(ti["rendered_map_index"].startswith("learning_rate=") for ti in tis if ti["task_id"] == "train")

        # 10: loopback only, one LocalExecutor worker per core
        assert listening_addresses(up.pid) <= {"127.0.0.1"}, listening_addresses(up.pid)
        workers = [
            cmdline
            for p in psutil.Process(up.pid).children(recursive=True)
            if "LocalExecutor" in " ".join(cmdline := command_line(p))
        ]
        assert len(workers) == len(os.sched_getaffinity(0)), workers
    finally:
        os.killpg(up.pid, signal.SIGTERM) if up.poll() is None else None
        try:
            up.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        up_log.close()
    text = (tmp_path / "up.log").read_text()
    assert "Segmentation fault" not in text and "core dumped" not in text, text[-2000:]
