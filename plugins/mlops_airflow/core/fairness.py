"""Whom a model fails: per-group metrics and the spec's fairness criteria, computed with fairlearn.

Task-time module. The evaluate task calls :func:`assess` for the candidate and for the champion on the same
evaluation rows; the gate (:func:`mlops_airflow.core.gate.decide`) blocks a candidate whose value of a
criterion exceeds its ``max``. Each criterion names a categorical or boolean ``attribute`` of the rows (a
model input or a feature with ``use: drop``, present in the data but never seen by the model) and a metric:

* ``demographic_parity_difference`` (binary): the largest gap in the rate of positive predictions between
  two groups (fairlearn's function of that name);
* ``equalized_odds_difference`` (binary): the larger of the largest gaps in true positive rate and in false
  positive rate between two groups (fairlearn's function of that name);
* ``<metric>_difference`` (every kind): the largest gap in one of the model's metrics (``roc_auc``,
  ``log_loss``, ``rmse``, ...) between two groups, from a :class:`fairlearn.metrics.MetricFrame`.

Predictions of a binary model are taken at its own decision threshold. Groups with fewer rows than the
criterion's ``min_group_size`` are reported but left out of the difference; a value that cannot be computed
(fewer than two groups large enough, a metric undefined in every group) is ``None``, which the gate fails.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)

from mlops_airflow.core.evaluation import Target, as_encoded, as_scores, metric_value, predicted_index
from mlops_airflow.core.metrics import DIFFERENCE_SUFFIX, GROUP_FAIRNESS_METRICS, finite_or_none
from mlops_airflow.core.spec import FairnessCriterion, ModelSpec

#: Group label of rows whose attribute is null (the same as the gate's slices).
MISSING = "<missing>"


def group_labels(values: Any) -> np.ndarray:
    """Attribute values as group names (text; nulls are ``<missing>``)."""
    series = pd.Series(np.asarray(values, dtype=object))
    return series.where(series.notna(), MISSING).astype(str).to_numpy()


def _predicted_positive(target: Target, score: np.ndarray, threshold: float) -> np.ndarray:
    """1 where a binary model predicts its positive label, else 0."""
    return (predicted_index(target, score, threshold) == target.positive_index).astype("int64")


def per_group(
    spec: ModelSpec, y: Any, score: Any, groups: np.ndarray, *, threshold: float = 0.5, also: tuple[str, ...] = ()
) -> dict[str, dict[str, float | int | None]]:
    """The primary metric per group (a MetricFrame), and for binary models the rates fairness metrics use.

    :param also: further metrics of the model's kind to compute per group.
    :return: ``{group: {"n": rows, <primary>: value, "selection_rate": ..., "true_positive_rate": ...,
        "false_positive_rate": ...}}``; ``None`` where a value is undefined in the group.
    """
    target = Target.of(spec)
    y_enc = as_encoded(target, y)
    s = as_scores(target, score, len(y_enc))
    cast = "float64" if target.kind != "multiclass" else "int64"

    def model_metric(name: str) -> Any:
        # The metric sees row indices and looks the scores up: a multiclass score is an (n, k) matrix.
        return lambda yt, idx: metric_value(name, np.asarray(yt).astype(cast), s[idx], target, threshold)

    metrics: dict[str, Any] = {"n": lambda yt, idx: len(idx)}
    metrics.update({name: model_metric(name) for name in dict.fromkeys([spec.primary, *also])})
    y_pred: Any = np.arange(len(y_enc))
    y_true = y_enc
    if target.kind == "binary":
        predicted = _predicted_positive(target, s, threshold)
        y_true = y_enc.astype("int64")
        metrics |= {
            "selection_rate": lambda yt, idx: selection_rate(yt, predicted[idx], pos_label=1),
            "true_positive_rate": lambda yt, idx: _rate(true_positive_rate, yt, predicted[idx], positives=True),
            "false_positive_rate": lambda yt, idx: _rate(false_positive_rate, yt, predicted[idx], positives=False),
        }

    def all_of_group(yt: np.ndarray, idx: np.ndarray) -> dict[str, Any]:
        # One MetricFrame metric returning every value: fairlearn hands each metric its columns row by row
        # (np.stack), so one metric instead of five is what keeps a large evaluation set affordable.
        return {name: function(yt, idx) for name, function in metrics.items()}

    frame = MetricFrame(
        metrics={"group": all_of_group}, y_true=y_true, y_pred=y_pred, sensitive_features=pd.Series(groups)
    )
    out: dict[str, dict[str, float | int | None]] = {}
    for group, values in frame.by_group["group"].items():
        out[str(group)] = {name: int(v) if name == "n" else finite_or_none(v) for name, v in values.items()}
    return out


def _rate(function: Any, y_true: np.ndarray, y_pred: np.ndarray, *, positives: bool) -> float:
    """TPR or FPR of a group; NaN when the group holds no row of the class the rate is about."""
    if not (y_true == (1 if positives else 0)).any():
        return float("nan")
    return float(function(y_true, y_pred, pos_label=1))


def _extremes(groups: dict[str, dict[str, Any]], column: str) -> tuple[str, float, str, float] | None:
    values = {g: v[column] for g, v in groups.items() if v.get(column) is not None}
    if len(values) < 2:
        return None
    high = max(values, key=lambda g: values[g])
    low = min(values, key=lambda g: values[g])
    return high, float(values[high]), low, float(values[low])


def evaluate_criterion(
    spec: ModelSpec,
    criterion: FairnessCriterion,
    y: Any,
    score: Any,
    attribute_values: Any,
    *,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """One criterion on one model's scores: its value, the two groups furthest apart, and every group.

    :return: ``{"attribute", "metric", "max", "value", "groups": {group: {...}}, "excluded": [groups too
        small], "high": group, "low": group, "rate": which rate the value is a gap of, "detail": text}``.
    """
    target = Target.of(spec)
    y_enc = as_encoded(target, y)
    s = as_scores(target, score, len(y_enc))
    labels = group_labels(attribute_values)
    if len(labels) != len(y_enc):
        raise ValueError(f"fairness attribute {criterion.attribute!r} has {len(labels)} values for {len(y_enc)} rows")
    metric = criterion.metric
    also = () if metric in GROUP_FAIRNESS_METRICS else (metric.removesuffix(DIFFERENCE_SUFFIX),)
    groups = per_group(spec, y_enc, s, labels, threshold=threshold, also=also)
    excluded = sorted(g for g, v in groups.items() if int(v["n"] or 0) < criterion.min_group_size)
    keep = ~np.isin(labels, excluded)
    eligible = {g: v for g, v in groups.items() if g not in excluded}
    value: float | None = None
    rate = metric
    pair: tuple[str, float, str, float] | None = None
    if len(eligible) >= 2:
        if metric == "demographic_parity_difference":
            predicted = _predicted_positive(target, s[keep], threshold)
            value = finite_or_none(
                demographic_parity_difference(y_enc[keep].astype("int64"), predicted, sensitive_features=labels[keep])
            )
            rate = "selection_rate"
        elif metric == "equalized_odds_difference":
            predicted = _predicted_positive(target, s[keep], threshold)
            value = finite_or_none(
                equalized_odds_difference(y_enc[keep].astype("int64"), predicted, sensitive_features=labels[keep])
            )
            gaps = {
                r: (e[1] - e[3]) if (e := _extremes(eligible, r)) else -1.0
                for r in ("true_positive_rate", "false_positive_rate")
            }
            rate = max(gaps, key=lambda r: gaps[r])
        else:
            rate = metric.removesuffix(DIFFERENCE_SUFFIX)
            value = _metric_gap(eligible, rate)
        pair = _extremes(eligible, rate)
    result: dict[str, Any] = {
        "attribute": criterion.attribute,
        "metric": metric,
        "max": criterion.max,
        "value": value,
        "rate": rate,
        "primary": spec.primary,
        "high": pair[0] if pair else None,
        "low": pair[2] if pair else None,
        "groups": groups,
        "excluded": excluded,
    }
    result["detail"] = describe(result, criterion.min_group_size)
    return result


def _metric_gap(groups: dict[str, dict[str, Any]], metric: str) -> float | None:
    """Largest minus smallest value of a metric over the groups (MetricFrame.difference, between groups)."""
    extremes = _extremes(groups, metric)
    return None if extremes is None else finite_or_none(extremes[1] - extremes[3])


def describe(result: dict[str, Any], min_group_size: int) -> str:
    """One line a reviewer reads: the value, which groups are furthest apart and by how much."""
    metric, attribute, value = result["metric"], result["attribute"], result["value"]
    if value is None:
        sizes = ", ".join(f"{g}: {v['n']}" for g, v in sorted(result["groups"].items()))
        return (
            f"{metric} over {attribute!r} undefined: fewer than two groups of at least {min_group_size} rows "
            f"with a defined {result['rate']} (rows per group: {sizes})"
        )
    high, low, rate = result["high"], result["low"], result["rate"]
    groups = result["groups"]
    text = (
        f"{metric} over {attribute!r} = {value:.4g}: {rate} {high}={groups[high][rate]:.4g} vs "
        f"{low}={groups[low][rate]:.4g} (gap {value:.4g}, max {result['max']:g})"
    )
    if result["excluded"]:
        text += f"; groups under {min_group_size} rows not compared: {', '.join(result['excluded'])}"
    return text


def assess(spec: ModelSpec, rows: pd.DataFrame, y: Any, score: Any, *, threshold: float = 0.5) -> list[dict[str, Any]]:
    """Every fairness criterion of the spec on one model's scores of ``rows`` (the evaluation rows)."""
    results = []
    for criterion in spec.fairness:
        if criterion.attribute not in rows.columns:
            raise ValueError(f"{spec.name}: fairness attribute {criterion.attribute!r} is not a column of the rows")
        values = rows[criterion.attribute].to_numpy()
        results.append(evaluate_criterion(spec, criterion, y, score, values, threshold=threshold))
    return results


