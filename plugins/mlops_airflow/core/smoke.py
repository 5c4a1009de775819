"""Smoke test of a registered model, run in a fresh process as a serving process would load it.

``python -m mlops_airflow.core.smoke --model-uri models:/credit_default@challenger --rows rows.parquet
--task binary --classes '[0, 1]' --max-latency-ms 5`` prints one JSON line and exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np
import pandas as pd


def check_output(output: Any, n_rows: int, task: str, classes: list[Any] | None = None) -> list[str]:
    """What is wrong with a model's output for ``n_rows`` input rows (empty if nothing).

    A model of this package answers a frame: ``prediction`` (a label among ``classes`` for a classifier)
    and, for a classifier, one ``proba_<class>`` column per class that are probabilities summing to 1.
    """
    if not isinstance(output, pd.DataFrame):
        return _check_array(np.asarray(output), n_rows, task)
    problems = []
    if len(output) != n_rows:
        problems.append(f"expected {n_rows} predictions, got {len(output)}")
    if "prediction" not in output.columns:
        return [*problems, f"no 'prediction' column (columns: {list(output.columns)})"]
    if task == "regression":
        return problems + _check_array(output["prediction"].to_numpy(), len(output), task)
    classes = list(classes or [])
    columns = [f"proba_{c}" for c in classes]
    absent = [c for c in columns if c not in output.columns]
    if absent:
        return [*problems, f"class probability column(s) {absent} missing"]
    proba = output[columns].to_numpy(dtype="float64")
    if np.isnan(proba).any():
        problems.append(f"{int(np.isnan(proba).any(axis=1).sum())} rows with NaN probabilities")
    elif ((proba < 0) | (proba > 1)).any():
        problems.append("class probabilities outside [0, 1]")
    elif not np.allclose(proba.sum(axis=1), 1.0, atol=1e-6):
        problems.append("class probabilities do not sum to 1")
    allowed = {str(c) for c in classes}
    unknown = sorted({str(v) for v in output["prediction"].tolist()} - allowed)
    if unknown:
        problems.append(f"predicted label(s) {unknown[:5]} are not among the classes {classes}")
    return problems


def _check_array(values: np.ndarray, n_rows: int, task: str) -> list[str]:
    problems = []
    if values.shape[0] != n_rows:
        problems.append(f"expected {n_rows} predictions, got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.number):
        problems.append(f"predictions are not numeric (dtype {values.dtype})")
        return problems
    if np.isnan(values.astype("float64")).any():
        problems.append(f"{int(np.isnan(values.astype('float64')).sum())} predictions are NaN")
    if task != "regression" and ((values < 0) | (values > 1)).any():
        problems.append("class probabilities outside [0, 1]")
    return problems


def smoke_test(
    model_uri: str, rows: pd.DataFrame, task: str, max_latency_ms: float, classes: list[Any] | None = None
) -> dict[str, Any]:
    """Load ``model_uri`` as pyfunc; predict on its input example and on ``rows``; time it per row."""
    import mlflow

    started = time.perf_counter()
    model = mlflow.pyfunc.load_model(model_uri)
    load_seconds = time.perf_counter() - started
    problems: list[str] = []

    example = getattr(model, "input_example", None)
    if example is None:
        problems.append("model has no logged input example")
    else:
        problems += [f"input example: {p}" for p in check_output(model.predict(example), len(example), task, classes)]

    model.predict(rows.head(5))  # warm-up: first call pays one-time costs
    timings = []
    for _ in range(5):  # the median of a few calls: one call on a busy host says little
        started = time.perf_counter()
        output = model.predict(rows)
        timings.append(time.perf_counter() - started)
    latency_ms = sorted(timings)[len(timings) // 2] * 1000 / max(len(rows), 1)
    problems += [f"evaluation rows: {p}" for p in check_output(output, len(rows), task, classes)]
    if latency_ms > max_latency_ms:
        problems.append(f"latency {latency_ms:.3f} ms/row exceeds the budget of {max_latency_ms} ms/row")
    return {
        "model_uri": model_uri,
        "passed": not problems,
        "problems": problems,
        "rows": len(rows),
        "latency_ms_per_row": round(latency_ms, 4),
        "load_seconds": round(load_seconds, 3),
    }


def serve_check(model_uri: str, rows: pd.DataFrame, timeout: float = 120.0) -> dict[str, Any]:
    """Serve the model with ``mlflow models serve --env-manager local`` on a free loopback port and post
    rows to ``/invocations``."""
    import os
    import signal
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local"]
    proc = subprocess.Popen(
        [*cmd, "-h", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{base}/ping", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    return {"served": False, "problem": f"server did not come up on {base}"}
                time.sleep(0.5)
        body = json.dumps({"dataframe_split": json.loads(rows.to_json(orient="split", index=False))})
        request = urllib.request.Request(
            f"{base}/invocations", data=body.encode(), headers={"Content-Type": "application/json"}
        )
        answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
        predictions = answer.get("predictions", answer)
        return {"served": len(predictions) == len(rows), "predictions": len(predictions), "port": port}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--rows", required=True, help="Parquet file of evaluation rows (features only)")
    parser.add_argument("--task", choices=("binary", "multiclass", "regression"), required=True)
    parser.add_argument("--classes", default="[]", help="JSON list of the label values (classifiers)")
    parser.add_argument("--max-latency-ms", type=float, required=True)
    parser.add_argument("--serve", action="store_true")
    args = parser.parse_args(argv)
    rows = pd.read_parquet(args.rows)
    result = smoke_test(args.model_uri, rows, args.task, args.max_latency_ms, json.loads(args.classes))
    if args.serve:
        result["serve"] = serve_check(args.model_uri, rows.head(20))
        if not result["serve"].get("served"):
            result["passed"] = False
            result["problems"].append(f"serving: {result['serve']}")
    print(json.dumps(result))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
