"""Evaluation plots: pictures that are logged to MLflow next to the numbers they show.

``y`` and ``score`` follow :mod:`mlops_airflow.core.evaluation`: encoded labels (binary 1.0 = positive,
multiclass class index) and binary P(positive), multiclass ``(n, k)`` probabilities or regression
predictions. Classes are named as in the spec. A curve that is undefined on the rows (one class present)
is left out with a note on the figure, never an exception.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, auc, confusion_matrix, precision_recall_curve, roc_curve

from mlops_airflow.core.evaluation import Target, as_encoded, as_scores, metric_value, predicted_index

#: Bar of label values that are not among the classes (or are missing) in a label distribution.
OTHER = "(other/missing)"


def _true_index(target: Target, y: np.ndarray) -> np.ndarray:
    """Class index of encoded labels (binary 1.0 is the positive class, wherever it sits in ``classes``)."""
    if target.kind == "binary":
        return np.where(y == 1.0, target.positive_index, 1 - target.positive_index)
    return y.astype("int64")


def _note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey", wrap=True)


def _diagonal(ax: Any) -> None:
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)


def _macro_roc(y: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Macro-average one-vs-rest ROC curve over the classes present (TPR averaged on a common FPR grid)."""
    curves = [roc_curve(y == c, proba[:, c]) for c in range(proba.shape[1]) if 0 < (y == c).sum() < len(y)]
    if not curves:
        return None
    grid = np.unique(np.concatenate([fpr for fpr, _, _ in curves]))
    tpr = np.mean([np.interp(grid, fpr, tpr) for fpr, tpr, _ in curves], axis=0)
    return grid, tpr


def roc_curve_figure(target: Target, y_true: Any, scores: dict[str, Any], title: str = "ROC curve") -> Figure:
    """ROC curves of one or more models (``{label: score}``) on the same rows.

    Binary: the curve of P(positive). Multiclass: the macro-average one-vs-rest curve of each model over
    the classes present, labelled with its ``roc_auc_ovr``.
    """
    if target.kind == "regression":
        raise ValueError("roc_curve_figure: a regression target has no ROC curve")
    y = as_encoded(target, y_true)
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    metric = "roc_auc" if target.kind == "binary" else "roc_auc_ovr"
    for label, score in scores.items():
        s = as_scores(target, score, len(y))
        value = metric_value(metric, y, s, target)
        if not np.isfinite(value):
            _note(ax, f"ROC undefined: {metric} needs two classes in these {len(y)} rows")
            continue
        if target.kind == "binary":
            fpr, tpr, _ = roc_curve(y, s)
        else:
            fpr, tpr = _macro_roc(y, s)  # type: ignore[misc]  # defined: auc is finite
        ax.plot(fpr, tpr, label=f"{label} ({metric} {value:.3f})")
    _diagonal(ax)
    kind = "" if target.kind == "binary" else " (macro one-vs-rest)"
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title=title + kind)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def roc_per_class_figure(target: Target, y_true: Any, proba: Any, title: str = "ROC curve per class") -> Figure:
    """Multiclass: one one-vs-rest ROC curve per class; classes absent from the rows are named, not drawn."""
    if target.kind != "multiclass":
        raise ValueError(f"roc_per_class_figure: needs a multiclass target, not {target.kind}")
    y = as_encoded(target, y_true)
    p = as_scores(target, proba, len(y))
    fig = Figure(figsize=(6, 5.5))
    ax = fig.subplots()
    absent = []
    for c, name in enumerate(target.classes):
        present = int((y == c).sum())
        if present == 0 or present == len(y):
            absent.append(str(name))
            continue
        fpr, tpr, _ = roc_curve(y == c, p[:, c])
        ax.plot(fpr, tpr, label=f"{name} vs rest (AUC {auc(fpr, tpr):.3f}, n={present})")
    _diagonal(ax)
    if absent:
        ax.set_xlabel(f"False positive rate\n(no curve for {', '.join(absent)}: absent, or the only class, here)")
    else:
        ax.set_xlabel("False positive rate")
    ax.set(ylabel="True positive rate", title=title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize="small")
    else:
        _note(ax, "ROC undefined: fewer than two classes in these rows")
    fig.tight_layout()
    return fig


