"""The decisions of ``monitor_<model>``: which drift report counts, the live metric, the label-free estimate
of each recent batch and the champion's estimated drop, and the retrain request.

Pure logic, no Airflow and no MLflow: plain inputs (drift reports, label columns, score arrays, the spec) in,
small frozen dataclasses out, each with its reason and the figures behind it. The operator reads the data,
calls these, logs and pushes what they return. A domain fault (labels that are not the spec's classes, a
tag that is not a time) raises :class:`MonitorError` naming what to fix.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlops_airflow.core.drift import DriftReport, performance_drop, retrain_decision
from mlops_airflow.core.errors import MlopsError
from mlops_airflow.core.metrics import finite_or_none, higher_is_better
from mlops_airflow.core.spec import ModelSpec

if TYPE_CHECKING:
    import numpy as np

    from mlops_airflow.core.estimate import Calibration, Estimate

LANDING = "landing zone"
SERVING = "serving log"


class MonitorError(MlopsError, ValueError):
    """Input the monitor cannot decide on; the message names the model, the input and the rule."""


def oriented_drop(metric: str, reference: float, value: float) -> float:
    """How far ``value`` of ``metric`` is worse than ``reference``: positive = worse whatever the metric's
    direction (a fall of ROC AUC, a rise of RMSE), as :func:`~mlops_airflow.core.drift.performance_drop`."""
    return reference - value if higher_is_better(metric) else value - reference


@dataclass(frozen=True)
class DriftChoice:
    """The drift report the retrain decision reads: the landing zone's, or the request log's when it shows
    more (it requests a retrain where the landing zone does not, or has the larger drifted share)."""

    source: str
    report: DriftReport
    reason: str


def choose_drift_source(landing: DriftReport, serving: DriftReport | None) -> DriftChoice:
    """Which drift report counts: ``serving`` wins only when it asks for a retrain that ``landing`` does not,
    or asks the same and has the larger drifted share (a tie stays with the landing zone)."""
    if serving is None:
        return DriftChoice(LANDING, landing, f"no request log; landing zone drift share {landing.drift_share:.2f}")
    figures = f"landing zone {landing.drift_share:.2f}, serving log {serving.drift_share:.2f}"
    if (serving.should_retrain, serving.drift_share) > (landing.should_retrain, landing.drift_share):
        return DriftChoice(SERVING, serving, f"the request log shows more drift ({figures})")
    return DriftChoice(LANDING, landing, f"the request log shows no more drift ({figures})")


def _encoded(spec: ModelSpec, labels: Any) -> np.ndarray:
    """Labels as the metrics take them; a value that is not one of the spec's classes is a :class:`MonitorError`."""
    from mlops_airflow.core.errors import RowsError
    from mlops_airflow.core.scoring import encode_labels

    try:
        return encode_labels(spec, labels)  # the one encoding of training, evaluation and serving
    except RowsError as err:
        raise MonitorError(str(err)) from None


@dataclass(frozen=True)
class LiveMetric:
    """The champion's primary metric on the recent labelled rows, against its metric at promotion.

    ``value`` is ``None`` when it was not measured (no labelled row, or no reference metric to compare with);
    ``dropped``/``delta`` as :func:`~mlops_airflow.core.drift.performance_drop` (positive delta = worse).
    """

    metric: str
    value: float | None
    reference: float | None
    dropped: bool | None
    delta: float | None
    rows: int
    reason: str


def live_metric(
    spec: ModelSpec, labels: Any, scores: np.ndarray, threshold: float, reference: float | None
) -> LiveMetric:
    """The live metric of ``scores`` on the rows whose label (raw, ``None``/NaN where absent) is known.

    :param reference: the champion's metric on its evaluation rows at promotion (``None`` if not recorded).
    :raises MonitorError: a label that is not one of the spec's classes.
    """
    import numpy as np
    import pandas as pd

    from mlops_airflow.core.evaluation import Target, metric_value

    metric = spec.primary
    known = pd.Series(labels).notna().to_numpy() if labels is not None else np.zeros(len(scores), dtype=bool)
    rows = int(known.sum())
    if not rows:
        return LiveMetric(metric, None, reference, None, None, 0, "no labelled row among the recent batches")
    if reference is None:
        return LiveMetric(metric, None, None, None, None, rows, "the champion's run recorded no evaluation metric")
    y = _encoded(spec, pd.Series(labels)[known])
    value = metric_value(metric, y, np.asarray(scores)[known], Target.of(spec), threshold=threshold)
    dropped, delta = performance_drop(reference, value, metric, spec.drift)
    return LiveMetric(
        metric,
        finite_or_none(value),
        reference,
        dropped,
        delta,
        rows,
        f"{metric} {value:.4g} on {rows} labelled row(s) vs {reference:.4g} at promotion (drop {delta:.4g})",
    )


