"""Initialise a cluster's Airflow: metadata DB, admin password, the registry pool and the connections.

Run once before the other Airflow components start, with the metadata-DB settings in the environment:
the ``airflow-init`` service of docker-compose.yml runs it, and so does the native cluster test
(tests/cluster/harness.py), so both clusters are set up by the same code. Idempotent: running it again
migrates nothing new and overwrites the pool and the two connections with the same values.

Environment (secrets from .env; nothing here has a default):

=================================================  ===============================================
``AIRFLOW_ADMIN_PASSWORD``                         password of the simple auth manager's ``admin``
``AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE``  where the api-server reads it
``MLFLOW_TRACKING_URL``                            host of connection ``mlflow_default``
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


def connections() -> dict[str, dict[str, object]]:
    extra: dict[str, str] = {"region_name": os.environ.get("OBJECT_STORE_REGION", "us-east-1")}
    if os.environ.get("OBJECT_STORE_ENDPOINT_URL"):
        extra["endpoint_url"] = os.environ["OBJECT_STORE_ENDPOINT_URL"]
    return {
        "mlflow_default": {
            "conn_type": "mlflow",
            "host": required("MLFLOW_TRACKING_URL"),
            "description": "MLflow tracking server and model registry",
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