def compare(candidate: list[dict[str, Any]], champion: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """What the gate takes (small, JSON-safe): each criterion's candidate value, the champion's on the same
    rows, and per group the rows and the candidate's and champion's rate and primary metric."""
    out = []
    for i, cand in enumerate(candidate):
        champ = champion[i] if champion is not None else None
        columns = list(dict.fromkeys([cand["rate"], cand["primary"]]))
        groups = {
            group: {
                "n": values["n"],
                "candidate": {c: values.get(c) for c in columns},
                "champion": None if champ is None else {c: champ["groups"].get(group, {}).get(c) for c in columns},
            }
            for group, values in sorted(cand["groups"].items())
        }
        keys = ("attribute", "metric", "max", "value", "rate", "primary", "high", "low", "excluded", "detail")
        out.append(
            {
                **{k: cand[k] for k in keys},
                "champion_value": None if champ is None else champ["value"],
                "groups": groups,
            }
        )
    return out


def groups_markdown(compared: list[dict[str, Any]]) -> str:
    """Per-group table of every criterion (:func:`compare` output), candidate and champion side by side."""
    if not compared:
        return ""
    lines = ["### Fairness per group", ""]

    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.4g}"

    for item in compared:
        columns = list(dict.fromkeys([item["rate"], item["primary"]]))
        lines += [
            f"**{item['metric']}** over `{item['attribute']}`: candidate {fmt(item['value'])}, champion "
            f"{fmt(item['champion_value'])}, max {item['max']:g}",
            "",
            "| group | rows | " + " | ".join(f"candidate {c} | champion {c}" for c in columns) + " |",
            "|---|---|" + "---|---|" * len(columns),
        ]
        for group, values in item["groups"].items():
            theirs = values["champion"] or {}
            note = " (too small)" if group in item["excluded"] else ""
            cells = " | ".join(f"{fmt(values['candidate'].get(c))} | {fmt(theirs.get(c))}" for c in columns)
            lines.append(f"| {group}{note} | {values['n']} | {cells} |")
        lines.append("")
    return "\n".join(lines)
