"""A real MLflow server, models registered the way ``select_candidate`` logs them, and the model server as a
uvicorn subprocess (``python -m mlops_airflow.serving``)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from serving_support import FEATURES, MODEL, REPO, TOKEN

from mlops_airflow.core import demo_data
from mlops_airflow.core.config import load_model_spec


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, proc: subprocess.Popen[Any], log: Path, what: str, status: int = 200) -> None:
    deadline = time.monotonic() + 180  # a startup bound, not an assertion on speed
    while True:
        try:
            if requests.get(url, timeout=2).status_code == status:
                return
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start: {log.read_text()[-3000:]}")
        time.sleep(0.3)


def stop(proc: subprocess.Popen[Any]) -> int:
    """SIGTERM (a clean stop) and wait."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    return proc.wait(timeout=120)


@pytest.fixture
def mlflow_server(mlops_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An ``mlflow server`` process (SQLite backend, proxied artifacts)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    root = mlops_home / "mlflow-server"
    root.mkdir(parents=True)
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = root / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(f"{url}/health", proc, log, "mlflow server")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        yield url
    finally:
        stop(proc)


@pytest.fixture
def client(mlflow_server: str) -> Any:
    from mlops_airflow.core.tracking import client_for

    return client_for(mlflow_server)


def training_rows(days: range, shift: float = 0.0, seed: int = 0) -> Any:
    import pandas as pd

    return pd.concat(
        [demo_data.generate_batch(d, n_rows=150, seed=seed + d, feature_shift=shift) for d in days], ignore_index=True
    )


class Registrar:
    """Logs and registers versions of the demo model as ``select_candidate`` + ``register_challenger`` do."""

    def __init__(self, client: Any, spec_path: Path) -> None:
        self.client = client
        self.spec = load_model_spec(spec_path)

    def register(self, params: dict[str, Any] | None = None, *, seed: int = 0, alias: str | None = "champion") -> str:
        import mlflow
        import skops.io
        from mlflow.models import infer_signature

        from mlops_airflow.core import served_model
        from mlops_airflow.core.scoring import model_config, model_input
        from mlops_airflow.core.training import fit_final
        from mlops_airflow.operators.training import quiet_skops_scan, serving_requirements, trusted_types

        spec = self.spec
        train = training_rows(range(3), seed=seed)
        pipeline = fit_final(spec, params or {}, train)
        config = model_config(spec, 0.5, trusted_types(pipeline))
        example = model_input(spec, train.head(5))
        mlflow.set_experiment(spec.name)
        with tempfile.TemporaryDirectory() as scratch, mlflow.start_run() as run:
            pipeline_file = Path(scratch) / "pipeline.skops"
            with quiet_skops_scan():
                skops.io.dump(pipeline, pipeline_file)
            os.environ["MLFLOW_UV_AUTO_DETECT"] = "false"
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=served_model.__file__,
                artifacts={"pipeline": str(pipeline_file)},
                model_config=config,
                signature=infer_signature(example, served_model.model_output(pipeline, example, config)),
                input_example=example,
                pip_requirements=serving_requirements(),
            )
        return self._register(info.model_uri, run.info.run_id, alias)

    def register_broken(self, tmp: Path, *, alias: str | None = "champion") -> str:
        """A version that loads but fails its warm-up: its predict raises (a real fault, no mock)."""
        import mlflow

        code = tmp / "broken_model.py"
        code.write_text(
            "import mlflow\n"
            "from mlflow.pyfunc import PythonModel\n\n\n"
            "class Broken(PythonModel):\n"
            "    def predict(self, context, model_input, params=None):\n"
            "        raise RuntimeError('this version cannot score')\n\n\n"
            "mlflow.models.set_model(Broken())\n"
        )
        example = training_rows(range(1)).head(3)[FEATURES]
        mlflow.set_experiment(self.spec.name)
        with mlflow.start_run() as run:
            info = mlflow.pyfunc.log_model(name="model", python_model=str(code), input_example=example,
                                           pip_requirements=["mlflow"])  # fmt: skip
        return self._register(info.model_uri, run.info.run_id, alias)

    def _register(self, model_uri: str, run_id: str, alias: str | None) -> str:
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):
            self.client.create_registered_model(self.spec.name)
        tags = {"mlops.data_hash": f"hash-{run_id[:8]}", "mlops.gate.blessed": "true",
                "mlops.gate.reason": "test registration"}  # fmt: skip
        # a tracking server takes a logged model's models:/<model_id> source only with its model_id
        mv = self.client.create_model_version(
            self.spec.name, model_uri, run_id=run_id, tags=tags, model_id=model_uri.removeprefix("models:/")
        )
        if alias:
            self.set_alias(alias, str(mv.version))
        return str(mv.version)

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.spec.name, alias, version)


