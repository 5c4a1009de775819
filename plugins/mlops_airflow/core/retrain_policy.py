"""The retrain policy: whether CT runs now, from the schedule, the monitor's signals and the runs so far.

Pure logic, no Airflow, no MLflow, no clock: the caller passes the policy (from the spec's ``retrain:`` section,
:meth:`RetrainPolicy.from_spec`), the CT runs so far, today's signals and ``now``; :func:`decide` returns the
decision with a reason that names the rule and the figures (``drift 0.31 >= 0.30 on utilization``, ``skipped:
last CT run 3 h ago < min interval 24 h``, ``skipped: 3 runs this week = max 3``). ``mlops replay``
(:mod:`mlops_airflow.core.replay`) drives it day by day over a model's landed history.

Order of the rules: the triggers (drift, estimated drop, observed drop) first, then the schedule; the first
that asks names the run's trigger. A triggered run waits ``min_interval_hours`` since the last CT run (default
``drift.cooldown_hours``); a scheduled run waits only an explicit ``min_interval_hours``; ``max_runs_per_week``
caps the runs of any 7 days. A triggered run that is held back leaves the schedule free to run.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from mlops_airflow.core.errors import MlopsError
from mlops_airflow.core.spec import ModelSpec

WEEK = dt.timedelta(days=7)
SCHEDULE = "schedule"
DRIFT = "drift"
ESTIMATED_DROP = "estimated_drop"
OBSERVED_DROP = "observed_drop"


class PolicyError(MlopsError, ValueError):
    """A policy that cannot be applied (a schedule that is not a cron expression)."""


@dataclass(frozen=True)
class RetrainPolicy:
    """When CT runs. ``triggered_interval_hours`` holds triggered runs back when ``min_interval_hours`` is
    ``None`` (the spec's ``drift.cooldown_hours``)."""

    name: str = "spec"
    schedule: str | None = "0 2 * * *"
    on_drift: bool = True
    max_estimated_drop: float | None = None
    max_observed_drop: float | None = 0.05
    min_interval_hours: float | None = None
    triggered_interval_hours: float = 24.0
    max_runs_per_week: int | None = None

    @classmethod
    def from_spec(cls, spec: ModelSpec, name: str = "spec", **overrides: Any) -> RetrainPolicy:
        """The policy of the spec's ``retrain:`` section, defaults filled from ``schedule`` and ``drift``."""
        r = spec.retrain
        policy = cls(
            name=name,
            schedule=spec.ct_schedule,
            on_drift=r.on_drift,
            max_estimated_drop=r.max_estimated_drop,
            max_observed_drop=r.max_observed_drop if r.max_observed_drop is not None else spec.drift.max_metric_drop,
            min_interval_hours=r.min_interval_hours,
            triggered_interval_hours=spec.drift.cooldown_hours,
            max_runs_per_week=r.max_runs_per_week,
        )
        return _replace(policy, overrides)

    def describe(self) -> str:
        """The policy in one line, for reports."""
        triggers = [DRIFT] if self.on_drift else []
        if self.max_estimated_drop is not None:
            triggers.append(f"estimated drop > {self.max_estimated_drop:g}")
        if self.max_observed_drop is not None:
            triggers.append(f"observed drop > {self.max_observed_drop:g}")
        limits = []
        if self.min_interval_hours is not None:
            limits.append(f"min interval {self.min_interval_hours:g} h")
        else:
            limits.append(f"triggered runs {self.triggered_interval_hours:g} h apart")
        if self.max_runs_per_week is not None:
            limits.append(f"max {self.max_runs_per_week} runs/week")
        return f"schedule {self.schedule or 'none'}; triggers: {', '.join(triggers) or 'none'}; {'; '.join(limits)}"


def _replace(policy: RetrainPolicy, overrides: dict[str, Any]) -> RetrainPolicy:
    from dataclasses import replace

    return replace(policy, **overrides) if overrides else policy


@dataclass(frozen=True)
class CTRun:
    """One CT run the policy started: when and by which trigger."""

    at: dt.datetime
    trigger: str


@dataclass(frozen=True)
class Signals:
    """What the monitor saw today. ``None`` where it was not measured (no labels yet, no estimate).

    Drops are oriented: positive = worse than the champion's metric at promotion. ``estimate_reason``: why
    there is no ``estimated_drop`` (a regression model, a poorly calibrated one, no metric at promotion).
    """

    scheduled: bool = False
    drift_share: float | None = None
    drift_threshold: float | None = None
    drift_retrain: bool | None = None
    drifted_features: tuple[str, ...] = ()
    estimated_drop: float | None = None
    observed_drop: float | None = None
    metric: str = "metric"
    estimate_reason: str | None = None


@dataclass(frozen=True)
class RetrainDecision:
    """Whether CT runs now, why (the rule and its figures), and the figures as data."""

    retrain: bool
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def trigger(self) -> str | None:
        value = self.figures.get("trigger")
        return value if isinstance(value, str) else None


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def schedule_due(schedule: str | None, since: dt.datetime, now: dt.datetime) -> bool:
    """Whether the cron ``schedule`` (or a preset) fires in ``(since, now]`` (UTC)."""
    if schedule is None:
        return False
    try:
        from croniter import croniter

        from mlops_airflow.core.spec import schedule_cron

        nxt = croniter(schedule_cron(schedule), _utc(since)).get_next(dt.datetime)
    except (ValueError, KeyError) as err:
        raise PolicyError(f"retrain.schedule: {schedule!r} is not a cron expression or preset: {err}") from None
    return bool(_utc(nxt) <= _utc(now))


def _hours(delta: dt.timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.0f} h" if hours >= 1 else f"{hours * 60:.0f} min"


def _triggers(policy: RetrainPolicy, s: Signals) -> tuple[list[tuple[str, str]], list[str]]:
    """The triggers that ask for a run (``(trigger, reason)``), and why each other one does not."""
    asks: list[tuple[str, str]] = []
    quiet: list[str] = []
    if policy.on_drift and s.drift_share is not None:
        threshold = "" if s.drift_threshold is None else f" {s.drift_threshold:.2f}"
        on = f" on {', '.join(s.drifted_features)}" if s.drifted_features else ""
        if s.drift_retrain:
            asks.append((DRIFT, f"drift {s.drift_share:.2f} >={threshold}{on}"))
        else:
            quiet.append(f"drift {s.drift_share:.2f} <{threshold}")
    elif s.drift_share is not None:
        quiet.append(f"drift {s.drift_share:.2f} not a trigger (on_drift: false)")
    if policy.max_estimated_drop is not None:
        if s.estimated_drop is None:
            quiet.append(s.estimate_reason or "no estimate")
        elif s.estimated_drop > policy.max_estimated_drop:
            asks.append(
                (ESTIMATED_DROP, f"estimated {s.metric} drop {s.estimated_drop:.3f} > {policy.max_estimated_drop:g}")
            )
        else:
            quiet.append(f"estimated {s.metric} drop {s.estimated_drop:.3f} <= {policy.max_estimated_drop:g}")
    if policy.max_observed_drop is not None:
        if s.observed_drop is None:
            quiet.append("no labelled rows")
        elif s.observed_drop > policy.max_observed_drop:
            asks.append(
                (OBSERVED_DROP, f"observed {s.metric} drop {s.observed_drop:.3f} > {policy.max_observed_drop:g}")
            )
        else:
            quiet.append(f"observed {s.metric} drop {s.observed_drop:.3f} <= {policy.max_observed_drop:g}")
    return asks, quiet


def _held_back(policy: RetrainPolicy, history: list[CTRun], now: dt.datetime, interval: float | None) -> str | None:
    """Why a run may not start now (``None``: it may)."""
    runs = sorted(history, key=lambda r: _utc(r.at))
    if interval is not None and runs:
        since = _utc(now) - _utc(runs[-1].at)
        if since < dt.timedelta(hours=interval):
            return f"skipped: last CT run {_hours(since)} ago < min interval {interval:g} h"
    if policy.max_runs_per_week is not None:
        week = [r for r in runs if _utc(now) - _utc(r.at) < WEEK]
        if len(week) >= policy.max_runs_per_week:
            return f"skipped: {len(week)} runs this week = max {policy.max_runs_per_week}"
    return None


def decide(policy: RetrainPolicy, history: list[CTRun], signals: Signals, now: dt.datetime) -> RetrainDecision:
    """Whether CT runs at ``now``.

    :param history: the CT runs so far (any order); only their times count.
    :param signals: today's drift, estimated and observed drop, and whether a schedule slot fell due.
    """
    runs = sorted(history, key=lambda r: _utc(r.at))
    figures: dict[str, Any] = {
        "policy": policy.name,
        "drift_share": None if signals.drift_share is None else round(signals.drift_share, 4),
        "estimated_drop": None if signals.estimated_drop is None else round(signals.estimated_drop, 4),
        "observed_drop": None if signals.observed_drop is None else round(signals.observed_drop, 4),
        "hours_since_last_run": round((_utc(now) - _utc(runs[-1].at)).total_seconds() / 3600, 2) if runs else None,
        "runs_last_7_days": sum(1 for r in runs if _utc(now) - _utc(r.at) < WEEK),
        "trigger": None,
    }
    asks, quiet = _triggers(policy, signals)
    skipped: list[str] = []
    if asks:
        interval = policy.min_interval_hours
        held = _held_back(policy, runs, now, interval if interval is not None else policy.triggered_interval_hours)
        why = "; ".join(reason for _, reason in asks)
        if held is None:
            return RetrainDecision(True, why, {**figures, "trigger": asks[0][0]})
        skipped.append(f"{held} (would run: {why})")
    if signals.scheduled:
        held = _held_back(policy, runs, now, policy.min_interval_hours)
        if held is None:
            reason = f"schedule {policy.schedule} due" + (f"; {skipped[0]}" if skipped else "")
            return RetrainDecision(True, reason, {**figures, "trigger": SCHEDULE})
        skipped.append(f"{held} (would run: schedule {policy.schedule} due)")
    if skipped:
        return RetrainDecision(False, "; ".join(skipped), figures)
    parts = [*quiet, "schedule not due" if policy.schedule else "no schedule"]
    return RetrainDecision(False, "no retrain: " + "; ".join(parts), figures)
