"""Label-free estimate of a classifier's metric on new rows: confidence-based performance estimation (CBPE).

Pure logic, no Airflow and no MLflow; numpy only (scikit-learn's calibrators were measured and not kept, below).
The estimator itself is written here in numpy (the method is NannyML's CBPE; NannyML is not a dependency).

How it works:

1. :func:`calibrate` fits a monotone map from the champion's scores to probabilities on the rows the gate
   scored it on at promotion (its snapshot's evaluation part): beta calibration, ``p = sigmoid(a ln s -
   b ln(1 - s) + c)``, one per class (one-vs-rest for multiclass, rows renormalised). Whether the map is
   used, or the raw scores kept, is decided on out-of-fold scores (5 folds): raw scores whose ECE is within
   a perfectly calibrated model's (its 95th percentile on as many rows) are kept, otherwise whichever is
   better calibrated.
   Isotonic regression (scikit-learn's ``IsotonicRegression``, as ``CalibratedClassifierCV`` uses it) was
   measured and not kept: its pooled blocks reach 0 and 1 at the extremes, which overstates the estimated
   ROC AUC (+0.02 on a perfectly calibrated model with 1,000 calibration rows); three parameters do not
   overfit that way. They are fitted by Newton's method here: scikit-learn's ``LogisticRegression`` took
   0.5 s per fit on these two unscaled log features.
2. Calibration quality is the expected calibration error (ECE, :data:`N_BINS` equal-mass bins of the model's
   raw score, so the label rate at each score must be the probability given to it; multiclass the mean over
   classes) *minus* the ECE a perfectly calibrated model shows on as many rows (the mean over labels
   drawn from its own probabilities): the finite-sample floor of the ECE is about 0.04 on 600 rows, so the
   raw ECE alone would refuse most evaluation sets. :func:`calibrate` refuses (``usable`` false, with the
   reason) when this excess is above :data:`MAX_EXCESS_ECE`, when there are fewer than
   :data:`MIN_CALIBRATION_ROWS` rows or fewer than :data:`MIN_CLASS_ROWS` of a class, and for regression
   (no class probabilities: no estimate is made).
3. :func:`estimate_metric` takes the model's scores on new rows and their calibrated probabilities ``p``:
   each row counts as a positive with weight ``p`` and a negative with weight ``1 - p`` (multiclass: as each
   class with its probability), and the metric of these weighted rows is the estimate (the expected
   confusion matrix for accuracy, F1, ...; for ROC AUC the expected true and false positive rates at every
   threshold). The metric is computed by :func:`~mlops_airflow.core.evaluation.weighted_metric`, the one
   implementation every metric of the package has.
4. The interval is the spread of the metric the rows would realise: :data:`N_DRAWS` label vectors, each
   drawn from the probabilities of one of :data:`MAP_RESAMPLES` maps refitted on bootstrap resamples of the
   calibration rows (so the map's own error is in it; from ``p`` itself when the raw scores are kept), their
   metric, the central ``confidence`` share. The whole estimate assumes the label still depends on the
   features as it did at promotion: covariate shift is fine, a concept change is not visible without labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mlops_airflow.core.encoding import clean_text
from mlops_airflow.core.errors import MlopsError
from mlops_airflow.core.evaluation import Target, as_encoded, as_scores, weighted_metric
from mlops_airflow.core.metrics import finite_or_none

#: Bins of the expected calibration error (equal mass: each holds a tenth of the rows).
N_BINS = 10
#: Largest excess of the ECE over a perfectly calibrated model's on as many rows for which an estimate is made.
MAX_EXCESS_ECE = 0.03
#: Fewest calibration rows, and fewest rows of each class among them.
MIN_CALIBRATION_ROWS = 200
MIN_CLASS_ROWS = 20
#: Scores are clipped to [CLIP, 1 - CLIP] before the map's logarithms.
CLIP = 1e-6
#: Newton steps of the calibration map's fit at most (it converges in a handful).
MAX_NEWTON_STEPS = 50
#: Folds of the out-of-fold check of the calibration map.
FOLDS = 5
#: Bootstrap refits of the calibration map whose spread the interval includes.
MAP_RESAMPLES = 20
#: Label vectors drawn for the interval, and for the ECE floor.
N_DRAWS = 400
NULL_DRAWS = 200
#: Cells (draws x rows) computed at once: bounds the memory of the interval.
MAX_CELLS = 4_000_000

NO_REGRESSION = (
    "no estimate for a regression model: confidence-based estimation needs class probabilities, and a "
    "regression model gives none; the metric is known only when labels arrive"
)


_METHOD = {"beta": "beta map", "none": "raw scores"}


class EstimateError(MlopsError, ValueError):
    """Input the estimator cannot use (mis-shaped or non-finite scores, labels not of the target)."""


@dataclass(frozen=True)
class Calibration:
    """How far a model's scores can be read as probabilities, and the map that makes them so.

    :param method: ``beta`` (the map is applied) or ``none`` (raw scores are calibrated enough).
    :param coefs: per class (binary: one, for P(positive)) the map's ``(a, b, c)``:
        ``p = sigmoid(a ln s - b ln(1 - s) + c)``.
    :param raw_ece: ECE of the raw scores on the calibration rows.
    :param calibrated_ece: ECE of the out-of-fold calibrated scores.
    :param null_ece: mean ECE of a perfectly calibrated model on as many rows (the finite-sample floor).
    :param excess_ece: ECE of the method used minus ``null_ece``; compared with :data:`MAX_EXCESS_ECE`.
    :param resampled: the map's ``coefs`` refitted on :data:`MAP_RESAMPLES` bootstrap resamples of the rows.
    :param brier: Brier score of the method used (binary: on P(positive); multiclass: summed over classes).
    """

    kind: str
    usable: bool
    reason: str
    rows: int = 0
    method: str = "none"
    raw_ece: float | None = None
    calibrated_ece: float | None = None
    null_ece: float | None = None
    excess_ece: float | None = None
    brier: float | None = None
    coefs: tuple[tuple[float, float, float], ...] = field(default=())
    resampled: tuple[tuple[tuple[float, float, float], ...], ...] = field(default=(), repr=False)

    def probabilities(
        self, target: Target, score: Any, coefs: tuple[tuple[float, float, float], ...] | None = None
    ) -> np.ndarray:
        """Calibrated probabilities of ``score`` (binary ``(n,)`` P(positive), multiclass ``(n, k)``), by the
        map's ``coefs`` (default: the map fitted on all rows)."""
        s = _checked_scores(target, score)
        if self.method == "none":
            return np.clip(s, 0.0, 1.0) if target.kind == "binary" else _normalised(np.clip(s, 0.0, 1.0))
        coefs = self.coefs if coefs is None else coefs
        if target.kind == "binary":
            return _apply_one(s, coefs[0])
        columns = [_apply_one(s[:, c], coef) for c, coef in enumerate(coefs)]
        return _normalised(np.column_stack(columns))

    def summary(self) -> dict[str, Any]:
        """The calibration's figures (no map): for tags, artifacts and XCom."""
        return {
            "usable": self.usable,
            "reason": self.reason,
            "rows": self.rows,
            "method": self.method,
            "raw_ece": finite_or_none(self.raw_ece),
            "calibrated_ece": finite_or_none(self.calibrated_ece),
            "null_ece": finite_or_none(self.null_ece),
            "excess_ece": finite_or_none(self.excess_ece),
            "max_excess_ece": MAX_EXCESS_ECE,
            "brier": finite_or_none(self.brier),
        }


