"""Airflow hook for an MLflow tracking server and model registry (connection ``mlflow_default``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


class MlflowHook(BaseHook):
    """The MLflow tracking URI (and a client for it) from an Airflow connection.

    The connection's host is the tracking URI (``http://mlflow:5000``, or a store URI such as
    ``sqlite:////data/mlflow.db``); a plain host name gets ``http://`` and the port. Without the
    connection, ``MLFLOW_TRACKING_URI`` or the embedded default store is used, so the same DAGs run on one
    machine and on a cluster.

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
        from mlops_airflow.core import settings

        try:
            conn = self.get_connection(self.mlflow_conn_id)
        except Exception:  # no such connection: fall back to the environment / embedded store
            return settings.default_tracking_uri()
        host = (conn.host or "").strip()
        if not host:
            return settings.default_tracking_uri()
        if "://" not in host:
            host = f"http://{host}" + (f":{conn.port}" if conn.port else "")
        elif conn.port and host.startswith("http") and host.count(":") == 1:
            host = f"{host}:{conn.port}"
        if conn.login:  # MLflow's basic auth reads these from the environment
            import os

            os.environ["MLFLOW_TRACKING_USERNAME"] = conn.login
            os.environ["MLFLOW_TRACKING_PASSWORD"] = conn.password or ""
        return host

    def get_conn(self) -> MlflowClient:
        from mlops_airflow.core.tracking import client_for

        return client_for(self.tracking_uri)

    def test_connection(self) -> tuple[bool, str]:
        try:
            self.get_conn().search_experiments(max_results=1)
        except Exception as err:
            return False, f"MLflow at {self.tracking_uri} is not reachable: {err}"
        return True, f"MLflow at {self.tracking_uri} answered"
