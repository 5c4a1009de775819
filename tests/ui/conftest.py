"""One set of MLflow state for the model page tests (two ct_ runs, a rollback, a drifting monitor run; a second
model with no run), and a
real ``airflow api-server`` over it with the SimpleAuthManager and a known password, beside a real MLflow UI
(``mlflow server``) over the same store: the page's MLflow links lead there."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
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
from mlops_airflow.demo import captured_output

REPO = Path(__file__).resolve().parents[2]
MODEL = "credit_default"
OTHER_MODEL = "churn_risk"  # sorts before MODEL by name
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


def run_dag(dag_id: str, conf: dict[str, Any] | None = None, expect: str = "success") -> Any:
    """One DAG run with ``dag.test()``; it must end ``expect`` (the tasks' states are named if not)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    from mlops_airflow.dag_factory import build_dags

    dag = build_dags()[dag_id]
    run_after = dt.datetime.now(dt.UTC).replace(microsecond=0)
    run = dag.test(run_conf=conf, run_after=run_after, logical_date=run_after)
    if str(run.state) != expect:
        with create_session() as session:
            tis = session.query(TaskInstance).filter_by(dag_id=dag_id, run_id=run.run_id).all()
            states = {ti.task_id: str(ti.state) for ti in tis}
        pytest.fail(f"{dag_id} run {run.run_id} ended {run.state}: {states}")
    return run


@contextlib.contextmanager
def output_into(request: pytest.FixtureRequest, lines: list[str]) -> Iterator[None]:
    """The lines the block writes to stdout and stderr, appended to ``lines``: read from pytest's own capture
    when it captures (Airflow's loggers hold the stream pytest gave them), else from the file descriptors."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is not None and capture.is_globally_capturing():
        capture.read_global_capture()  # what came before the block
        try:
            yield
        finally:
            out, err = capture.read_global_capture()
            lines.extend((out + err).splitlines())
        return
    sink = io.StringIO()
    with captured_output(sink):
        yield
    lines.extend(sink.getvalue().splitlines())


@dataclass
class OpsState:
    home: Path
    env: dict[str, str]
    runs: dict[str, Any] = field(default_factory=dict)
    #: (DAG id, run id), MLflow run id and the output of each run of the fixture, by its name in ``runs``.
    airflow_runs: dict[str, tuple[str, str]] = field(default_factory=dict)
    mlflow_runs: dict[str, str] = field(default_factory=dict)
    output: dict[str, list[str]] = field(default_factory=dict)
    experiment_id: str = ""

    def run(
        self,
        request: pytest.FixtureRequest,
        name: str,
        dag_id: str,
        conf: dict[str, Any] | None = None,
        expect: str = "success",
    ) -> None:
        """Run ``dag_id`` (it must end ``expect``), keeping its ids and output under ``name``."""
        lines: list[str] = []
        with output_into(request, lines):
            run = run_dag(dag_id, conf, expect)
        self.runs[name], self.airflow_runs[name], self.output[name] = run, (dag_id, str(run.run_id)), lines

    def find_mlflow_runs(self) -> None:
        """The MLflow run each Airflow run wrote (its tags name the DAG run), found without the model page."""
        from mlops_airflow.core import settings, tracking

        client = tracking.client_for(settings.default_tracking_uri())
        self.experiment_id = str(client.get_experiment_by_name(MODEL).experiment_id)
        for name, (dag_id, run_id) in self.airflow_runs.items():
            kind = {"ct": "ct", "monitor": "monitor"}.get(dag_id.split("_")[0])
            if kind is None:
                continue
            tags = {tracking.TAG_DAG_ID: dag_id, tracking.TAG_RUN_ID: run_id, tracking.TAG_KIND: kind}
            found = tracking.find_run(client, self.experiment_id, tags)
            assert found is not None, f"no MLflow run of {dag_id} run {run_id}"
            self.mlflow_runs[name] = str(found.info.run_id)


@pytest.fixture(scope="module")
def ops_state(
    airflow_db: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[OpsState]:
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
        state.run(request, "ct1", f"ct_{MODEL}")
        demo_data.write_batches(landing, range(15, 16))
        state.run(request, "ct2", f"ct_{MODEL}")
        # the ledger's times have one-second resolution: the rollback starts in a later second than the promotion
        promoted = dt.datetime.now(dt.UTC).replace(microsecond=0)
        while dt.datetime.now(dt.UTC).replace(microsecond=0) <= promoted:
            time.sleep(0.05)
        state.run(request, "rollback", f"rollback_{MODEL}", {"reason": "v2 misprices self-employed applicants"})
        demo_data.write_batches(landing, range(16, 17), feature_shift=1.0)
        state.run(request, "monitor", f"monitor_{MODEL}")
        state.find_mlflow_runs()
        # a second model, with no run yet: the overview shows a fleet (it has no champion, no monitor run)
        other = yaml.safe_load((home / "models" / f"{MODEL}.yaml").read_text()) | {"name": OTHER_MODEL}
        (home / "models" / f"{OTHER_MODEL}.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
        yield state


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(proc: subprocess.Popen[bytes], url: str, log: Path, what: str) -> None:
    """Return once ``url`` answers 200; fail with the server's log if it exits or never answers."""
    deadline = time.monotonic() + 180  # start-up on a busy 2-core machine; a readiness wait, not a check
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not answer on {url}:\n{log.read_text()[-4000:]}")
        time.sleep(1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()


@pytest.fixture(scope="module")
def mlflow_ui(ops_state: OpsState) -> Iterator[str]:
    """The MLflow UI (``mlflow server``, as ``make up`` starts it) over the module's store, on a loopback port."""
    port = free_port()
    store = Path(ops_state.env["MLOPS_HOME"]) / "mlflow" / "mlflow.db"
    log = ops_state.home / "mlflow-ui.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store}"]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, f"{url}/health", log, "mlflow server")
        yield url
    finally:
        stop(proc)


@dataclass
class ApiServer:
    url: str
    user: str
    password: str
    log: Path
    mlflow_url: str


@pytest.fixture(scope="module")
def api_server(ops_state: OpsState, mlflow_ui: str) -> Iterator[ApiServer]:
    """``airflow api-server`` on a loopback port, over the session's metadata DB and the module's MLflow store;
    the model page links to ``mlflow_ui``."""
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
        "MLOPS_MLFLOW_UI_URL": mlflow_ui,
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
        wait_until_up(proc, f"{url}/api/v2/monitor/health", log, "airflow api-server")
        yield ApiServer(url, "admin", PASSWORD, log, mlflow_ui)
    finally:
        stop(proc)