@dataclass(frozen=True)
class Estimate:
    """A label-free estimate of ``metric`` on some rows, or why none was made (``value`` is ``None``).

    :param low: lower end of the interval (``confidence`` share of the metric the rows would realise).
    :param realised: the metric on the same rows' labels, when they have arrived.
    :param labelled: how many of the rows have a label (the rows ``realised`` is computed on).
    """

    metric: str
    value: float | None
    reason: str
    rows: int = 0
    low: float | None = None
    high: float | None = None
    confidence: float = 0.95
    realised: float | None = None
    labelled: int = 0

    @property
    def estimated(self) -> bool:
        return self.value is not None

    @property
    def error(self) -> float | None:
        """Estimate minus realised metric (``None`` until both exist)."""
        if self.value is None or self.realised is None:
            return None
        return self.value - self.realised

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "estimated": self.estimated,
            "value": finite_or_none(self.value),
            "low": finite_or_none(self.low),
            "high": finite_or_none(self.high),
            "confidence": self.confidence,
            "rows": self.rows,
            "realised": finite_or_none(self.realised),
            "labelled": self.labelled,
            "error": finite_or_none(self.error),
            "reason": self.reason,
        }


def _checked_scores(target: Target, score: Any) -> np.ndarray:
    try:
        s = np.asarray(score, dtype="float64")
        s = as_scores(target, s, len(s))
    except (TypeError, ValueError) as err:
        raise EstimateError(f"scores: {err}") from None
    if not np.isfinite(s).all():
        raise EstimateError(f"scores: {int((~np.isfinite(s)).sum())} value(s) are not finite")
    return s


