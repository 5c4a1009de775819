"""What a model's target is and how well a model scores it: one implementation of every metric.

Task-time module (numpy; scikit-learn only for the Youden threshold).

Training (selection), the gate (paired bootstrap, slices) and the monitor all call these functions, so
they can never disagree on what a metric means. Two conventions hold everywhere:

- ``y`` is the *encoded* target (:meth:`Target.encode`): binary 1.0 for the positive label and 0.0 for the
  other, multiclass the index of the label in ``Target.classes``, regression the value. An array of
  strings, booleans or objects is encoded on the way in; a numeric array is taken as already encoded and
  checked (raw integer labels are ambiguous, e.g. a binary model whose positive label is ``0``).
- ``score`` is binary P(positive) ``(n,)``, multiclass the probability matrix ``(n, k)`` in ``classes``
  order, regression the prediction ``(n,)``.

Every metric is computed as a weighted statistic of the rows (:func:`weighted_metric`); one row of weights
per resample lets the gate's bootstrap evaluate 1,000 resamples with a few matrix operations, and unit
weights give :func:`metric_value`. ``tests/unit/test_metrics.py`` checks each against scikit-learn's own.

A metric that is undefined on the given rows is NaN, never an exception (the gate fails closed on NaN):
``roc_auc``/``pr_auc`` with one class present; ``roc_auc_ovr`` with fewer than two classes present (it is
the macro average over the classes present in ``y``); ``r2`` with a constant target (scikit-learn would
report 1.0 or 0.0); any metric of a model whose scores are not finite. ``f1_macro`` averages over the
classes present in ``y`` or in the predictions and ``balanced_accuracy`` over the classes present in ``y``,
as scikit-learn does; multiclass ``log_loss`` always knows every class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mlops_airflow.core.metrics import METRICS_BY_KIND
from mlops_airflow.core.spec import ModelSpec

#: Probabilities are clipped to [EPS, 1 - EPS] in the log loss, as scikit-learn does for float64.
EPS = float(np.finfo(np.float64).eps)
KINDS = ("binary", "multiclass", "regression")
#: Texts people write for booleans (a label column of them against boolean classes gets a hint).
_YAML_BOOLEANS = frozenset({"yes", "no", "on", "off", "true", "false"})


def _label_key(value: Any) -> tuple[str, Any]:
    """A label with its kind, so that ``True``, ``1`` and ``"1"`` never match one another."""
    if isinstance(value, bool | np.bool_):
        return ("bool", bool(value))
    if isinstance(value, int | np.integer):
        return ("int", int(value))
    if isinstance(value, float | np.floating):
        # An integer label column read back as float (a CSV column with a gap) still names the same class.
        return ("int", int(value)) if np.isfinite(value) and float(value).is_integer() else ("float", value)
    if isinstance(value, str | np.str_):
        return ("str", str(value))
    return ("other", repr(value))


@dataclass(frozen=True)
class Target:
    """The label of a model: its kind, its classes in spec order and (binary) which one is positive."""

    kind: str
    classes: tuple[Any, ...]
    positive_index: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Target.kind: {self.kind!r} is not one of {list(KINDS)}")
        sizes = {"binary": (2, 2), "multiclass": (3, None), "regression": (0, 0)}[self.kind]
        n = len(self.classes)
        if n < sizes[0] or (sizes[1] is not None and n > sizes[1]):
            raise ValueError(f"Target.classes: a {self.kind} target cannot have {n} classes {list(self.classes)}")
        if len({_label_key(c) for c in self.classes}) != n:
            raise ValueError(f"Target.classes: {list(self.classes)} are not distinct")
        if self.kind == "binary" and self.positive_index not in (0, 1):
            raise ValueError(f"Target.positive_index: {self.positive_index} is not 0 or 1")

    @classmethod
    def of(cls, spec: ModelSpec) -> Target:
        """The target of a model spec (``label.values`` in order, ``label.positive``)."""
        classes = tuple(spec.classes)
        if spec.kind != "binary":
            return cls(spec.kind, classes)
        wanted = _label_key(spec.positive_label)
        return cls("binary", classes, next(i for i, c in enumerate(classes) if _label_key(c) == wanted))

    @property
    def positive(self) -> Any:
        """The positive label of a binary target (``None`` otherwise)."""
        return self.classes[self.positive_index] if self.kind == "binary" else None

    @property
    def metrics(self) -> tuple[str, ...]:
        """Every metric of this kind of target."""
        return METRICS_BY_KIND[self.kind]

    def proba_columns(self) -> list[str]:
        """The names of the class probability columns, in class order: ``proba_<class>``."""
        return [f"proba_{c}" for c in self.classes]

    def index_of(self, y: Any) -> np.ndarray:
        """Index in ``classes`` of every label, -1 for a value that is not one of them (int64 array)."""
        # A list keeps each value's own type (numpy would turn [True, 1] into two ints).
        values = np.asarray(y, dtype=object) if isinstance(y, list | tuple) else np.asarray(y)
        if values.ndim != 1:
            values = values.ravel()
        lookup = {_label_key(c): i for i, c in enumerate(self.classes)}
        if values.dtype.kind == "O":
            import pandas as pd

            if pd.api.types.infer_dtype(values, skipna=False) in {"string", "integer", "boolean"}:
                # One Python type throughout (no missing value): hashing cannot confuse True, 1 and "1", so
                # each distinct label is looked up once instead of once per row.
                codes, uniques = pd.factorize(values)
                found = np.array([lookup.get(_label_key(u), -1) for u in uniques.tolist()], dtype="int64")
                return found[codes] if len(values) else np.empty(0, dtype="int64")
            return np.fromiter((lookup.get(_label_key(v), -1) for v in values), dtype="int64", count=len(values))
        uniques, inverse = np.unique(values, return_inverse=True)
        codes = np.array([lookup.get(_label_key(u), -1) for u in uniques.tolist()], dtype="int64")
        return codes[inverse.ravel()] if len(values) else np.empty(0, dtype="int64")

    def _near_misses(self, values: list[Any]) -> str:
        """``; ' Yes' differs from 'Yes' only in ...``: unknown labels that only differ in spaces, case or
        type (``"1"`` for ``1``) from a class, and yes/no text labels of a spec whose values are booleans,
        for the message."""
        near = []
        for value in values:
            text = str(value).strip().casefold()
            for c in self.classes:
                if str(c).strip().casefold() == text and _label_key(c) != _label_key(value):
                    near.append(f"{value!r} differs from {c!r} only in spaces, case or type")
                    break
        hints = [f"; {', '.join(near[:3])}"] if near else []
        texts = {str(v).strip().casefold() for v in values if isinstance(v, str | np.str_)}
        if texts & _YAML_BOOLEANS and all(isinstance(c, bool | np.bool_) for c in self.classes):
            hints.append(
                "; the classes are booleans (label.values true/false) but the labels are yes/no/on/off text: "
                "write the texts as label.values (e.g. [no, yes], read as text)"
            )
        return "".join(hints)

    def encode(self, y: Any) -> np.ndarray:
        """Labels as the metrics take them: binary 1.0 (positive) / 0.0, multiclass index, regression float.

        :raises ValueError: a label that is not one of ``classes`` (a few are named, with the allowed ones),
            or a regression target that is not numeric.
        """
        if self.kind == "regression":
            try:
                return np.asarray(y, dtype="float64").ravel()
            except (TypeError, ValueError) as err:
                raise ValueError(f"a regression target must be numeric: {err}") from None
        codes = self.index_of(y)
        if (codes < 0).any():
            unexpected = np.asarray(y, dtype=object).ravel()[codes < 0]
            distinct = list(dict.fromkeys(unexpected[:10_000].tolist()))
            shown = sorted({repr(v) for v in distinct})[:5]
            raise ValueError(
                f"label value(s) {', '.join(shown)} ({int((codes < 0).sum())} row(s)) are not among the "
                f"classes {list(self.classes)} (types count: '1', 1 and True are different labels)"
                f"{self._near_misses(distinct)}"
            )
        if self.kind == "binary":
            return (codes == self.positive_index).astype("float64")
        return codes


def as_encoded(target: Target, y: Any) -> np.ndarray:
    """``y`` as the metrics take it: numeric arrays are checked as encoded, anything else is encoded."""
    values = np.asarray(y)
    if values.dtype.kind not in "iuf":
        return target.encode(values)
    values = values.ravel()
    if target.kind == "regression":
        return values.astype("float64")
    if target.kind == "binary":
        if not np.isin(values, (0.0, 1.0)).all():
            raise ValueError("binary y must be encoded 1.0 (positive label) / 0.0: use Target.encode(labels)")
        return values.astype("float64")
    k = len(target.classes)
    if not (np.isin(values, np.arange(k))).all():
        raise ValueError(f"multiclass y must be class indices 0..{k - 1}: use Target.encode(labels)")
    return values.astype("int64")


def as_scores(target: Target, score: Any, n: int) -> np.ndarray:
    """``score`` checked against the target: (n,) or, multiclass, (n, k); a binary (n, 2) gives its positive column."""
    s = np.asarray(score, dtype="float64")
    k = len(target.classes)
    if target.kind == "binary" and s.ndim == 2 and s.shape[1] == 2:
        s = s[:, target.positive_index]
    expected = (n, k) if target.kind == "multiclass" else (n,)
    if s.ndim == 2 and s.shape[1] == 1 and target.kind != "multiclass":
        s = s.ravel()
    if s.shape != expected:
        raise ValueError(f"{target.kind} scores must have shape {expected} for {n} rows, got {s.shape}")
    return s


def predicted_index(target: Target, score: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Index in ``classes`` of the predicted label: binary at the threshold, multiclass the most probable."""
    if target.kind == "binary":
        positive = np.asarray(score) >= threshold
        return np.where(positive, target.positive_index, 1 - target.positive_index)
    if target.kind == "multiclass":
        return np.asarray(score).argmax(axis=1)
    raise ValueError("a regression target has no predicted class")


