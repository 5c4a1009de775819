"""One set of MLflow state for the model page tests (two ct_ runs, a rollback, a drifting monitor run), and a
real ``airflow api-server`` over it with the SimpleAuthManager and a known password."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from mlops_airflow.core import demo_data

REPO = Path(__file__).resolve().parents[2]
MODEL = "credit_default"
PASSWORD = "page-test-password"


def trimmed_spec(models_dir: Path, **changes: Any) -> Path:
    """The demo model with one candidate and a 200-resample bootstrap: the same DAGs, less CPU."""
    spec = yaml.safe_load((REPO / "include" / "models" / f"{MODEL}.yaml").read_text())
    spec["estimator"]["search_space"] = {"learning_rate": [0.1], "max_leaf_nodes": [31]}
    spec["gate"]["n_bootstrap"] = 200
    spec.update(changes)
    models_dir.mkdir(parents=True, exist_ok=True)
    path = models_dir / f"{MODEL}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_dag(dag_id: str, conf: dict[str, Any] | None = None) -> Any:
    """One DAG run with ``dag.test()``; it must succeed (the failing tasks are named if not)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    from mlops_airflow.dag_factory import build_dags

    dag = build_dags()[dag_id]
    run_after = dt.datetime.now(dt.UTC).replace(microsecond=0)
    run = dag.test(run_conf=conf, run_after=run_after, logical_date=run_after)
    if str(run.state) != "success":
        with create_session() as session:
            tis = session.query(TaskInstance).filter_by(dag_id=dag_id, run_id=run.run_id).all()
            states = {ti.task_id: str(ti.state) for ti in tis}
        pytest.fail(f"{dag_id} run {run.run_id} ended {run.state}: {states}")
    return run


@dataclass
class OpsState:
    home: Path
    env: dict[str, str]
    runs: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def ops_state(airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpsState]:
    """MLflow after ct_ (v1 promoted), a new day and ct_ again (v2 promoted), a rollback to v1, and a monitor
    run over a drifted day: what the model page shows."""
    home = tmp_path_factory.mktemp("model-page")
    env = {
        "MLOPS_HOME": str(home / "mlops"),
        "MLOPS_MODELS_DIR": str(home / "models"),
        "MLOPS_MLFLOW_UI_URL": "http://127.0.0.1:5000",
    }
    trimmed_spec(home / "models")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        for key in ("MLOPS_DATA_ROOT", "MLOPS_STORAGE_BASE", "MLFLOW_TRACKING_URI"):
            mp.delenv(key, raising=False)
        landing = home / "mlops" / "data" / "landing" / MODEL
        state = OpsState(home, env)
        demo_data.write_batches(landing, range(15))
        state.runs["ct1"] = run_dag(f"ct_{MODEL}")
        demo_data.write_batches(landing, range(15, 16))
        state.runs["ct2"] = run_dag(f"ct_{MODEL}")
        # the ledger's times have one-second resolution: the rollback starts in a later second than the promotion
        promoted = dt.datetime.now(dt.UTC).replace(microsecond=0)
        while dt.datetime.now(dt.UTC).replace(microsecond=0) <= promoted:
            time.sleep(0.05)
        state.runs["rollback"] = run_dag(f"rollback_{MODEL}", {"reason": "v2 misprices self-employed applicants"})
        demo_data.write_batches(landing, range(16, 17), feature_shift=1.0)
        state.runs["monitor"] = run_dag(f"monitor_{MODEL}")
        yield state


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ApiServer:
    url: str
    user: str
    password: str
    log: Path


@pytest.fixture(scope="module")
def api_server(ops_state: OpsState) -> Iterator[ApiServer]:
    """``airflow api-server`` on a loopback port, over the session's metadata DB and the module's MLflow store."""
    home = ops_state.home
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"admin": PASSWORD}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        **ops_state.env,
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__API__BASE_URL": url,
        "AIRFLOW__API_AUTH__JWT_SECRET": "model-page-test-secret",
        "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    log = home / "api-server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "airflow", "api-server", "--port", str(port), "--host", "127.0.0.1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180  # start-up on a busy 2-core machine; a readiness wait, not a check
        while True:
            if proc.poll() is not None:
                pytest.fail(f"airflow api-server exited {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/api/v2/monitor/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"airflow api-server did not answer on {url}:\n{log.read_text()[-4000:]}")
            time.sleep(1)
        yield ApiServer(url, "admin", PASSWORD, log)
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
