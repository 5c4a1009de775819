"""Run whole DAGs with ``dag.test()`` against the session's Airflow DB and a per-test MLflow store."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import DagRunResult, free_port, wait_for

from mlops_airflow.core import demo_data


def _dag_run(dag_id: str, conf: dict[str, Any] | None, run_after: dt.datetime) -> DagRunResult:
    from mlops_airflow.dag_factory import build_dags

    dag = build_dags()[dag_id]
    result = DagRunResult(dag.test(run_conf=conf, run_after=run_after, logical_date=run_after))
    result.run_after = run_after
    return result


@pytest.fixture
def run_dag(airflow_db: Path, mlops_home: Path) -> Callable[..., DagRunResult]:
    """``run_dag("ct_credit_default", conf={...})`` parses the DAG folder and runs one DAG run."""
    counter = iter(range(1_000_000))

    def _run(dag_id: str, conf: dict[str, Any] | None = None, *, same_as: DagRunResult | None = None) -> DagRunResult:
        """``same_as``: run that DAG run again under the same run id, as clearing it in the UI would."""
        if same_as is not None:
            run_after = same_as.run_after
        else:  # distinct, increasing run times so that runs of one test never collide
            run_after = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=next(counter))
        assert run_after is not None
        return _dag_run(dag_id, conf, run_after)

    return _run


# ------------------------------------------------------------------ the demo model after its first CT run

#: The first CT run of the demo model, once per test process: ``{"run": DagRunResult}``.
_DEMO_CHAMPION: dict[str, DagRunResult] = {}


def _close_mlflow_connections() -> None:
    """Close the SQLite connections MLflow pools per store URI, so that the next query opens the file that is at
    the path now (a restored copy), not the one that was there."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore

    for store in (TrackingStore, RegistryStore):
        for engine in list(store._engine_map.values()):
            engine.dispose()


@pytest.fixture
def mlops_home(mlops_home: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A test marked ``demo_champion`` gets the demo model's home as its first CT run left it: 15 landed days and
    version 1 as champion, on the embedded default (its own signing key, no ``MLOPS_SIGNING_KEY``).

    The first run is made once per test process in a folder of its own, kept as a template and restored byte for
    byte (file modes and times too) for each test that asks: every such test starts from the same state a fresh
    first run gives, without training it again. The folder's path is the same each time, because MLflow and the
    snapshots record absolute paths. Other tests get the fresh, empty home of the session's conftest.
    """
    if request.node.get_closest_marker("demo_champion") is None:
        return mlops_home
    request.getfixturevalue("airflow_db")
    base = Path(os.environ["AIRFLOW_HOME"]).parent
    home, template = base / "demo-champion" / "mlops", base / "demo-champion" / "template"
    monkeypatch.setenv("MLOPS_HOME", str(home))
    monkeypatch.delenv("MLOPS_SIGNING_KEY", raising=False)
    _close_mlflow_connections()
    if home.exists():
        shutil.rmtree(home)
    if "run" in _DEMO_CHAMPION:
        shutil.copytree(template, home, symlinks=True)
        return home
    shutil.rmtree(template, ignore_errors=True)
    (home / "mlflow").mkdir(parents=True)
    shutil.copyfile(mlops_home / "mlflow" / "mlflow.db", home / "mlflow" / "mlflow.db")  # the migrated, empty store
    demo_data.write_batches(home / "data" / "landing" / "credit_default", range(15))
    first = _dag_run("ct_credit_default", None, dt.datetime.now(dt.UTC).replace(microsecond=0))
    assert first.state == "success", first.tasks
    _close_mlflow_connections()
    shutil.copytree(home, template, symlinks=True)
    _DEMO_CHAMPION["run"] = first
    return home


@pytest.fixture
def demo_champion(mlops_home: Path, request: pytest.FixtureRequest) -> DagRunResult:
    """The demo model's first CT run (tests marked ``demo_champion``): its state, tasks and XComs."""
    assert request.node.get_closest_marker("demo_champion") is not None, "mark the test demo_champion"
    return _DEMO_CHAMPION["run"]


@pytest.fixture
def landing(mlops_home: Path) -> Path:
    """The demo model's landing zone (``MLOPS_DATA_ROOT/landing/credit_default``)."""
    path = mlops_home / "data" / "landing" / "credit_default"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def demo_batches(landing: Path) -> Callable[..., list[Path]]:
    def _write(days: range, **kwargs: Any) -> list[Path]:
        return demo_data.write_batches(landing, days, **kwargs)

    return _write


@pytest.fixture
def mlflow_client(mlops_home: Path) -> Any:
    from mlops_airflow.core import settings
    from mlops_airflow.core.tracking import client_for

    return client_for(settings.default_tracking_uri())


# ------------------------------------------------------------------------- a real MLflow tracking server


@pytest.fixture
def mlflow_server(
    tmp_path: Path, mlops_home: Path, mlflow_store_template: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A real MLflow tracking server (SQLite store, proxied artifacts), the ``mlflow_default`` connection.
    Its store is a copy of the session's migrated template (the server starts without migrating one)."""
    import requests

    shutil.copyfile(mlflow_store_template, tmp_path / "server.db")
    url = f"http://127.0.0.1:{free_port()}"
    log = tmp_path / "mlflow-server.log"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
           "--port", url.rsplit(":", 1)[1], "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
           "--serve-artifacts", "--artifacts-destination", str(tmp_path / "server-artifacts")]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("wb") as out:
        server = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def healthy() -> bool:
        try:
            return requests.get(f"{url}/health", timeout=2).ok
        except requests.ConnectionError:
            return False

    try:
        wait_for("MLflow server health", healthy, server, log, seconds=120)
        monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps({"conn_type": "mlflow", "host": url}))
        # a registry server: the signing key comes from the environment, as the workers have it
        monkeypatch.setenv("MLOPS_SIGNING_KEY", "a-cluster-key-only-airflow-holds")
        yield url
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=60)
