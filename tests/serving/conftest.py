"""A real MLflow server with basic auth (the test writes as its admin, the model server reads as ``serving``,
the READ-only user deploy/airflow_init.py creates), versions made the way ``ct_<model>`` makes them
(``select_candidate``'s logging, the gate's blessing, ``register_challenger``'s registration and signature),
and the model server as a uvicorn subprocess (``python -m mlops_airflow.serving``)."""

from __future__ import annotations

import configparser
import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from serving_support import FEATURES, MODEL, REPO, SIGNING_KEY, TOKEN, ct_version, log_pipeline

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


ADMIN = ("admin", secrets.token_hex(16))
SERVING_USER = ("serving", secrets.token_hex(16))


def airflow_init() -> Any:
    """deploy/airflow_init.py as a module (it creates the cluster's MLflow users and their grants)."""
    spec = importlib.util.spec_from_file_location("airflow_init", REPO / "deploy" / "airflow_init.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def mlflow_server(mlops_home: Path, mlflow_store_template: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``mlflow server --app-name basic-auth`` (deploy/mlflow/basic_auth.ini with a SQLite user database; SQLite
    backend, proxied artifacts). The test process is its admin; user ``serving`` gets exactly the cluster's
    grants (``airflow_init.SERVING_USER_GRANTS``, made by ``airflow_init.mlflow_user``). The backend store is a
    copy of the session's migrated template: the server starts on it without migrating a new one."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    root = mlops_home / "mlflow-server"
    root.mkdir(parents=True)
    shutil.copyfile(mlflow_store_template, root / "mlflow.db")
    auth = configparser.ConfigParser()
    auth.read(REPO / "deploy" / "mlflow" / "basic_auth.ini")
    auth["mlflow"]["database_uri"] = f"sqlite:///{root / 'auth.db'}"
    assert auth["mlflow"]["admin_username"] == ADMIN[0] and auth["mlflow"]["default_permission"] == "READ"
    with (root / "basic_auth.ini").open("w") as out:
        auth.write(out)
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"), "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}  # fmt: skip
    log = root / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(f"{url}/health", proc, log, "mlflow server")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])
        with monkeypatch.context() as init_env:
            for key, value in (("MLFLOW_TRACKING_URL", url), ("MLFLOW_ADMIN_USERNAME", ADMIN[0]),
                               ("MLFLOW_ADMIN_PASSWORD", ADMIN[1])):  # fmt: skip
                init_env.setenv(key, value)
            init = airflow_init()
            init.mlflow_user(*SERVING_USER, init.SERVING_USER_GRANTS, timeout=60)
        yield url
    finally:
        stop(proc)


