"""Airflow hook for an MLflow tracking server and model registry (connection ``mlflow_default``)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from mlops_airflow.core.errors import MlopsError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

DEPLOYMENT_ENV = "MLOPS_DEPLOYMENT"
EMBEDDED = "embedded"
CLUSTER = "cluster"
# Executors of the embedded default (docs/design.md 6): every task runs on the one machine that holds the store.
EMBEDDED_EXECUTORS = frozenset({"LocalExecutor", "SequentialExecutor"})


class MlflowConfigError(MlopsError, RuntimeError):
    """No MLflow store is configured where a worker-local one would be a silent, separate registry."""


def deployment() -> str:
    """``embedded`` or ``cluster``: ``MLOPS_DEPLOYMENT`` if set, else ``embedded`` only on a local executor.

    deploy/airflow.env sets ``MLOPS_DEPLOYMENT=cluster``; ``make demo``/``make up`` run LocalExecutor and set
    nothing. Any other executor (Celery, Kubernetes, ...) counts as a cluster, where a worker's local SQLite
    file would be a registry nobody else sees.
    """
    value = os.environ.get(DEPLOYMENT_ENV, "").strip().lower()
    if value:
        if value not in {EMBEDDED, CLUSTER}:
            raise MlflowConfigError(f"{DEPLOYMENT_ENV}={value!r}: expected {EMBEDDED!r} or {CLUSTER!r}")
        return value
    from airflow.sdk.configuration import conf

    executors = str(conf.get("core", "executor", fallback="LocalExecutor") or "LocalExecutor")
    # "[core] executor" may list several, each optionally "module.path.Class" or "Class:alias"
    names = {entry.split(":")[0].strip().rsplit(".", 1)[-1] for entry in executors.split(",") if entry.strip()}
    return EMBEDDED if names and names <= EMBEDDED_EXECUTORS else CLUSTER


class MlflowHook(BaseHook):
    """The MLflow tracking URI (and a client for it) from an Airflow connection.

    The connection's host is the tracking URI (``http://mlflow:5000``, or a store URI such as
    ``sqlite:////data/mlflow.db``); a plain host name gets ``http://`` and the port. Its login and password
    are the MLflow user's (basic auth). Without the connection, ``MLFLOW_TRACKING_URI`` is used, and only on
    the embedded default (:func:`deployment`) the local SQLite store; anywhere else that is an error, so a
    worker never writes to a registry of its own. Only "connection not found" falls back: a secrets backend
    that refuses access raises.

    :param mlflow_conn_id: the Airflow connection to use.
    """

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = "mlflow_default"
    conn_type = "mlflow"
    hook_name = "MLflow"

    def __init__(self, mlflow_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mlflow_conn_id = mlflow_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema", "extra"],
            "relabeling": {"host": "Tracking URI or host", "login": "Username", "password": "Password"},
            "placeholders": {"host": "http://mlflow:5000"},
        }

    @property
    def tracking_uri(self) -> str:
        try:
            conn = self.get_connection(self.mlflow_conn_id)
        except AirflowNotFoundException:  # only a missing connection falls back; a broken backend raises
            return self._fallback_tracking_uri(reason=f"no connection {self.mlflow_conn_id!r}")
        host = (conn.host or "").strip()
        if not host:
            return self._fallback_tracking_uri(reason=f"connection {self.mlflow_conn_id!r} has no host")
        if "://" not in host:
            host = f"http://{host}" + (f":{conn.port}" if conn.port else "")
        elif conn.port and host.startswith("http") and host.count(":") == 1:
            host = f"{host}:{conn.port}"
        if conn.login:  # MLflow's basic auth reads these from the environment
            os.environ["MLFLOW_TRACKING_USERNAME"] = conn.login
            os.environ["MLFLOW_TRACKING_PASSWORD"] = conn.password or ""
        return host

    def _fallback_tracking_uri(self, reason: str) -> str:
        from mlops_airflow.core import settings

        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        mode = deployment()
        if mode != EMBEDDED:
            raise MlflowConfigError(
                f"MLflow is not configured: {reason} and no MLFLOW_TRACKING_URI, on a {mode} deployment "
                f"({DEPLOYMENT_ENV}={os.environ.get(DEPLOYMENT_ENV) or '<unset>'}). A worker-local store would be "
                f"a registry no other worker sees: create Airflow connection {self.mlflow_conn_id!r} (host = the "
                f"tracking server, login/password = its MLflow user) or set MLFLOW_TRACKING_URI. If the "
                "connection exists, the secrets backend did not return it (see the task log at DEBUG). Only "
                f"{DEPLOYMENT_ENV}={EMBEDDED} (the one-machine default) uses a local SQLite store."
            )
        return settings.default_tracking_uri()

    def get_conn(self) -> MlflowClient:
        from mlops_airflow.core.tracking import client_for

        return client_for(self.tracking_uri)

    def test_connection(self) -> tuple[bool, str]:
        try:
            self.get_conn().search_experiments(max_results=1)
        except Exception as err:
            return False, f"MLflow at {self.tracking_uri} is not reachable: {err}"
        return True, f"MLflow at {self.tracking_uri} answered"
