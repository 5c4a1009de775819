"""Evaluation plots (core/reports.py) for each kind of target: which figures, what they show, never a crash.

No image snapshots: the tests read what was drawn (tick labels, cell counts, curves, bar heights) and render
each figure to PNG bytes, which is what MLflow stores.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.figure import Figure

from mlops_airflow.core.evaluation import Target
from mlops_airflow.core.reports import (
    OTHER,
    confusion_matrix_figure,
    evaluation_figures,
    label_distribution_figure,
    metric_comparison_figure,
    pr_curve_figure,
    roc_curve_figure,
    roc_per_class_figure,
)

BINARY = Target("binary", ("malignant", "benign"), positive_index=0)
FOUR = Target("multiclass", ("risk_a", "risk_b", "risk_c", "risk_d"))


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _binary_rows(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n).astype("float64")
    return y, np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, n), 0, 1)


def _multiclass_rows(n: int = 200, absent: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    present = np.array([c for c in range(4) if c != absent])
    y = present[rng.integers(0, len(present), n)]
    logits = rng.normal(0, 1, (n, 4))
    logits[np.arange(n), y] += 1.5
    return y, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def _cells(fig: Figure) -> np.ndarray:
    return np.asarray(fig.axes[0].images[0].get_array())


def _ticks(labels: list) -> list[str]:
    return [t.get_text() for t in labels]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (BINARY, {"roc_curve.png", "pr_curve.png", "confusion_matrix.png"}),
        (FOUR, {"confusion_matrix.png", "roc_curve_per_class.png"}),
        (Target("regression", ()), {"residuals.png"}),
    ],
)
def test_evaluation_figures_per_kind(target: Target, expected: set[str]) -> None:
    if target.kind == "binary":
        y, score = _binary_rows()
    elif target.kind == "multiclass":
        y, score = _multiclass_rows()
    else:
        y = np.random.default_rng(2).normal(size=200)
        score = y + 0.3
    figures = evaluation_figures(target, y, score, threshold=0.5)
    assert set(figures) == expected
    for fig in figures.values():
        assert _png(fig).startswith(b"\x89PNG")


def test_binary_confusion_matrix_names_classes_and_uses_the_threshold() -> None:
    y = np.array([1.0, 1.0, 0.0, 0.0, 0.0])  # 1.0 = the positive class "malignant", listed first
    score = np.array([0.9, 0.4, 0.35, 0.2, 0.1])
    low = confusion_matrix_figure(BINARY, y, score, threshold=0.3)
    assert _ticks(low.axes[0].get_xticklabels()) == ["malignant", "benign"]
    assert _ticks(low.axes[0].get_yticklabels()) == ["malignant", "benign"]
    np.testing.assert_array_equal(_cells(low), [[2, 0], [1, 2]])  # rows: true; columns: predicted
    high = confusion_matrix_figure(BINARY, y, score, threshold=0.5)
    np.testing.assert_array_equal(_cells(high), [[1, 1], [0, 3]])
    assert "threshold 0.5" in high.axes[0].get_title()


def test_multiclass_confusion_matrix_has_every_class_even_absent_ones() -> None:
    y, proba = _multiclass_rows(absent=2)
    fig = confusion_matrix_figure(FOUR, y, proba)
    assert _ticks(fig.axes[0].get_xticklabels()) == list(FOUR.classes)
    cells = _cells(fig)
    assert cells.shape == (4, 4) and cells.sum() == len(y)
    assert cells[2].sum() == 0  # no row is truly risk_c
    np.testing.assert_array_equal(cells.sum(axis=1), np.bincount(y, minlength=4))


def test_roc_per_class_draws_present_classes_and_names_absent() -> None:
    y, proba = _multiclass_rows(absent=2)
    fig = roc_per_class_figure(FOUR, y, proba)
    ax = fig.axes[0]
    legend = _ticks(ax.get_legend().get_texts())
    assert [text.split(" vs rest")[0] for text in legend] == ["risk_a", "risk_b", "risk_d"]
    assert "risk_c" in ax.get_xlabel()
    assert len(ax.get_lines()) == 4  # three classes and the diagonal


def test_roc_curve_figure_candidate_vs_champion_for_each_kind() -> None:
    y, score = _binary_rows()
    binary = roc_curve_figure(BINARY, y, {"candidate": score, "champion": 1 - score})
    legend = _ticks(binary.axes[0].get_legend().get_texts())
    assert legend[0].startswith("candidate (roc_auc 0.") and legend[1].startswith("champion (roc_auc 0.")
    y3, proba = _multiclass_rows(absent=0)
    multi = roc_curve_figure(FOUR, y3, {"candidate": proba, "champion": proba[:, ::-1]})
    assert [t.split(" (")[0] for t in _ticks(multi.axes[0].get_legend().get_texts())] == ["candidate", "champion"]
    assert "macro one-vs-rest" in multi.axes[0].get_title()
    with pytest.raises(ValueError, match="regression target has no ROC"):
        roc_curve_figure(Target("regression", ()), y, {"model": score})


def test_pr_curve_of_the_positive_class() -> None:
    y, score = _binary_rows()
    fig = pr_curve_figure(BINARY, y, {"model": score})
    texts = _ticks(fig.axes[0].get_legend().get_texts())
    assert texts[0].startswith("model (average precision")
    assert f"positive rate {y.mean():.3f}" in texts[1]
    assert "malignant" in fig.axes[0].get_xlabel()


def test_one_class_rows_give_a_figure_not_an_error() -> None:
    y, score = np.ones(20), np.linspace(0.1, 0.9, 20)
    for fig in evaluation_figures(BINARY, y, score).values():
        _png(fig)
    y3 = np.zeros(20, dtype="int64")
    proba = np.full((20, 4), 0.25)
    for fig in evaluation_figures(FOUR, y3, proba).values():
        _png(fig)
    _png(roc_curve_figure(FOUR, y3, {"candidate": proba}))


def test_label_distribution_shares_per_class_with_other_values() -> None:
    reference = ["risk_a"] * 50 + ["risk_b"] * 30 + ["risk_c"] * 20
    current = ["risk_a"] * 10 + ["risk_d"] * 30 + ["unknown"] * 10
    fig = label_distribution_figure(FOUR, reference, current, title="Predicted label")
    ax = fig.axes[0]
    assert _ticks(ax.get_xticklabels()) == [*FOUR.classes, OTHER]
    heights = [bar.get_height() for bar in ax.patches]
    np.testing.assert_allclose(heights[:5], [0.5, 0.3, 0.2, 0.0, 0.0])  # reference
    np.testing.assert_allclose(heights[5:], [0.2, 0.0, 0.0, 0.6, 0.2])  # current
    assert _ticks(ax.get_legend().get_texts()) == ["reference (n=100)", "current (n=50)"]
    _png(fig)


def test_label_distribution_binary_without_other_and_regression() -> None:
    fig = label_distribution_figure(BINARY, ["benign", "malignant", "benign"], ["malignant"] * 4)
    assert _ticks(fig.axes[0].get_xticklabels()) == ["malignant", "benign"]
    np.testing.assert_allclose([b.get_height() for b in fig.axes[0].patches], [1 / 3, 2 / 3, 1.0, 0.0])
    rng = np.random.default_rng(3)
    hist = label_distribution_figure(Target("regression", ()), rng.normal(size=300), rng.normal(1, 1, 200))
    assert _ticks(hist.axes[0].get_legend().get_texts()) == ["reference (n=300)", "current (n=200)"]
    _png(hist)


def test_metric_comparison_with_and_without_champion() -> None:
    candidate = {"f1_macro": 0.7, "log_loss": 0.8, "accuracy": 0.75}
    _png(metric_comparison_figure(candidate, {"f1_macro": 0.6, "log_loss": float("nan")}))
    _png(metric_comparison_figure(candidate, None))