def _check_metric(metric: str, target: Target) -> None:
    if metric not in target.metrics:
        raise ValueError(f"metric {metric!r} does not fit a {target.kind} target; one of {list(target.metrics)}")


def _rank_groups(s: np.ndarray, pos: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted positives and negatives per distinct score, ascending: two (B, groups) arrays."""
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    w_sorted = w[:, order]
    if len(starts) == len(s):  # every score distinct (the usual case): each row is its own group
        pos_g = w_sorted * pos[order]
        w_sorted -= pos_g
        return pos_g, w_sorted
    neg_g = np.add.reduceat(w_sorted, starts, axis=1)
    w_sorted *= pos[order]
    pos_g = np.add.reduceat(w_sorted, starts, axis=1)
    neg_g -= pos_g
    return pos_g, neg_g


def _roc_auc(pos: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    # Mann-Whitney U with ties counted as half: a positive beats every negative of a lower score group and
    # half of those in its own group.
    pos_g, neg_g = _rank_groups(s, pos, w)
    n_pos, n_neg = pos_g.sum(axis=1), neg_g.sum(axis=1)
    beaten = np.cumsum(neg_g, axis=1)
    beaten -= 0.5 * neg_g  # negatives below the group, plus half of the group's own
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.einsum("ij,ij->i", pos_g, beaten) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def _average_precision(pos: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    # Step-wise (not interpolated) area under the PR curve, as sklearn: each positive of a score group adds
    # its recall step times the precision at that group's threshold.
    pos_g, neg_g = _rank_groups(s, pos, w)
    tp, fp = np.cumsum(pos_g[:, ::-1], axis=1), np.cumsum(neg_g[:, ::-1], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        ap = (pos_g[:, ::-1] * precision).sum(axis=1) / tp[:, -1]
    return np.where((tp[:, -1] > 0) & (fp[:, -1] > 0), ap, np.nan)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, 0 where ``den`` is 0 (sklearn's ``zero_division=0``)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, 0.0)


def _mean_defined(values: np.ndarray, defined: np.ndarray) -> np.ndarray:
    """Row means over the defined entries only; NaN where none is."""
    count = defined.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = np.where(defined, values, 0.0).sum(axis=1)
        return np.where(count > 0, total / count, np.nan)


def _binary(metric: str, y: np.ndarray, p: np.ndarray, w: np.ndarray, n: np.ndarray, threshold: float) -> np.ndarray:
    if metric == "roc_auc":
        return _roc_auc(y, p, w)
    if metric == "pr_auc":
        return _average_precision(y, p, w)
    if metric == "log_loss":
        # As sklearn: the two columns [1 - p, p] are clipped, then the true one's log is taken.
        p_true = np.where(y == 1.0, np.clip(p, EPS, 1 - EPS), np.clip(1.0 - p, EPS, 1 - EPS))
        return (w @ -np.log(p_true)) / n
    if metric == "brier":
        return (w @ (p - y) ** 2) / n
    pred = (p >= threshold).astype("float64")
    tp, fp, n_pos = w @ (y * pred), w @ ((1.0 - y) * pred), w @ y
    fn, tn = n_pos - tp, n - n_pos - fp
    if metric == "accuracy":
        return (tp + tn) / n
    if metric == "precision":
        return _ratio(tp, tp + fp)
    if metric == "recall":
        return _ratio(tp, n_pos)
    if metric == "f1":
        return _ratio(2 * tp, 2 * tp + fp + fn)
    # balanced_accuracy: the mean recall of the classes present in y
    recalls = np.stack([_ratio(tn, n - n_pos), _ratio(tp, n_pos)], axis=1)
    return _mean_defined(recalls, np.stack([n - n_pos > 0, n_pos > 0], axis=1))


def _multiclass(metric: str, y: np.ndarray, proba: np.ndarray, w: np.ndarray, n: np.ndarray) -> np.ndarray:
    k = proba.shape[1]
    if metric == "roc_auc_ovr":
        # Macro one-vs-rest over the classes present: a class absent from y has no AUC of its own.
        aucs = np.stack([_roc_auc((y == c).astype("float64"), proba[:, c], w) for c in range(k)], axis=1)
        return _mean_defined(aucs, np.isfinite(aucs))
    if metric == "log_loss":
        p_true = np.clip(proba[np.arange(len(y)), y], EPS, 1 - EPS)
        return (w @ -np.log(p_true)) / n
    pred = proba.argmax(axis=1)
    eye = np.eye(k)
    n_true, n_pred = w @ eye[y], w @ eye[pred]
    tp = w @ (eye[y] * (pred == y)[:, None])
    if metric == "accuracy":
        return tp.sum(axis=1) / n
    if metric == "f1_macro":
        return _mean_defined(_ratio(2 * tp, n_true + n_pred), (n_true + n_pred) > 0)
    return _mean_defined(_ratio(tp, n_true), n_true > 0)  # balanced_accuracy


def _regression(metric: str, y: np.ndarray, s: np.ndarray, w: np.ndarray, n: np.ndarray) -> np.ndarray:
    if metric == "rmse":
        return np.sqrt((w @ (y - s) ** 2) / n)
    if metric == "mae":
        return (w @ np.abs(y - s)) / n
    if metric == "mape":
        return (w @ (np.abs(y - s) / np.maximum(np.abs(y), EPS))) / n
    # r2; y centred first: less cancellation in sum(w y^2) - (sum w y)^2 / n
    yc = y - y.mean()
    spread = w @ yc**2
    ss_tot = spread - (w @ yc) ** 2 / n
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ss_tot > 1e-10 * spread, 1.0 - (w @ (y - s) ** 2) / ss_tot, np.nan)


def weighted_metric(
    metric: str, y: Any, score: Any, target: Target, weights: np.ndarray, threshold: float = 0.5
) -> np.ndarray:
    """The metric under every row of ``weights`` (shape ``(B, n)``) at once: an array of ``B`` values.

    A bootstrap resample is the original rows with integer weights (how often each was drawn), so every
    metric is a weighted statistic of the original rows; unit weights give the plain metric.
    """
    _check_metric(metric, target)
    y_enc = as_encoded(target, y)
    s = as_scores(target, score, len(y_enc))
    w = np.atleast_2d(np.asarray(weights, dtype="float64"))
    if w.shape[1] != len(y_enc):
        raise ValueError(f"weights have {w.shape[1]} columns for {len(y_enc)} rows")
    n = w.sum(axis=1)
    if len(y_enc) == 0 or not np.isfinite(s).all():
        return np.full(len(w), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        if target.kind == "binary":
            values = _binary(metric, y_enc, s, w, n, threshold)
        elif target.kind == "multiclass":
            values = _multiclass(metric, y_enc, s, w, n)
        else:
            values = _regression(metric, y_enc, s, w, n)
    return np.where(n > 0, values, np.nan)


def metric_value(metric: str, y: np.ndarray, score: np.ndarray, target: Target, threshold: float = 0.5) -> float:
    """One metric of ``score`` on the rows ``y``; NaN where it is undefined (see the module docstring).

    :param threshold: binary only: a row is predicted positive when its score is >= this.
    :raises ValueError: a metric that does not fit the target's kind, or mis-shaped input.
    """
    return float(weighted_metric(metric, y, score, target, np.ones((1, len(np.asarray(y)))), threshold)[0])


def compute_metrics(target: Target, y: np.ndarray, score: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Every metric of the target's kind (:data:`~mlops_airflow.core.metrics.METRICS_BY_KIND`); NaN if undefined."""
    y_enc = as_encoded(target, y)
    s = as_scores(target, score, len(y_enc))
    return {metric: metric_value(metric, y_enc, s, target, threshold) for metric in target.metrics}


def class_counts(target: Target, y: Any) -> dict[str, int]:
    """Rows per class present in ``y`` (encoded or raw), in class order, keyed by the class as text."""
    if target.kind == "regression":
        return {}
    y_enc = as_encoded(target, y)
    index = y_enc
    if target.kind == "binary":  # encoded 1.0 is the positive class, whatever its index
        index = np.where(y_enc == 1.0, target.positive_index, 1 - target.positive_index)
    counts = np.bincount(np.asarray(index, dtype="int64"), minlength=len(target.classes))
    return {str(c): int(n) for c, n in zip(target.classes, counts, strict=True) if n}


def describe_rows(target: Target, y: Any) -> str:
    """``"12 row(s), classes {'0': 12}"``: what a metric was computed on, for messages."""
    n = len(np.asarray(y).ravel())
    if target.kind == "regression":
        return f"{n} row(s)"
    return f"{n} row(s), classes {class_counts(target, y)} of {[str(c) for c in target.classes]}"


def undefined_reason(metric: str, target: Target, y: Any, score: Any) -> str:
    """Why ``metric`` is NaN on these rows (see the module docstring), in words naming the rows."""
    y_enc = as_encoded(target, y)
    s = as_scores(target, score, len(y_enc))
    rows = describe_rows(target, y_enc)
    if len(y_enc) == 0:
        return "there are no rows"
    if not np.isfinite(s).all():
        return f"the model's scores are not all finite ({rows})"
    if target.kind == "regression":
        return f"the target is constant ({rows})" if metric == "r2" else f"undefined on {rows}"
    present = len(class_counts(target, y_enc))
    if present < 2:
        return f"it needs rows of at least two classes; there are {rows}"
    return f"undefined on {rows}"


def undefined_reasons(target: Target, y: Any, score: Any, metrics: dict[str, Any]) -> dict[str, str]:
    """:func:`undefined_reason` of every metric in ``metrics`` that is missing, NaN or infinite."""
    out = {}
    for metric, value in metrics.items():
        if value is None or not np.isfinite(float(value)):
            out[metric] = undefined_reason(metric, target, y, score)
    return out


def choose_threshold(y: np.ndarray, p: np.ndarray, how: str) -> float:
    """The binary decision threshold that maximises F1 (``how="f1"``) or TPR - FPR (``"youden"``).

    Chosen on the validation split; candidates are the distinct scores (a row is positive when its score
    is >= the threshold), the highest one wins a tie. Returns a float in (0, 1); 0.5 when ``y`` holds a
    single class (nothing to trade off).

    :param y: encoded labels, 1.0 for the positive class.
    :param p: probability of the positive class.
    """
    y_enc = np.asarray(y, dtype="float64").ravel()
    scores = np.asarray(p, dtype="float64").ravel()
    if how not in ("f1", "youden"):
        raise ValueError(f"threshold optimize: {how!r} is not one of ['f1', 'youden']")
    if len(y_enc) != len(scores):
        raise ValueError(f"length mismatch: y={len(y_enc)}, p={len(scores)}")
    if not np.isin(y_enc, (0.0, 1.0)).all():
        raise ValueError("choose_threshold needs y encoded 1.0 (positive) / 0.0: use Target.encode(labels)")
    n_pos = float(y_enc.sum())
    if n_pos == 0 or n_pos == len(y_enc) or not np.isfinite(scores).all():
        return 0.5
    if how == "youden":
        from sklearn.metrics import roc_curve

        fpr, tpr, thresholds = roc_curve(y_enc, scores, drop_intermediate=False)
        best = float(thresholds[int(np.argmax(tpr - fpr))])
    else:
        # Descending distinct scores: at the j-th, every row of the first j groups is predicted positive.
        pos_g, neg_g = _rank_groups(scores, y_enc, np.ones((1, len(y_enc))))
        tp, fp = np.cumsum(pos_g[0, ::-1]), np.cumsum(neg_g[0, ::-1])
        f1 = 2 * tp / (tp + fp + n_pos)
        distinct = np.unique(scores)[::-1]
        best = float(distinct[int(np.argmax(f1))])
    return float(np.clip(best, 1e-12, 1.0 - 1e-12))
