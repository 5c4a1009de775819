"""The label-free performance estimate (core/estimate.py) on synthetic data whose true probabilities are known."""

from __future__ import annotations

import numpy as np
import pytest

from mlops_airflow.core.estimate import (
    MAX_EXCESS_ECE,
    MIN_CALIBRATION_ROWS,
    EstimateError,
    calibrate,
    estimate_metric,
    expected_calibration_error,
)
from mlops_airflow.core.evaluation import Target, metric_value

BINARY = Target("binary", (0, 1), 1)
MULTI = Target("multiclass", ("a", "b", "c"))
REGRESSION = Target("regression", ())


def rows(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from known probabilities ``p``: a perfectly calibrated model's scores and its labels."""
    rng = np.random.default_rng(seed)
    p = 1.0 / (1.0 + np.exp(-(2.0 * rng.normal(shift, 1.0, n) - 1.0)))
    return (rng.random(n) < p).astype("float64"), p


def test_ece_of_calibrated_probabilities_is_small_and_of_distorted_ones_large() -> None:
    y, p = rows(20_000, 0)
    assert expected_calibration_error(BINARY, y, p) < 0.02  # sampling noise of 2,000 rows a bin
    assert expected_calibration_error(BINARY, y, p**2) > 0.1


def test_estimate_of_a_calibrated_model_is_close_to_the_realised_auc_under_covariate_shift() -> None:
    calibration = calibrate(BINARY, *rows(2000, 1))
    assert calibration.usable and calibration.method == "none", calibration.reason  # calibrated already
    errors, covered = [], 0
    for seed in range(6):
        y, p = rows(1000, 100 + seed, shift=0.7)  # the new rows lie elsewhere in feature space
        found = estimate_metric(calibration, BINARY, "roc_auc", p, labels=y)
        assert found.realised == pytest.approx(metric_value("roc_auc", y, p, BINARY))
        errors.append(found.error)
        covered += found.low <= found.realised <= found.high
    assert abs(float(np.mean(errors))) < 0.01 and float(np.median(np.abs(errors))) < 0.02, errors
    assert covered >= 5  # a 95% interval


def test_a_monotone_miscalibration_is_mapped_away() -> None:
    y, p = rows(2000, 2)
    calibration = calibrate(BINARY, y, p**2)  # right order, wrong probabilities
    assert calibration.usable and calibration.method == "beta" and calibration.raw_ece > 0.1, calibration
    y_new, p_new = rows(3000, 3, shift=0.5)
    for metric in ("roc_auc", "accuracy", "f1", "brier"):
        found = estimate_metric(calibration, BINARY, metric, p_new**2, labels=y_new)
        assert abs(found.error) < 0.03, (metric, found)


def test_poor_calibration_is_refused_with_its_figures() -> None:
    rng = np.random.default_rng(4)
    score = rng.random(2000)
    # The label rate is not monotone in the score: no monotone map can turn the score into a probability.
    y = (rng.random(2000) < np.where(np.abs(score - 0.5) > 0.3, 0.9, 0.1)).astype("float64")
    calibration = calibrate(BINARY, y, score)
    assert not calibration.usable and calibration.excess_ece > MAX_EXCESS_ECE
    assert "poorly calibrated" in calibration.reason and f"> {MAX_EXCESS_ECE:g}" in calibration.reason
    found = estimate_metric(calibration, BINARY, "roc_auc", score[:100], labels=y[:100])
    assert found.value is None and found.reason == calibration.reason
    assert found.realised is not None  # the labels that exist are still measured


def test_too_few_calibration_rows_are_refused() -> None:
    y, p = rows(MIN_CALIBRATION_ROWS - 1, 5)
    calibration = calibrate(BINARY, y, p)
    assert not calibration.usable and f"at least {MIN_CALIBRATION_ROWS}" in calibration.reason


def test_regression_says_no_estimate_is_made() -> None:
    values = np.linspace(0, 1, 500)
    calibration = calibrate(REGRESSION, values, values)
    found = estimate_metric(calibration, REGRESSION, "rmse", values, labels=values)
    assert not calibration.usable and found.value is None and found.realised == 0.0
    assert found.reason.startswith("no estimate for a regression model")


def test_multiclass_one_vs_rest_estimate() -> None:
    rng = np.random.default_rng(6)
    logits = rng.normal(0.0, 1.5, (4000, 3))
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = (rng.random(4000)[:, None] > proba.cumsum(axis=1)[:, :-1]).sum(axis=1)
    calibration = calibrate(MULTI, y[:2000], proba[:2000])
    assert calibration.usable, calibration.reason
    labels = np.array(MULTI.classes, dtype=object)[y[2000:]]
    for metric in ("roc_auc_ovr", "accuracy"):
        found = estimate_metric(calibration, MULTI, metric, proba[2000:], labels=labels)
        assert abs(found.error) < 0.02, (metric, found)


def test_unusable_scores_are_an_error_naming_them() -> None:
    calibration = calibrate(BINARY, *rows(500, 7))
    with pytest.raises(EstimateError, match="not finite"):
        estimate_metric(calibration, BINARY, "roc_auc", np.array([0.2, np.nan]))
    with pytest.raises(EstimateError, match="labels"):
        calibrate(BINARY, np.array(["yes", "no"] * 150, dtype=object), np.full(300, 0.5))


def test_a_class_too_rare_to_calibrate_is_named_with_its_count() -> None:
    # "[282, 224, 218, 19] per class" left the user to guess which class was short
    rng = np.random.default_rng(3)
    target = Target("multiclass", ("low", "medium", "high", "urgent"))
    y = np.array(["low"] * 300 + ["medium"] * 250 + ["high"] * 240 + ["urgent"] * 3, dtype=object)
    p = rng.dirichlet(np.ones(4), size=len(y))
    calibration = calibrate(target, y, p)
    assert not calibration.usable
    assert "'low': 300, 'medium': 250, 'high': 240, 'urgent': 3" in calibration.reason
    binary = Target("binary", ("no", "yes"), 0)  # the positive class first in the spec
    yb = np.array(["no"] * 4 + ["yes"] * 600, dtype=object)
    assert "'yes': 600, 'no': 4" in calibrate(binary, yb, rng.random(len(yb))).reason
