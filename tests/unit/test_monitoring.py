"""The monitor's decisions (core/monitoring.py) from plain inputs: no Airflow, no MLflow, no model."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops_airflow.core import monitoring
from mlops_airflow.core.config import get_spec
from mlops_airflow.core.drift import DriftReport, FeatureDrift
from mlops_airflow.core.estimate import Calibration, Estimate

SPEC = get_spec("credit_default")
REGRESSION = get_spec("diabetes_progression", Path(__file__).parents[1] / "e2e" / "models")
NOW = dt.datetime(2026, 2, 1, 2, 0, tzinfo=dt.UTC)


def report(drifted: int, n: int = 9) -> DriftReport:
    features = [FeatureDrift(f"f{i}", "numeric", 0.3, 1e-9, 0.5, 0.5, i < drifted) for i in range(n)]
    share = drifted / n
    return DriftReport(features, share, [f.name for f in features if f.drifted], share >= 0.3, 1000, 100)


def scored(n: int = 400, seed: int = 0) -> tuple[pd.Series, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    return pd.Series((rng.random(n) < p).astype("int64")), p


NO_LIVE = monitoring.LiveMetric("roc_auc", None, None, None, None, 0, "no labelled row")


def test_the_landing_zone_counts_unless_the_request_log_shows_more_drift() -> None:
    assert monitoring.choose_drift_source(report(1), None).source == monitoring.LANDING
    assert monitoring.choose_drift_source(report(1), report(5)).source == monitoring.SERVING
    tie = monitoring.choose_drift_source(report(5), report(5))
    assert tie.source == monitoring.LANDING and "no more drift" in tie.reason
    # Asking for a retrain beats a larger share that does not.
    assert monitoring.choose_drift_source(report(3), report(2)).source == monitoring.LANDING


def test_live_metric_on_the_labelled_rows_only() -> None:
    labels, scores = scored()
    labels = labels.astype("object")
    labels[:100] = None  # not arrived yet
    live = monitoring.live_metric(SPEC, labels, scores, 0.5, reference=0.95)
    assert live.rows == 300 and 0.7 < live.value < 0.9
    assert live.dropped is True and live.delta == pytest.approx(0.95 - live.value)
    assert "300 labelled row(s)" in live.reason


def test_no_live_metric_without_labels_or_reference() -> None:
    labels, scores = scored()
    assert monitoring.live_metric(SPEC, None, scores, 0.5, 0.9).reason == "no labelled row among the recent batches"
    unrecorded = monitoring.live_metric(SPEC, labels, scores, 0.5, None)
    assert unrecorded.value is None and unrecorded.dropped is None and unrecorded.rows == 400


def test_a_label_outside_the_classes_is_a_monitor_error() -> None:
    labels, scores = scored()
    with pytest.raises(monitoring.MonitorError, match="'default'"):
        monitoring.live_metric(SPEC, labels.replace({1: 7}), scores, 0.5, 0.9)


def test_decide_requests_on_drift_and_explains_itself() -> None:
    decision = monitoring.decide(SPEC, report(1), report(6), NO_LIVE, None, NOW)
    assert decision.request and decision.drift.source == monitoring.SERVING
    assert decision.figures["drift_source"] == monitoring.SERVING and decision.figures["drifted"] == 6
    first, *rest = decision.log_lines()
    assert first.startswith("decided request a retrain because retrain requested: feature drift")
    assert "drift_share=0.6667" in first and len(rest) == 3
    assert rest[-1] == "decided estimated drop None because no estimate: no landed batch was estimated"


def test_decide_holds_back_within_the_cooldown_and_on_no_drift() -> None:
    held = monitoring.decide(SPEC, report(6), None, NO_LIVE, NOW - dt.timedelta(hours=1), NOW)
    assert not held.request and held.in_cooldown
    calm = monitoring.decide(SPEC, report(0), None, NO_LIVE, None, NOW)
    assert not calm.request and not calm.in_cooldown and calm.reason.startswith("no retrain")


def test_decide_on_a_live_metric_drop() -> None:
    dropped = monitoring.LiveMetric("roc_auc", 0.7, 0.85, True, 0.15, 500, "fell")
    decision = monitoring.decide(SPEC, report(0), None, dropped, None, NOW)
    assert decision.request and "live metric dropped by 0.15" in decision.reason


def test_request_time_tag() -> None:
    assert monitoring.parse_request_time(None, "m", "tag") is None
    assert monitoring.parse_request_time("2026-01-02T03:04:05+00:00", "m", "tag") == dt.datetime(
        2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC
    )
    with pytest.raises(monitoring.MonitorError, match="m: registered model tag tag='yesterday'"):
        monitoring.parse_request_time("yesterday", "m", "tag")


def test_a_refused_calibration_refuses_every_batch_with_its_reason() -> None:
    labels, scores = scored()
    refused = monitoring.unusable_calibration(SPEC, "its evaluation rows cannot be read: gone")
    found = monitoring.estimate_batches(SPEC, refused, [("landing zone", "b.csv", scores, labels)], 0.5)
    assert [e.estimate.value for e in found] == [None]
    assert found[0].log_line() == (
        "decided no estimate for landing zone b.csv because no estimate: its evaluation rows cannot be read: gone"
    )
    assert found[0].to_dict()["realised"] == pytest.approx(found[0].estimate.realised)


def test_a_calibration_from_too_few_rows_refuses() -> None:
    labels, scores = scored(50)
    calibration = monitoring.champion_calibration(SPEC, labels, scores)
    assert not calibration.usable and "50 row(s)" in calibration.reason


def test_regression_makes_no_estimate() -> None:
    calibration = monitoring.champion_calibration(REGRESSION, np.arange(300.0), np.arange(300.0))
    assert isinstance(calibration, Calibration) and not calibration.usable
    found = monitoring.estimate_batches(REGRESSION, calibration, [("serving log", "date=x", np.ones(3), None)], 0.5)
    assert found[0].estimate.value is None and "regression" in found[0].log_line()


def test_unreadable_scores_are_a_monitor_error_naming_the_batch() -> None:
    _, scores = scored()
    calibration = Calibration("binary", True, "ok")
    with pytest.raises(monitoring.MonitorError, match=r"landing zone b\.csv: scores"):
        monitoring.estimate_batches(SPEC, calibration, [("landing zone", "b.csv", scores * np.nan, None)], 0.5)


def test_served_rows_without_an_answer_are_left_out_of_the_estimate() -> None:
    _, scores = scored(40)
    scores[:10] = np.nan
    calibration = Calibration("binary", True, "ok")  # the raw scores taken as probabilities
    (found,) = monitoring.estimate_batches(SPEC, calibration, [(monitoring.SERVING, "date=x", scores, None)], 0.5)
    assert found.estimate.rows == 30 and found.estimate.value is not None


def with_retrain(*, base: object = SPEC, **section) -> object:
    from mlops_airflow.core.spec import ModelSpec

    assert isinstance(base, ModelSpec)
    data = base.model_dump(mode="json", exclude_unset=True)
    data["retrain"] = section
    return ModelSpec.model_validate(data)


def test_a_retrain_section_that_turns_drift_off_is_obeyed_by_the_monitor() -> None:
    spec = with_retrain(on_drift=False)
    decision = monitoring.decide(spec, report(6), None, NO_LIVE, None, NOW, [])
    assert not decision.request and "drift" in decision.reason
    # the same drift without the section asks for a retrain
    assert monitoring.decide(SPEC, report(6), None, NO_LIVE, None, NOW).request


def test_the_weekly_cap_counts_the_models_recent_ct_runs() -> None:
    spec = with_retrain(max_runs_per_week=2)
    runs = [NOW - dt.timedelta(days=1), NOW - dt.timedelta(days=3)]
    capped = monitoring.decide(spec, report(6), None, NO_LIVE, None, NOW, runs)
    assert not capped.request and capped.in_cooldown
    assert "2 runs this week = max 2" in capped.reason and capped.figures["runs_last_7_days"] == 2
    older = [NOW - dt.timedelta(days=9)]
    assert monitoring.decide(spec, report(6), None, NO_LIVE, None, NOW, older).request


def test_a_retrain_section_with_an_observed_drop_threshold() -> None:
    spec = with_retrain(max_observed_drop=0.2)
    dropped = monitoring.LiveMetric("roc_auc", 0.7, 0.85, True, 0.15, 500, "fell")
    assert not monitoring.decide(spec, report(0), None, dropped, None, NOW, []).request  # 0.15 <= 0.2
    worse = monitoring.LiveMetric("roc_auc", 0.6, 0.85, True, 0.25, 500, "fell")
    decision = monitoring.decide(spec, report(0), None, worse, None, NOW, [])
    assert decision.request and "observed roc_auc drop 0.250 > 0.2" in decision.reason


def landed(batch: str, value: float | None, source: str = monitoring.LANDING) -> monitoring.BatchEstimate:
    reason = "estimated from 1000 rows' calibrated probabilities" if value is not None else "no estimate: no rows"
    return monitoring.BatchEstimate(source, batch, Estimate("roc_auc", value, reason, 1000))


UNLABELLED = monitoring.LiveMetric("roc_auc", None, 0.85, None, None, 0, "no labelled row among the recent batches")


def test_a_large_estimated_drop_requests_a_retrain_before_any_label_arrives() -> None:
    spec = with_retrain(on_drift=False, max_estimated_drop=0.02)
    # The newest landed batch counts; an older one and a day of the request log do not.
    estimates = [landed("day-14.csv", 0.86), landed("day-15.csv", 0.70), landed("date=x", 0.9, monitoring.SERVING)]
    decision = monitoring.decide(spec, report(0), None, UNLABELLED, None, NOW, [], estimates)
    assert decision.request and decision.reason == "estimated roc_auc drop 0.150 > 0.02"
    assert decision.estimated.batch == "day-15.csv" and decision.estimated.drop == pytest.approx(0.15)
    assert decision.figures["estimated_drop"] == 0.15 and decision.figures["estimated_roc_auc"] == 0.7
    first, *_, last = decision.log_lines()
    assert first.startswith("decided request a retrain because estimated roc_auc drop 0.150 > 0.02: ")
    assert "estimated_drop=0.15" in first
    assert last == (
        "decided estimated drop 0.15000000000000002 because estimated roc_auc 0.7000 on day-15.csv vs 0.8500 at "
        "promotion (drop 0.1500)"
    )


def test_an_estimated_drop_within_the_limit_or_without_the_trigger_requests_nothing() -> None:
    estimates = [landed("day-15.csv", 0.84)]
    spec = with_retrain(on_drift=False, max_estimated_drop=0.02)
    within = monitoring.decide(spec, report(0), None, UNLABELLED, None, NOW, [], estimates)
    assert not within.request and "estimated roc_auc drop 0.010 <= 0.02" in within.reason
    untriggered = with_retrain(on_drift=False)
    assert not monitoring.decide(untriggered, report(0), None, UNLABELLED, None, NOW, [], [landed("b", 0.5)]).request


def test_the_drop_is_oriented_so_that_worse_is_positive() -> None:
    assert monitoring.oriented_drop("roc_auc", 0.85, 0.70) == pytest.approx(0.15)
    assert monitoring.oriented_drop("rmse", 50.0, 56.0) == pytest.approx(6.0)  # a rise of an error is a drop
    assert monitoring.oriented_drop("rmse", 50.0, 44.0) == pytest.approx(-6.0)


def test_a_regression_spec_has_no_estimated_drop_and_says_so() -> None:
    spec = with_retrain(base=REGRESSION, on_drift=False, max_estimated_drop=0.02)
    calibration = monitoring.champion_calibration(REGRESSION, np.arange(300.0), np.arange(300.0))
    estimates = monitoring.estimate_batches(
        REGRESSION, calibration, [(monitoring.LANDING, "b.csv", np.ones(3), None)], 0.5
    )
    live = monitoring.LiveMetric("rmse", None, 50.0, None, None, 0, "no labelled row among the recent batches")
    decision = monitoring.decide(spec, report(0), None, live, None, NOW, [], estimates)
    assert not decision.request and decision.estimated.drop is None
    assert "no estimate for a regression model" in decision.reason
    assert decision.figures["estimated_drop"] is None


def test_no_estimated_drop_from_a_poor_calibration_or_without_a_reference_metric() -> None:
    spec = with_retrain(on_drift=False, max_estimated_drop=0.02)
    _, scores = scored()
    refused = monitoring.unusable_calibration(spec, "the model's probabilities are poorly calibrated")
    estimates = monitoring.estimate_batches(spec, refused, [(monitoring.LANDING, "b.csv", scores, None)], 0.5)
    poor = monitoring.decide(spec, report(0), None, UNLABELLED, None, NOW, [], estimates)
    assert not poor.request and "no estimate: the model's probabilities are poorly calibrated" in poor.reason
    unrecorded = monitoring.LiveMetric("roc_auc", None, None, None, None, 0, "no labelled row among the recent batches")
    blind = monitoring.decide(spec, report(0), None, unrecorded, None, NOW, [], [landed("b.csv", 0.5)])
    assert not blind.request and "recorded no candidate_roc_auc" in blind.reason
    assert blind.figures["estimated_roc_auc"] == 0.5 and blind.figures["estimated_drop"] is None