@dataclass(frozen=True)
class MonitorDecision:
    """Whether to request a retrain, why, and the figures the reason rests on."""

    request: bool
    reason: str
    in_cooldown: bool
    drift: DriftChoice
    live: LiveMetric
    estimated: EstimatedDrop
    figures: dict[str, Any] = field(default_factory=dict)

    def log_lines(self) -> list[str]:
        """The decision in a few lines: "decided X because Y: figures"."""
        verdict = "request a retrain" if self.request else "no retrain request"
        figures = ", ".join(f"{k}={v}" for k, v in self.figures.items())
        return [
            f"decided {verdict} because {self.reason}: {figures}",
            f"decided drift source {self.drift.source} because {self.drift.reason}",
            f"decided live metric {self.live.value} because {self.live.reason}",
            f"decided estimated drop {self.estimated.drop} because {self.estimated.reason}",
        ]


def parse_request_time(text: str | None, model: str, tag: str) -> dt.datetime | None:
    """The time of the last retrain request kept in the registered model's ``tag`` (``None`` without one)."""
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise MonitorError(
            f"{model}: registered model tag {tag}={text!r} is not an ISO time; delete or fix the tag"
        ) from None


def decide(
    spec: ModelSpec,
    landing: DriftReport,
    serving: DriftReport | None,
    live: LiveMetric,
    last_request_at: dt.datetime | None,
    now: dt.datetime,
    ct_runs: list[dt.datetime] | None = None,
    estimates: Sequence[BatchEstimate] = (),
) -> MonitorDecision:
    """The retrain decision from the drift reports, the live metric and the recent batches' estimates.

    Without a ``retrain:`` section in the spec: drift or an observed drop of ``drift.max_metric_drop`` asks
    for a retrain, one request per ``drift.cooldown_hours``. With one, the spec's policy decides
    (:func:`~mlops_airflow.core.retrain_policy.decide`: its triggers, minimum interval and weekly cap, counted
    over ``ct_runs``, the start times of the model's recent CT runs, and the last request); its
    ``max_estimated_drop`` reads the :func:`estimated_drop` of the newest landed batch in ``estimates``
    against the champion's metric at promotion (``live.reference``).
    """
    choice = choose_drift_source(landing, serving)
    estimated = estimated_drop(spec, estimates, live.reference)
    figures = {
        "drift_source": choice.source,
        "drift_share": round(choice.report.drift_share, 4),
        "drifted": len(choice.report.drifted_features),
        f"live_{live.metric}": None if live.value is None else round(live.value, 4),
        f"estimated_{estimated.metric}": None if estimated.value is None else round(estimated.value, 4),
        "estimated_drop": None if estimated.drop is None else round(estimated.drop, 4),
        "last_request": last_request_at.isoformat() if last_request_at else None,
    }
    if "retrain" in spec.model_fields_set:
        return _policy_decision(spec, choice, live, estimated, last_request_at, now, ct_runs or [], figures)
    decision = retrain_decision(choice.report, live.dropped, last_request_at, now, spec.drift, perf_delta=live.delta)
    return MonitorDecision(decision.request, decision.reason, decision.in_cooldown, choice, live, estimated, figures)


def _policy_decision(
    spec: ModelSpec,
    choice: DriftChoice,
    live: LiveMetric,
    estimated: EstimatedDrop,
    last_request_at: dt.datetime | None,
    now: dt.datetime,
    ct_runs: list[dt.datetime],
    figures: dict[str, Any],
) -> MonitorDecision:
    from mlops_airflow.core import retrain_policy

    report = choice.report
    signals = retrain_policy.Signals(
        drift_share=report.drift_share,
        drift_threshold=spec.drift.drift_share,
        drift_retrain=report.should_retrain,
        drifted_features=tuple(report.drifted_features),
        estimated_drop=estimated.drop,
        estimate_reason=None if estimated.drop is not None else estimated.reason,
        observed_drop=live.delta,
        metric=spec.primary,
    )
    history = [retrain_policy.CTRun(at, "ct") for at in ct_runs]
    if last_request_at is not None:
        history.append(retrain_policy.CTRun(last_request_at, "triggered"))
    decision = retrain_policy.decide(retrain_policy.RetrainPolicy.from_spec(spec), history, signals, now)
    held = not decision.retrain and "skipped:" in decision.reason
    figures = {**figures, **{k: v for k, v in decision.figures.items() if k in ("policy", "runs_last_7_days")}}
    return MonitorDecision(decision.retrain, decision.reason, held, choice, live, estimated, figures)