def _normalised(proba: np.ndarray) -> np.ndarray:
    total = proba.sum(axis=1, keepdims=True)
    k = proba.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, proba / np.where(total > 0, total, 1.0), 1.0 / k)


def _columns(target: Target, y: np.ndarray, p: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """One ``(indicator, probability)`` pair per calibrated column: binary P(positive), multiclass each class."""
    if target.kind == "binary":
        return [(y.astype("float64"), p)]
    return [((y == c).astype("float64"), p[:, c]) for c in range(p.shape[1])]


def _ece_of(indicator: np.ndarray, p: np.ndarray, order: np.ndarray, n_bins: int) -> np.ndarray:
    """ECE of each row of ``indicator`` (shape ``(B, n)``) against ``p`` ``(n,)``, in equal-mass bins of the
    rows taken in ``order`` (the model's own score: the label rate at each score must be its probability)."""
    n = len(p)
    bins = min(n_bins, n)
    starts = np.linspace(0, n, bins + 1).astype("int64")[:-1]
    p_sum = np.add.reduceat(p[order], starts)
    y_sum = np.add.reduceat(indicator[:, order], starts, axis=1)
    result: np.ndarray = np.abs(y_sum - p_sum).sum(axis=1) / n
    return result


def expected_calibration_error(target: Target, y: Any, p: Any, score: Any = None, n_bins: int = N_BINS) -> float:
    """ECE of probabilities ``p`` against labels ``y`` (encoded or raw), in equal-mass bins of ``score`` (the
    model's raw score; default ``p``); multiclass the mean over classes of each class's probability against
    its indicator. NaN without rows."""
    y_enc = as_encoded(target, y)
    prob = as_scores(target, p, len(y_enc))
    s = prob if score is None else as_scores(target, score, len(y_enc))
    if len(y_enc) == 0:
        return float("nan")
    orders = [_order(col) for col in ([s] if target.kind == "binary" else list(s.T))]
    values = [
        float(_ece_of(ind[None, :], col, order, n_bins)[0])
        for (ind, col), order in zip(_columns(target, y_enc, prob), orders, strict=True)
    ]
    return float(np.mean(values))


def _order(s: np.ndarray) -> np.ndarray:
    order: np.ndarray = np.argsort(s, kind="mergesort")
    return order


def _null_ece(target: Target, p: np.ndarray, s: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """ECE of labels drawn from ``p`` itself, what a perfectly calibrated model shows on as many rows: its mean
    and its 95th percentile over :data:`NULL_DRAWS` draws."""
    drawn = _draw_labels(target, p, rng, NULL_DRAWS)
    per_draw = np.zeros(NULL_DRAWS)
    pairs = [(p, s)] if target.kind == "binary" else list(zip(p.T, s.T, strict=True))
    for c, (col, score) in enumerate(pairs):
        indicator = drawn if target.kind == "binary" else (drawn == c)
        per_draw += _ece_of(indicator.astype("float64"), col, _order(score), N_BINS) / len(pairs)
    return float(per_draw.mean()), float(np.quantile(per_draw, 0.95))


def _draw_labels(target: Target, p: np.ndarray, rng: np.random.Generator, draws: int) -> np.ndarray:
    """``draws`` label vectors drawn from ``p``: binary 0/1 ``(draws, n)``, multiclass class indices.

    ``p`` is one set of probabilities (binary ``(n,)``, multiclass ``(n, k)``) or one per draw (a leading
    ``draws`` axis)."""
    n = p.shape[-1] if target.kind == "binary" else p.shape[-2]
    u = rng.random((draws, n))
    if target.kind == "binary":
        return (u < p).astype("float64")
    cumulative = np.cumsum(p, axis=-1)
    index: np.ndarray = (u[:, :, None] > cumulative[..., :-1]).sum(axis=2)
    return index


def _beta_features(s: np.ndarray) -> np.ndarray:
    clipped = np.clip(s, CLIP, 1.0 - CLIP)
    return np.column_stack([np.log(clipped), -np.log1p(-clipped)])


def _fit_one(s: np.ndarray, indicator: np.ndarray) -> tuple[float, float, float]:
    """Maximum-likelihood ``(a, b, c)`` of the beta map by Newton's method (a logistic regression on
    ``[ln s, -ln(1 - s)]``; three parameters, so a few 3x3 solves); a tiny ridge keeps separable rows finite."""
    x = np.column_stack([_beta_features(s), np.ones(len(s))])
    lam = 1e-6 * len(s)

    def loss(w: np.ndarray) -> float:
        z = x @ w
        return float(np.logaddexp(0.0, z).sum() - indicator @ z) + 0.5 * lam * float(w @ w)

    w = np.array([1.0, 1.0, 0.0])  # the identity map: start from the raw scores
    current = loss(w)
    for _ in range(MAX_NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -50.0, 50.0)))
        gradient = x.T @ (p - indicator) + lam * w
        hessian = (x * (p * (1.0 - p))[:, None]).T @ x + lam * np.eye(3)
        step = np.linalg.solve(hessian, gradient)
        scale, improved = 1.0, False
        while scale > 1e-4:  # halve the step until the likelihood improves
            trial = w - scale * step
            value = loss(trial)
            if value < current:
                improved = True
                break
            scale /= 2
        if not improved:
            break
        done = current - value < 1e-10 * max(1.0, abs(value))
        w, current = trial, value
        if done:
            break
    return float(w[0]), float(w[1]), float(w[2])


