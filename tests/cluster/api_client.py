"""Client side of the native cluster: the Airflow REST API as an external client uses it, and a CT run.

``trigger_and_wait`` unpauses a DAG, triggers it through ``/api/v2`` with a JWT from ``/auth/token``
(simple auth manager) and polls it to the end, timing trigger -> first task running and -> run end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests
from harness import read_env_file

if TYPE_CHECKING:
    from harness import NativeCluster


class AirflowApi:
    """The Airflow 3 public REST API, used as an external client would: JWT from ``/auth/token``."""

    def __init__(self, url: str, username: str, password: str) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        response = requests.post(
            f"{self.url}/auth/token", json={"username": username, "password": password}, timeout=30
        )
        response.raise_for_status()
        self.session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.session.request(method, f"{self.url}/api/v2{path}", timeout=30, **kwargs)
        if not response.ok:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json() if response.content else None

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> dict[str, Any]:
        """The DAG once the dag-processor has parsed it (import errors are reported, not waited on)."""

        def parsed() -> dict[str, Any] | None:
            errors = self.request("GET", "/importErrors").get("import_errors", [])
            if errors:
                raise AssertionError("DAG import errors: " + json.dumps(errors)[:3000])
            try:
                return self.request("GET", f"/dags/{dag_id}")  # type: ignore[no-any-return]
            except RuntimeError:
                return None

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = parsed()
            if found:
                return found
            time.sleep(1)
        raise TimeoutError(f"DAG {dag_id} not parsed after {timeout:.0f}s")

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"logical_date": None, "conf": conf or {}}
        return self.request("POST", f"/dags/{dag_id}/dagRuns", json=body)  # type: ignore[no-any-return]

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")  # type: ignore[no-any-return]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        data = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
        return list(data["task_instances"])

    def wait_for_run(
        self, dag_id: str, run_id: str, timeout: float, on_poll: Callable[[], None] | None = None
    ) -> tuple[dict[str, Any], dict[str, float]]:
        """Poll until the run ends; also returns when its first task started running (monotonic time)."""
        marks: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if on_poll:
                on_poll()
            run = self.dag_run(dag_id, run_id)
            if "first_task_running" not in marks and any(
                ti["state"] in {"running", "success", "failed", "up_for_retry"}
                for ti in self.task_instances(dag_id, run_id)
            ):
                marks["first_task_running"] = time.monotonic()
            if run["state"] in {"success", "failed"}:
                marks["end"] = time.monotonic()
                return run, marks
            time.sleep(1)
        raise TimeoutError(f"{dag_id} run {run_id} not finished after {timeout:.0f}s")


@dataclass
class RunResult:
    """A DAG run triggered through the REST API, with its task instances and client-side timings."""

    run: dict[str, Any]
    task_instances: list[dict[str, Any]]
    trigger_to_first_task_running_s: float | None
    trigger_to_end_s: float

    @property
    def state(self) -> str:
        return str(self.run["state"])

    def tasks(self, task_id: str) -> list[dict[str, Any]]:
        return [ti for ti in self.task_instances if ti["task_id"] == task_id]

    def states(self) -> dict[str, str]:
        return {
            ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else ""): str(ti["state"])
            for ti in self.task_instances
        }

    def wall_time(self, task_id: str) -> float:
        """First start to last end of ``task_id``'s task instances (all map indexes), in seconds."""
        tis = self.tasks(task_id)
        if not tis or any(ti["start_date"] is None or ti["end_date"] is None for ti in tis):
            raise ValueError(f"{task_id}: not every task instance has run: {self.states()}")
        start = min(_parse_time(ti["start_date"]) for ti in tis)
        end = max(_parse_time(ti["end_date"]) for ti in tis)
        return round(end - start, 2)


def trigger_and_wait(cluster: NativeCluster, dag_id: str, conf: dict[str, Any] | None = None,
                     timeout: float = 480) -> RunResult:  # fmt: skip
    """Unpause ``dag_id``, trigger it through the REST API as an external client would, wait for the end."""
    api = cluster.api()
    api.wait_for_dag(dag_id)
    api.unpause(dag_id)
    t0 = time.monotonic()
    run = api.trigger(dag_id, conf)
    final, marks = api.wait_for_run(dag_id, run["dag_run_id"], timeout, on_poll=cluster.check_alive)
    first = marks.get("first_task_running")
    return RunResult(
        run=final,
        task_instances=api.task_instances(dag_id, run["dag_run_id"]),
        trigger_to_first_task_running_s=None if first is None else round(first - t0, 1),
        trigger_to_end_s=round(marks["end"] - t0, 1),
    )


def upload_demo_batches(cluster: NativeCluster, model: str = "credit_default", days: int = 15) -> list[str]:
    """Land the model's demo batches in the bucket as the Compose ``demo-data`` job does: the generator's CLI
    writes ``$MLOPS_DATA_ROOT/<source.uri>`` through s3fs, endpoint and keys from the environment."""
    import subprocess
    import sys

    from mlops_airflow.core.config import get_spec

    data_root = read_env_file()["MLOPS_DATA_ROOT"]
    bucket_root = f"s3://{cluster.bucket}"
    if not data_root.startswith(bucket_root):
        raise ValueError(f"MLOPS_DATA_ROOT={data_root} is not in the cluster's bucket {bucket_root}")
    source = get_spec(model, cluster.models_dir).source.uri
    env = {**cluster.client_env(), "PYTHONPATH": str(cluster.plugins_folder)}
    cmd = [sys.executable, "-m", "mlops_airflow.core.demo_data", f"{data_root}/{source}", "--days", str(days)]
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=300)
    prefix = f"{data_root.removeprefix(bucket_root).strip('/')}/{source}".strip("/")
    return cluster.list_keys(prefix + "/")


def _parse_time(value: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
