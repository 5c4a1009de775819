"""Scoring and metrics of a fitted model on a labelled frame."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlops_airflow.core.config import CLASSIFICATION_METRICS, REGRESSION_METRICS


def predict_scores(model: Any, x: pd.DataFrame, task: str) -> np.ndarray:
    """Probability of the positive class (classification) or the prediction (regression).

    Works for an sklearn Pipeline and for an MLflow pyfunc model (whose ``predict`` of a classifier that
    was logged with ``pyfunc_predict_fn="predict_proba"`` returns both class probabilities).
    """
    if task == "classification":
        if hasattr(model, "predict_proba"):
            proba = model.predict_proba(x)
        else:
            proba = model.predict(x)
        proba = np.asarray(proba, dtype="float64")
        return proba[:, 1] if proba.ndim == 2 else proba
    return np.asarray(model.predict(x), dtype="float64").ravel()


def metric_names(task: str) -> tuple[str, ...]:
    return CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS


def metric_value(metric: str, y_true: Any, score: Any) -> float:
    """One metric; ``score`` is the positive-class probability (classification) or the prediction.

    F1 and accuracy threshold the probability at 0.5. A metric that is undefined on these rows (ROC AUC
    with a single class) is NaN, which the gate treats as a failure.
    """
    from sklearn import metrics as m

    y = np.asarray(y_true)
    s = np.asarray(score, dtype="float64")
    if metric == "roc_auc":
        return float(m.roc_auc_score(y, s)) if len(np.unique(y)) == 2 else float("nan")
    if metric == "log_loss":
        return float(m.log_loss(y, np.clip(s, 1e-15, 1 - 1e-15), labels=[0, 1]))
    if metric == "brier":
        return float(m.brier_score_loss(y, s))
    if metric == "f1":
        return float(m.f1_score(y, (s >= 0.5).astype(int), zero_division=0))
    if metric == "accuracy":
        return float(m.accuracy_score(y, (s >= 0.5).astype(int)))
    if metric == "rmse":
        return float(np.sqrt(m.mean_squared_error(y, s)))
    if metric == "mae":
        return float(m.mean_absolute_error(y, s))
    if metric == "r2":
        return float(m.r2_score(y, s))
    raise ValueError(f"unknown metric {metric!r}")


def compute_metrics(task: str, y_true: Any, score: np.ndarray) -> dict[str, float]:
    """Every metric of the task (see :data:`~mlops_airflow.core.config.CLASSIFICATION_METRICS`)."""
    y = np.asarray(y_true)
    return {name: float(metric_value(name, y, score)) for name in metric_names(task)}