def _apply_one(s: np.ndarray, coef: tuple[float, float, float]) -> np.ndarray:
    a, b, c = coef
    z = _beta_features(s) @ np.array([a, b]) + c
    result: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))
    return result


def _fit(target: Target, y: np.ndarray, s: np.ndarray) -> tuple[tuple[float, float, float], ...]:
    cols = [s] if target.kind == "binary" else list(s.T)
    inds = [y] if target.kind == "binary" else [(y == c).astype("float64") for c in range(len(target.classes))]
    return tuple(_fit_one(col, ind) for col, ind in zip(cols, inds, strict=True))


def _brier(target: Target, y: np.ndarray, p: np.ndarray) -> float:
    return float(sum(np.mean((ind - col) ** 2) for ind, col in _columns(target, y, p)))


def calibrate(target: Target, y: Any, score: Any, *, seed: int = 0) -> Calibration:
    """The calibration of a model on rows it was evaluated on (its labels ``y``, its scores ``score``).

    Never raises for poor calibration: the answer says ``usable`` false and why. Raises
    :class:`EstimateError` for input it cannot read (scores of the wrong shape or not finite, labels that are
    not the target's).
    """
    if target.kind == "regression":
        return Calibration("regression", False, NO_REGRESSION)
    try:
        y_enc = as_encoded(target, y)
    except ValueError as err:
        raise EstimateError(f"labels: {err}") from None
    s = _checked_scores(target, score)
    if len(s) != len(y_enc):
        raise EstimateError(f"{len(y_enc)} label(s) for {len(s)} score row(s)")
    n = len(y_enc)
    index = y_enc if target.kind == "multiclass" else y_enc.astype("int64")
    counts = np.bincount(np.asarray(index, dtype="int64"), minlength=len(target.classes))
    if n < MIN_CALIBRATION_ROWS or counts.min() < MIN_CLASS_ROWS:
        if target.kind == "binary":  # index 1 is the positive class
            names = [target.classes[1 - target.positive_index], target.positive]
        else:
            names = list(target.classes)
        per_class = ", ".join(f"{clean_text(repr(c))[:40]}: {int(k)}" for c, k in zip(names, counts, strict=True))
        return Calibration(
            target.kind,
            False,
            f"no estimate: calibration needs at least {MIN_CALIBRATION_ROWS} evaluation rows with at least "
            f"{MIN_CLASS_ROWS} of each class; there are {n} row(s): {per_class}",
            rows=n,
        )
    rng = np.random.default_rng(seed)
    raw = np.clip(s, 0.0, 1.0) if target.kind == "binary" else _normalised(np.clip(s, 0.0, 1.0))
    # Out of fold: each row's calibrated probability comes from a map fitted without it.
    folds = rng.permutation(n) % FOLDS
    oof = np.empty_like(raw)
    for fold in range(FOLDS):
        held = folds == fold
        part = Calibration(target.kind, True, "", method="beta", coefs=_fit(target, y_enc[~held], s[~held]))
        oof[held] = part.probabilities(target, s[held])
    raw_ece = expected_calibration_error(target, y_enc, raw, s)
    cal_ece = expected_calibration_error(target, y_enc, oof, s)
    # Raw scores within a perfectly calibrated model's ECE are kept: a fitted map would only add its own error.
    raw_null, raw_bound = _null_ece(target, raw, s, rng)
    use_map = raw_ece > raw_bound and cal_ece < raw_ece
    chosen = oof if use_map else raw
    null = _null_ece(target, chosen, s, rng)[0] if use_map else raw_null
    excess = (cal_ece if use_map else raw_ece) - null
    figures = (
        f"ECE {cal_ece if use_map else raw_ece:.4f} ({'beta map' if use_map else 'raw scores'}; raw {raw_ece:.4f}), "
        f"a perfectly calibrated model shows {null:.4f} on {n} rows: excess {excess:+.4f}"
    )
    fitted = Calibration(
        target.kind,
        True,
        f"calibrated: {figures} <= {MAX_EXCESS_ECE:g}",
        rows=n,
        method="beta" if use_map else "none",
        raw_ece=raw_ece,
        calibrated_ece=cal_ece,
        null_ece=null,
        excess_ece=excess,
        brier=_brier(target, y_enc, chosen),
        coefs=_fit(target, y_enc, s) if use_map else (),
        # The map refitted on resamples of the rows: its own uncertainty, carried into the interval.
        resampled=tuple(_fit(target, y_enc[i], s[i]) for i in rng.integers(0, n, (MAP_RESAMPLES, n)))
        if use_map
        else (),
    )
    if excess > MAX_EXCESS_ECE:
        reason = (
            f"no estimate: the model's probabilities are poorly calibrated on its {n} evaluation rows even "
            f"after a monotone recalibration ({figures} > {MAX_EXCESS_ECE:g})"
        )
        return replace(fitted, usable=False, reason=reason)
    return fitted


