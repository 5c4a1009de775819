"""``ct_credit_default`` on the native CeleryExecutor cluster, driven through the REST API only.

The cluster (tests/cluster/harness.py) is the docker-compose.yml topology on loopback: api-server,
scheduler, dag-processor, triggerer, two Celery workers, an MLflow server with basic auth, a PostgreSQL
store and artifacts proxied to S3 (moto). The test acts like an external client: it uploads the landing
data to the bucket, unpauses and triggers the DAG through ``/api/v2`` with a JWT from ``/auth/token``, and
then reads the results where a user would: task instances from Airflow, the registry from the MLflow
server (logged in), objects from the bucket. Then: the registry refuses anyone without a login or a grant,
and a retrain request (the asset ``monitor_`` emits) starts an asset-triggered CT run that succeeds.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from api_client import trigger_and_wait, upload_demo_batches
from harness import NativeCluster, wait_until

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
    with cluster.mlflow_user() as client:
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


def test_registry_refuses_requests_without_a_login_or_a_grant(cluster: NativeCluster) -> None:
    """MLflow's basic auth: no login, 401; a user with no grant reads but cannot bless or move an alias."""
    url = cluster.mlflow_url
    get_model = f"{url}/api/2.0/mlflow/registered-models/get"
    set_tag = f"{url}/api/2.0/mlflow/model-versions/set-tag"
    set_alias = f"{url}/api/2.0/mlflow/registered-models/alias"
    with cluster.mlflow_user() as client:
        version = client.search_model_versions(f"name = '{MODEL}'")[0].version  # the CT test registered it
    forged = {"name": MODEL, "version": version, "key": "mlops.gate.blessed", "value": "true"}

    assert requests.get(get_model, params={"name": MODEL}, timeout=10).status_code == 401
    assert requests.post(set_tag, json=forged, timeout=10).status_code == 401
    assert requests.get(get_model, params={"name": MODEL}, auth=("admin", "wrong"), timeout=10).status_code == 401
    for user in (cluster.mlflow_admin, cluster.mlflow_service):
        assert requests.get(get_model, params={"name": MODEL}, auth=user, timeout=10).ok, user[0]

    # Airflow's connection logs in as the service user, which is no MLflow admin
    connection = cluster.api().request("GET", "/connections/mlflow_default")
    assert connection["login"] == cluster.mlflow_service[0]
    service = requests.get(f"{url}/api/2.0/mlflow/users/get", params={"username": cluster.mlflow_service[0]},
                           auth=cluster.mlflow_admin, timeout=10)  # fmt: skip
    assert service.ok and service.json()["user"]["is_admin"] is False, service.text

    # a user the admin created, with MLflow's default permission only (deploy/mlflow/basic_auth.ini)
    analyst = ("analyst", "analyst-password-1234")
    created = requests.post(f"{url}/api/2.0/mlflow/users/create", auth=cluster.mlflow_admin, timeout=10,
                            json={"username": analyst[0], "password": analyst[1]})  # fmt: skip
    assert created.ok, created.text
    assert requests.get(get_model, params={"name": MODEL}, auth=analyst, timeout=10).ok
    assert requests.post(set_tag, json=forged, auth=analyst, timeout=10).status_code == 403
    moved = {"name": MODEL, "alias": "champion", "version": version}
    assert requests.post(set_alias, json=moved, auth=analyst, timeout=10).status_code == 403


def test_retrain_request_starts_an_asset_triggered_ct_run(cluster: NativeCluster) -> None:
    """The drift loop's trigger: an event on ``mlops://<model>/retrain-request`` (what ``monitor_<model>``
    emits) makes the scheduler start ``ct_<model>``, which runs to success on the workers."""
    api = cluster.api()
    api.wait_for_dag(CT)
    api.unpause(CT)  # paused at creation (deploy/airflow.env): only the DAGs under test ever run
    uri = f"mlops://{MODEL}/retrain-request"
    assets = api.request("GET", "/assets", params={"uri_pattern": uri})["assets"]
    asset = next(a for a in assets if a["uri"] == uri)
    before = {r["dag_run_id"] for r in api.request("GET", f"/dags/{CT}/dagRuns")["dag_runs"]}
    t0 = time.monotonic()
    api.request("POST", "/assets/events", json={"asset_id": asset["id"], "extra": {"reason": "cluster test drift"}})

    def new_asset_run() -> dict[str, Any] | None:
        cluster.check_alive()
        runs = api.request("GET", f"/dags/{CT}/dagRuns", params={"run_type": "asset_triggered"})["dag_runs"]
        return next((r for r in runs if r["dag_run_id"] not in before), None)

    run = wait_until("asset-triggered ct run", new_asset_run, timeout=120)
    final, _ = api.wait_for_run(CT, run["dag_run_id"], timeout=480, on_poll=cluster.check_alive)
    states = {ti["task_id"]: ti["state"] for ti in api.task_instances(CT, run["dag_run_id"])}
    print(f"\nretrain request -> asset-triggered run end {time.monotonic() - t0:.1f}s: {states}")
    assert final["run_type"] == "asset_triggered"
    assert final["state"] == "success", states
    assert states.get("snapshot") == "success" and states.get("gate") == "success", states
