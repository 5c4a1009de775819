"""The model server under steady traffic while ``champion`` moves: 3 promotions and 1 rollback, 0 failures.

On loopback only, in a private home: a real ``mlflow server`` (SQLite, proxied artifacts), four versions of the
demo model made as ``ct_<model>`` makes them (``select_candidate``'s logging, the gate's blessing and
signature: tests/serving/serving_support.py), and ``python -m mlops_airflow.serving`` with the signing key.

1. **Swaps under load.** An open-loop generator sends requests at ``--rate`` per second (1-row and 100-row
   bodies alternating) for at most ``--seconds`` and ``--max-requests``. Meanwhile ``champion`` moves through
   :class:`mlops_airflow.core.trust.ModelRegistry` exactly as the DAG tasks move it: ``promote`` v2, v3, v4
   (each judged against the champion before it), then ``rollback`` (default target: v3), each followed by
   the tasks' notification (:func:`mlops_airflow.core.serving_client.notify_model_server`). Each alias move is
   timestamped; the swap latency is the time from the move until the server reports the new version. Every
   response is checked: status 200, and its version held ``champion`` at some moment within
   ``[request start - max swap latency, request end]``.
2. **Throughput and latency** (closed loop, ``--clients`` threads x ``--requests`` each, bounded count), 1-row
   and 100-row bodies, against the model server and ``mlflow models serve`` of the same version, same run.

The drifted-traffic part of the issue (the request log read by ``monitor_<model>``, which then requests a
retrain) is tests/e2e/test_serving_monitor.py: it needs a real ``ct_`` run's training reference.

Writes ``benchmarks/results/serving_swap.json`` and ``.md``.

    uv run --frozen python benchmarks/serving_swap.py [--rate 10] [--seconds 150] [--clients 4] [--requests 100]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "serving"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import free_port, load, start  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
TOKEN = "benchmark-token-0123456789abcdef"
SIGNING_KEY = "benchmark-signing-key-0123456789"
MODEL = "credit_default"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def body(rows: int, seed: int) -> bytes:
    from mlops_airflow.core import demo_data

    frame = demo_data.generate_batch(50, n_rows=rows, seed=seed)
    features = [f for f in frame.columns if f not in {"application_id", "event_date", "default"}]
    split = json.loads(frame[features].to_json(orient="split", index=False))
    return json.dumps({"dataframe_split": {"columns": split["columns"], "data": split["data"]}}).encode()


class Traffic:
    """Open-loop requests at a steady rate (a schedule, not a closed loop: a slow answer does not slow the
    rate), each recorded with its start, end, status and version."""

    def __init__(self, url: str, rate: float, seconds: float, max_requests: int, threads: int = 16) -> None:
        self.url, self.rate, self.seconds, self.max_requests = url, rate, seconds, max_requests
        self.bodies = {1: body(1, 5), 100: body(100, 6)}
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.next_index = 0
        self.began = 0.0
        self.workers = [threading.Thread(target=self._work, daemon=True) for _ in range(threads)]

    def start(self) -> None:
        self.began = time.perf_counter()
        for worker in self.workers:
            worker.start()

    def join(self) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.join()

    def _work(self) -> None:
        session = requests.Session()
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        while True:
            with self.lock:
                index = self.next_index
                self.next_index += 1
            due = self.began + index / self.rate
            if self.stop.is_set() or index >= self.max_requests or due - self.began > self.seconds:
                return
            time.sleep(max(0.0, due - time.perf_counter()))
            rows = 1 if index % 2 == 0 else 100
            started = time.time()
            try:
                response = session.post(self.url, data=self.bodies[rows], headers=headers, timeout=60)
                status, version = response.status_code, response.headers.get("X-Model-Version")
                error = None if status == 200 else response.text[:300]
            except requests.RequestException as err:
                status, version, error = 0, None, f"{type(err).__name__}: {err}"[:300]
            ended = time.time()
            with self.lock:
                self.records.append({"index": index, "rows": rows, "start": started, "end": ended,
                                     "status": status, "version": version, "error": error})  # fmt: skip


def latency(records: list[dict[str, Any]], rows: int) -> dict[str, float]:
    """p50 and p99 in ms of the successful requests with ``rows`` rows."""
    seconds = [r["end"] - r["start"] for r in records if r["rows"] == rows and r["status"] == 200]
    return {"p50": round(1000 * statistics.median(seconds), 1), "p99": round(1000 * percentile(seconds, 0.99), 1)}


def served_version(base: str) -> str | None:
    page = requests.get(f"{base}/v1/models/{MODEL}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    return page.json().get("version") if page.ok else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=10.0, help="requests per second during the swaps")
    parser.add_argument("--seconds", type=float, default=150.0, help="longest the swap phase runs")
    parser.add_argument("--max-requests", type=int, default=2000)
    parser.add_argument("--gap", type=float, default=10.0, help="seconds of traffic between alias moves")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=100, help="per client and body size (throughput)")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="mlops-bench-swap-"))
    os.environ.update({"MLOPS_HOME": str(home), "MLOPS_MODELS_DIR": str(REPO / "include" / "models"),
                       "MLOPS_SIGNING_KEY": SIGNING_KEY, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # fmt: skip
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    import pandas as pd
    from serving_support import ct_version, log_pipeline

    from mlops_airflow.core import demo_data
    from mlops_airflow.core.config import get_spec
    from mlops_airflow.core.registry import Actor
    from mlops_airflow.core.serving_client import notify_model_server
    from mlops_airflow.core.tracking import client_for
    from mlops_airflow.core.training import fit_final
    from mlops_airflow.core.trust import ModelRegistry

    procs: list[subprocess.Popen[Any]] = []
    mlflow_port = free_port()
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    procs.append(start(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
         "--artifacts-destination", str(home / "artifacts"), "--host", "127.0.0.1", "--port", str(mlflow_port),
         "--workers", "1"], dict(os.environ), f"{mlflow_url}/health", home / "mlflow-server.log"))  # fmt: skip
    try:
        spec = get_spec(MODEL)
        client = client_for(mlflow_url)
        registry = ModelRegistry(client, MODEL, signing_key=SIGNING_KEY.encode())
        train = pd.concat([demo_data.generate_batch(d, n_rows=1000, seed=d) for d in range(7)], ignore_index=True)
        grid = [{"learning_rate": 0.1, "max_leaf_nodes": 31}, {"learning_rate": 0.05, "max_leaf_nodes": 15},
                {"learning_rate": 0.2, "max_leaf_nodes": 63}, {"learning_rate": 0.1, "max_leaf_nodes": 7}]  # fmt: skip
        versions: list[str] = []
        for params in grid:  # made before the traffic: registration is not what is measured
            pipeline = fit_final(spec, params, train)
            versions.append(ct_version(client, spec, lambda p=pipeline: log_pipeline(spec, p, train),
                                       signing_key=SIGNING_KEY.encode(),
                                       judged_against=versions[-1] if versions else None))  # fmt: skip
        moves: list[dict[str, Any]] = []

        def move(op: str, version: str | None) -> None:
            actor = Actor(f"{'ct' if op == 'promote' else 'rollback'}_{MODEL}", f"bench__{op}_{len(moves)}")
            began = time.time()
            if op == "promote":
                assert version is not None
                done = registry.promote(version, "benchmark promotion", actor)
            else:
                done = registry.rollback("benchmark rollback", actor)
            ended = time.time()
            assert done.changed, done
            notified = notify_model_server(MODEL, op, done.to_version)
            moves.append({"op": op, "from": done.from_version, "to": done.to_version, "move_started": began,
                          "move_done": ended, "notified": notified})  # fmt: skip

        move("promote", versions[0])  # the first champion, before the server starts
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_url, "MLOPS_SERVING_TOKEN": TOKEN,
               "MLOPS_SERVING_MODELS": MODEL, "MLOPS_SERVING_POLL_SECONDS": "600", "OMP_NUM_THREADS": "1"}  # fmt: skip
        server = start([sys.executable, "-m", "mlops_airflow.serving", "--port", str(port), "--log-level", "warning"],
                       env, f"{base}/ready", home / "model-server.log")  # fmt: skip
        procs.append(server)
        os.environ.update({"MLOPS_SERVING_URL": base, "MLOPS_SERVING_TOKEN": TOKEN})

        # ---- 1. swaps under steady traffic
        traffic = Traffic(f"{base}/v1/models/{MODEL}/predict", args.rate, args.seconds, args.max_requests)
        traffic.start()
        swap_latency: list[float] = []
        for op, version in (("promote", versions[1]), ("promote", versions[2]), ("promote", versions[3]),
                            ("rollback", None)):  # fmt: skip
            time.sleep(args.gap)
            move(op, version)
            target = moves[-1]["to"]
            deadline = time.monotonic() + 120  # a bound on waiting, the latency itself is reported
            while served_version(base) != target:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the server did not swap to v{target}: {(home / 'model-server.log').read_text()}"
                    )
                time.sleep(0.02)
            swap_latency.append(time.time() - moves[-1]["move_done"])
        time.sleep(args.gap)
        traffic.join()

        # every response: 200, and its version was champion within [start - max swap latency, end]
        max_swap = max(swap_latency)
        held = []  # (version, from, until): champion from the start of its move to the end of the next move
        for i, m in enumerate(moves):
            until = moves[i + 1]["move_done"] if i + 1 < len(moves) else float("inf")
            held.append((m["to"], m["move_started"], until))
        failed = [r for r in traffic.records if r["status"] != 200]

        def was_champion(r: dict[str, Any]) -> bool:
            return any(
                v == r["version"] and frm <= r["end"] and r["start"] - max_swap <= until for v, frm, until in held
            )

        wrong = [r for r in traffic.records if r["status"] == 200 and not was_champion(r)]
        per_version: dict[str, int] = {}
        for r in traffic.records:
            per_version[str(r["version"])] = per_version.get(str(r["version"]), 0) + 1
        wall = max(r["end"] for r in traffic.records) - min(r["start"] for r in traffic.records)
        swaps = {
            "rate_per_s": args.rate, "requests": len(traffic.records), "seconds": round(wall, 1),
            "achieved_rate_per_s": round(len(traffic.records) / wall, 2),
            "failed": len(failed), "failures": failed[:5], "wrong_version": len(wrong), "wrong": wrong[:5],
            "responses_per_version": per_version,
            "moves": [{k: m[k] for k in ("op", "from", "to")} | {"notified": m["notified"]} for m in moves[1:]],
            "swap_latency_s": [round(s, 3) for s in swap_latency], "max_swap_latency_s": round(max_swap, 3),
            "latency_ms_during_swaps": {f"{n}_row": latency(traffic.records, n) for n in (1, 100)},
        }  # fmt: skip
        print(json.dumps({k: v for k, v in swaps.items() if k not in {"failures", "wrong"}}), flush=True)

        # ---- 2. throughput and latency, side by side with mlflow models serve of the served version
        version = served_version(base)
        mlflow_serve_port = free_port()
        procs.append(start(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL}/{version}",
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(mlflow_serve_port)],
            {**env, "MLFLOW_TRACKING_URI": mlflow_url}, f"http://127.0.0.1:{mlflow_serve_port}/ping",
            home / "mlflow-models-serve.log"))  # fmt: skip
        targets = {
            "mlops_airflow.serving": (f"{base}/v1/models/{MODEL}/predict", {"Authorization": f"Bearer {TOKEN}"}),
            "mlflow models serve": (f"http://127.0.0.1:{mlflow_serve_port}/invocations", {}),
        }
        servers: dict[str, dict[str, Any]] = {}
        for rows in (1, 100):
            payload = json.loads(body(rows, 7))
            for name, (url, headers) in targets.items():
                figures = load(url, payload, headers, args.clients, args.requests)
                servers.setdefault(name, {})[f"{rows}_row"] = figures
                print(f"{name:24s} {rows:4d} row(s): {figures}", flush=True)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=120)
    ours, theirs = servers["mlops_airflow.serving"], servers["mlflow models serve"]
    results = {
        "cores": os.cpu_count(), "swaps": swaps, "model_version": version,
        "throughput": {"clients": args.clients, "requests_per_client": args.requests, "servers": servers,
                       "ratio_rows_per_s": {k: round(ours[k]["rows_per_s"] / theirs[k]["rows_per_s"], 2) for k in ours},
                       "ratio_p50": {k: round(ours[k]["p50_ms"] / theirs[k]["p50_ms"], 2) for k in ours}},
    }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serving_swap.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "serving_swap.md").write_text(report(results))
    print(report(results))
    if swaps["failed"] or swaps["wrong_version"]:
        sys.exit(f"{swaps['failed']} failed request(s), {swaps['wrong_version']} answered by a version not champion")


def report(results: dict[str, Any]) -> str:
    swaps, throughput = results["swaps"], results["throughput"]
    moves = ", ".join(f"{m['op']} v{m['from']}→v{m['to']}" for m in swaps["moves"])
    lines = [
        "# Model server: hot swaps under steady traffic",
        "",
        "`uv run --frozen python benchmarks/serving_swap.py` (loopback, real `mlflow server`, one uvicorn worker,",
        f"{results['cores']} cores shared with other jobs).",
        "",
        f"**Swaps.** {swaps['requests']} requests at {swaps['rate_per_s']:g}/s (achieved "
        f"{swaps['achieved_rate_per_s']}/s over {swaps['seconds']} s, 1-row and 100-row bodies alternating) while "
        f"`champion` moved: {moves}. **{swaps['failed']} failed requests; {swaps['wrong_version']} answered by a "
        f"version that was not champion** within [request start - max swap latency, request end].",
        f"Swap latency (alias moved → server answers with the new version; notification, proof of blessing, "
        f"download, load, warm-up): {', '.join(f'{s:.2f} s' for s in swaps['swap_latency_s'])}. Responses per "
        f"version: {swaps['responses_per_version']}.",
        "",
        "| during swaps | p50 | p99 |",
        "|---|---|---|",
        *(
            f"| {k.replace('_', ' ')} | {v['p50']} ms | {v['p99']} ms |"
            for k, v in swaps["latency_ms_during_swaps"].items()
        ),
        "",
        f"**Throughput** (closed loop, {throughput['clients']} clients x {throughput['requests_per_client']} "
        f"requests per body size, version {results['model_version']}):",
        "",
        "| body | `mlops_airflow.serving` req/s · rows/s · p50 / p99 | `mlflow models serve` | rows/s ratio "
        "| p50 ratio |",
        "|---|---|---|---|---|",
    ]
    for key in ("1_row", "100_row"):
        ours, theirs = (throughput["servers"][n][key] for n in ("mlops_airflow.serving", "mlflow models serve"))
        cell = lambda f: f"{f['requests_per_s']} · {f['rows_per_s']:,.0f} · {f['p50_ms']:.0f} / {f['p99_ms']:.0f} ms"  # noqa: E731
        lines.append(f"| {key.replace('_', ' ')} | {cell(ours)} | {cell(theirs)} | "
                     f"{throughput['ratio_rows_per_s'][key]} | {throughput['ratio_p50'][key]} |")  # fmt: skip
    lines += ["", "Failed requests in the throughput runs: " + ", ".join(
        f"{n} {sum(f['failed'] for f in s.values())}" for n, s in throughput["servers"].items()), ""]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
