"""MLflow down for good: a task's MLflow call fails in seconds, naming the tracking URI, not after 4 minutes.

MLflow's client would retry a dead server 7 times with backoff factor 2 (about 4.2 minutes per request);
``client_for`` bounds that so Airflow's own retries with backoff do the waiting. Both faults are real: a
port nothing listens on, and a real MLflow server killed after it answered. The tests print the time the
failing call took; they assert the outcome and the retry settings in force, never the time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from e2e_support import free_port

from mlops_airflow.core import tracking

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture
def cluster_connection(mlops_home: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``mlflow_default`` pointing at ``url`` on a cluster deployment, MLflow's retry settings unset."""
    for key in tracking.HTTP_CLIENT_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLOPS_DEPLOYMENT", "cluster")

    def _point_at(url: str) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps({"conn_type": "mlflow", "host": url}))
        monkeypatch.setenv(
            "MLOPS_SIGNING_KEY", "a-cluster-key-only-airflow-holds"
        )  # a registry server: the key from the env

    return _point_at


def snapshot_task() -> Any:
    """The ``snapshot`` operator of ``ct_credit_default``, as the DAG processor builds it."""
    from mlops_airflow.dag_factory import build_dags

    return build_dags()["ct_credit_default"].get_task("snapshot")


def failing_call(what: str, call: Any) -> tuple[BaseException, float]:
    from mlflow.exceptions import MlflowException

    t0 = time.monotonic()
    with pytest.raises(MlflowException) as err:
        call()
    elapsed = time.monotonic() - t0
    print(f"\n{what}: failed after {elapsed:.1f}s: {str(err.value)[:160]}")
    return err.value, elapsed


def test_operator_call_fails_fast_when_nothing_listens(cluster_connection: Any) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    cluster_connection(url)
    task = snapshot_task()

    error, _ = failing_call("MLflow port closed", lambda: task.experiment_id)

    assert url in str(error), "the error must name the tracking URI"
    assert {key: os.environ[key] for key in tracking.HTTP_CLIENT_DEFAULTS} == tracking.HTTP_CLIENT_DEFAULTS


def test_operator_call_fails_fast_after_the_server_was_killed(cluster_connection: Any, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
           "--serve-artifacts", "--artifacts-destination", str(tmp_path / "artifacts")]  # fmt: skip
    with (tmp_path / "server.log").open("wb") as log:
        server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        cluster_connection(url)
        task = snapshot_task()
        exp_id = task.experiment_id  # the server answers: the experiment is created
        assert task.client.get_experiment(exp_id).name == "credit_default"
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)

    error, _ = failing_call("MLflow server killed", lambda: task.client.search_runs([exp_id]))

    assert url in str(error), "the error must name the tracking URI"
    assert {key: os.environ[key] for key in tracking.HTTP_CLIENT_DEFAULTS} == tracking.HTTP_CLIENT_DEFAULTS
