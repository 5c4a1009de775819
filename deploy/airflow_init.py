"""Initialise a cluster's Airflow: metadata DB, admin password, the registry pool, MLflow's service user and
the connections.

Run once before the other Airflow components start, with the metadata-DB settings in the environment:
the ``airflow-init`` service of docker-compose.yml runs it, and so does the native cluster test
(tests/cluster/harness.py), so both clusters are set up by the same code. Idempotent: running it again
migrates nothing new and overwrites the pool and the two connections with the same values.

Environment (secrets from .env; nothing here has a default):

=================================================  ===============================================
``AIRFLOW_ADMIN_PASSWORD``                         password of the simple auth manager's ``admin``
``AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE``  where the api-server reads it
``MLFLOW_TRACKING_URL``                            host of connection ``mlflow_default``
``MLFLOW_ADMIN_USERNAME`` / ``..._PASSWORD``       MLflow's admin (basic auth), to manage the service user
``MLFLOW_SERVICE_USERNAME`` / ``..._PASSWORD``     MLflow user of Airflow: login of ``mlflow_default``
``MLFLOW_SERVING_USERNAME`` / ``..._PASSWORD``     MLflow user of the model server (READ only; optional)
``OBJECT_STORE_ENDPOINT_URL``                      S3 endpoint (MinIO, moto, or empty for AWS)
``OBJECT_STORE_ACCESS_KEY`` / ``..._SECRET_KEY``   object-store credentials of the connection
``MLOPS_STORAGE_CONN_ID``                          its id (deploy/airflow.env: ``aws_default``)
=================================================  ===============================================
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REGISTRY_POOL = {"mlflow_registry": {"slots": 1, "description": "promotion and rollback, one at a time"}}


def required(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        sys.exit(f"airflow_init: {name} is not set (see .env.example)")
    return value


def airflow(*args: str) -> None:
    print("+ airflow", args[0], args[1] if len(args) > 1 else "", flush=True)
    subprocess.run([sys.executable, "-m", "airflow", *args], check=True)


def write_admin_password() -> None:
    path = Path(required("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"))
    users = os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin")
    names = [entry.split(":", 1)[0].strip() for entry in users.split(",") if entry.strip()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict.fromkeys(names, required("AIRFLOW_ADMIN_PASSWORD"))) + "\n")
    path.chmod(0o600)


# What Airflow's MLflow user may do beyond MLflow's default_permission (READ): manage every experiment and
# registered model, so a model name that someone else registered first cannot lock Airflow out of it.
SERVICE_USER_GRANTS = (("experiment", "*", "MANAGE"), ("registered_model", "*", "MANAGE"))


# The model server's MLflow user: it reads aliases, versions and model artifacts, and writes nothing.
SERVING_USER_GRANTS = (("registered_model", "*", "READ"), ("experiment", "*", "READ"))


def mlflow_service_user(timeout: float = 300) -> None:
    """Create (or reset the password of) Airflow's MLflow user and grant it :data:`SERVICE_USER_GRANTS`."""
    mlflow_user(required("MLFLOW_SERVICE_USERNAME"), required("MLFLOW_SERVICE_PASSWORD"), SERVICE_USER_GRANTS, timeout)


def mlflow_serving_user(timeout: float = 300) -> None:
    """The model server's user (:data:`SERVING_USER_GRANTS`), when ``MLFLOW_SERVING_USERNAME`` is set."""
    if os.environ.get("MLFLOW_SERVING_USERNAME"):
        mlflow_user(required("MLFLOW_SERVING_USERNAME"), required("MLFLOW_SERVING_PASSWORD"), SERVING_USER_GRANTS,
                    timeout)  # fmt: skip


def mlflow_user(user: str, password: str, grants: tuple[tuple[str, str, str], ...], timeout: float = 300) -> None:
    """Create (or reset the password of) an MLflow user and grant it ``grants``."""
    import time

    import requests

    url = required("MLFLOW_TRACKING_URL").rstrip("/")
    admin = (required("MLFLOW_ADMIN_USERNAME"), required("MLFLOW_ADMIN_PASSWORD"))
    deadline = time.monotonic() + timeout
    while True:  # the server may still be starting
        try:
            if requests.get(f"{url}/health", timeout=5).ok:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"airflow_init: MLflow at {url} did not answer /health within {timeout:.0f}s")
        time.sleep(2)

    def call(method: str, path: str, body: dict[str, str]) -> requests.Response:
        response = requests.request(method, f"{url}{path}", json=body, auth=admin, timeout=30)
        if response.status_code in (401, 403):
            sys.exit(f"airflow_init: MLflow refused admin {admin[0]!r} ({response.status_code}): MLFLOW_ADMIN_PASSWORD")
        return response

    created = call("POST", "/api/2.0/mlflow/users/create", {"username": user, "password": password})
    if not created.ok:
        if "RESOURCE_ALREADY_EXISTS" not in created.text:
            sys.exit(f"airflow_init: creating MLflow user {user!r}: {created.status_code} {created.text[:300]}")
        updated = call("PATCH", "/api/2.0/mlflow/users/update-password", {"username": user, "password": password})
        if not updated.ok:
            sys.exit(f"airflow_init: password of MLflow user {user!r}: {updated.status_code} {updated.text[:300]}")
    for resource_type, resource_id, permission in grants:
        grant = {"username": user, "resource_type": resource_type, "resource_id": resource_id}
        granted = call("POST", "/api/3.0/mlflow/users/permissions/grant", {**grant, "permission": permission})
        if not granted.ok and "RESOURCE_ALREADY_EXISTS" not in granted.text:
            sys.exit(f"airflow_init: granting {permission} on {resource_type} {resource_id} to {user!r}: "
                     f"{granted.status_code} {granted.text[:300]}")  # fmt: skip
    print(f"airflow_init: MLflow user {user!r} ready", flush=True)


def connections() -> dict[str, dict[str, object]]:
    extra: dict[str, str] = {"region_name": os.environ.get("OBJECT_STORE_REGION", "us-east-1")}
    if os.environ.get("OBJECT_STORE_ENDPOINT_URL"):
        extra["endpoint_url"] = os.environ["OBJECT_STORE_ENDPOINT_URL"]
    return {
        "mlflow_default": {
            "conn_type": "mlflow",
            "host": required("MLFLOW_TRACKING_URL"),
            "login": required("MLFLOW_SERVICE_USERNAME"),
            "password": required("MLFLOW_SERVICE_PASSWORD"),
            "description": "MLflow tracking server and model registry (Airflow's MLflow user)",
        },
        required("MLOPS_STORAGE_CONN_ID"): {
            "conn_type": "aws",
            "login": required("OBJECT_STORE_ACCESS_KEY"),
            "password": required("OBJECT_STORE_SECRET_KEY"),
            "extra": json.dumps(extra),
            "description": "object store: landing zone, snapshots",
        },
    }


def main() -> None:
    write_admin_password()
    mlflow_service_user()
    mlflow_serving_user()
    airflow("db", "migrate")
    with tempfile.TemporaryDirectory() as tmp:  # the connections file holds secrets: private, deleted
        pools, conns = Path(tmp) / "pools.json", Path(tmp) / "connections.json"
        pools.write_text(json.dumps(REGISTRY_POOL))
        conns.touch(mode=0o600)
        conns.write_text(json.dumps(connections()))
        airflow("pools", "import", str(pools))
        airflow("connections", "import", "--overwrite", str(conns))
    print("airflow_init: done", flush=True)


if __name__ == "__main__":
    main()