@pytest.fixture
def mlflow_logins(mlflow_server: str) -> dict[str, tuple[str, str]]:
    """The (user, password) pairs of the MLflow server: ``admin`` and the READ-only ``serving``."""
    return {"admin": ADMIN, "serving": SERVING_USER}


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
    """Makes versions of the demo model as ``ct_<model>`` makes them (:func:`serving_support.ct_version`),
    and, for the trust tests, versions made by hand."""

    def __init__(self, client: Any, spec_path: Path) -> None:
        self.client = client
        self.spec = load_model_spec(spec_path)

    def register(
        self, params: dict[str, Any] | None = None, *, seed: int = 0, alias: str | None = "champion", sign: bool = True
    ) -> str:
        """A blessed version (signed with :data:`SIGNING_KEY` unless ``sign`` is false), trained on the demo data."""
        from mlops_airflow.core.training import fit_final

        train = training_rows(range(3), seed=seed)
        pipeline = fit_final(self.spec, params or {}, train)
        key = SIGNING_KEY.encode() if sign else None
        version = ct_version(self.client, self.spec, lambda: log_pipeline(self.spec, pipeline, train),
                             signing_key=key)  # fmt: skip
        return self._alias(alias, version)

    def register_broken(self, tmp: Path, *, alias: str | None = "champion") -> str:
        """A blessed version that loads but fails its warm-up: its predict raises (a real fault, no mock)."""
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

        def log_broken() -> str:
            info = mlflow.pyfunc.log_model(name="model", python_model=str(code), input_example=example,
                                           pip_requirements=["mlflow"])  # fmt: skip
            return str(info.model_uri)

        return self._alias(alias, ct_version(self.client, self.spec, log_broken, signing_key=SIGNING_KEY.encode()))

    def register_by_hand(self, tmp: Path, *, alias: str | None = "champion") -> str:
        """A version someone with MLflow write access registered from their own run, with a forged
        ``mlops.gate.blessed=true`` tag. Its model's code, if it ever runs, writes the file named by env
        ``FORGED_MODEL_MARKER`` (so a test can tell it was never loaded)."""
        import mlflow

        code = tmp / "forged_model.py"
        code.write_text(
            "import os\n\n"
            "import mlflow\n"
            "from mlflow.pyfunc import PythonModel\n\n"
            "if os.environ.get('FORGED_MODEL_MARKER'):\n"
            "    open(os.environ['FORGED_MODEL_MARKER'], 'w').write('the forged model ran')\n\n\n"
            "class Forged(PythonModel):\n"
            "    def predict(self, context, model_input, params=None):\n"
            "        return model_input.assign(prediction=1, proba_0=0.0, proba_1=1.0)\n\n\n"
            "mlflow.models.set_model(Forged())\n"
        )
        mlflow.set_experiment(self.spec.name)
        with mlflow.start_run() as run:
            info = mlflow.pyfunc.log_model(name="model", python_model=str(code), pip_requirements=["mlflow"])
        with contextlib.suppress(Exception):
            self.client.create_registered_model(self.spec.name)
        tags = {"mlops.data_hash": "hash-forged", "mlops.gate.blessed": "true", "mlops.gate.reason": "trust me"}
        # a tracking server takes a logged model's models:/<model_id> source only with its model_id
        mv = self.client.create_model_version(self.spec.name, info.model_uri, run_id=run.info.run_id, tags=tags,
                                              model_id=info.model_uri.removeprefix("models:/"))  # fmt: skip
        return self._alias(alias, str(mv.version))

    def _alias(self, alias: str | None, version: str) -> str:
        if alias:
            self.set_alias(alias, version)
        return version

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
    """``python -m mlops_airflow.serving`` on a free loopback port (``--workers`` processes behind it)."""

    def __init__(self, root: Path, env: dict[str, str], workers: int = 1) -> None:
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / f"model-server-{self.port}.log"
        self.env = env
        self.proc: subprocess.Popen[Any] | None = None

    def start(self, *, ready: bool = True) -> ModelServer:
        cmd = [sys.executable, "-m", "mlops_airflow.serving", "--port", str(self.port)]
        if self.workers > 1:
            cmd += ["--workers", str(self.workers)]
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

    def _start(*, ready: bool = True, workers: int = 1, **env: str) -> ModelServer:
        environment = {
            **os.environ,
            "MLFLOW_TRACKING_URI": mlflow_server,
            "MLFLOW_TRACKING_USERNAME": SERVING_USER[0],  # READ only, as on the cluster
            "MLFLOW_TRACKING_PASSWORD": SERVING_USER[1],
            "MLOPS_SERVING_TOKEN": TOKEN,
            "MLOPS_SIGNING_KEY": SIGNING_KEY,
            "MLOPS_SERVING_POLL_SECONDS": "600",  # moves are learnt from notifications unless a test says so
            "MLOPS_SERVING_LOG_FLUSH_SECONDS": "0.5",
            "OMP_NUM_THREADS": "1",
            **env,
        }
        server = ModelServer(tmp_path, environment, workers).start(ready=ready)
        started.append(server)
        return server

    yield _start
    for server in started:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()
