"""Smoke test of a registered model, run in a fresh process as a serving process would load it.

``python -m mlops_airflow.core.smoke --model-uri models:/credit_default@challenger --rows rows.parquet
--task binary --classes '[0, 1]' --max-latency-ms 5`` prints one JSON line and exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import json
import os
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
    """Load ``model_uri`` as the model server does (download, then ``mlflow.pyfunc.load_model``); predict on
    its input example and on ``rows``; time it per row.

    MLflow's own check of the model's pinned requirements at load (a warning on stderr, which nobody reads here)
    first maps every module of every installed distribution (about 0.3 s of CPU beside Airflow's packages);
    :func:`requirement_mismatches` compares the pins with the installed versions directly, and the result keeps
    what it finds.
    """
    import tempfile

    import mlflow

    scratch = tempfile.TemporaryDirectory(prefix="mlops-smoke-")  # the model's copy, kept until the checks end
    try:
        started = time.perf_counter()
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=scratch.name)
        model = mlflow.pyfunc.load_model(local, suppress_warnings=True)
        load_seconds = time.perf_counter() - started
        result = _check_model(model, rows, task, max_latency_ms, classes)
        result["requirement_mismatches"] = requirement_mismatches(local)
    finally:
        scratch.cleanup()
    return {"model_uri": model_uri, **result, "load_seconds": round(load_seconds, 3)}


def _check_model(
    model: Any, rows: pd.DataFrame, task: str, max_latency_ms: float, classes: list[Any] | None
) -> dict[str, Any]:
    """Predict on the model's input example and on ``rows``: what is wrong, and the median latency per row."""
    problems: list[str] = []

    example = getattr(model, "input_example", None)
    if example is None:
        problems.append("model has no logged input example")
        model.predict(rows.head(5))  # warm-up: the first call pays one-time costs
    else:  # the input example's call is the warm-up
        problems += [f"input example: {p}" for p in check_output(model.predict(example), len(example), task, classes)]

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
        "passed": not problems,
        "problems": problems,
        "rows": len(rows),
        "latency_ms_per_row": round(latency_ms, 4),
    }


def requirement_mismatches(model_dir: str) -> list[str]:
    """The model's pinned requirements (``requirements.txt``, ``name==version`` lines) this interpreter does not
    satisfy, each as ``"<pin> (installed: <version or none>)"``; other lines are not judged."""
    import re
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    path = Path(model_dir) / "requirements.txt"
    if not path.is_file():
        return []
    found = []
    for line in path.read_text().splitlines():
        pin = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)\s*", line)
        if pin is None:
            continue
        try:
            installed = version(pin[1])
        except PackageNotFoundError:
            installed = "none"
        if installed != pin[2]:
            found.append(f"{pin[1]}=={pin[2]} (installed: {installed})")
    return found


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
    # MLflow draws a progress bar on stderr for the model's download; this process's stderr is for errors.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
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
