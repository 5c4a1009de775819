"""The docker-compose topology, run natively on loopback (docs/design.md 6): no Docker engine needed.

``NativeCluster`` starts, each in its own process group and its own home directory, the processes of
docker-compose.yml against this machine's PostgreSQL and Redis:

* a moto S3 server (the MinIO stand-in) with the ``mlops`` bucket;
* an MLflow tracking server with its basic-auth app (deploy/mlflow/basic_auth.ini, users in a fresh
  database): PostgreSQL backend store in a fresh database, artifacts proxied by the server to
  ``s3://mlops/mlflow``; Airflow reaches it as the service user that the init step creates;
* Airflow with CeleryExecutor: api-server, scheduler, dag-processor, triggerer and N Celery workers
  (Redis broker on a fresh Redis db number, metadata DB and Celery result backend in fresh databases).

Settings: every process gets ``deploy/airflow.env`` (the file Compose hands to its containers) plus the
same per-role keys as its Compose service (``role_settings``; tests/cluster/test_compose_file.py checks
both sides), plus ``LOCAL_ONLY_KEYS`` that only exist because all processes share one machine (ports, paths,
per-worker host names). The init step runs deploy/airflow_init.py, like the ``airflow-init`` service.
The scheduler creates scheduled and asset-triggered runs as in production. No cron run ever starts during
a test: every DAG is paused at creation (deploy/airflow.env), and the cluster reads a copy of
include/models whose specs have no cron (``schedule: null``: a ``ct_`` DAG then starts on a retrain
request or a trigger only). Unpausing a DAG with a cron would start its latest cron slot at once.

``stop()`` kills every process group and drops the databases and the Redis db; it runs even when
``start()`` fails half-way (use ``with NativeCluster(...) as cluster:`` or the pytest fixture).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

if TYPE_CHECKING:
    from api_client import AirflowApi

REPO = Path(__file__).resolve().parents[2]
AIRFLOW_ENV_FILE = REPO / "deploy" / "airflow.env"
MLFLOW_AUTH_FILE = REPO / "deploy" / "mlflow" / "basic_auth.ini"
INIT_SCRIPT = REPO / "deploy" / "airflow_init.py"
BIN = Path(sys.executable).parent
PG_DSN = os.environ.get("MLOPS_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("MLOPS_TEST_REDIS_URL", "redis://127.0.0.1:6379")
S3_KEY = "testing"  # moto accepts any credentials
DB_PREFIX = "mlops_cluster_"
REDIS_OWNER_KEY = "mlops-cluster-test-owner"

# Keys a role gets besides deploy/airflow.env, exactly as the Compose services (test_compose_file.py checks).
DB_ROLE_KEYS = (
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
    "MLOPS_MLFLOW_UI_URL",
    "PYTHONPATH",
)
WORKER_KEYS = (
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__API__SECRET_KEY",
    "MLOPS_MLFLOW_UI_URL",
    "PYTHONPATH",
)
# How promote and rollback reach the model server (core/serving_client.py); here no model server runs unless a
# test starts one on ``ports["serving"]``, and a notification nobody hears never fails a task.
SERVING_CLIENT_KEYS = ("MLOPS_SERVING_URL", "MLOPS_SERVING_TOKEN")
PASSWORDS_FILE_KEY = "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"
INIT_KEYS = (
    "AIRFLOW_ADMIN_PASSWORD",
    "MLFLOW_TRACKING_URL",
    "MLFLOW_ADMIN_USERNAME",
    "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_SERVICE_USERNAME",
    "MLFLOW_SERVICE_PASSWORD",
    "MLFLOW_SERVING_USERNAME",
    "MLFLOW_SERVING_PASSWORD",
    "OBJECT_STORE_ENDPOINT_URL",
    "OBJECT_STORE_ACCESS_KEY",
    "OBJECT_STORE_SECRET_KEY",
)
ROLE_KEYS: dict[str, tuple[str, ...]] = {
    "airflow-init": (*DB_ROLE_KEYS, PASSWORDS_FILE_KEY, *INIT_KEYS),
    "airflow-apiserver": (*DB_ROLE_KEYS, PASSWORDS_FILE_KEY),
    "airflow-scheduler": DB_ROLE_KEYS,
    "airflow-dag-processor": DB_ROLE_KEYS,
    "airflow-triggerer": DB_ROLE_KEYS,
    "airflow-worker": (*WORKER_KEYS, "MLOPS_SIGNING_KEY", *SERVING_CLIENT_KEYS),
}
# Only here because every process shares one machine (in Compose: image defaults, one container each).
LOCAL_ONLY_KEYS = {
    "AIRFLOW_HOME": "one home per process, as one container per service",
    "AIRFLOW__CORE__DAGS_FOLDER": "the checkout's dags/ (image: /opt/airflow/dags)",
    "AIRFLOW__CORE__PLUGINS_FOLDER": "the checkout's plugins/ (image: /opt/airflow/plugins)",
    "AIRFLOW__LOGGING__BASE_LOG_FOLDER": "task logs shared on disk (Compose: volume airflow-logs)",
    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": "free port (container: 8794)",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": "free port (container: 8974)",
    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "workers share a host name here; containers have their own",
    "MLOPS_TEST_HOSTNAME": "the worker's name, read by the hostname callable",
    "MLOPS_HOME": "local scratch per process (image: /opt/airflow/.local)",
    "MLOPS_MODELS_DIR": "a test's own model specs, or include/models without crons (no scheduled runs)",
}
COMPOSE_ROLES = tuple(ROLE_KEYS)


def read_env_file(path: Path = AIRFLOW_ENV_FILE) -> dict[str, str]:
    """``KEY=VALUE`` lines of an env file (Compose's ``env_file`` syntax without quotes or interpolation)."""
    settings: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}: not KEY=VALUE: {raw!r}")
        settings[key.strip()] = value.strip()
    return settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(what: str, check: Callable[[], Any], timeout: float, interval: float = 1.0) -> Any:
    """Poll ``check`` until it returns something truthy; raise with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as err:  # not up yet
            last_error = err
        time.sleep(interval)
    raise TimeoutError(f"{what}: not ready after {timeout:.0f}s (last error: {last_error!r})")


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class NativeCluster:
    """One throwaway cluster. ``workers`` Celery workers, named ``worker1``, ``worker2``, ..."""

    workers: int = 2
    worker_concurrency: int = 1
    dags_folder: Path = REPO / "dags"
    plugins_folder: Path = REPO / "plugins"
    models_dir: Path | None = None
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mlops-cluster-")))
    bucket: str = field(default_factory=lambda: read_env_file()["MLOPS_BUCKET"])

    def __post_init__(self) -> None:
        # the owner's pid in the names: a later cluster reclaims what a killed one left behind
        tag = f"{os.getpid()}_{secrets.token_hex(4)}"
        roles = ("airflow", "celery", "mlflow", "mlflowauth")
        self.db_names = {role: f"{DB_PREFIX}{tag}_{role}" for role in roles}
        self.admin_password = secrets.token_urlsafe(16)
        # MLflow's users (basic auth): the admin of deploy/mlflow/basic_auth.ini, and Airflow's service user
        self.mlflow_admin = (_mlflow_auth_config()["admin_username"], secrets.token_hex(16))
        self.mlflow_service = ("airflow", secrets.token_hex(16))
        self.secrets = {
            "AIRFLOW__CORE__FERNET_KEY": _fernet_key(),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(32),
            "MLOPS_SIGNING_KEY": secrets.token_hex(32),
            "MLOPS_SERVING_TOKEN": secrets.token_hex(24),
        }
        self.ports = {name: free_port() for name in ("s3", "mlflow", "api", "health", "trigger_logs", "serving")}
        if self.models_dir is None:
            self.models_dir = _specs_without_cron(REPO / "include" / "models", self.base / "models")
        self.redis_db: int | None = None
        self.services: list[Service] = []
        self._created_dbs: list[str] = []
        self.timings: dict[str, float] = {}

    # ---- addresses -------------------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['mlflow']}"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def pg_url(self, role: str, driver: str = "postgresql+psycopg2") -> str:
        base = PG_DSN.rsplit("/", 1)[0].split("://", 1)[1]
        return f"{driver}://{base}/{self.db_names[role]}"

    # ---- settings --------------------------------------------------------------------------------
    def role_settings(self, role: str) -> dict[str, str]:
        """deploy/airflow.env plus the role's Compose keys, with this cluster's addresses and secrets."""
        values = {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.pg_url("airflow"),
            "AIRFLOW__CELERY__BROKER_URL": f"{REDIS_URL}/{self.redis_db if self.redis_db is not None else 0}",
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.pg_url("celery"),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "MLOPS_MLFLOW_UI_URL": self.mlflow_url,
            "PYTHONPATH": os.pathsep.join([str(self.plugins_folder), str(Path(__file__).parent)]),
            PASSWORDS_FILE_KEY: str(self.base / "auth" / "passwords.json"),
            "AIRFLOW_ADMIN_PASSWORD": self.admin_password,
            "MLFLOW_TRACKING_URL": self.mlflow_url,
            "MLFLOW_ADMIN_USERNAME": self.mlflow_admin[0],
            "MLFLOW_ADMIN_PASSWORD": self.mlflow_admin[1],
            "MLFLOW_SERVICE_USERNAME": self.mlflow_service[0],
            "MLFLOW_SERVICE_PASSWORD": self.mlflow_service[1],
            "MLFLOW_SERVING_USERNAME": "serving",
            "MLFLOW_SERVING_PASSWORD": self.mlflow_service[1] + "-serving",
            "OBJECT_STORE_ENDPOINT_URL": self.s3_url,
            "OBJECT_STORE_ACCESS_KEY": S3_KEY,
            "OBJECT_STORE_SECRET_KEY": S3_KEY,
            "MLOPS_SERVING_URL": f"http://127.0.0.1:{self.ports['serving']}",
            **self.secrets,
        }
        return {**read_env_file(), **{key: values[key] for key in ROLE_KEYS[role]}}

    def process_env(self, role: str, name: str, **local: str) -> dict[str, str]:
        """A clean environment for one process: role settings plus ``LOCAL_ONLY_KEYS``."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW", "MLOPS_", "MLFLOW_", "AWS_", "GX_", "PYTHONPATH", "_AIRFLOW"))
        }
        home = self.base / "homes" / name
        local_values = {
            "AIRFLOW_HOME": str(home / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.plugins_folder),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.base / "task-logs"),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.ports["trigger_logs"]),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(self.ports["health"]),
            "MLOPS_HOME": str(home / "mlops"),
            **({"MLOPS_MODELS_DIR": str(self.models_dir)} if self.models_dir else {}),
            **local,
        }
        unknown = set(local_values) - set(LOCAL_ONLY_KEYS)
        if unknown:
            raise ValueError(f"undeclared local-only settings: {sorted(unknown)}")
        (home / "airflow").mkdir(parents=True, exist_ok=True)
        return {**env, **self.role_settings(role), **local_values}

    # ---- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> NativeCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(keep_logs=exc[0] is not None)

    def start(self, timeout: float = 240) -> None:
        t0 = time.monotonic()
        (self.base / "logs").mkdir(parents=True, exist_ok=True)
        self._create_databases()
        self._claim_redis_db()
        self._start_s3()
        self._start_mlflow()
        init = self._run_init()
        wait_until("moto S3", lambda: requests.get(self.s3_url, timeout=2).ok, 60, 0.3)
        self.s3_client().create_bucket(Bucket=self.bucket)
        self._wait_process("airflow-init", init, timeout)
        self.timings["init_s"] = round(time.monotonic() - t0, 1)
        self._start_airflow()
        self.wait_ready(timeout)
        self.timings["startup_s"] = round(time.monotonic() - t0, 1)

    def stop(self, keep_logs: bool = False) -> None:
        """Kill every process group (TERM, then KILL), drop the databases and the Redis db."""
        for service in self.services:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(service.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for service in self.services:
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for service in self.services:  # the group may outlive its leader (task subprocesses)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(service.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.process.wait(timeout=5)
        self.services.clear()
        self._drop_databases()
        self._release_redis_db()
        if not keep_logs:
            shutil.rmtree(self.base, ignore_errors=True)

    def describe(self, lines: int = 30) -> str:
        """Each process's state and log tail (for a failing test's output)."""
        parts = [f"cluster base: {self.base}"]
        for service in self.services:
            state = "running" if service.alive() else f"exited {service.process.returncode}"
            parts.append(f"--- {service.name} ({state}) {service.log}\n{service.tail(lines)}")
        return "\n".join(parts)

    # ---- pieces ----------------------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> Service:
        log = self.base / "logs" / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                cmd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.base,
                start_new_session=True,
                preexec_fn=_terminate_with_parent,
            )
        service = Service(name, process, log)
        self.services.append(service)
        return service

    def _wait_process(self, name: str, service: Service, timeout: float) -> None:
        try:
            rc = service.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{name} still running after {timeout:.0f}s\n{service.tail()}") from None
        if rc != 0:
            raise RuntimeError(f"{name} exited {rc}\n{service.tail()}")

    def _create_databases(self) -> None:
        import psycopg2

        conn = psycopg2.connect(PG_DSN)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (DB_PREFIX + "%",))
                for (stale,) in cur.fetchall():
                    parts = stale.removeprefix(DB_PREFIX).split("_")  # <pid>_<hex>_<role>
                    if len(parts) == 3 and not _pid_alive(parts[0]):
                        cur.execute(f'DROP DATABASE IF EXISTS "{stale}" WITH (FORCE)')
                for name in self.db_names.values():
                    cur.execute(f'CREATE DATABASE "{name}"')
                    self._created_dbs.append(name)
        finally:
            conn.close()

    def _drop_databases(self) -> None:
        if not self._created_dbs:
            return
        import psycopg2

        conn = psycopg2.connect(PG_DSN)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                for name in list(self._created_dbs):
                    cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    self._created_dbs.remove(name)
        finally:
            conn.close()

    def _claim_redis_db(self) -> None:
        import redis

        marker = f"{os.getpid()}:{self.base.name}"
        for db in range(15, 0, -1):
            client = redis.Redis.from_url(f"{REDIS_URL}/{db}")
            try:
                owner = client.get(REDIS_OWNER_KEY)
                if owner and not _pid_alive(owner.decode().split(":", 1)[0]):
                    client.flushdb()  # left behind by a killed cluster
                if client.dbsize() == 0 and client.set(REDIS_OWNER_KEY, marker, nx=True):
                    self.redis_db = db
                    return
            finally:
                client.close()
        raise RuntimeError("no empty Redis database (1-15) to use as the Celery broker")

    def _release_redis_db(self) -> None:
        if self.redis_db is None:
            return
        import redis

        client = redis.Redis.from_url(f"{REDIS_URL}/{self.redis_db}")
        try:
            client.flushdb()
        finally:
            client.close()
        self.redis_db = None

    def _start_s3(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW", "MLOPS_"))}
        self._spawn("s3", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.ports["s3"])], env)

    def _start_mlflow(self) -> None:
        # deploy/mlflow/basic_auth.ini with this cluster's auth database (Compose: its PostgreSQL service)
        auth = _mlflow_auth_config()
        auth["database_uri"] = self.pg_url("mlflowauth")
        auth_file = self.base / "mlflow_basic_auth.ini"
        auth_file.write_text("[mlflow]\n" + "".join(f"{k} = {v}\n" for k, v in auth.items()))
        env = {
            **self.client_env(),
            **read_env_file(),  # the compose service's env_file (telemetry off)
            "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # as the compose service
            "MLFLOW_AUTH_CONFIG_PATH": str(auth_file),
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.mlflow_admin[1],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        }
        # The same flags as the `mlflow` service of docker-compose.yml (host and port aside).
        cmd = [
            str(BIN / "mlflow"), "server", "--app-name", "basic-auth",
            "--host", "127.0.0.1", "--port", str(self.ports["mlflow"]),
            "--workers", "1",
            "--backend-store-uri", self.pg_url("mlflow"),
            "--serve-artifacts", "--artifacts-destination", f"s3://{self.bucket}/mlflow",
        ]  # fmt: skip
        self._spawn("mlflow", cmd, env)

    def _run_init(self) -> Service:
        env = self.process_env("airflow-init", "airflow-init")
        return self._spawn("airflow-init", [sys.executable, str(INIT_SCRIPT)], env)

    def _start_airflow(self) -> None:
        airflow = str(BIN / "airflow")
        self._spawn(
            "api-server",
            [airflow, "api-server", "--host", "127.0.0.1", "--port", str(self.ports["api"])],
            self.process_env("airflow-apiserver", "api-server"),
        )
        self._spawn("scheduler", [airflow, "scheduler"], self.process_env("airflow-scheduler", "scheduler"))
        self._spawn(
            "dag-processor", [airflow, "dag-processor"], self.process_env("airflow-dag-processor", "dag-processor")
        )
        self._spawn("triggerer", [airflow, "triggerer"], self.process_env("airflow-triggerer", "triggerer"))
        for name in self.worker_names:
            env = self.process_env(
                "airflow-worker",
                name,
                AIRFLOW__CORE__HOSTNAME_CALLABLE="worker_hostname.hostname",
                MLOPS_TEST_HOSTNAME=name,
            )
            cmd = [airflow, "celery", "worker", "--concurrency", str(self.worker_concurrency), "-H", name,
                   "--skip-serve-logs", "--without-gossip", "--without-mingle"]  # fmt: skip
            self._spawn(name, cmd, env)

    @property
    def worker_names(self) -> list[str]:
        return [f"worker{i}" for i in range(1, self.workers + 1)]

    def wait_ready(self, timeout: float) -> None:
        def up(url: str) -> bool:
            self.check_alive()
            return requests.get(url, timeout=3).ok

        wait_until("MLflow server", lambda: up(f"{self.mlflow_url}/health"), timeout)
        wait_until("Airflow api-server", lambda: up(f"{self.api_url}/api/v2/monitor/health"), timeout)
        for name in self.worker_names:
            service = next(s for s in self.services if s.name == name)
            wait_until(f"Celery {name}", lambda s=service: self.check_alive() or " ready." in s.tail(200), timeout)

    def check_alive(self) -> None:
        dead = [s for s in self.services if s.name != "airflow-init" and not s.alive()]
        if dead:
            raise RuntimeError("cluster process died:\n" + "\n".join(f"{s.name}:\n{s.tail()}" for s in dead))

    # ---- clients ---------------------------------------------------------------------------------
    def s3_client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.s3_url,
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_KEY,
            region_name="us-east-1",
        )

    def client_env(self) -> dict[str, str]:
        """Environment of a process outside the cluster that talks to its S3 store (AWS_* read by boto3/s3fs)."""
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW", "MLOPS_", "MLFLOW_"))},
            "AWS_ENDPOINT_URL": self.s3_url,
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    @contextlib.contextmanager
    def mlflow_user(self, user: tuple[str, str] | None = None) -> Iterator[Any]:
        """An ``MlflowClient`` of the cluster's server logged in as ``user`` (default: Airflow's service user).

        MLflow's client reads the basic-auth login from the environment: set for the block, then restored.
        """
        from mlflow.tracking import MlflowClient

        username, password = user or self.mlflow_service
        keys = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
        saved = {key: os.environ.get(key) for key in keys}
        os.environ.update(dict(zip(keys, (username, password), strict=True)))
        try:
            yield MlflowClient(tracking_uri=self.mlflow_url, registry_uri=self.mlflow_url)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def list_keys(self, prefix: str = "") -> list[str]:
        paginator = self.s3_client().get_paginator("list_objects_v2")
        return [obj["Key"] for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix)
                for obj in page.get("Contents", [])]  # fmt: skip

    def api(self) -> AirflowApi:
        from api_client import AirflowApi

        return AirflowApi(self.api_url, "admin", self.admin_password)


