"""``make demo``: one run of ``ct_credit_default`` end to end on the embedded default, then what happened.

Two ways, never both on one metadata DB:

* Airflow is up (``make up``: its api-server answers on ``MLOPS_AIRFLOW_URL``, default
  ``http://127.0.0.1:8080``): the run is triggered through Airflow's REST API and the demo waits for it. The
  running scheduler executes it; a second executor on the same database would run the same task instances
  twice ("Task Instance not found", "marking task as UP_FOR_RETRY").
* Airflow is not up: the DAG runs in this process with ``dag.test()`` (the same task code as a scheduled run,
  on the SQLite metadata DB). Each task's part of the output is also written where the Airflow UI reads task
  logs, so that after ``make up`` every task of the demo run shows its log.

``make`` has already generated the demo data, migrated the DB and created the ``mlflow_registry`` pool.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DAG_ID = "ct_credit_default"
DEFAULT_AIRFLOW_URL = "http://127.0.0.1:8080"
TERMINAL = {"success", "failed"}
_TASK_START = re.compile(r"\[DAG TEST\] starting task_id=(\S+) map_index=(-?\d+)")
_TASK_END = re.compile(r"\[DAG TEST\] end task task_id=(\S+) map_index=(-?\d+)")


# ------------------------------------------------------------------------------ through a running Airflow


def airflow_url() -> str:
    return os.environ.get("MLOPS_AIRFLOW_URL", DEFAULT_AIRFLOW_URL).rstrip("/")


def airflow_is_up(url: str) -> bool:
    """True when an Airflow api-server answers its health endpoint at ``url``."""
    import requests

    try:
        return requests.get(f"{url}/api/v2/monitor/health", timeout=3).status_code == 200
    except requests.RequestException:
        return False


class AirflowApi:
    """The few calls of Airflow's REST API (v2) the demo needs, as user ``admin`` of the simple auth manager."""

    def __init__(self, url: str, username: str, password: str) -> None:
        import requests

        self.url = url
        self.session = requests.Session()
        answer = self.session.post(f"{url}/auth/token", json={"username": username, "password": password}, timeout=30)
        if answer.status_code >= 400:
            raise RuntimeError(f"{url}/auth/token refused user {username!r}: HTTP {answer.status_code} {answer.text}")
        self.session.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = self.session.request(method, f"{self.url}/api/v2{path}", timeout=30, **kwargs)
        if answer.status_code >= 400:
            raise RuntimeError(f"Airflow API {method} {path}: HTTP {answer.status_code} {answer.text[:500]}")
        return answer.json()

    def dag(self, dag_id: str, timeout: float = 180) -> dict[str, Any]:
        """The DAG, once the dag-processor has parsed it."""
        deadline = time.monotonic() + timeout
        while True:
            answer = self.session.get(f"{self.url}/api/v2/dags/{dag_id}", timeout=30)
            if answer.status_code == 200:
                return dict(answer.json())
            if time.monotonic() > deadline:
                raise RuntimeError(f"Airflow at {self.url} has no DAG {dag_id} after {timeout:.0f} s: is it parsed?")
            time.sleep(2)

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        if self.dag(dag_id)["is_paused"]:
            self.call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        return str(
            self.call("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})["dag_run_id"]
        )

    def wait(self, dag_id: str, run_id: str, timeout: float = 3600) -> str:
        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        while True:
            state = str(self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"])
            for ti in self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]:
                key = ti["task_id"] + (
                    f"[{ti['rendered_map_index'] or ti['map_index']}]" if ti["map_index"] >= 0 else ""
                )
                if ti["state"] and seen.get(key) != ti["state"]:
                    seen[key] = ti["state"]
                    print(f"  {key:<40} {ti['state']}", flush=True)
            if state in TERMINAL:
                return state
            if time.monotonic() > deadline:
                raise RuntimeError(f"{dag_id} run {run_id} is still {state} after {timeout:.0f} s")
            time.sleep(3)


def admin_password() -> str:
    path = os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", "")
    try:
        return str(json.loads(Path(path).read_text())["admin"])
    except (OSError, ValueError, KeyError) as err:
        raise RuntimeError(
            f"Airflow is up but its admin password is not readable from {path or '(unset)'} "
            "(AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE, written by make up)"
        ) from err


def run_through_airflow(url: str) -> tuple[str, str]:
    """Trigger ``ct_credit_default`` in the running Airflow and wait: (run id, final state)."""
    api = AirflowApi(url, "admin", admin_password())
    run_id = api.trigger(DAG_ID, {"reason": "make demo"})
    print(f"Airflow is up at {url}: triggered {DAG_ID} run {run_id}; waiting for the scheduler to run it", flush=True)
    return run_id, api.wait(DAG_ID, run_id)


# ------------------------------------------------------------------------------ in this process


@contextlib.contextmanager
def tee_output(lines: list[str]) -> Iterator[None]:
    """Copy everything written to this process's stdout and stderr (file descriptors 1 and 2, where Airflow's
    task logging writes) to the terminal and into ``lines``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as source, os.fdopen(os.dup(saved[0]), "wb", buffering=0) as terminal:
            for raw in source:
                terminal.write(raw)
                lines.append(raw.decode(errors="replace").rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)  # closes the pipe's last write end: the reader sees its end
        os.dup2(saved[1], 2)
        reader.join(timeout=30)
        for fd in saved:
            os.close(fd)


def split_by_task(lines: list[str]) -> dict[tuple[str, int], list[str]]:
    """The lines between ``dag.test()``'s "starting task" and "end task" marks, per (task id, map index)."""
    parts: dict[tuple[str, int], list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        start = _TASK_START.search(line)
        if start:
            current = parts.setdefault((start.group(1), int(start.group(2))), [])
        if current is not None:
            current.append(line)
        if _TASK_END.search(line):
            current = None
    return parts


def write_task_logs(dag_id: str, run_id: str, parts: dict[tuple[str, int], list[str]]) -> list[Path]:
    """Each task's lines where the Airflow UI reads the log of its try (``[logging] base_log_folder``)."""
    from airflow.configuration import conf
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.log.file_task_handler import FileTaskHandler
    from airflow.utils.session import create_session

    handler = FileTaskHandler(base_log_folder=conf.get("logging", "base_log_folder"))
    written = []
    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id).all()
        for ti in tis:
            part = parts.get((ti.task_id, ti.map_index))
            if not part or not ti.try_number:
                continue
            path = Path(handler.local_base) / handler._render_filename(ti, ti.try_number, session=session)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(part) + "\n")
            written.append(path)
    return written


def run_in_process() -> tuple[str, str]:
    """``dag.test()`` here, its task logs kept for the UI: (run id, final state)."""
    from mlops_airflow.dag_factory import build_dags

    lines: list[str] = []
    with tee_output(lines):
        dag_run = build_dags()[DAG_ID].test(run_conf={"reason": "make demo"})
    written = write_task_logs(DAG_ID, dag_run.run_id, split_by_task(lines))
    print(f"task logs for the Airflow UI: {len(written)} file(s) under {written[0].parents[2] if written else '-'}")
    return str(dag_run.run_id), str(dag_run.state)


# ------------------------------------------------------------------------------ report


def report(run_id: str, state: str, seconds: float, through_airflow: bool = False) -> None:
    from mlops_airflow.core import settings
    from mlops_airflow.core.registry import ModelRegistry
    from mlops_airflow.core.tracking import client_for, parent_run_id, run_url

    client = client_for(settings.default_tracking_uri())
    experiment = client.get_experiment_by_name("credit_default")
    mlflow_run = parent_run_id(client, experiment.experiment_id, DAG_ID, run_id) if experiment else None
    champion = ModelRegistry(client, "credit_default").champion()

    line = "=" * 78
    print(f"\n{line}\n{DAG_ID} run {run_id}: {state} in {seconds:.0f} s")
    if mlflow_run and experiment:
        run = client.get_run(mlflow_run)
        tags = run.data.tags
        print(
            f"  data hash       {tags.get('mlops.data_hash', '?')[:16]}...  validation: {tags.get('mlops.validation')}"
        )
        auc = run.data.metrics.get("candidate_roc_auc")
        if auc is not None:
            print(f"  candidate       ROC AUC {auc:.4f} on the newest day")
        print(f"  verdict         {tags.get('mlops.verdict', '-')}")
        print(f"  gate            blessed={tags.get('mlops.gate.blessed')}  {tags.get('mlops.gate.reason', '')[:90]}")
        print(f"  MLflow run      {run_url(experiment.experiment_id, mlflow_run)}")
    if champion is not None:
        print(f"  champion        models:/credit_default@champion = version {champion.version}")
    print(f"  MLflow store    {settings.default_tracking_uri()}")
    if through_airflow:
        print(f"\nThe run in Airflow: {airflow_url()} (DAG {DAG_ID}); MLflow {settings.mlflow_ui_url()}")
    else:
        print(
            f"\nOpen the UIs:  make up   (Airflow {airflow_url()}, login printed by make up; "
            f"MLflow {settings.mlflow_ui_url()})"
        )
    print("Run again on a new day:  make demo-day demo")
    print('A drifted day:           make demo-day DEMO_DAY_ARGS="--feature-shift 1" demo')
    print(line)


def main() -> int:
    started = time.perf_counter()
    url = airflow_url()
    up = airflow_is_up(url)
    run_id, state = run_through_airflow(url) if up else run_in_process()
    report(run_id, state, time.perf_counter() - started, through_airflow=up)
    return 0 if state == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