@dataclass(frozen=True)
class BatchEstimate:
    """The label-free estimate of one batch: a landed batch file or one day of the request log."""

    source: str
    batch: str
    estimate: Estimate

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "batch": self.batch, **self.estimate.to_dict()}

    def log_line(self) -> str:
        e = self.estimate
        if not e.estimated:
            return f"decided no estimate for {self.source} {self.batch} because {e.reason}"
        realised = "" if e.realised is None else f", realised {e.realised:.4f} on {e.labelled} labelled row(s)"
        return (
            f"decided estimated {e.metric} {e.value:.4f} for {self.source} {self.batch} because {e.reason}: "
            f"{e.confidence:.0%} interval [{e.low:.4f}, {e.high:.4f}] over {e.rows} row(s){realised}"
        )


def champion_calibration(spec: ModelSpec, labels: Any, scores: Any) -> Calibration:
    """The champion's calibration on its evaluation rows (labels raw, scores as the model gave them)."""
    import numpy as np
    import pandas as pd

    from mlops_airflow.core.estimate import Calibration, EstimateError, calibrate
    from mlops_airflow.core.evaluation import Target

    target = Target.of(spec)
    if not spec.is_classifier:
        return calibrate(target, labels, scores)
    values = pd.Series(labels).reset_index(drop=True)
    known = values.notna().to_numpy()
    try:
        return calibrate(target, _encoded(spec, values[known]), np.asarray(scores)[known])
    except (EstimateError, MonitorError) as err:
        return Calibration(target.kind, False, f"no estimate: the champion's evaluation rows cannot be used: {err}")


def estimate_batches(
    spec: ModelSpec,
    calibration: Calibration,
    parts: list[tuple[str, str, Any, Any]],
    threshold: float,
) -> list[BatchEstimate]:
    """The estimate of the primary metric on each part ``(source, batch, scores, labels or None)``.

    :raises MonitorError: scores or labels the estimator cannot read (named with the batch).
    """
    import numpy as np

    from mlops_airflow.core.estimate import EstimateError, estimate_metric
    from mlops_airflow.core.evaluation import Target

    target = Target.of(spec)
    out = []
    for source, batch, scores, labels in parts:
        if source == SERVING and spec.is_classifier:  # a row the server logged without an answer says nothing
            answered = np.isfinite(np.asarray(scores, dtype="float64").reshape(len(scores), -1)).all(axis=1)
            scores = np.asarray(scores, dtype="float64")[answered]
        try:
            found = estimate_metric(calibration, target, spec.primary, scores, threshold=threshold, labels=labels)
        except EstimateError as err:
            raise MonitorError(f"{spec.name}: {source} {batch}: {err}") from None
        out.append(BatchEstimate(source, batch, found))
    return out


def unusable_calibration(spec: ModelSpec, why: str) -> Calibration:
    """A calibration that refuses every estimate, saying ``why`` (e.g. the evaluation rows are gone)."""
    from mlops_airflow.core.estimate import NO_REGRESSION, Calibration

    if not spec.is_classifier:
        return Calibration(spec.kind, False, NO_REGRESSION)
    return Calibration(spec.kind, False, f"no estimate: {why}")


@dataclass(frozen=True)
class EstimatedDrop:
    """The champion's estimated drop on the newest landed batch: the label-free estimate of its primary metric
    against its metric at promotion, oriented (:func:`oriented_drop`: positive = worse).

    ``drop`` is ``None`` without a usable estimate or reference; ``reason`` then says why (it starts with
    ``no estimate``), else it gives the figures.
    """

    metric: str
    batch: str | None
    value: float | None
    reference: float | None
    drop: float | None
    reason: str


def estimated_drop(spec: ModelSpec, estimates: Sequence[BatchEstimate], reference: float | None) -> EstimatedDrop:
    """The estimated drop of the newest landed batch among ``estimates`` (in landing order; request log days
    do not count) against ``reference``, the champion's ``candidate_<primary>`` at promotion."""
    metric = spec.primary
    newest = next((e for e in reversed(estimates) if e.source == LANDING), None)
    if newest is None:
        return EstimatedDrop(metric, None, None, reference, None, "no estimate: no landed batch was estimated")
    found = newest.estimate
    value = finite_or_none(found.value)
    if value is None:
        why = found.reason if found.reason.startswith("no estimate") else f"no estimate: {found.reason}"
        return EstimatedDrop(metric, newest.batch, None, reference, None, why)
    ref = finite_or_none(reference)
    if ref is None:
        why = f"no estimate of a drop: the champion's training run recorded no candidate_{metric} to compare with"
        return EstimatedDrop(metric, newest.batch, value, None, None, why)
    drop = oriented_drop(metric, ref, value)
    return EstimatedDrop(
        metric,
        newest.batch,
        value,
        ref,
        drop,
        f"estimated {metric} {value:.4f} on {newest.batch} vs {ref:.4f} at promotion (drop {drop:.4f})",
    )
