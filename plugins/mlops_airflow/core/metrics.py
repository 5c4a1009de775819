"""The metric catalogue: which metrics each kind of model computes, which way each is better, and which
fairness metrics a spec may name.

Imported at DAG-parse time (the spec schema checks metric names against it): no third-party import.
"""

from __future__ import annotations

import math
from typing import Any

#: Metrics each kind of task computes; selection, the gate and the monitor may only name these.
BINARY_METRICS = (
    "roc_auc",
    "pr_auc",
    "log_loss",
    "brier",
    "f1",
    "precision",
    "recall",
    "accuracy",
    "balanced_accuracy",
)
MULTICLASS_METRICS = ("roc_auc_ovr", "log_loss", "f1_macro", "accuracy", "balanced_accuracy")
REGRESSION_METRICS = ("rmse", "mae", "r2", "mape")
METRICS_BY_KIND = {"binary": BINARY_METRICS, "multiclass": MULTICLASS_METRICS, "regression": REGRESSION_METRICS}
#: Metrics of the binary scorer before per-kind metrics (kept for callers not yet on METRICS_BY_KIND).
CLASSIFICATION_METRICS = ("roc_auc", "log_loss", "f1", "accuracy", "brier")
#: Metrics where a smaller value is better.
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "rmse", "mae", "mape"})
#: Binary metrics that depend on the decision threshold (the others use probabilities).
THRESHOLD_METRICS = frozenset({"f1", "precision", "recall", "accuracy", "balanced_accuracy"})
DEFAULT_PRIMARY = {"binary": "roc_auc", "multiclass": "log_loss", "regression": "rmse"}

#: Group fairness metrics of fairlearn (binary models: predictions at the model's threshold).
GROUP_FAIRNESS_METRICS = ("demographic_parity_difference", "equalized_odds_difference")
#: Suffix of a per-group metric difference: ``<metric>_difference`` is the largest gap of a metric of the
#: model's kind between two groups (e.g. ``roc_auc_difference``, ``rmse_difference``).
DIFFERENCE_SUFFIX = "_difference"


def fairness_metric_names(kind: str) -> tuple[str, ...]:
    """Fairness metrics a model of this kind may name: fairlearn's group metrics (binary) and
    ``<metric>_difference`` of each of its metrics."""
    group = GROUP_FAIRNESS_METRICS if kind == "binary" else ()
    return group + tuple(f"{m}{DIFFERENCE_SUFFIX}" for m in METRICS_BY_KIND[kind])


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


def finite_or_none(value: Any) -> float | None:
    """``None`` for missing/NaN/inf, so that JSON (XCom, MLflow) never sees a NaN."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
