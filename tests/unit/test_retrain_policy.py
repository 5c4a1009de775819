"""The retrain policy: spec section, defaults, triggers, limits and the reasons they give."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from mlops_airflow.core.retrain_policy import (
    CTRun,
    PolicyError,
    RetrainPolicy,
    Signals,
    decide,
    schedule_due,
)
from mlops_airflow.core.spec import ModelSpec

NOW = dt.datetime(2026, 3, 10, 6, tzinfo=dt.UTC)


def _spec(**extra: Any) -> ModelSpec:
    raw: dict[str, Any] = {
        "name": "m",
        "task": "binary",
        "source": {"uri": "landing/m"},
        "features": [{"name": "x", "type": "numeric"}],
        "label": {"name": "y", "values": [0, 1]},
        "estimator": {"class": "sklearn.linear_model.LogisticRegression"},
        **extra,
    }
    return ModelSpec.model_validate(raw)


def _drift(share: float, retrain: bool, *features: str) -> Signals:
    return Signals(drift_share=share, drift_threshold=0.2, drift_retrain=retrain, drifted_features=features)


def test_defaults_are_todays_schedule_and_monitor() -> None:
    spec = _spec(schedule="0 3 * * *", drift={"max_metric_drop": 0.07, "cooldown_hours": 12})
    policy = RetrainPolicy.from_spec(spec)
    assert spec.ct_schedule == "0 3 * * *"
    assert policy.schedule == "0 3 * * *"
    assert policy.on_drift is True
    assert policy.max_observed_drop == 0.07
    assert policy.max_estimated_drop is None
    assert policy.min_interval_hours is None
    assert policy.triggered_interval_hours == 12
    assert policy.max_runs_per_week is None


def test_retrain_schedule_overrides_and_null_disables() -> None:
    assert _spec(retrain={"schedule": "@weekly"}).ct_schedule == "@weekly"
    assert _spec(retrain={"schedule": None}).ct_schedule is None
    assert _spec(retrain={"on_drift": False}).ct_schedule == "0 2 * * *"


def test_bad_retrain_section_names_the_key() -> None:
    with pytest.raises(ValidationError) as err:
        _spec(retrain={"max_runs_per_week": 0})
    assert err.value.errors()[0]["loc"] == ("retrain", "max_runs_per_week")


def test_drift_trigger_reason_names_share_threshold_and_features() -> None:
    decision = decide(RetrainPolicy(), [], _drift(0.31, True, "utilization"), NOW)
    assert decision.retrain
    assert decision.reason == "drift 0.31 >= 0.20 on utilization"
    assert decision.trigger == "drift"
    assert decision.figures["drift_share"] == 0.31


def test_drift_trigger_off_ignores_drift() -> None:
    decision = decide(RetrainPolicy(on_drift=False), [], _drift(0.9, True, "a"), NOW)
    assert not decision.retrain
    assert decision.reason.startswith("no retrain:")


def test_observed_and_estimated_drop_triggers() -> None:
    policy = RetrainPolicy(max_estimated_drop=0.03, max_observed_drop=0.05)
    observed = decide(policy, [], Signals(observed_drop=0.071, metric="roc_auc"), NOW)
    assert observed.retrain and observed.trigger == "observed_drop"
    assert observed.reason == "observed roc_auc drop 0.071 > 0.05"
    estimated = decide(policy, [], Signals(estimated_drop=0.04, observed_drop=0.01, metric="roc_auc"), NOW)
    assert estimated.retrain and estimated.trigger == "estimated_drop"
    assert "estimated roc_auc drop 0.040 > 0.03" in estimated.reason
    quiet = decide(policy, [], Signals(observed_drop=0.01, metric="roc_auc"), NOW)
    assert not quiet.retrain
    assert "no estimate" in quiet.reason and "observed roc_auc drop 0.010 <= 0.05" in quiet.reason
    why = "no estimate: the model's probabilities are poorly calibrated"
    explained = decide(policy, [], Signals(estimate_reason=why, metric="roc_auc"), NOW)
    assert not explained.retrain and explained.reason.startswith(f"no retrain: {why}; no labelled rows")


def test_min_interval_skips_with_hours() -> None:
    policy = RetrainPolicy(min_interval_hours=24)
    history = [CTRun(NOW - dt.timedelta(hours=3), "schedule")]
    decision = decide(policy, history, _drift(0.5, True, "a"), NOW)
    assert not decision.retrain
    assert decision.reason.startswith("skipped: last CT run 3 h ago < min interval 24 h")
    assert decision.figures["hours_since_last_run"] == 3.0


def test_triggered_runs_keep_the_cooldown_but_the_schedule_runs() -> None:
    policy = RetrainPolicy(triggered_interval_hours=24)
    history = [CTRun(NOW - dt.timedelta(hours=5), "drift")]
    held = decide(policy, history, _drift(0.5, True, "a"), NOW)
    assert not held.retrain and "< min interval 24 h" in held.reason
    drifted_and_due = Signals(scheduled=True, drift_share=0.5, drift_threshold=0.2, drift_retrain=True)
    scheduled = decide(policy, history, drifted_and_due, NOW)
    assert scheduled.retrain and scheduled.trigger == "schedule"
    assert "would run: drift 0.50" in scheduled.reason


def test_weekly_cap() -> None:
    policy = RetrainPolicy(max_runs_per_week=3)
    history = [CTRun(NOW - dt.timedelta(days=d), "schedule") for d in (1, 2, 3, 8)]
    decision = decide(policy, history, Signals(scheduled=True), NOW)
    assert not decision.retrain
    assert decision.reason.startswith("skipped: 3 runs this week = max 3")
    assert decision.figures["runs_last_7_days"] == 3
    assert decide(policy, history[1:], Signals(scheduled=True), NOW).retrain


def test_nothing_due() -> None:
    decision = decide(RetrainPolicy(schedule=None), [], Signals(), NOW)
    assert decision == decide(RetrainPolicy(schedule=None), [], Signals(), NOW)
    assert not decision.retrain
    assert decision.reason == "no retrain: no labelled rows; no schedule"


def test_schedule_due() -> None:
    assert schedule_due("0 2 * * *", NOW - dt.timedelta(days=1), NOW)
    assert not schedule_due("0 2 * * *", NOW - dt.timedelta(hours=3), NOW)
    assert schedule_due("@weekly", NOW - dt.timedelta(days=7), NOW)
    assert not schedule_due(None, NOW - dt.timedelta(days=7), NOW)
    with pytest.raises(PolicyError, match=r"retrain\.schedule"):
        schedule_due("every day", NOW - dt.timedelta(days=1), NOW)


def test_replay_policies_come_from_the_spec_and_unknown_names_are_refused() -> None:
    from mlops_airflow.core.replay import ReplayError, resolve_policies

    spec = _spec(retrain={"max_runs_per_week": 2}, drift={"max_metric_drop": 0.03})
    own, weekly = resolve_policies(spec, ["spec", "weekly"])
    assert own.mode == "gated" and own.policy.max_runs_per_week == 2 and own.policy.max_observed_drop == 0.03
    assert weekly.policy.schedule == "@weekly" and not weekly.policy.on_drift
    with pytest.raises(ReplayError, match=r"unknown replay policy \['hourly'\]"):
        resolve_policies(spec, ["spec", "hourly"])


def test_replay_history_needs_a_date_in_each_file_name(tmp_path: Path) -> None:
    from mlops_airflow.core.replay import ReplayError, landed_batches

    (tmp_path / "batch_2026-01-02.csv").write_text("x,y\n")
    (tmp_path / "batch_2026-01-01.csv").write_text("x,y\n")
    assert [b.date.day for b in landed_batches(tmp_path, "csv")] == [1, 2]
    (tmp_path / "latest.csv").write_text("x,y\n")
    with pytest.raises(ReplayError, match=r"latest\.csv: a replayed batch needs an ISO date"):
        landed_batches(tmp_path, "csv")


def test_replay_history_is_listed_by_the_landing_zone_a_symlink_out_of_the_roots_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The history is read as a CT run reads the landing zone: a symlink there naming a file outside the
    allowed landing roots is refused by name; its content is neither read nor echoed."""
    from mlops_airflow.core.replay import ReplayError, landed_batches

    monkeypatch.setenv("MLOPS_DATA_ROOT", str(tmp_path / "data"))
    history = tmp_path / "data" / "landing" / "m"
    history.mkdir(parents=True)
    (history / "batch_2026-01-01.csv").write_text("x,y\n1,0\n")
    secret = tmp_path / "elsewhere" / "accounts.csv"
    secret.parent.mkdir()
    secret.write_text("user,password\nalice,hunter2\n")
    (history / "batch_2026-01-02.csv").symlink_to(secret)
    with pytest.raises(ReplayError, match=r"batch_2026-01-02\.csv: resolves outside the allowed landing roots") as err:
        landed_batches(history, "csv")
    assert "rule landing_root" in str(err.value) and "hunter2" not in str(err.value)


def test_replay_applies_the_specs_size_cap_to_every_history_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlops_airflow.core.replay import ReplayError, replay

    monkeypatch.setenv("MLOPS_DATA_ROOT", str(tmp_path / "data"))
    history = tmp_path / "data" / "landing" / "m"
    history.mkdir(parents=True)
    for day in (1, 2):
        (history / f"batch_2026-01-0{day}.csv").write_text("x,y\n" + "1,0\n0,1\n" * 20)
    spec = _spec(source={"uri": "landing/m", "max_file_bytes": 64})
    capped = r"batch_2026-01-01\.csv: \d+ bytes, over the cap of 64 bytes.*max_file_bytes"
    with pytest.raises(ReplayError, match=capped):
        replay(spec, history, dt.date(2026, 1, 2), dt.date(2026, 1, 2), ["never"], tmp_path / "out")
