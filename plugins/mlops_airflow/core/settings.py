"""Deployment settings, read from the environment (one place for every default).

=========================  ==============================================================
``MLOPS_HOME``             local state of the embedded default (default ``<repo>/.local``)
``MLOPS_DATA_ROOT``        landing-zone root; relative ``source.uri`` values resolve under it
``MLOPS_STORAGE_BASE``     base URI of snapshots and predictions (``file://`` or ``s3://``)
``MLOPS_STORAGE_CONN_ID``  Airflow connection for the object store (cluster only)
``MLOPS_MLFLOW_UI_URL``    where people open MLflow (links from Airflow task instances)
``MLFLOW_TRACKING_URI``    tracking store when no ``mlflow_default`` connection is set
=========================  ==============================================================
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]


def mlops_home() -> Path:
    return Path(os.environ.get("MLOPS_HOME") or REPO_ROOT / ".local")


def data_root() -> str:
    return os.environ.get("MLOPS_DATA_ROOT") or str(mlops_home() / "data")


def storage_base() -> str:
    return os.environ.get("MLOPS_STORAGE_BASE") or (mlops_home() / "storage").as_uri()


def storage_conn_id() -> str | None:
    return os.environ.get("MLOPS_STORAGE_CONN_ID") or None


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{mlops_home() / 'mlflow' / 'mlflow.db'}"


def default_artifact_root() -> str:
    return os.environ.get("MLOPS_ARTIFACT_ROOT") or (mlops_home() / "mlflow" / "artifacts").as_uri()


def mlflow_ui_url() -> str:
    return os.environ.get("MLOPS_MLFLOW_UI_URL", "http://127.0.0.1:5000").rstrip("/")


def resolve_source_uri(uri: str) -> str:
    """A spec's ``source.uri``: absolute paths and URIs as given, relative ones under the data root."""
    if "://" in uri or uri.startswith("/"):
        return uri
    return f"{data_root().rstrip('/')}/{uri}"


def git_commit() -> str:
    """The deployed code's commit (``MLOPS_GIT_COMMIT`` in images; ``git`` in a checkout)."""
    commit = os.environ.get("MLOPS_GIT_COMMIT")
    if commit:
        return commit
    head = REPO_ROOT / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            ref_path = REPO_ROOT / ".git" / ref[5:]
            if ref_path.exists():
                return ref_path.read_text().strip()
            packed = REPO_ROOT / ".git" / "packed-refs"
            for line in packed.read_text().splitlines() if packed.exists() else []:
                if line.endswith(ref[5:]):
                    return line.split()[0]
            return "unknown"
        return ref
    except OSError:
        return "unknown"
