"""Drift detection and the retrain request (core/drift.py) on demo data; no Airflow, no MLflow."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from mlops_airflow.core.demo_data import generate_batch
from mlops_airflow.core.drift import (
    MISSING,
    DriftReport,
    FeatureDrift,
    compute_drift,
    performance_drop,
    plot_feature_drift,
    retrain_decision,
)
from mlops_airflow.core.spec import DriftSpec

NUMERIC = ["age", "income", "debt_ratio", "credit_lines", "late_payments", "utilization"]
CATEGORICAL = ["employment_type", "region", "home_ownership"]
SPEC = DriftSpec()
NOW = dt.datetime(2026, 2, 1, 2, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    """The champion's training window: days 0..13 of the demo data."""
    return pd.concat([generate_batch(day) for day in range(14)], ignore_index=True)


def _drift(reference: pd.DataFrame, current: pd.DataFrame, spec: DriftSpec = SPEC) -> DriftReport:
    return compute_drift(reference, current, NUMERIC, CATEGORICAL, spec)


def _report(drifted: list[str], n_features: int = 9) -> DriftReport:
    """A report with ``drifted`` among ``n_features`` features, for the retrain-decision tests."""
    calm = [f"calm_{i}" for i in range(n_features - len(drifted))]
    features = [FeatureDrift(name, "numeric", 0.3, 1e-9, 0.5, 0.5, True) for name in drifted] + [
        FeatureDrift(name, "numeric", 0.01, 0.5, 0.0, 0.0, False) for name in calm
    ]
    share = len(drifted) / n_features
    return DriftReport(features, share, drifted, share >= SPEC.drift_share, 14000, 1000)


# -------------------------------------------------------------------------------------------- drift


def test_feature_shift_is_flagged(reference: pd.DataFrame) -> None:
    report = _drift(reference, generate_batch(14, feature_shift=1.0))
    assert report.should_retrain
    assert report.drift_share >= SPEC.drift_share
    # The generator shifts these hardest; the report must name them.
    assert {"debt_ratio", "utilization", "late_payments", "employment_type"} <= set(report.drifted_features)
    assert "home_ownership" not in report.drifted_features  # not shifted by the generator
    assert (report.n_reference, report.n_current) == (14000, 1000)


@pytest.mark.parametrize("day", range(14, 21))
def test_no_false_alarm_on_undrifted_days(reference: pd.DataFrame, day: int) -> None:
    report = _drift(reference, generate_batch(day))
    assert not report.should_retrain
    assert report.drift_share < SPEC.drift_share / 2
    assert all(f.psi < SPEC.psi_threshold / 2 for f in report.features)
    decision = retrain_decision(report, None, None, NOW, SPEC)
    assert not decision.request


def test_p_value_alone_would_fire_but_psi_guards(reference: pd.DataFrame) -> None:
    """Why drift needs p-value AND PSI: some undrifted day has a 'significant' but trivial difference."""
    reports = [_drift(reference, generate_batch(day)) for day in range(14, 21)]
    significant = [f for r in reports for f in r.features if f.p_value < SPEC.p_value]
    assert significant, "expected at least one p < 0.01 on undrifted data (multiple testing)"
    assert not any(f.drifted for f in significant)


def test_concept_shift_alone_is_not_feature_drift(reference: pd.DataFrame) -> None:
    report = _drift(reference, generate_batch(15, concept_shift=1.0))
    assert report.drifted_features == []
    assert not report.should_retrain


def test_numeric_statistics(reference: pd.DataFrame) -> None:
    shifted = generate_batch(14, feature_shift=1.0)
    same = _drift(reference, generate_batch(14))
    moved = _drift(reference, shifted)
    for name in ("income", "utilization"):
        before = next(f for f in same.features if f.name == name)
        after = next(f for f in moved.features if f.name == name)
        assert before.kind == "numeric"
        assert after.statistic > before.statistic  # KS D
        assert after.distance > 3 * before.distance  # Wasserstein / reference std
        assert after.psi > SPEC.psi_threshold > before.psi
        assert after.p_value < 1e-10


def test_nan_numeric_values_are_dropped() -> None:
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"x": rng.normal(size=2000)})
    cur = pd.DataFrame({"x": np.r_[rng.normal(size=500), [np.nan] * 500]})
    report = compute_drift(ref, cur, ["x"], [], SPEC)
    assert all(math.isfinite(v) for v in (report.features[0].p_value, report.features[0].psi))
    assert not report.should_retrain


def test_unseen_and_missing_categories_are_their_own_categories() -> None:
    ref = pd.DataFrame({"region": ["north", "south", "east", "west"] * 500})
    cur_values = ["north", "south", "east", "west"] * 150 + ["atlantis"] * 300 + [None] * 100
    report = compute_drift(ref, pd.DataFrame({"region": cur_values}), [], ["region"], SPEC)
    feature = report.features[0]
    assert feature.kind == "categorical"
    assert feature.drifted and report.should_retrain
    assert math.isfinite(feature.psi) and feature.psi > 1.0  # epsilon keeps empty reference bins finite
    assert 0.0 < feature.distance <= 1.0  # Jensen-Shannon distance (base 2)
    fig = plot_feature_drift(ref, pd.DataFrame({"region": cur_values}), "region", "categorical")
    labels = {t.get_text() for t in fig.axes[0].get_xticklabels()}
    assert {"atlantis", MISSING, "north"} <= labels