def pr_curve_figure(
    target: Target, y_true: Any, scores: dict[str, Any], title: str = "Precision-recall curve"
) -> Figure:
    """Binary: precision-recall curves of P(positive) for one or more models, with the positive rate as baseline."""
    if target.kind != "binary":
        raise ValueError(f"pr_curve_figure: needs a binary target, not {target.kind}")
    y = as_encoded(target, y_true)
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    for label, score in scores.items():
        s = as_scores(target, score, len(y))
        ap = metric_value("pr_auc", y, s, target)
        if not np.isfinite(ap):
            _note(ax, f"PR curve undefined: needs both classes in these {len(y)} rows")
            continue
        precision, recall, _ = precision_recall_curve(y, s)
        ax.step(recall, precision, where="post", label=f"{label} (average precision {ap:.3f})")
    if len(y):
        ax.axhline(float(y.mean()), linestyle="--", color="grey", linewidth=1, label=f"positive rate {y.mean():.3f}")
    ax.set(xlabel=f"Recall ({target.positive!s})", ylabel="Precision", title=title, xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower left")
    fig.tight_layout()
    return fig


def confusion_matrix_figure(target: Target, y_true: Any, score: Any, threshold: float = 0.5) -> Figure:
    """Counts of true (rows) against predicted (columns) labels, named after the classes in spec order.

    Binary predictions are taken at ``threshold``; multiclass ones are the most probable class.
    """
    if target.kind == "regression":
        raise ValueError("confusion_matrix_figure: a regression target has no classes")
    y = as_encoded(target, y_true)
    s = as_scores(target, score, len(y))
    k = len(target.classes)
    matrix = confusion_matrix(_true_index(target, y), predicted_index(target, s, threshold), labels=list(range(k)))
    size = max(4.5, 0.7 * k + 2.5)
    fig = Figure(figsize=(size, size - 0.5))
    ax = fig.subplots()
    names = [str(c) for c in target.classes]
    ConfusionMatrixDisplay(matrix, display_labels=names).plot(
        ax=ax, colorbar=False, values_format="d", xticks_rotation=45 if k > 4 else "horizontal"
    )
    how = f"threshold {threshold:.3g} on P({target.positive!s})" if target.kind == "binary" else "most probable class"
    ax.set_title(f"Confusion matrix ({how})")
    fig.tight_layout()
    return fig


def residuals_figure(y_true: Any, prediction: np.ndarray) -> Figure:
    y = np.asarray(y_true, dtype="float64")
    prediction = np.asarray(prediction, dtype="float64")
    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    left.scatter(prediction, y - prediction, s=6, alpha=0.5)
    left.axhline(0, color="grey", linewidth=1)
    left.set(xlabel="Prediction", ylabel="Residual (actual - predicted)", title="Residuals")
    right.scatter(y, prediction, s=6, alpha=0.5)
    if len(y):
        lo, hi = float(min(y.min(), prediction.min())), float(max(y.max(), prediction.max()))
        right.plot([lo, hi], [lo, hi], linestyle="--", color="grey", linewidth=1)
    right.set(xlabel="Actual", ylabel="Predicted", title="Predicted vs actual")
    fig.tight_layout()
    return fig


def evaluation_figures(target: Target, y_true: Any, score: Any, threshold: float = 0.5) -> dict[str, Figure]:
    """The standard plots of a model on labelled rows, keyed by artifact file name.

    Binary: ROC, precision-recall and confusion matrix (at ``threshold``); multiclass: confusion matrix
    and one ROC curve per class; regression: residuals.
    """
    if target.kind == "binary":
        return {
            "roc_curve.png": roc_curve_figure(target, y_true, {"model": score}),
            "pr_curve.png": pr_curve_figure(target, y_true, {"model": score}),
            "confusion_matrix.png": confusion_matrix_figure(target, y_true, score, threshold),
        }
    if target.kind == "multiclass":
        return {
            "confusion_matrix.png": confusion_matrix_figure(target, y_true, score),
            "roc_curve_per_class.png": roc_per_class_figure(target, y_true, score),
        }
    y = as_encoded(target, y_true)
    return {"residuals.png": residuals_figure(y, as_scores(target, score, len(y)))}


def _class_shares(target: Target, labels: Any) -> tuple[np.ndarray, int]:
    """Share of each class (spec order) and, last, of values that are not a class; and the row count."""
    codes = target.index_of(labels)
    counts = np.bincount(np.where(codes < 0, len(target.classes), codes), minlength=len(target.classes) + 1)
    total = int(counts.sum())
    return counts / max(total, 1), total


def label_distribution_figure(
    target: Target, labels_reference: Any, labels_current: Any, title: str = "Label distribution"
) -> Figure:
    """Drift of a label (or predicted-label) distribution: share of each class, reference beside current.

    Labels are the raw values (as in the data or in the ``prediction`` column), matched to the classes as
    :meth:`~mlops_airflow.core.evaluation.Target.encode` does; values that are no class form one bar.
    A regression target is shown as two overlaid histograms on common bins.
    """
    fig = Figure(figsize=(max(5.5, 0.8 * len(target.classes) + 3), 4))
    ax = fig.subplots()
    if target.kind == "regression":
        ref = np.asarray(labels_reference, dtype="float64")
        cur = np.asarray(labels_current, dtype="float64")
        both = np.concatenate([ref, cur])
        both = both[np.isfinite(both)]
        bins: list[float] | int = np.histogram_bin_edges(both, bins=30).tolist() if len(both) else 10
        for values, name in ((ref, "reference"), (cur, "current")):
            finite = values[np.isfinite(values)]
            ax.hist(finite, bins=bins, density=True, alpha=0.5, label=f"{name} (n={len(finite)})")
        ax.set(xlabel="Value", ylabel="Density", title=title)
        ax.legend()
        fig.tight_layout()
        return fig
    ref_shares, n_ref = _class_shares(target, labels_reference)
    cur_shares, n_cur = _class_shares(target, labels_current)
    names = [str(c) for c in target.classes]
    if ref_shares[-1] > 0 or cur_shares[-1] > 0:
        names.append(OTHER)
    else:
        ref_shares, cur_shares = ref_shares[:-1], cur_shares[:-1]
    x = np.arange(len(names))
    width = 0.38
    ax.bar(x - width / 2, ref_shares, width, label=f"reference (n={n_ref})")
    ax.bar(x + width / 2, cur_shares, width, label=f"current (n={n_cur})")
    ax.set_xticks(x, names, rotation=45 if len(names) > 5 else 0)
    ax.set(ylabel="Share of rows", title=title, ylim=(0, 1))
    ax.legend()
    fig.tight_layout()
    return fig


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
    ax.set_xticks(x, names, rotation=45 if len(names) > 6 else 0)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig
