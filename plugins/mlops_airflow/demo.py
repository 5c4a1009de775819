"""``make demo``: one run of ``ct_credit_default`` end to end on the embedded default, then what happened.

Two ways, never both on one metadata DB:

* Airflow is up (``make up``: its api-server answers on ``MLOPS_AIRFLOW_URL``, default
  ``http://127.0.0.1:8080``): the run is triggered through Airflow's REST API and the demo waits for it. The
  running scheduler executes it; a second executor on the same database would run the same task instances
  twice ("Task Instance not found", "marking task as UP_FOR_RETRY").
* Airflow is not up: the DAG runs in this process with ``dag.test()`` (the same task code as a scheduled run,
  on the SQLite metadata DB). Airflow's output goes to ``$MLOPS_HOME/logs/demo-<UTC time>.log`` (the demo
  prints where), the terminal shows one line per task; each task's part of the output is also written where
  the Airflow UI reads task logs, so that after ``make up`` every task of the demo run shows its log.

Either way the terminal shows one line per task instance as it finishes (state and seconds), then a summary.

``make`` has already generated the demo data, migrated the DB and created the ``mlflow_registry`` pool.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

DAG_ID = "ct_credit_default"
DEFAULT_AIRFLOW_URL = "http://127.0.0.1:8080"
TERMINAL = {"success", "failed"}
FINISHED = {"success", "failed", "skipped", "upstream_failed", "removed"}
_TASK_START = re.compile(r"\[DAG TEST\] starting task_id=(\S+) map_index=(-?\d+)")
_TASK_END = re.compile(r"\[DAG TEST\] end task task_id=(\S+) map_index=(-?\d+)")
_NEW_STATE = re.compile(r"Task instance state updated .*\bnew_state=(\w+)")


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
        """Wait for the run to end, printing one line per task instance as it finishes (state, seconds)."""
        deadline = time.monotonic() + timeout
        shown: set[str] = set()
        while True:
            state = str(self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"])
            for ti in self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]:
                key = ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else "")
                if ti["state"] in FINISHED and key not in shown:
                    shown.add(key)
                    took = "" if ti.get("duration") is None else f"{float(ti['duration']):6.1f} s"
                    print(f"  {key:<36} {ti['state']:<16} {took}", flush=True)
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
    print(f"full task logs: {url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}", flush=True)
    return run_id, api.wait(DAG_ID, run_id)


# ------------------------------------------------------------------------------ in this process


class TaskProgress:
    """One line per finished task instance, from ``dag.test()``'s own marks in the output it writes: the
    task (``train[0]`` for a mapped one), the state the task runner reported and the seconds it took."""

    def __init__(self, terminal: TextIO) -> None:
        self.terminal = terminal
        self.started: dict[tuple[str, int], float] = {}
        self.state: dict[tuple[str, int], str] = {}
        self.current: tuple[str, int] | None = None

    def feed(self, line: str) -> None:
        if start := _TASK_START.search(line):
            self.current = (start.group(1), int(start.group(2)))
            self.started[self.current] = time.monotonic()
        elif self.current and (new := _NEW_STATE.search(line)) and new.group(1) != "running":
            self.state[self.current] = new.group(1)
        elif end := _TASK_END.search(line):
            key = (end.group(1), int(end.group(2)))
            seconds = time.monotonic() - self.started.get(key, time.monotonic())
            self.show(key, self.state.get(key, "ended"), seconds)
            self.current = None

    def show(self, key: tuple[str, int], state: str, seconds: float | None) -> None:
        task = key[0] if key[1] < 0 else f"{key[0]}[{key[1]}]"
        took = "" if seconds is None else f"{seconds:6.1f} s"
        self.terminal.write(f"  {task:<36} {state:<16} {took}\n")
        self.terminal.flush()


#: The last line the capture writes into its own pipe: the reader stops there, whoever else still holds the pipe.
_CAPTURE_END = "\x00mlops-demo: end of the captured output"


@contextlib.contextmanager
def captured_output(log: TextIO, on_line: Callable[[str], None] | None = None) -> Iterator[None]:
    """Send everything written to this process's stdout and stderr (file descriptors 1 and 2, where Airflow's
    task logging writes) to ``log`` instead of the terminal, each line also to ``on_line``.

    The capture ends when this process's own output does: processes started inside the block (the smoke test's
    forkserver lives as long as this process) inherit the pipe, so its end is marked by a last line written
    after descriptors 1 and 2 are given back, not awaited as the pipe's end of file."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    streams = sys.stdout, sys.stderr
    read_end, write_end = os.pipe()
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    # Python's own streams too, in case they were replaced by objects not writing to the descriptors
    sys.stdout = sys.stderr = os.fdopen(os.dup(1), "w", buffering=1, errors="replace")

    def pump() -> None:
        with os.fdopen(read_end, "rb") as source:
            for raw in source:
                line = raw.decode(errors="replace").rstrip("\n")
                if line == _CAPTURE_END:
                    break
                log.write(line + "\n")
                if on_line is not None:
                    on_line(line)
        log.flush()

    reader = threading.Thread(target=pump, name="demo-output", daemon=True)
    reader.start()
    try:
        yield
    finally:
        sys.stdout.close()
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.write(write_end, (_CAPTURE_END + "\n").encode())  # after everything this process wrote there
        os.close(write_end)
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


