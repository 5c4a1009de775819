"""Cost of the gate's paired bootstrap: 1,000 resamples x 10,000 evaluation rows, per metric.

``uv run --frozen python benchmarks/bootstrap.py`` -> benchmarks/results/bootstrap.json. Each case is timed
``repeats`` times around :func:`~mlops_airflow.core.gate.paired_bootstrap` (both models, every resample,
the percentile interval) and its peak traced memory is recorded. For comparison, the same resamples done the
naive way (a Python loop calling scikit-learn on each resample, for both models) are timed on
``naive_resamples`` resamples and scaled to 1,000.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
from sklearn import metrics as skm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))

from mlops_airflow.core.evaluation import Target  # noqa: E402
from mlops_airflow.core.gate import paired_bootstrap  # noqa: E402

ROWS, RESAMPLES = 10_000, 1_000


def _binary(rng: np.random.Generator) -> tuple[Target, np.ndarray, np.ndarray, np.ndarray]:
    y = rng.integers(0, 2, ROWS).astype("float64")
    cand = 1 / (1 + np.exp(-(2.0 * (y - 0.5) + rng.normal(0, 1.0, ROWS))))
    champ = np.clip(cand + rng.normal(0, 0.1, ROWS), 0.001, 0.999)
    return Target("binary", (0, 1)), y, cand, champ  # continuous scores: about one rank group per row


def _multiclass(rng: np.random.Generator) -> tuple[Target, np.ndarray, np.ndarray, np.ndarray]:
    y = rng.integers(0, 3, ROWS)

    def proba(signal: float) -> np.ndarray:
        logits = rng.normal(0, 1.0, (ROWS, 3))
        logits[np.arange(ROWS), y] += signal
        return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)

    return Target("multiclass", ("low", "mid", "high")), y, proba(1.5), proba(1.2)


def _naive(metric: str, target: Target, y: np.ndarray, cand: np.ndarray, champ: np.ndarray, resamples: int) -> float:
    """Seconds for ``resamples`` resamples the slow way: index the rows, call sklearn for both models."""

    def value(yy: np.ndarray, ss: np.ndarray) -> float:
        if metric == "roc_auc":
            return float(skm.roc_auc_score(yy, ss))
        if metric == "roc_auc_ovr":
            return float(skm.roc_auc_score(yy, ss, multi_class="ovr", labels=[0, 1, 2]))
        labels = [0, 1, 2] if target.kind == "multiclass" else [0.0, 1.0]
        return float(skm.log_loss(yy, ss, labels=labels))

    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(resamples):
        idx = rng.integers(0, len(y), len(y))
        value(y[idx], cand[idx]) - value(y[idx], champ[idx])
    return time.perf_counter() - start


def case(kind: str, metric: str, repeats: int, naive_resamples: int) -> dict[str, Any]:
    rng = np.random.default_rng(42)
    target, y, cand, champ = (_binary if kind == "binary" else _multiclass)(rng)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = paired_bootstrap(y, cand, champ, metric, target=target, n_resamples=RESAMPLES, seed=0)
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    paired_bootstrap(y, cand, champ, metric, target=target, n_resamples=RESAMPLES, seed=0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    naive = _naive(metric, target, y, cand, champ, naive_resamples) * RESAMPLES / naive_resamples
    return {
        "kind": kind,
        "metric": metric,
        "rows": ROWS,
        "resamples": RESAMPLES,
        "seconds_median": round(statistics.median(times), 3),
        "seconds_max": round(max(times), 3),
        "peak_traced_mb": round(peak / 2**20, 1),
        "naive_sklearn_loop_seconds_estimate": round(naive, 1),
        "interval": [round(result.lower, 5), round(result.upper, 5)],
    }


def main(repeats: int = 3, naive_resamples: int = 50) -> dict[str, Any]:
    cases = [("binary", "roc_auc"), ("multiclass", "roc_auc_ovr"), ("binary", "log_loss"), ("multiclass", "log_loss")]
    result = {
        "what": "paired_bootstrap (candidate and champion on the same resamples), wall seconds",
        "repeats": repeats,
        "naive_resamples_timed": naive_resamples,
        "cases": [case(kind, metric, repeats, naive_resamples) for kind, metric in cases],
    }
    (REPO / "benchmarks" / "results" / "bootstrap.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
