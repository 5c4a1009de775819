"""The fleet view's health rule (red / amber / green, every reason named) and its column sort (pure functions)."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from types import SimpleNamespace

import pytest

from mlops_airflow.core.ledger import CtRunSummary, LedgerEntry, ModelStatus, MonitorSummary
from mlops_airflow.ui.fleet import AMBER, GREEN, RED, STALE_AFTER_DAYS, FleetRow, fleet_health, sort_rows

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
THRESHOLD = 0.3


def _ct(**changes: object) -> CtRunSummary:
    ct = CtRunSummary(
        mlflow_run_id="r1",
        dag_id="ct_m",
        run_id="manual__2026-12-07T10:00:00+00:00",
        started_at="2026-12-07T10:00:00+00:00",
        status="FINISHED",
        trigger="manual",
        trigger_reason=None,
        validation="passed",
        blessed=True,
        gate_reason="blessed: non-inferior",
        promotion="promoted",
        registered_version="3",
    )
    return replace(ct, **changes)


def _monitor(**changes: object) -> MonitorSummary:
    mon = MonitorSummary(
        mlflow_run_id="r2",
        run_id="scheduled__2026-12-07T11:00:00+00:00",
        started_at="2026-12-07T11:00:00+00:00",
        champion_version="3",
        drift_share=0.1,
        drifted_features=[],
        live_metric=None,
        retrain_requested=False,
        retrain_reason=None,
    )
    return replace(mon, **changes)


def _status(name: str = "m", since: str = "2026-12-07T10:05:00+00:00", **changes: object) -> ModelStatus:
    move = LedgerEntry(since, "promote", "2", "3", "ct_m", "manual__x", None, "blessed by the gate")
    st = ModelStatus(
        name=name,
        champion="3",
        champion_since=since,
        champion_why="promote: blessed by the gate",
        pinned=None,
        pinned_by=None,
        previous_champion="2",
        challenger=None,
        ledger=[move],
        last_ct=_ct(),
        last_monitor=_monitor(),
        experiment_id="1",
        champion_proof="signature",
    )
    return replace(st, **changes)


def test_a_proven_fresh_champion_with_a_passed_ct_run_and_little_drift_is_green() -> None:
    health = fleet_health(_status(), THRESHOLD, NOW)
    assert health.level == GREEN and health.rank == 2


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"champion_refused": "its gate signature is not valid"}, "champion v3 refused by the resolver"),
        ({"last_ct": _ct(validation="failed", blessed=None, status="FAILED")}, "last CT run failed data validation"),
        ({"last_monitor": _monitor(drift_share=0.3)}, "drift share 30% >= threshold 30%"),
        ({"last_monitor": _monitor(retrain_requested=True, retrain_reason="live metric dropped")}, "live metric"),
    ],
)
def test_each_red_rule_turns_the_model_red_and_says_why(changes: dict[str, object], reason: str) -> None:
    health = fleet_health(_status(**changes), THRESHOLD, NOW)
    assert health.level == RED and health.rank == 0
    assert any(reason in r for r in health.reasons), health.reasons


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"since": "2026-10-01T00:00:00+00:00"}, f"champion v3 serves for 67 days (stale after {STALE_AFTER_DAYS})"),
        ({"last_monitor": None}, "no monitor run yet"),
        ({"champion": None, "champion_since": None, "ledger": []}, "no champion yet"),
        ({"champion": "4"}, "champion v4 was moved outside Airflow"),
        ({"last_ct": _ct(validation="passed", blessed=None, status="FAILED")}, "failed before its gate decided"),
    ],
)
def test_each_amber_rule_turns_the_model_amber_and_says_why(changes: dict[str, object], reason: str) -> None:
    since = changes.pop("since", "2026-12-07T10:05:00+00:00")
    health = fleet_health(_status(since=str(since), **changes), THRESHOLD, NOW)
    assert health.level == AMBER and health.rank == 1
    assert any(reason in r for r in health.reasons), health.reasons


def test_red_wins_over_amber_and_keeps_both_reasons() -> None:
    st = _status(since="2026-10-01T00:00:00+00:00", last_monitor=_monitor(drift_share=0.5))
    health = fleet_health(st, THRESHOLD, NOW)
    assert health.level == RED
    assert len(health.reasons) == 2 and "stale" in health.reasons[1]


def test_a_rejected_candidate_or_drift_below_the_threshold_keeps_a_model_green() -> None:
    st = _status(last_ct=_ct(blessed=False, gate_reason="not blessed: worse"), last_monitor=_monitor(drift_share=0.29))
    assert fleet_health(st, THRESHOLD, NOW).level == GREEN


def _row(name: str, level_changes: dict[str, object]) -> FleetRow:
    st = _status(name=name, **level_changes)
    spec = SimpleNamespace(name=name)
    return FleetRow(spec, st, fleet_health(st, THRESHOLD, NOW))


def test_the_fleet_sorts_by_health_worst_first_and_by_any_column_either_way() -> None:
    rows = [
        _row("a_green", {}),
        _row("b_red", {"last_monitor": _monitor(drift_share=0.9)}),
        _row("c_amber", {"last_monitor": None}),
        _row("d_red", {"champion_refused": "no signature"}),
    ]
    # worst first, ties by name
    assert [r.status.name for r in sort_rows(rows, "health")] == ["b_red", "d_red", "c_amber", "a_green"]
    best_first = ["a_green", "c_amber", "b_red", "d_red"]
    assert [r.status.name for r in sort_rows(rows, "health", descending=True)] == best_first
    # rows without a value (no monitor run) come last in either order
    by_drift = ["b_red", "a_green", "d_red", "c_amber"]
    assert [r.status.name for r in sort_rows(rows, "drift", descending=True)] == by_drift
    assert [r.status.name for r in sort_rows(rows, "drift")] == ["a_green", "d_red", "b_red", "c_amber"]
    with pytest.raises(ValueError, match="'colour' is not a column of the models overview; one of model, health"):
        sort_rows(rows, "colour")


def test_a_retrain_requested_for_drift_names_the_drift_once() -> None:
    mon = _monitor(drift_share=0.5, retrain_requested=True, retrain_reason="feature drift in 3/6 features")
    health = fleet_health(_status(last_monitor=mon), THRESHOLD, NOW)
    assert health.level == RED and health.reasons == ("drift share 50% >= threshold 30%",)