def _expanded(target: Target, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every row once per class: the copy's label and the row's own scores (binary: positive, then negative)."""
    n = len(s)
    if target.kind == "binary":
        return np.r_[np.ones(n), np.zeros(n)], np.r_[s, s]
    k = len(target.classes)
    return np.repeat(np.arange(k), n), np.tile(s, (k, 1))


def _copy_weights(target: Target, labels: np.ndarray) -> np.ndarray:
    """Weights of the expanded rows: ``labels`` are ``(B, n)`` probabilities or drawn labels."""
    if target.kind == "binary":
        return np.hstack([labels, 1.0 - labels])
    k = len(target.classes)
    if labels.ndim == 3:  # (1, n, k) probabilities
        return np.hstack([labels[:, :, c] for c in range(k)])
    return np.hstack([(labels == c).astype("float64") for c in range(k)])


def estimate_metric(
    calibration: Calibration,
    target: Target,
    metric: str,
    score: Any,
    *,
    threshold: float = 0.5,
    confidence: float = 0.95,
    labels: Any = None,
    seed: int = 0,
) -> Estimate:
    """The estimate of ``metric`` on rows the model gave ``score``, with its interval, or why there is none.

    :param labels: the rows' labels where known (``None``/NaN where not): the realised metric on the labelled
        rows is returned beside the estimate.
    :param threshold: binary decision threshold of the threshold metrics (accuracy, F1, ...).
    """
    realised, labelled = _realised(target, metric, score, labels, threshold)
    if target.kind == "regression":
        return Estimate(metric, None, NO_REGRESSION, realised=realised, labelled=labelled)
    s = _checked_scores(target, score)
    n = len(s)
    if not calibration.usable:
        return Estimate(metric, None, calibration.reason, n, realised=realised, labelled=labelled)
    if n == 0:
        return Estimate(metric, None, "no estimate: no rows", 0, realised=realised, labelled=labelled)
    p = calibration.probabilities(target, s)
    y_copy, s_copy = _expanded(target, s)
    expected = p[None, :] if target.kind == "binary" else p[None, :, :]
    value = float(weighted_metric(metric, y_copy, s_copy, target, _copy_weights(target, expected), threshold)[0])
    rng = np.random.default_rng(seed)
    block = max(1, min(N_DRAWS, MAX_CELLS // (len(y_copy) or 1)))
    draws = []
    # Each draw takes its labels from one of the resampled maps (the map's error), or from ``p`` itself.
    maps = [calibration.probabilities(target, s, coefs) for coefs in calibration.resampled] or [p]
    for start in range(0, N_DRAWS, block):
        size = min(block, N_DRAWS - start)
        drawn = _draw_labels(target, np.stack([maps[i % len(maps)] for i in range(start, start + size)]), rng, size)
        draws.append(weighted_metric(metric, y_copy, s_copy, target, _copy_weights(target, drawn), threshold))
    spread = np.concatenate(draws)
    spread = spread[np.isfinite(spread)]
    if not np.isfinite(value) or len(spread) == 0:
        return Estimate(
            metric,
            None,
            f"no estimate: {metric} is undefined on {n} rows whose calibrated probabilities put them all in one class",
            n,
            realised=realised,
            labelled=labelled,
        )
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(spread, [alpha, 1.0 - alpha])
    excess = "" if calibration.excess_ece is None else f", excess ECE {calibration.excess_ece:+.4f}"
    reason = (
        f"estimated from {n} rows' calibrated probabilities ({_METHOD[calibration.method]}{excess}); "
        "assumes the label depends on the features as at promotion"
    )
    return Estimate(metric, value, reason, n, float(low), float(high), confidence, realised=realised, labelled=labelled)


def _realised(target: Target, metric: str, score: Any, labels: Any, threshold: float) -> tuple[float | None, int]:
    """The metric on the rows whose label is known, and how many they are (``(None, 0)`` without labels)."""
    if labels is None:
        return None, 0
    import pandas as pd

    values = pd.Series(np.asarray(labels, dtype=object).ravel())
    known = values.notna().to_numpy()
    if not known.any():
        return None, 0
    s = np.asarray(score, dtype="float64")
    try:
        y = target.encode(values[known].to_numpy(dtype=object))
    except ValueError as err:
        raise EstimateError(f"labels: {err}") from None
    value = float(weighted_metric(metric, y, s[known], target, np.ones((1, int(known.sum()))), threshold)[0])
    return finite_or_none(value), int(known.sum())
