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


def compute_metrics(task: str, y_true: Any, score: np.ndarray) -> dict[str, float]:
    """Every metric of the task (see :data:`~mlops_airflow.core.config.CLASSIFICATION_METRICS`)."""
    from mlops_airflow.core.gate import metric_value

    y = np.asarray(y_true)
    return {name: float(metric_value(name, y, score)) for name in metric_names(task)}
