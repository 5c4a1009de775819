"""Evaluation plots: pictures that are logged to MLflow next to the numbers they show."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure


def roc_curve_figure(y_true: Any, scores: dict[str, np.ndarray], title: str = "ROC curve") -> Figure:
    """ROC curves of one or more models (``{label: positive-class probability}``) on the same rows."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    for label, score in scores.items():
        fpr, tpr, _ = roc_curve(y_true, score)
        ax.plot(fpr, tpr, label=f"{label} (AUC {roc_auc_score(y_true, score):.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def confusion_matrix_figure(y_true: Any, score: np.ndarray, threshold: float = 0.5) -> Figure:
    from sklearn.metrics import ConfusionMatrixDisplay

    fig = Figure(figsize=(4.5, 4))
    ax = fig.subplots()
    ConfusionMatrixDisplay.from_predictions(np.asarray(y_true), (score >= threshold).astype(int), ax=ax, colorbar=False)
    ax.set_title(f"Confusion matrix (threshold {threshold})")
    fig.tight_layout()
    return fig


def residuals_figure(y_true: Any, prediction: np.ndarray) -> Figure:
    y = np.asarray(y_true, dtype="float64")
    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    left.scatter(prediction, y - prediction, s=6, alpha=0.5)
    left.axhline(0, color="grey", linewidth=1)
    left.set(xlabel="Prediction", ylabel="Residual (actual - predicted)", title="Residuals")
    right.scatter(y, prediction, s=6, alpha=0.5)
    lo, hi = float(min(y.min(), prediction.min())), float(max(y.max(), prediction.max()))
    right.plot([lo, hi], [lo, hi], linestyle="--", color="grey", linewidth=1)
    right.set(xlabel="Actual", ylabel="Predicted", title="Predicted vs actual")
    fig.tight_layout()
    return fig


def evaluation_figures(task: str, y_true: Any, score: np.ndarray) -> dict[str, Figure]:
    """The standard plots of a task, keyed by artifact file name."""
    if task == "classification":
        return {
            "roc_curve.png": roc_curve_figure(y_true, {"model": score}),
            "confusion_matrix.png": confusion_matrix_figure(y_true, score),
        }
    return {"residuals.png": residuals_figure(y_true, score)}


def metric_comparison_figure(
    candidate: dict[str, float], champion: dict[str, float] | None, title: str = "Candidate vs champion"
) -> Figure:
    """Side-by-side bars of each metric for the candidate and (if any) the champion."""
    names = sorted(candidate)
    fig = Figure(figsize=(1.4 * len(names) + 2, 4))
    ax = fig.subplots()
    x = np.arange(len(names))
    width = 0.38
    ax.bar(x - width / 2, [candidate[n] for n in names], width, label="candidate")
    if champion:
        ax.bar(x + width / 2, [champion.get(n, np.nan) for n in names], width, label="champion")
    ax.set_xticks(x, names)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig
