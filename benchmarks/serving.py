"""Model server against ``mlflow models serve``: throughput, tail latency, swap time, and no failed request
through promotions, a rollback and a canary stop.

Loopback only, a private embedded store, every load bounded in count. Versions of the demo model are made as
``ct_<model>`` makes them (tests/serving/serving_support.py: the gate's blessing and signature; the server
serves proven versions only), plus one blessed version that fails on live rows (the canary's challenger).

1. **Throughput and latency.** ``python -m mlops_airflow.serving`` and ``mlflow models serve`` of the same
   version, one worker each, run at once; the same closed-loop client (``--clients`` threads) sends 1-row and
   100-row bodies to each in turn, in ``--rounds`` alternating rounds (``--requests`` per client and body size
   in all), after a warm-up. Reported per server: rows/s, p50 and p99 latency over every request.
2. **Swaps and a canary stop under load** (our server only). Closed-loop traffic (``--clients`` threads,
   1-row and 100-row bodies, at most ``--swap-requests`` requests) while ``champion`` moves as the DAG tasks
   move it (``challenger`` set to the next version as ``register_challenger`` sets it, noticed at the
   server's poll; then ``promote`` v2, ``promote`` v3, ``rollback``, each followed by the tasks'
   notification), then
   ``challenger`` is set to the failing version under ``serving.canary`` (25 %, judged after 20 requests,
   at most 5 % errors). Swap time = alias moved -> first answer by the new version (from the responses'
   ``X-Model-Version``, callers the canary leaves with the champion). Every response must be 200.

Goals (docs in the result): 1-row rows/s >= 3x, 1-row p99 <= 1.0x, 100-row rows/s >= 1.3x of
``mlflow models serve``; swap <= 2 s; 0 failed requests. Writes ``benchmarks/results/serving.json`` and
``.md``.

    uv run --frozen python benchmarks/serving.py [--clients 8] [--requests 400] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "serving"))  # serving_support: versions made as ct_<model> makes them
RESULTS = REPO / "benchmarks" / "results"
TOKEN = "benchmark-token-0123456789abcdef"
MODEL = "credit_default"
OURS, THEIRS = "mlops_airflow.serving", "mlflow models serve"
CANARY = {"percent": 25, "min_requests": 20, "max_error_rate": 0.05}
GOALS = {"1_row_rows_per_s_ratio": 3.0, "1_row_p99_ratio": 1.0, "100_row_rows_per_s_ratio": 1.3,
         "max_swap_s": 2.0, "failed_requests": 0}  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(cmd: list[str], env: dict[str, str], probe: str, log: Path) -> subprocess.Popen[Any]:
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while True:
        try:
            if requests.get(probe, timeout=2).status_code == 200:
                return proc
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{cmd[:4]} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.5)


def split_body(rows: int, seed: int) -> dict[str, Any]:
    from mlops_airflow.core import demo_data

    frame = demo_data.generate_batch(50, n_rows=rows, seed=seed)
    features = [f for f in frame.columns if f not in {"application_id", "event_date", "default"}]
    split = json.loads(frame[features].to_json(orient="split", index=False))
    return {"dataframe_split": {"columns": split["columns"], "data": split["data"]}}


def load_raw(url: str, data: bytes, headers: dict[str, str], clients: int, per_client: int) -> dict[str, Any]:
    """``clients`` closed-loop threads x ``per_client`` requests: latencies (s), failures, wall time (s)."""
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    headers = {**headers, "Content-Type": "application/json"}

    def run() -> None:
        session = requests.Session()
        mine = []
        for _ in range(per_client):
            started = time.perf_counter()
            response = session.post(url, data=data, headers=headers, timeout=60)
            mine.append(time.perf_counter() - started)
            if response.status_code != 200:
                with lock:
                    failures[0] += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"latencies": latencies, "failed": failures[0], "wall": time.perf_counter() - began}


def figures(latencies: list[float], failed: int, wall: float, rows: int) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "requests": len(ordered), "failed": failed, "rows_per_request": rows,
        "requests_per_s": round(len(ordered) / wall, 1), "rows_per_s": round(len(ordered) * rows / wall, 1),
        "p50_ms": round(1000 * statistics.median(ordered), 2),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
    }  # fmt: skip


def load(url: str, body: dict[str, Any], headers: dict[str, str], clients: int, per_client: int) -> dict[str, Any]:
    """One closed-loop run after a warm-up (benchmarks/serving_swap.py uses it too)."""
    data = json.dumps(body).encode()
    for _ in range(3):  # warm-up
        requests.post(url, data=data, headers={**headers, "Content-Type": "application/json"}, timeout=60)
    raw = load_raw(url, data, headers, clients, per_client)
    return figures(raw["latencies"], raw["failed"], raw["wall"], len(body["dataframe_split"]["data"]))


class Traffic:
    """Closed-loop traffic to our server from ``clients`` threads (1-row and 100-row bodies), each response
    recorded with its start, end, status and version; bounded by ``max_requests``."""

    def __init__(self, url: str, clients: int, max_requests: int) -> None:
        self.url, self.max_requests = url, max_requests
        self.keys = caller_keys(clients)
        self.bodies = [json.dumps(split_body(1, 11)).encode(), json.dumps(split_body(100, 12)).encode()]
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.count = 0
        self.workers = [threading.Thread(target=self._work, args=(i,), daemon=True) for i in range(clients)]

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def join(self) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.join()

    def _work(self, i: int) -> None:
        session = requests.Session()
        key, canary_side = self.keys[i]
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", "X-Caller-Key": key}
        j = 0
        while not self.stop.is_set():
            with self.lock:
                if self.count >= self.max_requests:
                    return
                self.count += 1
            j += 1
            started = time.time()
            try:
                response = session.post(self.url, data=self.bodies[j % 2], headers=headers, timeout=60)
                status, version = response.status_code, response.headers.get("X-Model-Version")
                error = None if status == 200 else response.text[:300]
            except requests.RequestException as err:
                status, version, error = 0, None, f"{type(err).__name__}: {err}"[:300]
            with self.lock:
                self.records.append({"start": started, "end": time.time(), "status": status, "version": version,
                                     "error": error, "canary_side": canary_side})  # fmt: skip

    def first_answer_by(self, version: str, since: float) -> float | None:
        """End of the first response by ``version`` to a request sent after ``since`` by a caller the canary
        leaves with the champion."""
        with self.lock:
            ends = [r["end"] for r in self.records
                    if r["version"] == version and r["start"] >= since and not r["canary_side"]]  # fmt: skip
        return min(ends) if ends else None


def caller_keys(clients: int) -> list[tuple[str, bool]]:
    """One caller key per client, half of them on the canary's side (the server's sticky hash)."""
    from mlops_airflow.serving.canary import BUCKETS

    wanted = {True: clients // 2, False: clients - clients // 2}
    keys: list[tuple[str, bool]] = []
    i = 0
    while len(keys) < clients:
        key = f"client-{i}"
        side = zlib.crc32(f"{MODEL}\0{key}".encode()) % BUCKETS < round(CANARY["percent"] * BUCKETS / 100)
        if wanted[side] > 0:
            wanted[side] -= 1
            keys.append((key, side))
        i += 1
    return keys


def make_versions(home: Path) -> dict[str, str]:
    """Three versions of the demo model and one that fails on live rows, each blessed and signed as ct_<model>
    leaves them; v1 holds ``champion``."""
    import mlflow
    import pandas as pd
    from serving_support import FEATURES, ct_version, log_flaky_model, log_pipeline

    from mlops_airflow.core import demo_data, settings
    from mlops_airflow.core.config import get_spec
    from mlops_airflow.core.registry import Actor
    from mlops_airflow.core.signing import local_key  # the embedded default's key, as the server reads it
    from mlops_airflow.core.tracking import client_for
    from mlops_airflow.core.training import fit_final
    from mlops_airflow.core.trust import ModelRegistry

    spec = get_spec(MODEL)
    client = client_for(settings.default_tracking_uri())
    mlflow.set_tracking_uri(settings.default_tracking_uri())
    key = local_key()
    train = pd.concat([demo_data.generate_batch(d, n_rows=1000, seed=d) for d in range(14)], ignore_index=True)
    grid = [{"learning_rate": 0.1, "max_leaf_nodes": 31}, {"learning_rate": 0.05, "max_leaf_nodes": 15},
            {"learning_rate": 0.2, "max_leaf_nodes": 63}]  # fmt: skip
    versions: list[str] = []
    for params in grid:
        pipeline = fit_final(spec, params, train)
        versions.append(ct_version(client, spec, lambda p=pipeline: log_pipeline(spec, p, train), signing_key=key,
                                   judged_against=versions[-1] if versions else None))  # fmt: skip
    example = train[FEATURES].head(3)
    flaky = ct_version(client, spec, lambda: log_flaky_model(home, example), signing_key=key,
                       judged_against=versions[-1])  # fmt: skip
    registry = ModelRegistry(client, MODEL, signing_key=key)
    registry.promote(versions[0], "benchmark: first champion", Actor(f"ct_{MODEL}", "bench__first"))
    return {"v1": versions[0], "v2": versions[1], "v3": versions[2], "flaky": flaky}


def swaps_and_canary(base: str, versions: dict[str, str], clients: int, max_requests: int) -> dict[str, Any]:
    from mlops_airflow.core import settings
    from mlops_airflow.core.registry import Actor
    from mlops_airflow.core.serving_client import notify_model_server
    from mlops_airflow.core.signing import local_key
    from mlops_airflow.core.tracking import client_for
    from mlops_airflow.core.trust import ModelRegistry

    client = client_for(settings.default_tracking_uri())
    registry = ModelRegistry(client, MODEL, signing_key=local_key())
    headers = {"Authorization": f"Bearer {TOKEN}"}
    traffic = Traffic(f"{base}/v1/models/{MODEL}/predict", clients, max_requests)
    traffic.start()
    moves: list[dict[str, Any]] = []
    canary: dict[str, Any] | None = None

    def page() -> dict[str, Any]:
        return dict(requests.get(f"{base}/v1/models/{MODEL}", headers=headers, timeout=30).json())

    try:
        time.sleep(2)
        for op, version in (("promote", versions["v2"]), ("promote", versions["v3"]), ("rollback", None)):
            actor = Actor(f"{'ct' if op == 'promote' else 'rollback'}_{MODEL}", f"bench__{op}_{len(moves)}")
            if op == "promote":
                assert version is not None
                # as ct_<model> does: register_challenger moves `challenger`, the smoke test runs, then
                # promote; the server learns of `challenger` at its next poll and loads it ahead
                client.set_registered_model_alias(MODEL, "challenger", version)
                deadline = time.monotonic() + 120
                while page().get("challenger") != version and time.monotonic() < deadline:
                    time.sleep(0.2)
                done = registry.promote(version, "benchmark promotion", actor)
            else:
                done = registry.rollback("benchmark rollback", actor)
            moved_at = time.time()
            assert done.changed, done
            notified = notify_model_server(MODEL, op, done.to_version)
            deadline = time.monotonic() + 60  # a bound on waiting; the swap time itself is reported
            while (first := traffic.first_answer_by(str(done.to_version), moved_at)) is None:
                if time.monotonic() > deadline or traffic.stop.is_set() or traffic.count >= max_requests:
                    break
                time.sleep(0.01)
            moves.append({"op": op, "from": done.from_version, "to": done.to_version, "notified": notified,
                          "swap_s": None if first is None else round(first - moved_at, 3)})  # fmt: skip
            time.sleep(2)
        client.set_registered_model_alias(MODEL, "challenger", versions["flaky"])
        notify_model_server(MODEL, "challenger", versions["flaky"])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and traffic.count < max_requests:
            page = requests.get(f"{base}/v1/models/{MODEL}", headers=headers, timeout=30).json()
            canary = page.get("canary")
            if canary and canary.get("stopped"):
                break
            time.sleep(0.2)
        time.sleep(2)  # traffic goes on after the stop
    finally:
        traffic.join()
    failed = [r for r in traffic.records if r["status"] != 200]
    per_version: dict[str, int] = {}
    for r in traffic.records:
        per_version[str(r["version"])] = per_version.get(str(r["version"]), 0) + 1
    swap_times = [m["swap_s"] for m in moves]
    return {
        "requests": len(traffic.records), "failed": len(failed), "failures": failed[:5], "moves": moves,
        "max_swap_s": None if None in swap_times else max(swap_times), "responses_per_version": per_version,
        "canary": canary,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400, help="per client and body size, over all rounds")
    parser.add_argument("--rounds", type=int, default=4, help="alternations between the two servers")
    parser.add_argument("--swap-requests", type=int, default=6000, help="most requests of the swap phase")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="mlops-bench-serving-"))
    import yaml

    models = home / "models"
    models.mkdir()
    spec = yaml.safe_load((REPO / "include" / "models" / f"{MODEL}.yaml").read_text())
    spec.setdefault("serving", {})["canary"] = CANARY
    (models / f"{MODEL}.yaml").write_text(yaml.safe_dump(spec))
    os.environ.update({"MLOPS_HOME": str(home), "MLOPS_MODELS_DIR": str(models)})
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("MLOPS_SIGNING_KEY", None)
    from mlops_airflow.core import settings

    versions = make_versions(home)
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.default_tracking_uri(), "MLOPS_SERVING_TOKEN": TOKEN,
           "MLOPS_SERVING_MODELS": MODEL, "OMP_NUM_THREADS": "1"}  # fmt: skip
    env.pop("MLOPS_SERVING_POLL_SECONDS", None)  # the default poll: how `challenger` is noticed
    ours_port, mlflow_port = free_port(), free_port()
    base = f"http://127.0.0.1:{ours_port}"
    servers = {
        OURS: start(
            [sys.executable, "-m", "mlops_airflow.serving", "--port", str(ours_port), "--log-level", "warning"],
            env, f"{base}/ready", home / "ours.log"),
        THEIRS: start(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL}/{versions['v1']}",
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(mlflow_port)],
            env, f"http://127.0.0.1:{mlflow_port}/ping", home / "mlflow.log"),
    }  # fmt: skip
    targets = {
        OURS: (f"{base}/v1/models/{MODEL}/predict", {"Authorization": f"Bearer {TOKEN}"}),
        THEIRS: (f"http://127.0.0.1:{mlflow_port}/invocations", {}),
    }
    results: dict[str, Any] = {"clients": args.clients, "requests_per_client": args.requests, "rounds": args.rounds,
                               "cores": os.cpu_count(), "model_version": versions["v1"], "servers": {}}  # fmt: skip
    try:
        per_round = max(1, args.requests // args.rounds)
        for rows in (1, 100):
            data = json.dumps(split_body(rows, 5)).encode()
            acc = {name: {"latencies": [], "failed": 0, "wall": 0.0} for name in targets}
            for url, headers in targets.values():  # warm-up
                load_raw(url, data, headers, args.clients, 5)
            for r in range(args.rounds):
                for name in list(targets)[:: 1 if r % 2 == 0 else -1]:  # alternating who goes first
                    url, headers = targets[name]
                    raw = load_raw(url, data, headers, args.clients, per_round)
                    acc[name]["latencies"] += raw["latencies"]
                    acc[name]["failed"] += raw["failed"]
                    acc[name]["wall"] += raw["wall"]
            for name, a in acc.items():
                results["servers"].setdefault(name, {})[f"{rows}_row"] = figures(a["latencies"], a["failed"],
                                                                                 a["wall"], rows)  # fmt: skip
                print(f"{name:24s} {rows:4d} row(s): {results['servers'][name][f'{rows}_row']}", flush=True)
        page = requests.get(f"{base}/v1/models/{MODEL}", headers=targets[OURS][1], timeout=30).json()
        results["batching"] = page.get("batching")
        os.environ.update({"MLOPS_SERVING_URL": base, "MLOPS_SERVING_TOKEN": TOKEN})
        results["swaps"] = swaps_and_canary(base, versions, args.clients, args.swap_requests)
        print(json.dumps({k: v for k, v in results["swaps"].items() if k != "failures"}), flush=True)
    finally:
        for proc in servers.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=120)
    results["ours_exit_code"] = servers[OURS].returncode
    ours, theirs = results["servers"][OURS], results["servers"][THEIRS]
    swaps = results["swaps"]
    stopped = (swaps.get("canary") or {}).get("stopped")
    results["figures"] = {
        "1_row_rows_per_s_ratio": round(ours["1_row"]["rows_per_s"] / theirs["1_row"]["rows_per_s"], 2),
        "1_row_p99_ratio": round(ours["1_row"]["p99_ms"] / theirs["1_row"]["p99_ms"], 2),
        "100_row_rows_per_s_ratio": round(ours["100_row"]["rows_per_s"] / theirs["100_row"]["rows_per_s"], 2),
        "100_row_p99_ratio": round(ours["100_row"]["p99_ms"] / theirs["100_row"]["p99_ms"], 2),
        "max_swap_s": swaps["max_swap_s"],
        "failed_requests": swaps["failed"] + sum(s[k]["failed"] for s in (ours,) for k in s),
        "canary_stopped": bool(stopped),
    }
    f = results["figures"]
    results["goals_met"] = {
        "1_row_rows_per_s_ratio": f["1_row_rows_per_s_ratio"] >= GOALS["1_row_rows_per_s_ratio"],
        "1_row_p99_ratio": f["1_row_p99_ratio"] <= GOALS["1_row_p99_ratio"],
        "100_row_rows_per_s_ratio": f["100_row_rows_per_s_ratio"] >= GOALS["100_row_rows_per_s_ratio"],
        "max_swap_s": f["max_swap_s"] is not None and f["max_swap_s"] <= GOALS["max_swap_s"],
        "failed_requests": f["failed_requests"] == 0 and f["canary_stopped"],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serving.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "serving.md").write_text(report(results))
    print(report(results))


def report(results: dict[str, Any]) -> str:
    f, met, swaps = results["figures"], results["goals_met"], results["swaps"]
    mark = {True: "met", False: "**not met**"}
    stopped = (swaps.get("canary") or {}).get("stopped") or {}
    lines = [
        "# Model server vs `mlflow models serve`",
        "",
        f"`uv run --frozen python benchmarks/serving.py --clients {results['clients']} --requests "
        f"{results['requests_per_client']} --rounds {results['rounds']}` (loopback, one worker each, "
        f"{results['cores']} cores shared with other jobs; the two servers alternate in {results['rounds']} rounds).",
        "",
        "| body | server | req/s | rows/s | p50 ms | p99 ms | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in ("1_row", "100_row"):
        for name in (OURS, THEIRS):
            s = results["servers"][name][key]
            lines.append(f"| {key.replace('_', ' ')} | `{name}` | {s['requests_per_s']} | {s['rows_per_s']:,.0f} | "
                         f"{s['p50_ms']} | {s['p99_ms']} | {s['failed']} |")  # fmt: skip
    lines += [
        "",
        "| goal | figure | |",
        "|---|---|---|",
        f"| 1-row rows/s >= 3x | {f['1_row_rows_per_s_ratio']}x | {mark[met['1_row_rows_per_s_ratio']]} |",
        f"| 1-row p99 <= 1.0x | {f['1_row_p99_ratio']}x | {mark[met['1_row_p99_ratio']]} |",
        f"| 100-row rows/s >= 1.3x | {f['100_row_rows_per_s_ratio']}x | {mark[met['100_row_rows_per_s_ratio']]} |",
        f"| alias move -> first answer by the new version <= 2 s | {f['max_swap_s']} s (each: "
        f"{', '.join(str(m['swap_s']) for m in swaps['moves'])}) | {mark[met['max_swap_s']]} |",
        f"| 0 failed requests through 2 promotions, a rollback and a canary stop | {f['failed_requests']} failed of "
        f"{swaps['requests']}; canary stopped: {f['canary_stopped']} | {mark[met['failed_requests']]} |",
        "",
        f"Merging: {results.get('batching')}. Canary stop reason: {stopped.get('reason')}.",
        f"Responses per version during the swaps: {swaps['responses_per_version']}. Our server's exit code on "
        f"SIGTERM: {results['ours_exit_code']}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