def _pid_alive(pid: str) -> bool:
    """Whether the process ``pid`` (a cluster's owner, from a database name or Redis marker) still runs.

    Only judged when PostgreSQL and Redis are on loopback, where every owner is a process of this machine.
    """
    if not pid.isdigit() or not all(_on_loopback(url) for url in (PG_DSN, REDIS_URL)):
        return True  # not ours to judge: leave it alone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _on_loopback(url: str) -> bool:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname in {"127.0.0.1", "localhost", "::1"}


def _terminate_with_parent() -> None:
    """Linux: SIGTERM the process when the test process dies, even by SIGKILL (then ``stop()`` never runs).

    Each process leads its own group, so a killed pytest would otherwise leave the whole cluster running;
    Airflow's and MLflow's processes stop their children on SIGTERM.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _specs_without_cron(source: Path, dest: Path) -> Path:
    """A copy of the model specs in ``source`` with ``schedule: null`` (asset-triggered and manual runs only)."""
    import yaml

    dest.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if not path.is_file():
            continue
        text = path.read_text()
        if path.suffix in {".yaml", ".yml"}:
            try:
                spec = yaml.safe_load(text)
            except yaml.YAMLError:
                spec = None  # a deliberately broken spec stays as it is
            if isinstance(spec, dict):
                text = yaml.safe_dump({**spec, "schedule": None}, sort_keys=False)
        (dest / path.name).write_text(text)
    return dest


def _mlflow_auth_config() -> dict[str, str]:
    """The ``[mlflow]`` section of deploy/mlflow/basic_auth.ini (the Compose stack's auth settings)."""
    import configparser

    parser = configparser.ConfigParser()
    parser.read(MLFLOW_AUTH_FILE)
    return dict(parser["mlflow"])


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


@contextlib.contextmanager
def native_cluster(**kwargs: Any) -> Iterator[NativeCluster]:
    """``with native_cluster(workers=2) as cluster:`` (stops and cleans up whatever happens)."""
    with NativeCluster(**kwargs) as cluster:
        yield cluster
