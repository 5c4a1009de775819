"""Metrics (core/evaluation.py): every metric against scikit-learn's own, label encoding, threshold choice."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import yaml
from sklearn import metrics as skm

from mlops_airflow.core.config import models_dir, parse_model_spec
from mlops_airflow.core.evaluation import Target, _label_key, choose_threshold, compute_metrics, metric_value
from mlops_airflow.core.metrics import BINARY_METRICS, MULTICLASS_METRICS, REGRESSION_METRICS

# ------------------------------------------------------------------------------------------------ data


def binary_data(n: int = 600, seed: int = 0) -> tuple[Target, np.ndarray, np.ndarray]:
    """String labels whose positive label ("bad") is the FIRST value and sorts first: sklearn's default
    positive would be "good", so a metric that ignores ``positive_index`` disagrees with the reference."""
    rng = np.random.default_rng(seed)
    target = Target("binary", ("bad", "good"), positive_index=0)
    labels = rng.choice(np.array(["bad", "good"], dtype=object), n, p=[0.3, 0.7])
    p_bad = 1 / (1 + np.exp(-(1.5 * (labels == "bad") - 0.8 + rng.normal(0, 1.2, n))))
    return target, labels, np.round(p_bad, 2)  # rounded: tied scores, which AUC counts as half


def multiclass_data(classes: tuple[Any, ...], n: int, seed: int, absent: Any = None) -> tuple[Target, Any, Any]:
    """Labels (``absent`` never occurs) and a probability matrix in spec order that tracks them a little."""
    rng = np.random.default_rng(seed)
    target = Target("multiclass", classes)
    present = [c for c in classes if c != absent]
    labels = np.array(present)[rng.integers(0, len(present), n)]
    logits = rng.normal(0, 1.0, (n, len(classes)))
    logits[np.arange(n), target.encode(labels)] += 1.0
    if absent is not None:
        # never predicted either: sklearn's f1_macro then leaves the class out of its average
        logits[:, classes.index(absent)] -= 10.0
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return target, labels, proba


def sklearn_binary(metric: str, labels: np.ndarray, p: np.ndarray, target: Target, threshold: float) -> float:
    pos, other = target.classes[target.positive_index], target.classes[1 - target.positive_index]
    predicted = np.where(p >= threshold, pos, other).astype(object)
    column_of = {c: (p if c == pos else 1 - p) for c in target.classes}
    reference: dict[str, Callable[[], float]] = {
        "roc_auc": lambda: skm.roc_auc_score(labels == pos, p),
        "pr_auc": lambda: skm.average_precision_score(labels, p, pos_label=pos),
        "log_loss": lambda: skm.log_loss(labels, np.column_stack([column_of[c] for c in sorted(target.classes)])),
        "brier": lambda: skm.brier_score_loss(labels, p, pos_label=pos),
        "f1": lambda: skm.f1_score(labels, predicted, pos_label=pos, zero_division=0),
        "precision": lambda: skm.precision_score(labels, predicted, pos_label=pos, zero_division=0),
        "recall": lambda: skm.recall_score(labels, predicted, pos_label=pos, zero_division=0),
        "accuracy": lambda: skm.accuracy_score(labels, predicted),
        "balanced_accuracy": lambda: skm.balanced_accuracy_score(labels, predicted),
    }
    return float(reference[metric]())


def sklearn_multiclass(metric: str, labels: np.ndarray, proba: np.ndarray, target: Target) -> float:
    classes = list(target.classes)
    predicted = np.array(classes)[proba.argmax(axis=1)]
    if metric == "roc_auc_ovr":
        present = [i for i, c in enumerate(classes) if (labels == c).any()]
        if len(present) == len(classes):
            return float(
                skm.roc_auc_score(labels, proba[:, np.argsort(classes)], multi_class="ovr", labels=sorted(classes))
            )
        return float(np.mean([skm.roc_auc_score(labels == classes[i], proba[:, i]) for i in present]))
    if metric == "log_loss":
        # sklearn reads the probability columns in sorted label order
        return float(skm.log_loss(labels, proba[:, np.argsort(classes)], labels=sorted(classes)))
    if metric == "f1_macro":
        return float(skm.f1_score(labels, predicted, average="macro", zero_division=0))
    if metric == "accuracy":
        return float(skm.accuracy_score(labels, predicted))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        return float(skm.balanced_accuracy_score(labels, predicted))


# --------------------------------------------------------------------------------------------- binary


@pytest.mark.parametrize("threshold", [0.5, 0.37])
@pytest.mark.parametrize("metric", BINARY_METRICS)
def test_binary_metric_equals_sklearn_with_string_labels_and_first_positive(metric: str, threshold: float) -> None:
    target, labels, p = binary_data()
    expected = sklearn_binary(metric, labels, p, target, threshold)
    assert metric_value(metric, target.encode(labels), p, target, threshold) == pytest.approx(expected, rel=1e-10)
    # raw (string) labels are encoded on the way in
    assert metric_value(metric, labels, p, target, threshold) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("decimals", [None, 2, 1])
@pytest.mark.parametrize("metric", ["roc_auc", "pr_auc"])
def test_ranking_metrics_with_and_without_tied_scores(metric: str, decimals: int | None) -> None:
    target, labels, _ = binary_data()
    p = np.random.default_rng(1).uniform(size=len(labels)) * 0.5 + 0.4 * (labels == "bad")
    p = p if decimals is None else np.round(p, decimals)
    assert metric_value(metric, labels, p, target) == pytest.approx(sklearn_binary(metric, labels, p, target, 0.5))


def test_binary_positive_label_decides_the_direction() -> None:
    """The same rows and scores, read with the other label as positive, give the mirrored AUC."""
    target, labels, p = binary_data()
    flipped = Target("binary", ("bad", "good"), positive_index=1)
    auc = metric_value("roc_auc", target.encode(labels), p, target)
    assert metric_value("roc_auc", flipped.encode(labels), 1 - p, flipped) == pytest.approx(auc)
    assert metric_value("roc_auc", flipped.encode(labels), p, flipped) == pytest.approx(1 - auc)


def test_binary_int_and_bool_labels() -> None:
    rng = np.random.default_rng(3)
    y01 = rng.integers(0, 2, 300)
    p = rng.uniform(size=300)
    ints, bools = Target("binary", (0, 1)), Target("binary", (False, True))
    expected = skm.roc_auc_score(y01, p)
    assert metric_value("roc_auc", ints.encode(y01), p, ints) == pytest.approx(expected)
    assert metric_value("roc_auc", y01.astype(bool), p, bools) == pytest.approx(expected)


def test_compute_metrics_binary_has_every_metric() -> None:
    target, labels, p = binary_data()
    result = compute_metrics(target, target.encode(labels), p, threshold=0.4)
    assert tuple(result) == BINARY_METRICS
    assert result["f1"] == pytest.approx(sklearn_binary("f1", labels, p, target, 0.4))
    # a (n, 2) probability matrix in class order is read at the positive column
    matrix = compute_metrics(target, target.encode(labels), np.column_stack([p, 1 - p]), threshold=0.4)
    assert matrix == pytest.approx(result)


# ----------------------------------------------------------------------------------------- multiclass


CASES = [
    ((2, 0, 1), None),  # ints in a non-sorted spec order
    (("low", "mid", "high"), "mid"),  # 3 classes, one absent from y
    (("e", "b", "d", "a", "c"), None),
    (("e", "b", "d", "a", "c"), "d"),  # 5 classes, one absent from y
]


@pytest.mark.parametrize(("classes", "absent"), CASES)
@pytest.mark.parametrize("metric", MULTICLASS_METRICS)
def test_multiclass_metric_equals_sklearn(metric: str, classes: tuple, absent: Any) -> None:
    target, labels, proba = multiclass_data(classes, n=500, seed=len(classes), absent=absent)
    expected = sklearn_multiclass(metric, labels, proba, target)
    assert metric_value(metric, target.encode(labels), proba, target) == pytest.approx(expected, rel=1e-10)


def test_multiclass_absent_class_changes_which_classes_are_averaged() -> None:
    """roc_auc_ovr is the macro over the classes PRESENT; sklearn itself answers NaN for such a batch."""
    target, labels, proba = multiclass_data(("low", "mid", "high"), n=300, seed=1, absent="mid")
    y = target.encode(labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Only one class is present in y_true"
        assert math.isnan(
            skm.roc_auc_score(labels, proba[:, [2, 0, 1]], multi_class="ovr", labels=["high", "low", "mid"])
        )
    two = np.mean([skm.roc_auc_score(y == i, proba[:, i]) for i in (0, 2)])
    assert metric_value("roc_auc_ovr", y, proba, target) == pytest.approx(two)


def test_multiclass_batch_with_one_class_is_nan_where_undefined_never_raises() -> None:
    target = Target("multiclass", ("a", "b", "c"))
    proba = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    result = compute_metrics(target, ["a", "a", "a"], proba)
    assert math.isnan(result["roc_auc_ovr"])
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["log_loss"] == pytest.approx(-np.mean(np.log([0.7, 0.2, 0.6])))
    assert result["balanced_accuracy"] == pytest.approx(2 / 3)  # recall of "a", the only class in y
    assert result["f1_macro"] == pytest.approx((0.8 + 0.0) / 2)  # "a" (2tp/(3+2)) and "b" (predicted only)


# ----------------------------------------------------------------------------------------- regression


@pytest.mark.parametrize(
    ("metric", "reference"),
    [
        ("rmse", skm.root_mean_squared_error),
        ("mae", skm.mean_absolute_error),
        ("r2", skm.r2_score),
        ("mape", skm.mean_absolute_percentage_error),
    ],
)
def test_regression_metric_equals_sklearn(metric: str, reference: Callable[..., float]) -> None:
    rng = np.random.default_rng(5)
    y = rng.gamma(2.0, 50.0, 400)
    y[:3] = 0.0  # MAPE divides by max(|y|, eps), as sklearn does
    prediction = y + rng.normal(0, 20, 400)
    target = Target("regression", ())
    assert metric in REGRESSION_METRICS
    assert metric_value(metric, y, prediction, target) == pytest.approx(reference(y, prediction), rel=1e-10)


# ------------------------------------------------------------------------------------ undefined, errors


@pytest.mark.parametrize("metric", ["roc_auc", "pr_auc"])
def test_ranking_metrics_are_nan_with_one_class(metric: str) -> None:
    target = Target("binary", (0, 1))
    assert math.isnan(metric_value(metric, [1.0, 1.0, 1.0], [0.2, 0.5, 0.9], target))
    assert math.isnan(metric_value(metric, [0.0, 0.0], [0.2, 0.5], target))


def test_undefined_values_are_nan() -> None:
    regression = Target("regression", ())
    assert math.isnan(metric_value("r2", [2.0, 2.0, 2.0], [1.0, 2.0, 3.0], regression))
    binary = Target("binary", (0, 1))
    assert all(math.isnan(v) for v in compute_metrics(binary, [0.0, 1.0], [0.2, float("nan")]).values())
    assert all(math.isnan(v) for v in compute_metrics(binary, [], []).values())


def test_metric_of_another_kind_or_wrong_shape_raises() -> None:
    with pytest.raises(ValueError, match="'roc_auc' does not fit a multiclass target"):
        metric_value("roc_auc", [0, 1, 2], np.eye(3), Target("multiclass", (0, 1, 2)))
    with pytest.raises(ValueError, match=r"multiclass scores must have shape \(3, 3\)"):
        metric_value("log_loss", [0, 1, 2], [0.1, 0.2, 0.3], Target("multiclass", (0, 1, 2)))
    with pytest.raises(ValueError, match=r"encoded 1\.0"):
        metric_value("roc_auc", [0, 2, 1], [0.1, 0.2, 0.3], Target("binary", (1, 2)))


# -------------------------------------------------------------------------------------------- encoding


def test_encode_string_labels_positive_first() -> None:
    target = Target("binary", ("yes", "no"), positive_index=0)
    np.testing.assert_array_equal(target.encode(["no", "yes", "yes"]), [0.0, 1.0, 1.0])
    assert target.encode(np.array(["yes"])).dtype == np.float64
    assert target.proba_columns() == ["proba_yes", "proba_no"]


def test_encode_multiclass_index_and_numpy_scalars() -> None:
    target = Target("multiclass", (3, 1, 2))
    codes = target.encode(np.array([1, 2, 3, 3], dtype="int64"))
    np.testing.assert_array_equal(codes, [1, 2, 0, 0])
    assert codes.dtype == np.int64
    np.testing.assert_array_equal(target.encode([np.int64(2), 1.0, np.int32(3)]), [2, 1, 0])
    assert target.proba_columns() == ["proba_3", "proba_1", "proba_2"]
    assert Target("binary", (False, True)).proba_columns() == ["proba_False", "proba_True"]


@pytest.mark.parametrize(
    ("classes", "labels", "named"),
    [
        ((0, 1), ["1", "0"], "'1'"),  # strings are not ints
        ((0, 1), [True, 1], "True"),  # booleans are not ints
        ((False, True), [1, 0], "0"),  # ints are not booleans
        (("0", "1"), np.array([0, 1]), "0"),
        (("yes", "no"), ["yes", "maybe", None], "'maybe'"),
    ],
)
def test_encode_rejects_values_not_among_classes(classes: tuple, labels: Any, named: str) -> None:
    target = Target("binary", classes)
    with pytest.raises(ValueError, match="not among the classes") as err:
        target.encode(labels)
    assert named in str(err.value) and str(list(classes)) in str(err.value)


def test_target_of_spec_uses_label_values_and_positive() -> None:
    data = yaml.safe_load((models_dir() / "credit_default.yaml").read_text())
    data["label"] = {"name": "default", "values": ["malignant", "benign"], "positive": "malignant"}
    target = Target.of(parse_model_spec(data))
    assert target == Target("binary", ("malignant", "benign"), positive_index=0)
    data["label"] = {"name": "default", "values": ["no", "yes"]}
    assert Target.of(parse_model_spec(data)).positive == "yes"  # default: the second value
    data["label"] = {"name": "default", "values": ["a", "b", "c"]}
    data["primary_metric"], data["gate"]["thresholds"] = "log_loss", {}
    assert Target.of(parse_model_spec(data)).kind == "multiclass"


def test_target_rejects_inconsistent_definition() -> None:
    with pytest.raises(ValueError, match="multiclass target cannot have 2 classes"):
        Target("multiclass", ("a", "b"))
    with pytest.raises(ValueError, match="not distinct"):
        Target("binary", (1, 1.0))


# ------------------------------------------------------------------------------------------- threshold

# 2 positives (0.9, 0.5) among 10 negatives, three of them (0.7, 0.6, 0.55) above the second positive.
# At 0.9: F1 = 2/3, TPR - FPR = 0.5; at 0.5: F1 = 4/7, TPR - FPR = 1 - 0.3 = 0.7. Every other threshold
# is worse on both: F1 picks 0.9, Youden picks 0.5.
KNOWN_P = np.array([0.9, 0.5, 0.7, 0.6, 0.55, 0.1, 0.12, 0.14, 0.16, 0.18, 0.2, 0.22])
KNOWN_Y = np.array([1, 1] + [0] * 10, dtype="float64")


@pytest.mark.parametrize(("how", "expected"), [("f1", 0.9), ("youden", 0.5)])
def test_choose_threshold_known_answer(how: str, expected: float) -> None:
    assert choose_threshold(KNOWN_Y, KNOWN_P, how) == pytest.approx(expected)


@pytest.mark.parametrize("how", ["f1", "youden"])
def test_choose_threshold_is_the_best_distinct_score(how: str) -> None:
    target, labels, p = binary_data(n=400, seed=9)
    y = target.encode(labels)
    chosen = choose_threshold(y, p, how)
    assert 0.0 < chosen < 1.0 and chosen in set(p.tolist())

    def objective(t: float) -> float:
        if how == "f1":
            return metric_value("f1", y, p, target, t)
        return 2 * metric_value("balanced_accuracy", y, p, target, t) - 1  # = TPR - FPR

    best = max(objective(t) for t in np.unique(p))
    assert objective(chosen) == pytest.approx(best)


def test_choose_threshold_degenerate_and_edges() -> None:
    assert choose_threshold(np.ones(5), np.linspace(0.1, 0.9, 5), "f1") == 0.5
    assert choose_threshold(np.zeros(5), np.linspace(0.1, 0.9, 5), "youden") == 0.5
    # a perfect separator at score 1.0 still gives a threshold inside (0, 1)
    chosen = choose_threshold(np.array([0.0, 0.0, 1.0]), np.array([0.0, 0.3, 1.0]), "f1")
    assert 0.3 < chosen < 1.0
    with pytest.raises(ValueError, match="not one of"):
        choose_threshold(KNOWN_Y, KNOWN_P, "accuracy")


def test_label_lookup_of_one_type_matches_the_value_by_value_rule():
    """Object arrays of one Python type go through a hash of distinct labels; mixed ones value by value.
    Both keep ``True``, ``1`` and ``"1"`` apart."""
    rng = np.random.default_rng(3)
    cases = [
        (Target("binary", (0, 1), 1), rng.integers(0, 3, 5_000).astype(object)),  # 2 is not a class
        (
            Target("binary", ("benign", "malignant"), 1),
            rng.choice(["benign", "malignant", "other"], 5_000).astype(object),
        ),
        (Target("binary", (False, True), 1), rng.choice([True, False], 5_000).astype(object)),
        (Target("multiclass", (1, "1", True)), np.array([1, "1", True, 1.0, "x", None] * 50, dtype=object)),
    ]
    for target, values in cases:
        lookup = {_label_key(c): i for i, c in enumerate(target.classes)}
        expected = np.array([lookup.get(_label_key(v), -1) for v in values], dtype="int64")
        assert np.array_equal(target.index_of(values), expected), target.classes
