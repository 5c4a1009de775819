"""Cluster parallelism: ``ct_credit_default``'s mapped ``train`` step on two Celery workers vs one.

For each worker count, a fresh native cluster (tests/cluster/harness.py: the docker-compose.yml topology
on loopback, PostgreSQL and Redis of this machine) runs one ``ct_credit_default`` triggered through the
REST API. Measured from the API's task instances: the ``train`` step's wall time (first candidate start
to last candidate end); measured by the client: trigger -> first task running and trigger -> run end.
Also timed: the cluster test itself (``pytest tests/cluster``), unless ``--skip-test-timing``.

    uv run python benchmarks/cluster_parallelism.py [--workers 2 1] [--skip-test-timing]

Writes benchmarks/results/cluster_parallelism.json and .md. Each worker has one task slot, so two
workers can train two candidates at once; on a 2-core machine that is also all the CPU there is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "cluster"))

from api_client import trigger_and_wait, upload_demo_batches  # noqa: E402
from harness import NativeCluster  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
CT = "ct_credit_default"


def run_once(workers: int) -> dict[str, Any]:
    """One fresh cluster with ``workers`` single-slot workers, one CT run, then teardown."""
    t0 = time.monotonic()
    load_before = os.getloadavg()[0]
    cluster = NativeCluster(workers=workers, worker_concurrency=1)
    try:
        cluster.start()
        upload_demo_batches(cluster, "credit_default", days=15)
        result = trigger_and_wait(cluster, CT, conf={"reason": f"benchmark, {workers} worker(s)"}, timeout=900)
        train = result.tasks("train")
        row: dict[str, Any] = {
            "workers": workers,
            "worker_concurrency": 1,
            "state": result.state,
            "startup_s": cluster.timings["startup_s"],
            "trigger_to_first_task_running_s": result.trigger_to_first_task_running_s,
            "trigger_to_end_s": result.trigger_to_end_s,
            "train_candidates": len(train),
            "train_wall_s": result.wall_time("train") if result.state == "success" else None,
            "train_task_durations_s": sorted(round(float(ti["duration"] or 0), 1) for ti in train),
            "train_hostnames": sorted({str(ti["hostname"]) for ti in train}),
            "task_states": result.states(),
            # the machine may be shared: its 1-minute load before and after the run says how much
            "load_avg_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        }
    finally:
        t_stop = time.monotonic()
        cluster.stop()
    row["teardown_s"] = round(time.monotonic() - t_stop, 1)
    row["total_s"] = round(time.monotonic() - t0, 1)
    return row


def time_cluster_test() -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/cluster"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    return {
        "command": "uv run pytest -q tests/cluster",
        "wall_s": round(time.monotonic() - t0, 1),
        "exit_code": proc.returncode,
        "summary": (proc.stdout.strip().splitlines() or [""])[-1],
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Cluster parallelism: `ct_credit_default` on the native CeleryExecutor cluster",
        "",
        f"Machine: {report['machine']['cpus']} CPUs, {report['machine']['python']}. Command: "
        f"`{report['command']}`. Each worker has one task slot.",
        "",
        "| workers | run | train step (s) | trigger -> first task running (s) | trigger -> run end (s) "
        "| cluster startup (s) | train hosts |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['workers']} | {r['state']} | {r['train_wall_s']} | {r['trigger_to_first_task_running_s']} "
            f"| {r['trigger_to_end_s']} | {r['startup_s']} | {', '.join(r['train_hostnames'])} |"
        )
    loads = [x for r in report["runs"] for x in r["load_avg_1m_before_after"]]
    lines += ["", f"1-minute load average around the runs (the machine may be shared): {min(loads)}-{max(loads)}."]
    if report.get("train_speedup"):
        lines += ["", f"Train step speed-up, {report['train_speedup']['label']}: {report['train_speedup']['x']}x."]
    if report.get("cluster_test"):
        t = report["cluster_test"]
        lines += ["", f"Cluster test (`{t['command']}`): {t['wall_s']} s, exit {t['exit_code']} ({t['summary']})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--skip-test-timing", action="store_true", help="do not time pytest tests/cluster")
    args = parser.parse_args(argv)

    report: dict[str, Any] = {
        "dag_id": CT,
        "command": " ".join(
            ["uv run python benchmarks/cluster_parallelism.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "runs": [],
    }
    if not args.skip_test_timing:
        report["cluster_test"] = time_cluster_test()
        print("cluster test:", report["cluster_test"], flush=True)
    for workers in args.workers:
        row = run_once(workers)
        report["runs"].append(row)
        print({k: v for k, v in row.items() if k != "task_states"}, flush=True)
    by_workers = {r["workers"]: r["train_wall_s"] for r in report["runs"] if r["train_wall_s"]}
    if 1 in by_workers and len(by_workers) > 1:
        most = max(by_workers)
        report["train_speedup"] = {
            "label": f"{most} workers vs 1",
            "x": round(by_workers[1] / by_workers[most], 2),
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cluster_parallelism.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "cluster_parallelism.md").write_text(markdown(report))
    print(markdown(report))
    failed = [r for r in report["runs"] if r["state"] != "success"]
    return 1 if failed or report.get("cluster_test", {}).get("exit_code", 0) else 0


if __name__ == "__main__":
    sys.exit(main())