def never_ran(dag: Any, run_id: str, ran: set[tuple[str, int]]) -> list[tuple[tuple[str, int], str]]:
    """Task instances of the run that never started (skipped by the gate, upstream failed), with their state,
    in the DAG's order."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.dag_id == dag.dag_id, TaskInstance.run_id == run_id)
        found = [((ti.task_id, ti.map_index), str(ti.state or "none")) for ti in tis.all()]
    order = {task_id: i for i, task_id in enumerate(dag.task_dict)}
    return sorted(((k, s) for k, s in found if k not in ran), key=lambda item: (order.get(item[0][0], 0), item[0]))


def demo_log_path() -> Path:
    """Where the in-process run's full output goes: ``$MLOPS_HOME/logs/demo-<UTC time>.log``."""
    from mlops_airflow.core import settings

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = settings.mlops_home() / "logs" / f"demo-{stamp}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def run_in_process() -> tuple[str, str]:
    """``dag.test()`` here: one line per task on the terminal, the full output in a log file, each task's part
    also where the Airflow UI reads task logs: (run id, final state)."""
    from mlops_airflow.core.config import models_dir
    from mlops_airflow.core.fresh_process import start_server
    from mlops_airflow.dag_factory import build_dags

    # OpenLineage (when a user configured it) emits from a thread here, not from a forked copy of this process:
    # dag.test() runs every task in this process, beside open connections to the SQLite metadata DB, which a
    # forked child must never use
    os.environ.setdefault("AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD", "True")
    dags = build_dags()
    if DAG_ID not in dags:
        others = sorted(d for d in dags if d.startswith("ct_"))
        raise SystemExit(
            f"make demo runs the demo model's {DAG_ID}, and the models folder {models_dir()} holds no "
            f"credit_default.yaml (CT DAGs there: {', '.join(others) or 'none'}). Put "
            "include/models/credit_default.yaml back to run the demo; run your own model with "
            "`airflow dags test ct_<model>` as docs/models.md shows (Add your model, step by step, step 4)"
        )
    path = demo_log_path()
    print(f"{DAG_ID}: running in this process (Airflow is not up at {airflow_url()})", flush=True)
    print(f"full log: {path}", flush=True)
    lines: list[str] = []
    # the terminal as it is before the output is captured: the progress lines go there
    with os.fdopen(os.dup(1), "w", buffering=1) as terminal:
        progress = TaskProgress(terminal)

        def on_line(line: str) -> None:
            lines.append(line)
            progress.feed(line)

        dag = dags[DAG_ID]
        with path.open("w") as log, captured_output(log, on_line):
            # the smoke test's pre-warmed interpreter imports the training stack while the first tasks run
            # (its output, if any, goes to the log)
            start_server()
            dag_run = dag.test(run_conf={"reason": "make demo"})
        for key, state in never_ran(dag, dag_run.run_id, set(progress.started)):
            progress.show(key, state, None)
    written = write_task_logs(DAG_ID, dag_run.run_id, split_by_task(lines))
    print(f"task logs for the Airflow UI: {len(written)} file(s); the whole output: {path}")
    return str(dag_run.run_id), str(dag_run.state)


# ------------------------------------------------------------------------------ report


def report(run_id: str, state: str, seconds: float, through_airflow: bool = False) -> None:
    from mlops_airflow.core import settings
    from mlops_airflow.core.champion import UnblessedVersionError, resolve_champion
    from mlops_airflow.core.signing import signing_key
    from mlops_airflow.core.tracking import client_for, parent_run_id, run_url

    client = client_for(settings.default_tracking_uri())
    experiment = client.get_experiment_by_name("credit_default")
    mlflow_run = parent_run_id(client, experiment.experiment_id, DAG_ID, run_id) if experiment else None
    try:  # what serves, proven as every consumer proves it
        champion, refused = (
            resolve_champion(client, "credit_default", signing_key(settings.default_tracking_uri())),
            None,
        )
    except UnblessedVersionError as err:
        champion, refused = None, str(err)

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
        print(
            f"  champion        models:/credit_default@champion = version {champion.version} (gate signature checked)"
        )
    elif refused:
        print(f"  champion        NOT SERVABLE: {refused}")
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
