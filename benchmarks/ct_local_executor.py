"""``ct_credit_default`` under a real LocalExecutor, as a user of ``make up`` runs it.

Airflow starts as ``make up`` starts it (``make airflow-db`` first: ``airflow db migrate``, ``mlflow db
upgrade``, the ``mlflow_registry`` pool; then api-server, dag-processor and scheduler, one process group each,
LocalExecutor, SQLite metadata DB, loopback only, ``AIRFLOW__CORE__PARALLELISM`` = cores), in a private
temporary ``AIRFLOW_HOME`` and ``MLOPS_HOME``, on a copy of the working tree's code taken at the start. The
demo data are made as ``make data`` makes them (15 days). Run 1 is triggered through the REST API with
``make demo``'s client (no champion yet); then the next day lands (``make demo-day``) and run 2 is the daily
run against that champion.

    uv run --frozen python benchmarks/ct_local_executor.py [--keep]

Per run: wall time from the trigger to the run's end state (the run's ``end_date`` on the same clock), the
state, and per task instance its duration and its queued -> start gap, from the REST API's task instances.
Scheduling overhead is measured on the critical path: walking back from the task instance that ended last,
each one's predecessor is the upstream task instance (or, for a mapped task waiting for a slot, the sibling)
that ended last before it started; the idle time between a predecessor's end and the next start, the trigger
to the first start and the last end to the run's end, over the wall time, is the overhead's share.
Every process group is killed at the end, also on failure, and the temporary homes are removed (``--keep``
keeps them). Writes benchmarks/results/ct_local_executor.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlops_airflow.demo import DAG_ID, AirflowApi

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
COMMAND = "uv run --frozen python benchmarks/ct_local_executor.py"
GOAL_DAILY_WALL_S = 25.0
RUN_TIMEOUT_S = 1800
_ACCESS = re.compile(
    r"request finished .*duration_us=(?P<us>\d+) .*method=(?P<method>\w+) path=(?P<path>\S+) "
    r".*status_code=(?P<status>\d+)"
)
_OPTIONAL = re.compile(r"^GET /execution/(connections|variables)/")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


#: make up's warm imports for the scheduler (deploy/preload); ``MLOPS_BENCH_WARM=0`` measures without them.
WARM = os.environ.get("MLOPS_BENCH_WARM", "1") != "0"


def _terminate_with_parent() -> None:
    """Linux: SIGTERM the process when this one dies, even by SIGKILL (then the ``finally`` never runs)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class LocalAirflow:
    """``make up`` in a temporary directory: the Makefile's exports and ``UP_ENV``, its three Airflow roles."""

    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mlops-ct-local-")))
    port: int = field(default_factory=free_port)
    slots: int = field(default_factory=lambda: os.cpu_count() or 2)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def code(self) -> Path:
        """A copy of the working tree's ``dags/``, ``plugins/`` and ``include/``, taken at the start: a run takes
        minutes, and an edit made meanwhile must not reach half of its task processes."""
        return self.base / "code"

    @property
    def landing(self) -> Path:
        return self.base / "mlops" / "data" / "landing" / "credit_default"

    @property
    def logs(self) -> Path:
        return self.base / "logs"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLOPS", "MLFLOW"))}
        bin_dir = str(Path(sys.executable).parent)  # make up sources .venv/bin/activate
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        env["VIRTUAL_ENV"] = str(Path(sys.executable).parents[1])
        env.update(
            {  # the Makefile's exports
                "AIRFLOW_HOME": str(self.base / "airflow"),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.code / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.code / "plugins"),
                # the copy's package before the editable install's path (site-packages .pth entries come last)
                "PYTHONPATH": str(self.code / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.base / "airflow" / "passwords.json"),
                "MLOPS_HOME": str(self.base / "mlops"),
                "MLOPS_MLFLOW_UI_URL": "http://127.0.0.1:5000",
                "GX_ANALYTICS_ENABLED": "false",
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "DO_NOT_TRACK": "true",
                # make up's UP_ENV
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__CORE__PARALLELISM": str(self.slots),
            }
        )
        return env

    def run(self, name: str, cmd: list[str]) -> None:
        """A set-up step (as the Makefile runs it), its output in ``logs/<name>.log``; fail with its tail."""
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            rc = subprocess.run(cmd, env=self.env(), cwd=self.base, stdout=out, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {rc}:\n{log.read_text(errors='replace')[-3000:]}")

    def prepare(self) -> None:
        """``make data`` (the landing zone's 15 days) and ``make airflow-db``, then ``make up``'s password file."""
        self.logs.mkdir(parents=True)
        (self.base / "airflow").mkdir()
        for part in ("dags", "plugins", "include"):
            shutil.copytree(REPO / part, self.code / part, ignore=shutil.ignore_patterns("__pycache__"))
        check = "from mlops_airflow.dag_factory import build_dags; import mlops_airflow, sys; "
        check += f"assert mlops_airflow.__file__.startswith({str(self.code)!r}); assert {DAG_ID!r} in build_dags()"
        self.run("code-check", [sys.executable, "-c", check])
        t0 = time.monotonic()
        self.run("airflow-db", ["airflow", "db", "migrate"])
        (self.base / "mlops" / "mlflow").mkdir(parents=True)
        store = f"sqlite:///{self.base / 'mlops' / 'mlflow' / 'mlflow.db'}"
        self.run("mlflow-db", ["mlflow", "db", "upgrade", store])
        self.run("pool", ["airflow", "pools", "set", "mlflow_registry", "1", "promotion and rollback, one at a time"])
        self.timings["airflow_db_s"] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()
        self.land("--days", "15")
        self.timings["data_s"] = round(time.monotonic() - t0, 1)
        passwords = Path(self.env()["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
        passwords.write_text(json.dumps({"admin": secrets.token_urlsafe(12)}))

    def land(self, *args: str) -> None:
        self.run("demo-data", [sys.executable, "-m", "mlops_airflow.core.demo_data", str(self.landing), *args])

    def start(self, timeout: float = 600) -> None:
        """api-server, dag-processor and scheduler as ``make up`` starts them; wait for the api-server."""
        import requests

        t0 = time.monotonic()
        for name, cmd in (
            ("api-server", ["airflow", "api-server"]),
            ("dag-processor", ["airflow", "dag-processor"]),
            ("scheduler", ["airflow", "scheduler", "--skip-serve-logs"]),
        ):
            env = self.env()
            if name == "scheduler" and WARM:  # as make up: task processes fork with the training stack imported
                env["PYTHONPATH"] = os.pathsep.join([str(REPO / "deploy" / "preload"), env["PYTHONPATH"]])
            with (self.logs / f"{name}.log").open("wb") as out:
                self.procs[name] = subprocess.Popen(
                    cmd,
                    env=env,
                    cwd=self.base,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # one process group each: stop() kills the task processes too
                    preexec_fn=_terminate_with_parent,
                )
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/api/v2/monitor/health", timeout=3).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the api-server never answered at {self.url}:\n{self.tail('api-server')}")
            time.sleep(1)
        self.timings["api_server_up_s"] = round(time.monotonic() - t0, 1)

    def api(self) -> AirflowApi:
        password = json.loads(Path(self.env()["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).read_text())
        return AirflowApi(self.url, "admin", password["admin"])

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited {proc.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 40) -> str:
        try:
            return "\n".join((self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def execution_api_calls(self) -> dict[str, Any]:
        """The task processes' calls to the api-server's execution API, from its access log: how many, the
        slowest, and those answered with an error (a call that timed out is retried by the task's supervisor)."""
        calls: list[dict[str, Any]] = []
        with contextlib.suppress(OSError):
            for line in (self.logs / "api-server.log").read_text(errors="replace").splitlines():
                found = _ACCESS.search(line)
                if found and found["path"].startswith("/execution/"):
                    path = re.sub(r"/[0-9a-f]{8}-[0-9a-f-]{27}", "/<ti>", found["path"])
                    calls.append(
                        {
                            "at": line.split(" ", 1)[0],
                            "call": f"{found['method']} {path}",
                            "status": int(found["status"]),
                            "s": round(int(found["us"]) / 1e6, 2),
                        }
                    )
        return {
            "calls": len(calls),
            "slowest": sorted(calls, key=lambda c: -c["s"])[:5],
            # not the 404s of optional look-ups (a connection or variable that is not set)
            "errors": [c for c in calls if c["status"] >= 400 and not _OPTIONAL.search(c["call"])],
        }

    def descendant_groups(self) -> set[int]:
        """The process groups led by a descendant of a role's process (Airflow's task processes)."""
        import psutil

        groups = set()
        for proc in self.procs.values():
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(proc.pid).children(recursive=True):
                    with contextlib.suppress(psutil.Error, ProcessLookupError):
                        if os.getpgid(child.pid) == child.pid:
                            groups.add(child.pid)
        return groups

    def stop(self, keep: bool = False) -> None:
        """TERM every process group, wait, then KILL what is left. Airflow's task processes lead process groups
        of their own: those of every descendant are killed too."""
        groups = {proc.pid for proc in self.procs.values()} | self.descendant_groups()
        for group in groups - {proc.pid for proc in self.procs.values()}:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGTERM)
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for group in groups:  # a group may outlive its leader
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self.procs.clear()
        if not keep:
            shutil.rmtree(self.base, ignore_errors=True)


class CpuSampler:
    """CPU seconds (user + system) of every process under the given roles' processes (task processes lead
    their own process groups, so the process tree is followed, not the groups), sampled every ``interval``
    seconds in a thread: a process that exits keeps its last sample (up to ``interval`` of its CPU is missed).
    CPU time hardly depends on how loaded the machine is, unlike wall time."""

    def __init__(self, roots: dict[int, str], interval: float = 0.5) -> None:
        self.roots = roots
        self.interval = interval
        self.seen: dict[tuple[int, float], dict[str, Any]] = {}  # (pid, create time) -> ppid, role, cpu
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.done.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        import psutil

        for pid, role in self.roots.items():
            try:
                root = psutil.Process(pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for proc in tree:
                try:
                    with proc.oneshot():
                        times, ppid, created = proc.cpu_times(), proc.ppid(), proc.create_time()
                except psutil.Error:
                    continue
                with self.lock:
                    self.seen[(proc.pid, created)] = {
                        "pid": proc.pid,
                        "ppid": ppid,
                        "role": role,
                        "cpu": times.user + times.system,
                    }

    def snapshot(self) -> dict[tuple[int, float], dict[str, Any]]:
        self.sample()
        with self.lock:
            return {key: dict(value) for key, value in self.seen.items()}

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=10)


def cpu_during(
    before: dict[tuple[int, float], dict[str, Any]],
    after: dict[tuple[int, float], dict[str, Any]],
    ti_pids: dict[int, str],
) -> dict[str, Any]:
    """CPU seconds spent between two snapshots: per role (process group) and per task instance (its process
    and every process it started), the rest of the scheduler's group being the scheduler and its executor."""
    spent = {key: p["cpu"] - before.get(key, {}).get("cpu", 0.0) for key, p in after.items()}
    by_pid = {p["pid"]: p for p in after.values()}

    def task_of(pid: int) -> str | None:
        for _ in range(20):  # up the parent chain to a task instance's process
            if pid in ti_pids:
                return ti_pids[pid]
            parent = by_pid.get(pid)
            if parent is None:
                return None
            pid = parent["ppid"]
        return None

    roles: dict[str, float] = {}
    tasks: dict[str, float] = {}
    for key, cpu in spent.items():
        task = task_of(after[key]["pid"])
        if task is not None:
            tasks[task] = tasks.get(task, 0.0) + cpu
            roles["task processes"] = roles.get("task processes", 0.0) + cpu
        else:
            role = after[key]["role"]
            roles[role] = roles.get(role, 0.0) + cpu
    return {
        "total_s": round(sum(spent.values()), 1),
        "by_role_s": {k: round(v, 1) for k, v in sorted(roles.items())},
        "by_task_s": {k: round(v, 2) for k, v in tasks.items()},
    }


# ------------------------------------------------------------------------------ one run and its analysis


def when(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def seconds(later: dt.datetime | None, earlier: dt.datetime | None) -> float | None:
    return None if later is None or earlier is None else round((later - earlier).total_seconds(), 2)


def ti_key(ti: dict[str, Any]) -> str:
    return ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else "")


def critical_path(
    tis: list[dict[str, Any]], upstream: dict[str, set[str]], trigger: dt.datetime, run_end: dt.datetime
) -> dict[str, Any]:
    """The chain of task instances that set the wall time, and the idle (scheduling) time along it."""
    done = [t for t in tis if when(t["start_date"]) and when(t["end_date"])]
    if not done:
        return {"path": [], "idle_s": None, "task_s": None, "last_end_to_run_end_s": None}
    current = max(done, key=lambda t: when(t["end_date"]))  # type: ignore[arg-type,return-value]
    path = [current]
    while True:
        start = when(current["start_date"])
        assert start is not None
        before = [
            t
            for t in done
            if t is not current
            and (
                t["task_id"] in upstream.get(current["task_id"], set())
                or (t["task_id"] == current["task_id"] and t["map_index"] != current["map_index"])
            )
            and when(t["end_date"]) <= start  # type: ignore[operator]
        ]
        if not before:
            break
        current = max(before, key=lambda t: when(t["end_date"]))  # type: ignore[arg-type,return-value]
        path.append(current)
    path.reverse()
    steps: list[dict[str, Any]] = []
    previous_end = trigger
    for t in path:
        start, end, queued = when(t["start_date"]), when(t["end_date"]), when(t["queued_when"])
        assert start is not None and end is not None
        ready_to_queued = max(0.0, (queued - previous_end).total_seconds()) if queued else 0.0
        queued_to_start = (start - max(queued, previous_end)).total_seconds() if queued else 0.0
        steps.append(
            {
                "task": ti_key(t),
                "idle_before_s": round((start - previous_end).total_seconds(), 2),
                "ready_to_queued_s": round(ready_to_queued, 2),
                "queued_to_start_s": round(max(0.0, queued_to_start), 2),
                "task_s": round((end - start).total_seconds(), 2),
            }
        )
        previous_end = end
    tail = round((run_end - previous_end).total_seconds(), 2)
    idle = round(sum(s["idle_before_s"] for s in steps) + tail, 2)
    return {
        "path": steps,
        "last_end_to_run_end_s": tail,
        "idle_s": idle,
        "task_s": round(sum(s["task_s"] for s in steps), 2),
    }


def one_run(airflow: LocalAirflow, label: str, upstream: dict[str, set[str]], cpu: CpuSampler) -> dict[str, Any]:
    api = airflow.api()
    load_before = os.getloadavg()
    cpu_before = cpu.snapshot()
    trigger = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    run_id = api.trigger(DAG_ID, {"reason": f"benchmark: {label}"})
    print(f"{label}: triggered {DAG_ID} run {run_id}", flush=True)
    state = api.wait(DAG_ID, run_id, timeout=RUN_TIMEOUT_S)
    client_wall = time.monotonic() - t0  # the client polls every 3 s: up to 3 s late
    load_after = os.getloadavg()
    cpu_after = cpu.snapshot()
    run = api.call("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")
    tis = api.call("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", params={"limit": 100})["task_instances"]
    run_end = when(run["end_date"])
    assert run_end is not None, run
    tasks = {}
    for ti in sorted(tis, key=lambda t: (when(t["start_date"]) or run_end, t["map_index"])):
        start, end = when(ti["start_date"]), when(ti["end_date"])
        tasks[ti_key(ti)] = {
            "state": ti["state"],
            "try_number": ti["try_number"],
            "label": ti.get("rendered_map_index"),
            "duration_s": seconds(end, start),
            "scheduled_to_queued_s": seconds(when(ti["queued_when"]), when(ti["scheduled_when"])),
            "queued_to_start_s": seconds(start, when(ti["queued_when"])),
            "start_offset_s": seconds(start, trigger),
            "end_offset_s": seconds(end, trigger),
        }
    wall = (run_end - trigger).total_seconds()
    path = critical_path(tis, upstream, trigger, run_end)
    used = cpu_during(cpu_before, cpu_after, {int(ti["pid"]): ti_key(ti) for ti in tis if ti.get("pid")})
    for key, task in tasks.items():
        task["cpu_s"] = used["by_task_s"].get(key)
    path["cpu_s"] = round(sum(used["by_task_s"].get(step["task"], 0.0) for step in path["path"]), 1)
    durations = [t["duration_s"] for t in tasks.values() if t["duration_s"] is not None]
    gaps = [t["queued_to_start_s"] for t in tasks.values() if t["queued_to_start_s"] is not None]
    return {
        "run_id": run_id,
        "state": state,
        "wall_s": round(wall, 2),
        "client_wall_s": round(client_wall, 2),
        "trigger_to_run_start_s": seconds(when(run["start_date"]), trigger),
        "task_time_sum_s": round(sum(durations), 2),
        "queued_to_start_sum_s": round(sum(gaps), 2),
        "critical_path": path,
        "critical_path_idle_s": path["idle_s"],
        "scheduling_overhead_share": round(path["idle_s"] / wall, 3) if path["idle_s"] is not None else None,
        "cpu": {k: v for k, v in used.items() if k != "by_task_s"},
        "tasks": tasks,
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in load_after],
    }


# ------------------------------------------------------------------------------ report


def fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)


def markdown(report: dict[str, Any]) -> str:
    runs = report["runs"]
    r1, r2 = runs.get("run1_first", {}), runs.get("run2_daily", {})
    names = list(r1.get("tasks", {}))
    names += [n for n in r2.get("tasks", {}) if n not in names]

    def cell(run: dict[str, Any], name: str, key: str) -> str:
        task = run.get("tasks", {}).get(name)
        if task is None:
            return "-"
        value = fmt(task.get(key))
        return value if task["state"] == "success" or key != "duration_s" else f"{value} ({task['state']})"

    m = report["machine"]
    lines = [
        "# `ct_credit_default` under the LocalExecutor (`make up`)",
        "",
        f"Machine: {m['cpus']} CPUs, Python {m['python']}, Airflow {m['airflow']}; "
        f"`AIRFLOW__CORE__PARALLELISM={report['parallelism']}`, SQLite metadata DB, every task its own "
        f"process. Command: `{report['command']}`. Run 1: 15 days landed, no champion; run 2: one more day, "
        "the daily run against run 1's champion.",
        "",
        "| task | run 1 s | run 1 CPU s | run 1 queued->start s | run 2 s | run 2 CPU s | run 2 queued->start s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        lines.append(
            f"| {name} | {cell(r1, name, 'duration_s')} | {cell(r1, name, 'cpu_s')} "
            f"| {cell(r1, name, 'queued_to_start_s')} | {cell(r2, name, 'duration_s')} | {cell(r2, name, 'cpu_s')} "
            f"| {cell(r2, name, 'queued_to_start_s')} |"
        )

    def value(run: dict[str, Any], key: str) -> Any:
        found: Any = run
        for part in key.split("."):
            found = found.get(part) if isinstance(found, dict) else None
        if key == "scheduling_overhead_share" and isinstance(found, float):
            return f"{found:.1%}"
        return found

    roles = sorted({role for run in (r1, r2) for role in run.get("cpu", {}).get("by_role_s", {})})
    rows: list[tuple[str, str | None, str | None]] = [
        ("run state", "state", None),
        ("sum of task times", "task_time_sum_s", "cpu.by_role_s.task processes"),
        ("sum of queued->start gaps", "queued_to_start_sum_s", None),
        ("critical path: task time", "critical_path.task_s", "critical_path.cpu_s"),
        ("critical path: idle (scheduling) time", "critical_path_idle_s", None),
        ("**wall: trigger -> run end**", "wall_s", "cpu.total_s"),
        ("scheduling overhead share of wall", "scheduling_overhead_share", None),
    ]
    rows += [(f"CPU: {role}", None, f"cpu.by_role_s.{role}") for role in roles if role != "task processes"]
    for title, key, cpu_key in rows:
        a, b = (fmt(value(run, key)) if key else "" for run in (r1, r2))
        ca, cb = (fmt(value(run, cpu_key)) if cpu_key else "" for run in (r1, r2))
        lines.append(f"| {title} | {a} | {ca} | | {b} | {cb} | |")
    lines += [
        "",
        "CPU: user + system seconds of the task instance's process and the processes it started (the wall row: "
        "every process of Airflow's roles and their tasks during the run). A mapped instance's queued->start "
        "includes its wait for one of the slots.",
    ]
    lines += [
        "",
        "Critical path (task instance, idle before it s, of which queued->start s, its own s):",
        "",
    ]
    for label, run in (("run 1", r1), ("run 2", r2)):
        path = run.get("critical_path", {}).get("path", [])
        chain = " -> ".join(
            f"{s['task']} ({s['idle_before_s']}, {s['queued_to_start_s']}, {s['task_s']})" for s in path
        )
        tail = run.get("critical_path", {}).get("last_end_to_run_end_s")
        lines.append(f"* {label}: {chain}; last end -> run end {tail} s")
    calls = report.get("execution_api", {})
    if calls:
        slow = "; ".join(f"{c['call']} {c['s']} s ({c['status']}, {c['at']})" for c in calls["slowest"][:2])
        errors = "; ".join(f"{c['call']} {c['status']} after {c['s']} s ({c['at']})" for c in calls["errors"])
        lines += [
            "",
            f"Execution API (the task processes' calls to the api-server): {calls['calls']} calls; slowest: {slow}; "
            f"error answers: {errors or 'none'}.",
        ]
    daily = r2.get("wall_s")
    verdict = "met" if isinstance(daily, float) and daily <= GOAL_DAILY_WALL_S else "not met"
    lines += [
        "",
        f"Goal: daily run (run 2) wall <= {GOAL_DAILY_WALL_S:.0f} s on a quiet machine: {fmt(daily)} s, {verdict} "
        "here.",
        "",
        f"Load (the machine may be shared): before `{report['uptime_before']}`; after `{report['uptime_after']}`.",
        f"Set-up: airflow-db {report['timings'].get('airflow_db_s')} s, demo data {report['timings'].get('data_s')} s, "
        f"api-server up {report['timings'].get('api_server_up_s')} s, DAG parsed "
        f"{report['timings'].get('dag_parsed_s')} s later.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary homes and logs")
    args = parser.parse_args(argv)

    import airflow

    report: dict[str, Any] = {
        "dag_id": DAG_ID,
        "command": COMMAND + (" --keep" if args.keep else ""),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "airflow": airflow.__version__,
            "platform": platform.platform(),
        },
        "uptime_before": uptime(),
        "runs": {},
    }
    print(report["uptime_before"], flush=True)
    local = LocalAirflow()
    report["parallelism"] = local.slots
    state_ok = False
    cpu: CpuSampler | None = None
    try:
        local.prepare()
        local.start()
        cpu = CpuSampler({proc.pid: name for name, proc in local.procs.items()})
        t0 = time.monotonic()
        api = local.api()
        api.dag(DAG_ID, timeout=600)
        local.timings["dag_parsed_s"] = round(time.monotonic() - t0, 1)
        upstream: dict[str, set[str]] = {}
        for task in api.call("GET", f"/dags/{DAG_ID}/tasks")["tasks"]:
            for down in task["downstream_task_ids"]:
                upstream.setdefault(down, set()).add(task["task_id"])
        report["runs"]["run1_first"] = one_run(local, "run 1 (no champion)", upstream, cpu)
        local.check_alive()
        local.land("--next", "--days", "1")  # make demo-day
        report["runs"]["run2_daily"] = one_run(local, "run 2 (daily, vs champion)", upstream, cpu)
        state_ok = all(r["state"] == "success" for r in report["runs"].values())
    except BaseException:
        for name in local.procs:
            print(f"--- {name}\n{local.tail(name)}", file=sys.stderr)
        raise
    finally:
        if cpu is not None:
            cpu.stop()
        report["execution_api"] = local.execution_api_calls()
        local.stop(keep=args.keep)
        report["timings"] = local.timings
        report["uptime_after"] = uptime()
        if args.keep:
            print(f"kept: {local.base}")
        if report["runs"]:
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / "ct_local_executor.json").write_text(json.dumps(report, indent=2) + "\n")
            (RESULTS / "ct_local_executor.md").write_text(markdown(report))
            print(markdown(report))
    return 0 if state_ok else 1


if __name__ == "__main__":
    sys.exit(main())
