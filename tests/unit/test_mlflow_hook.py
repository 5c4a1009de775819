"""Where the MLflow hook points: the connection, MLFLOW_TRACKING_URI, or the embedded default only.

Connections come from real ``AIRFLOW_CONN_*`` variables (Airflow's environment secrets backend). The one
fault that cannot be produced otherwise, a secrets backend that refuses access (e.g. a vault policy denying
the worker), is a small real backend class configured through ``[secrets] backend``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow.sdk.bases.secrets_backend import BaseSecretsBackend
from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied

from mlops_airflow.core import tracking
from mlops_airflow.hooks.mlflow_hook import MlflowConfigError, MlflowHook, deployment


class DenyingSecretsBackend(BaseSecretsBackend):
    """A secrets backend that exists and refuses access (``[secrets] backend`` of the test below)."""

    def get_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        raise AirflowSecretsBackendAccessDenied(f"policy denies connection {conn_id}")

    def get_connection(self, conn_id: str, team_name: str | None = None) -> None:  # type: ignore[override]
        raise AirflowSecretsBackendAccessDenied(f"policy denies connection {conn_id}")


def _clear_secrets_backend_cache() -> None:
    from airflow.sdk import configuration

    configuration._secrets_backend_cache.clear()


@pytest.fixture
def no_mlflow_config(empty_mlops_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No ``mlflow_default`` connection, no MLFLOW_TRACKING_URI, no deployment marker, LocalExecutor."""
    for key in ("AIRFLOW_CONN_MLFLOW_DEFAULT", "MLFLOW_TRACKING_URI", "MLOPS_DEPLOYMENT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    yield empty_mlops_home


def test_embedded_default_uses_the_local_store(no_mlflow_config: Path) -> None:
    assert deployment() == "embedded"
    uri = MlflowHook().tracking_uri
    assert uri == f"sqlite:///{no_mlflow_config / 'mlflow' / 'mlflow.db'}"


@pytest.mark.parametrize(
    ("settings", "mode"),
    [
        ({"MLOPS_DEPLOYMENT": "cluster"}, "cluster"),
        ({"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor"}, "cluster"),
        ({"AIRFLOW__CORE__EXECUTOR": "LocalExecutor,airflow.providers.celery.executors.CeleryExecutor"}, "cluster"),
    ],
)
def test_no_connection_outside_the_embedded_default_is_an_error(
    no_mlflow_config: Path, monkeypatch: pytest.MonkeyPatch, settings: dict[str, str], mode: str
) -> None:
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    assert deployment() == mode
    with pytest.raises(MlflowConfigError) as err:
        MlflowHook().tracking_uri  # noqa: B018
    message = str(err.value)
    assert "'mlflow_default'" in message and "MLFLOW_TRACKING_URI" in message and "MLOPS_DEPLOYMENT" in message
    assert not (no_mlflow_config / "mlflow").exists(), "no local store may be created"


def test_explicit_embedded_marker_and_tracking_uri_are_honoured(
    no_mlflow_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    monkeypatch.setenv("MLOPS_DEPLOYMENT", "embedded")
    assert MlflowHook().tracking_uri.startswith("sqlite:///")
    monkeypatch.setenv("MLOPS_DEPLOYMENT", "cluster")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert MlflowHook().tracking_uri == "http://mlflow.internal:5000"
    monkeypatch.setenv("MLOPS_DEPLOYMENT", "clsuter")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(MlflowConfigError, match="MLOPS_DEPLOYMENT='clsuter'"):
        MlflowHook().tracking_uri  # noqa: B018


def test_connection_carries_host_and_service_user(no_mlflow_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_DEPLOYMENT", "cluster")
    conn = {"conn_type": "mlflow", "host": "http://mlflow", "port": 5000, "login": "airflow", "password": "s3cret"}
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps(conn))
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert MlflowHook().tracking_uri == "http://mlflow:5000"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("airflow", "s3cret")


def test_a_secrets_backend_that_refuses_is_not_a_missing_connection(
    no_mlflow_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Embedded default, where a missing connection WOULD fall back: a refusing backend must raise instead."""
    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND", f"{__name__}.DenyingSecretsBackend")
    _clear_secrets_backend_cache()
    try:
        with pytest.raises(AirflowSecretsBackendAccessDenied, match="mlflow_default"):
            MlflowHook().tracking_uri  # noqa: B018
    finally:
        monkeypatch.delenv("AIRFLOW__SECRETS__BACKEND")
        _clear_secrets_backend_cache()
    assert not (no_mlflow_config / "mlflow").exists(), "no local store may be created"


def test_client_bounds_mlflow_http_retries(monkeypatch: pytest.MonkeyPatch, mlops_home: Path) -> None:
    for key in tracking.HTTP_CLIENT_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # a deployment's own value wins
    tracking.client_for(f"sqlite:///{mlops_home / 'mlflow' / 'mlflow.db'}")

    from mlflow.environment_variables import (
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES,
        MLFLOW_HTTP_REQUEST_TIMEOUT,
    )

    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 2
    assert MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get() == 1
    assert MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 7
