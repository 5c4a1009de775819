"""``ct_credit_default`` on the native CeleryExecutor cluster, driven through the REST API only.

The cluster (tests/cluster/harness.py) is the docker-compose.yml topology on loopback: api-server,
scheduler, dag-processor, triggerer, two Celery workers, an MLflow server with a PostgreSQL store and
artifacts proxied to S3 (moto). The test acts like an external client: it uploads the landing data to
the bucket, unpauses and triggers the DAG through ``/api/v2`` with a JWT from ``/auth/token``, and then
reads the results where a user would: task instances from Airflow, the registry from the MLflow server,
objects from the bucket.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
from api_client import trigger_and_wait, upload_demo_batches
from harness import NativeCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]
CT = "ct_credit_default"
MODEL = "credit_default"


def test_ct_credit_default_runs_on_two_celery_workers(cluster: NativeCluster) -> None:
    t0 = time.monotonic()
    assert len(upload_demo_batches(cluster, MODEL, days=15)) == 15

    result = trigger_and_wait(cluster, CT, conf={"reason": "cluster test"}, timeout=480)
    print(
        f"\ncluster startup {cluster.timings['startup_s']}s, trigger -> first task running "
        f"{result.trigger_to_first_task_running_s}s, trigger -> run end {result.trigger_to_end_s}s, "
        f"train step {result.wall_time('train') if result.state == 'success' else '-'}s"
    )
    assert result.state == "success", result.states()

    # the mapped candidates were spread over both workers (each has one task slot)
    train = result.tasks("train")
    assert len(train) >= 2 and all(ti["state"] == "success" for ti in train), result.states()
    assert {ti["hostname"] for ti in train} == set(cluster.worker_names), [ti["hostname"] for ti in train]

    # the registry of the MLflow server has a champion; its artifacts went through the server to S3
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cluster.mlflow_url, registry_uri=cluster.mlflow_url)
    registered = client.get_registered_model(MODEL)
    if result.tasks("promote"):
        assert "champion" in registered.aliases, registered.aliases
        champion = client.get_model_version(MODEL, registered.aliases["champion"])
        assert champion.tags.get("airflow.run_id") == result.run["dag_run_id"], champion.tags
    else:  # a DAG without a promote step still registers its candidate
        assert client.search_model_versions(f"name = '{MODEL}'")
    keys = cluster.list_keys()
    assert any(k.startswith("mlflow/") and k.endswith("/MLmodel") for k in keys), keys[:50]
    assert any(k.startswith(f"storage/{MODEL}/snapshots/") for k in keys), keys[:50]
    print(f"test body {time.monotonic() - t0:.1f}s, {len(keys)} objects in s3://{cluster.bucket}")


def test_workers_never_saw_the_metadata_database(cluster: NativeCluster) -> None:
    """Task isolation (Airflow 3): workers reach Airflow through the execution API, never the DB."""
    for service in cluster.services:
        if service.name not in cluster.worker_names or not service.alive():
            continue
        environ = Path(f"/proc/{service.process.pid}/environ").read_bytes().split(b"\0")
        keys = {item.split(b"=", 1)[0].decode() for item in environ if item}
        assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in keys
        assert "AIRFLOW__CORE__FERNET_KEY" not in keys
    # Airflow's CLI may open its default SQLite file in the worker's home (its action logger tries to
    # write there and gives up): it must have stayed empty, no metadata ever lived on a worker.
    import sqlite3

    for name in cluster.worker_names:
        for db in (cluster.base / "homes" / name).rglob("airflow.db"):
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
                assert conn.execute("select name from sqlite_master").fetchall() == [], db
