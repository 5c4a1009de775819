"""Test environment: a private Airflow home (SQLite metadata DB) and a private MLOPS_HOME per test.

The Airflow settings are set before anything imports Airflow, because Airflow reads them at import.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="mlops-airflow-tests-"))

os.environ.update(
    {
        "AIRFLOW_HOME": str(_SESSION_HOME / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "MLOPS_HOME": str(_SESSION_HOME / "mlops"),
        "GX_ANALYTICS_ENABLED": "false",
        "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
        "PYTHONWARNINGS": "ignore",
    }
)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("MLOPS_MODELS_DIR", None)
# Test processes run side by side (pytest-xdist: three on two cores in `make ci`), as tasks do on a Celery
# worker: one OpenMP/BLAS thread each, as deploy/airflow.env gives every task. Threads that outnumber the cores
# wait on each other: the CT tests took 31 % more CPU (253 against 175 CPU-s for three e2e modules, -n 3).
os.environ.setdefault("OMP_NUM_THREADS", "1")

_METADATA_DB = str(_SESSION_HOME / "airflow" / "airflow.db")


def _metadata_db_opened_as_a_file(event: str, args: tuple[object, ...]) -> None:
    """No Python code of a test process opens the metadata DB (or its -wal, -shm) as a plain file. The DB is in
    WAL mode and open in this process: closing any other descriptor of it drops the locks this process holds on
    it (POSIX), and the next process to close the DB then deletes the WAL under this one's feet ("disk I/O
    error", "database disk image is malformed"). SQLite's own opens are not Python's and pass; copy the DB with
    ``sqlite3``'s backup API."""
    opened = args[0] if event == "open" and args else None
    if isinstance(opened, str | os.PathLike) and os.fspath(opened).startswith(_METADATA_DB):
        raise PermissionError(f"{args[0]}: the session's live metadata DB; copy it with sqlite3's backup API")


sys.addaudithook(_metadata_db_opened_as_a_file)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """An initialised Airflow metadata DB (``airflow db migrate`` once per session)."""
    home = Path(os.environ["AIRFLOW_HOME"])
    if not (home / "airflow.db").exists():
        subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            check=True,
            capture_output=True,
            env=os.environ.copy(),
        )
    return home


@pytest.fixture(scope="session")
def mlflow_store_template() -> Path:
    """An empty MLflow SQLite store at the current schema, migrated once per session (per xdist worker).

    Migrating a new store takes MLflow seconds; a byte copy of this file is the same store without the wait.
    It is made as ``make airflow-db`` makes the embedded default's store: ``mlflow db upgrade``. It holds the
    schema only: the default experiment is written by a test's first client, as on a fresh installation.
    """
    path = _SESSION_HOME / "mlflow-store-template" / "mlflow.db"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "mlflow", "db", "upgrade", f"sqlite:///{path}"],
            check=True,
            capture_output=True,
            env=os.environ.copy(),
        )
    return path


@pytest.fixture
def empty_mlops_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh MLOPS_HOME with nothing in it yet: for tests of whether and where a local store is created."""
    home = tmp_path / "mlops"
    monkeypatch.setenv("MLOPS_HOME", str(home))
    monkeypatch.delenv("MLOPS_DATA_ROOT", raising=False)
    monkeypatch.delenv("MLOPS_STORAGE_BASE", raising=False)
    # mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI; a test must not inherit the last store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


@pytest.fixture
def mlops_home(empty_mlops_home: Path, mlflow_store_template: Path) -> Path:
    """A fresh local MLflow store, storage and landing zone for one test.

    The store (``mlflow/mlflow.db``, where the embedded default looks) is this test's own copy of the
    session's migrated template: nothing another test writes reaches it.
    """
    store = empty_mlops_home / "mlflow" / "mlflow.db"
    store.parent.mkdir(parents=True)
    shutil.copyfile(mlflow_store_template, store)
    return empty_mlops_home


def _metadata_db_faults() -> list[str]:
    """What ``PRAGMA quick_check`` finds wrong in the session's Airflow metadata DB, read through a new
    connection (the file on disk) and through this process's own pooled one (what its next query reads)."""
    import sqlite3

    path = Path(os.environ["AIRFLOW_HOME"]) / "airflow.db"
    if not path.exists():
        return []
    faults = []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)) as fresh:
            rows = [str(row[0]) for row in fresh.execute("PRAGMA quick_check")]
    except sqlite3.DatabaseError as err:
        rows = [f"{type(err).__name__}: {err}"]
    if rows != ["ok"]:
        faults.append(f"the file: {rows[:5]}")
    settings = sys.modules.get("airflow.settings")
    engine = getattr(settings, "engine", None)
    if engine is not None and str(engine.url).startswith("sqlite"):
        try:
            with engine.connect() as conn:
                rows = [str(row[0]) for row in conn.exec_driver_sql("PRAGMA quick_check")]
        except Exception as err:  # whatever the pooled connection raises is the finding
            rows = [f"{type(err).__name__}: {err}"]
        if rows != ["ok"]:
            faults.append(f"this process's connection: {rows[:5]}")
    return faults


@pytest.fixture(scope="module", autouse=True)
def metadata_db_intact(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test module leaves the session's Airflow metadata DB whole. One module's DB shared by every test
    of a worker: the module that corrupted it fails here, by name (the modules after it are not blamed again)."""
    whole = not _metadata_db_faults()
    yield
    faults = _metadata_db_faults() if whole else []
    assert not faults, f"{request.module.__name__} left the Airflow metadata DB corrupt: {'; '.join(faults)}"