@pytest.fixture
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """A models directory holding the demo spec, with ``serving:`` settings merged in."""

    def _write(**serving: Any) -> Path:
        folder = tmp_path / "models"
        folder.mkdir(exist_ok=True)
        data = yaml.safe_load((REPO / "include" / "models" / f"{MODEL}.yaml").read_text())
        data["estimator"]["params"]["max_iter"] = 30  # quick fits: the tests are about serving
        if serving:
            data["serving"] = serving
        (folder / f"{MODEL}.yaml").write_text(yaml.safe_dump(data))
        monkeypatch.setenv("MLOPS_MODELS_DIR", str(folder))
        return folder

    return _write


@pytest.fixture
def registrar(client: Any, models_dir: Callable[..., Path]) -> Callable[..., Registrar]:
    def _make(**serving: Any) -> Registrar:
        return Registrar(client, models_dir(**serving) / f"{MODEL}.yaml")

    return _make


class ModelServer:
    """``python -m mlops_airflow.serving`` on a free loopback port."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / f"model-server-{self.port}.log"
        self.env = env
        self.proc: subprocess.Popen[Any] | None = None

    def start(self, *, ready: bool = True) -> ModelServer:
        cmd = [sys.executable, "-m", "mlops_airflow.serving", "--port", str(self.port)]
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip
        wait_for(f"{self.url}/ready" if ready else f"{self.url}/health", self.proc, self.log, "model server")
        return self

    def stop(self) -> bool:
        """SIGTERM; True when the app shut down cleanly (uvicorn re-raises the signal once it has)."""
        assert self.proc is not None
        code = stop(self.proc)
        return code in (0, -signal.SIGTERM) and "Application shutdown complete." in self.log.read_text()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    def predict(self, body: Any, **kwargs: Any) -> requests.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return requests.post(f"{self.url}/v1/models/{MODEL}/predict", json=body, headers=headers, timeout=60, **kwargs)

    def page(self) -> dict[str, Any]:
        response = requests.get(f"{self.url}/v1/models/{MODEL}", headers=self.headers, timeout=30)
        response.raise_for_status()
        return dict(response.json())


@pytest.fixture
def model_server(mlflow_server: str, mlops_home: Path, tmp_path: Path) -> Iterator[Callable[..., ModelServer]]:
    started: list[ModelServer] = []

    def _start(*, ready: bool = True, **env: str) -> ModelServer:
        environment = {
            **os.environ,
            "MLFLOW_TRACKING_URI": mlflow_server,
            "MLOPS_SERVING_TOKEN": TOKEN,
            "MLOPS_SERVING_POLL_SECONDS": "600",  # moves are learnt from notifications unless a test says so
            "MLOPS_SERVING_LOG_FLUSH_SECONDS": "0.5",
            "OMP_NUM_THREADS": "1",
            **env,
        }
        server = ModelServer(tmp_path, environment).start(ready=ready)
        started.append(server)
        return server

    yield _start
    for server in started:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()