def test_identical_categories_do_not_drift() -> None:
    frame = pd.DataFrame({"home": ["rent", "own", "mortgage"] * 300})
    feature = compute_drift(frame, frame.copy(), [], ["home"], SPEC).features[0]
    assert feature.p_value == pytest.approx(1.0)
    assert feature.psi == pytest.approx(0.0)
    assert not feature.drifted


def test_missing_column_raises(reference: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="utilization"):
        _drift(reference, generate_batch(14).drop(columns=["utilization"]))


def test_report_is_json_safe_and_renders(reference: pd.DataFrame) -> None:
    report = _drift(reference, generate_batch(14, feature_shift=1.0))
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["should_retrain"] is True
    assert [f["name"] for f in data["features"]] == NUMERIC + CATEGORICAL
    text = report.to_markdown()
    assert "retrain requested" in text
    for name in NUMERIC + CATEGORICAL:
        assert f"| {name} |" in text


@pytest.mark.parametrize(("feature", "kind"), [("income", "numeric"), ("employment_type", "categorical")])
def test_plot_feature_drift_returns_a_figure(reference: pd.DataFrame, feature: str, kind: str) -> None:
    fig = plot_feature_drift(reference, generate_batch(14, feature_shift=1.0), feature, kind)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 1
    assert fig.axes[0].get_legend().get_texts()[0].get_text().startswith("reference")


# --------------------------------------------------------------------------------- performance drop


@pytest.mark.parametrize(
    ("metric", "reference_value", "live", "dropped", "drop"),
    [
        ("roc_auc", 0.85, 0.78, True, 0.07),  # AUC fell
        ("roc_auc", 0.85, 0.82, False, 0.03),
        ("roc_auc", 0.85, 0.95, False, -0.10),  # better is no drop
        ("rmse", 1.00, 1.08, True, 0.08),  # RMSE rose: worse
        ("rmse", 1.00, 0.90, False, -0.10),  # RMSE fell: better
        ("log_loss", 0.40, 0.50, True, 0.10),
    ],
)
def test_performance_drop_orientation(
    metric: str, reference_value: float, live: float, dropped: bool, drop: float
) -> None:
    result = performance_drop(reference_value, live, metric, SPEC)
    assert result[0] is dropped
    assert result[1] == pytest.approx(drop)


def test_performance_drop_nan_is_no_evidence() -> None:
    dropped, drop = performance_drop(0.85, float("nan"), "roc_auc", SPEC)
    assert dropped is False and math.isnan(drop)


# ----------------------------------------------------------------------------------- retrain decision


def test_drift_requests_retrain_and_names_features() -> None:
    decision = retrain_decision(_report(["income", "utilization", "region"]), None, None, NOW, SPEC)
    assert decision.request and not decision.in_cooldown
    for name in ("income", "utilization", "region"):
        assert name in decision.reason


def test_performance_drop_alone_requests_retrain() -> None:
    decision = retrain_decision(_report([]), True, None, NOW, SPEC, perf_delta=0.08)
    assert decision.request
    assert "dropped by 0.08" in decision.reason


def test_nothing_wrong_requests_nothing() -> None:
    decision = retrain_decision(_report(["income"]), False, None, NOW, SPEC)
    assert not decision.request and not decision.in_cooldown
    assert "no retrain" in decision.reason


@pytest.mark.parametrize(
    ("hours_ago", "requested", "in_cooldown"),
    [(1.0, False, True), (23.9, False, True), (24.0, True, False), (72.0, True, False)],
)
def test_cooldown_suppresses_repeated_requests(hours_ago: float, requested: bool, in_cooldown: bool) -> None:
    last = NOW - dt.timedelta(hours=hours_ago)
    decision = retrain_decision(_report(["income", "utilization", "region"]), None, last, NOW, SPEC)
    assert (decision.request, decision.in_cooldown) == (requested, in_cooldown)
    if in_cooldown:
        assert "cooldown" in decision.reason and "income" in decision.reason


def test_cooldown_accepts_naive_last_request_as_utc() -> None:
    last = (NOW - dt.timedelta(hours=2)).replace(tzinfo=None)
    decision = retrain_decision(_report([]), True, last, NOW, SPEC, perf_delta=0.1)
    assert decision.in_cooldown and not decision.request


def test_every_feature_name_gives_a_drift_plot_mlflow_stores_under_the_plot_folder(mlops_home):
    # A feature `../x` made the monitor's upload fail (MLflow refuses `..`), `a/b` left the folder, and
    # `labels_predicted` overwrote the monitor's own plot.
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure as Fig

    from mlops_airflow.core import settings, tracking
    from mlops_airflow.core.drift import plot_file_name

    names = ["age", "income.usd", "../x", "a/b", "labels_predicted", "ünï cödé", "", "x" * 300]
    files = [plot_file_name(n) for n in names]
    assert files[:2] == ["age.png", "income.usd.png"]  # plain names stay readable
    assert len(set(files)) == len(files)
    client = tracking.client_for(settings.default_tracking_uri())
    run_id = client.create_run(tracking.experiment_id(client, "drift_names")).info.run_id
    tracking.log_figures(client, run_id, {f: Fig() for f in files}, prefix="drift/plots")
    stored = {a.path for a in client.list_artifacts(run_id, "drift/plots")}
    assert stored == {f"drift/plots/{f}" for f in files}
