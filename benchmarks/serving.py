"""Model server throughput and latency, side by side with ``mlflow models serve`` of the same version.

Registers one version of the demo model in a private embedded store, starts ``python -m mlops_airflow.serving``
and ``mlflow models serve`` on loopback, and sends the same bodies (1 row and 100 rows) from a local load
generator: ``--clients`` threads, ``--requests`` requests each (bounded count), after a warm-up. Writes
``benchmarks/results/serving.json``.

    uv run --frozen python benchmarks/serving.py [--clients 4] [--requests 200]
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
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "serving"))  # serving_support: versions made as ct_<model> makes them
RESULTS = REPO / "benchmarks" / "results" / "serving.json"
TOKEN = "benchmark-token-0123456789abcdef"
MODEL = "credit_default"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def register(home: Path) -> str:
    """One version of the demo model, made as ``ct_<model>`` makes it (``select_candidate``'s logging, the
    gate's blessing, ``register_challenger``'s registration: the server serves proven versions only), as
    ``champion``."""
    import pandas as pd
    from serving_support import ct_version, log_pipeline

    from mlops_airflow.core import demo_data, settings
    from mlops_airflow.core.config import get_spec
    from mlops_airflow.core.signing import local_key  # the embedded default's key, as the server reads it
    from mlops_airflow.core.tracking import client_for
    from mlops_airflow.core.training import fit_final

    spec = get_spec(MODEL)
    client = client_for(settings.default_tracking_uri())
    train = pd.concat([demo_data.generate_batch(d, n_rows=1000, seed=d) for d in range(14)], ignore_index=True)
    pipeline = fit_final(spec, {"learning_rate": 0.1, "max_leaf_nodes": 31}, train)
    version = ct_version(client, spec, lambda: log_pipeline(spec, pipeline, train), signing_key=local_key())
    client.set_registered_model_alias(spec.name, "champion", version)
    return version


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


def load(url: str, body: dict[str, Any], headers: dict[str, str], clients: int, per_client: int) -> dict[str, Any]:
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    data = json.dumps(body).encode()
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

    for _ in range(3):  # warm-up
        requests.post(url, data=data, headers=headers, timeout=60)
    threads = [threading.Thread(target=run) for _ in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    latencies.sort()
    rows = len(body["dataframe_split"]["data"])
    return {
        "requests": len(latencies), "failed": failures[0], "rows_per_request": rows,
        "requests_per_s": round(len(latencies) / wall, 1), "rows_per_s": round(len(latencies) * rows / wall, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200, help="requests per client and body size")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="mlops-bench-serving-"))
    os.environ.update({"MLOPS_HOME": str(home), "MLOPS_MODELS_DIR": str(REPO / "include" / "models")})
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("MLOPS_SIGNING_KEY", None)
    from mlops_airflow.core import demo_data, settings

    version = register(home)
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.default_tracking_uri(), "MLOPS_SERVING_TOKEN": TOKEN,
           "MLOPS_SERVING_MODELS": MODEL, "OMP_NUM_THREADS": "1"}  # fmt: skip
    ours_port, mlflow_port = free_port(), free_port()
    servers = {
        "mlops_airflow.serving": start(
            [sys.executable, "-m", "mlops_airflow.serving", "--port", str(ours_port), "--log-level", "warning"],
            env, f"http://127.0.0.1:{ours_port}/ready", home / "ours.log"),
        "mlflow models serve": start(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL}/{version}",
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(mlflow_port)],
            env, f"http://127.0.0.1:{mlflow_port}/ping", home / "mlflow.log"),
    }  # fmt: skip
    targets = {
        "mlops_airflow.serving": (f"http://127.0.0.1:{ours_port}/v1/models/{MODEL}/predict",
                                  {"Authorization": f"Bearer {TOKEN}"}),
        "mlflow models serve": (f"http://127.0.0.1:{mlflow_port}/invocations", {}),
    }  # fmt: skip
    results: dict[str, Any] = {"clients": args.clients, "requests_per_client": args.requests, "cores": os.cpu_count(),
                               "model_version": version, "servers": {}}  # fmt: skip
    try:
        for rows in (1, 100):
            frame = demo_data.generate_batch(50, n_rows=rows, seed=5)
            features = [f for f in frame.columns if f not in {"application_id", "event_date", "default"}]
            split = json.loads(frame[features].to_json(orient="split", index=False))
            body = {"dataframe_split": {"columns": split["columns"], "data": split["data"]}}
            for name, (url, headers) in targets.items():
                figures = load(url, body, headers, args.clients, args.requests)
                results["servers"].setdefault(name, {})[f"{rows}_row"] = figures
                print(f"{name:24s} {rows:4d} row(s): {figures}", flush=True)
    finally:
        for proc in servers.values():
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=120)
    ours, theirs = results["servers"]["mlops_airflow.serving"], results["servers"]["mlflow models serve"]
    results["ratio_rows_per_s"] = {k: round(ours[k]["rows_per_s"] / theirs[k]["rows_per_s"], 2) for k in ours}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["ratio_rows_per_s"]))


if __name__ == "__main__":
    main()
