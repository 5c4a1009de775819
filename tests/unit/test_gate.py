"""The promotion rule (core/gate.py): bootstrap, checks, decision, serialisation. No Airflow, no MLflow."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mlops_airflow.core import notify
from mlops_airflow.core.evaluation import Target, metric_value, weighted_metric
from mlops_airflow.core.gate import (
    MISSING,
    BootstrapResult,
    GateDecision,
    decide,
    paired_bootstrap,
    slice_metrics,
)
from mlops_airflow.core.metrics import BINARY_METRICS, MULTICLASS_METRICS, REGRESSION_METRICS, higher_is_better
from mlops_airflow.core.spec import GateSpec, MetricBound

GATE = GateSpec(
    thresholds={"roc_auc": MetricBound(min=0.7), "brier": MetricBound(max=0.2)},
    max_regression=0.01,
    min_slice_size=50,
    slice_max_regression=0.05,
)
GOOD = {"roc_auc": 0.82, "brier": 0.15}
BINARY = Target("binary", (0, 1))
REGRESSION = Target("regression", ())
THREE = Target("multiclass", ("low", "mid", "high"))


def _bootstrap(lower: float, estimate: float = 0.01, metric: str = "roc_auc") -> BootstrapResult:
    return BootstrapResult(metric, estimate, lower, estimate + 0.02, 0.95, 1000)


def _classification(n: int, seed: int, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels (encoded 0/1) and a probability score whose quality falls with ``noise``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype("float64")
    logit = 2.0 * (y - 0.5) + rng.normal(0, noise, n)
    return y, 1 / (1 + np.exp(-logit))


def _multiclass(n: int, seed: int, signal: float = 1.0, k: int = 3, absent: int | None = None):
    """Class indices (``absent`` never drawn) and an (n, k) probability matrix tracking them by ``signal``."""
    rng = np.random.default_rng(seed)
    present = np.array([c for c in range(k) if c != absent])
    y = present[rng.integers(0, len(present), n)]
    logits = rng.normal(0, 1.0, (n, k))
    logits[np.arange(n), y] += signal
    return y, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def _data(kind: str, n: int, seed: int) -> tuple[Target, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind.startswith("binary"):
        y, s = _classification(n, seed)
        # ties: the rank metrics must count them like sklearn; "binary distinct": one row per score
        return BINARY, y, s if kind == "binary distinct" else np.round(s, 2)
    if kind == "multiclass":
        y, proba = _multiclass(n, seed, absent=1)  # a class absent from the rows
        return THREE, y, proba
    y = rng.normal(size=n)
    return REGRESSION, y, y + rng.normal(0, 0.6, n)


def _verdicts(decision: GateDecision) -> dict[str, str]:
    return {c.name: c.verdict for c in decision.checks}


# ------------------------------------------------------------------------------------------- bootstrap

ALL_METRICS = (
    [("binary", m) for m in BINARY_METRICS]
    + [("binary distinct", "roc_auc"), ("binary distinct", "pr_auc")]
    + [("multiclass", m) for m in MULTICLASS_METRICS]
    + [("regression", m) for m in REGRESSION_METRICS]
)


@pytest.mark.parametrize(("kind", "metric"), ALL_METRICS)
def test_weighted_metric_equals_metric_value_on_resampled_rows(kind: str, metric: str) -> None:
    """A resample as integer weights gives the metric of the resampled rows (checked against sklearn in
    test_metrics.py); unit weights give metric_value itself."""
    target, y, s = _data(kind, 400, seed=3)
    rng = np.random.default_rng(7)
    n = len(y)
    idx = rng.integers(0, n, size=(5, n))
    weights = np.stack([np.bincount(row, minlength=n) for row in idx]).astype("float64")
    fast = weighted_metric(metric, y, s, target, np.vstack([np.ones(n), weights]), threshold=0.45)
    slow = [metric_value(metric, y, s, target, 0.45)] + [metric_value(metric, y[r], s[r], target, 0.45) for r in idx]
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("kind", "metric"), ALL_METRICS)
def test_bootstrap_estimate_is_the_metric_difference(kind: str, metric: str) -> None:
    target, y, cand = _data(kind, 300, seed=4)
    _, _, champ = _data(kind, 300, seed=5)
    result = paired_bootstrap(y, cand, champ, metric, target=target, thresholds=(0.4, 0.6), n_resamples=100)
    diff = metric_value(metric, y, cand, target, 0.4) - metric_value(metric, y, champ, target, 0.6)
    assert result.estimate == pytest.approx(diff if higher_is_better(metric) else -diff)
    assert result.n_resamples == 100


@pytest.mark.parametrize(
    ("metric", "y", "score", "expected"),
    [
        ("roc_auc", [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.75),
        ("accuracy", [0, 0, 1, 1], [0.1, 0.6, 0.5, 0.8], 0.75),  # 0.5 counts as class 1
        ("f1", [0, 0, 1, 1], [0.1, 0.6, 0.4, 0.8], 0.5),  # tp=1, fp=1, fn=1
        ("brier", [0, 1], [0.2, 0.6], (0.04 + 0.16) / 2),
        ("log_loss", [0, 1], [0.5, 0.5], math.log(2)),
        ("rmse", [1.0, 2.0, 3.0], [1.0, 2.0, 5.0], math.sqrt(4 / 3)),
        ("mae", [1.0, 2.0, 3.0], [2.0, 2.0, 1.0], 1.0),
        ("r2", [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], 1.0),
    ],
)
def test_metric_value_known_values(metric: str, y: list, score: list, expected: float) -> None:
    target = BINARY if metric in BINARY_METRICS else REGRESSION
    assert metric_value(metric, np.array(y), np.array(score), target) == pytest.approx(expected)


def test_metric_value_undefined_and_unknown() -> None:
    assert math.isnan(metric_value("roc_auc", np.ones(3), np.array([0.2, 0.5, 0.9]), BINARY))  # one class
    with pytest.raises(ValueError, match="does not fit a binary target"):
        metric_value("precision_at_k", np.array([0, 1]), np.array([0.1, 0.9]), BINARY)


def test_fast_auc_is_nan_with_a_single_class() -> None:
    y = np.array([1.0, 1.0, 0.0])
    s = np.array([0.9, 0.2, 0.4])
    auc = weighted_metric("roc_auc", y, s, BINARY, np.array([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]]))
    assert math.isnan(auc[0])
    assert auc[1] == pytest.approx(metric_value("roc_auc", y, s, BINARY))


def test_fast_roc_auc_ovr_needs_two_classes_present() -> None:
    y, proba = _multiclass(6, seed=0)
    only_first = (y == y[0]).astype("float64")  # a resample holding only rows of one class
    auc = weighted_metric("roc_auc_ovr", y, proba, THREE, np.vstack([only_first, np.ones(6)]))
    assert math.isnan(auc[0]) and math.isfinite(auc[1])


def test_identical_models_interval_contains_zero() -> None:
    y, s = _classification(500, seed=1)
    result = paired_bootstrap(y, s, s.copy(), "roc_auc", target=BINARY, n_resamples=300)
    assert result.estimate == 0.0
    assert result.lower <= 0.0 <= result.upper


def test_clearly_better_candidate_has_positive_lower_bound() -> None:
    y, good = _classification(1000, seed=2, noise=0.5)
    rng = np.random.default_rng(9)
    bad = np.clip(good + rng.normal(0, 0.35, len(y)), 0, 1)
    result = paired_bootstrap(y, good, bad, "roc_auc", target=BINARY, n_resamples=500)
    assert result.lower > 0.0
    assert result.lower <= result.estimate <= result.upper
    assert result.n_resamples == 500


@pytest.mark.parametrize(("metric", "classification"), [("log_loss", True), ("brier", True), ("rmse", False)])
def test_lower_is_better_metrics_are_oriented(metric: str, classification: bool) -> None:
    rng = np.random.default_rng(4)
    if classification:
        y, good = _classification(800, seed=4, noise=0.5)
        bad = np.clip(0.5 + 0.3 * (good - 0.5) + rng.normal(0, 0.1, len(y)), 0.01, 0.99)
    else:
        y = rng.normal(size=800)
        good, bad = y + rng.normal(0, 0.3, 800), y + rng.normal(0, 1.0, 800)
    target = BINARY if classification else REGRESSION
    better = paired_bootstrap(y, good, bad, metric, target=target, n_resamples=300)
    worse = paired_bootstrap(y, bad, good, metric, target=target, n_resamples=300)
    assert metric_value(metric, y, good, target) < metric_value(metric, y, bad, target)  # the metric itself falls...
    assert better.estimate > 0 and better.lower > 0  # ...so the oriented difference is positive
    assert worse.estimate < 0 and worse.upper < 0


def test_bootstrap_is_reproducible_and_seed_dependent() -> None:
    y, s = _classification(300, seed=5)
    other = np.clip(s + np.random.default_rng(0).normal(0, 0.1, 300), 0, 1)
    a = paired_bootstrap(y, s, other, "roc_auc", target=BINARY, n_resamples=200, seed=1)
    assert a == paired_bootstrap(y, s, other, "roc_auc", target=BINARY, n_resamples=200, seed=1)
    assert a != paired_bootstrap(y, s, other, "roc_auc", target=BINARY, n_resamples=200, seed=2)


def test_bootstrap_threads_change_nothing_but_the_time() -> None:
    """Resamples evaluated side by side on threads give the interval one thread gives: every chunk of
    resamples draws from its own child of the seed. 20,000 rows: many chunks, as on a real evaluation set."""
    y, s = _classification(20_000, seed=6)
    other = np.clip(s + np.random.default_rng(1).normal(0, 0.1, 20_000), 0, 1)
    one = paired_bootstrap(y, s, other, "roc_auc", target=BINARY, n_resamples=300, seed=4)
    assert one == paired_bootstrap(y, s, other, "roc_auc", target=BINARY, n_resamples=300, seed=4, workers=3)
    assert one.n_resamples == 300 and one.lower < one.estimate < one.upper


def test_bootstrap_skips_resamples_without_both_classes() -> None:
    y = np.array([1, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.1, 0.2, 0.3, 0.4, 0.5])
    result = paired_bootstrap(y, s, s[::-1].copy(), "roc_auc", target=BINARY, n_resamples=400)
    assert 0 < result.n_resamples < 400  # about a third of the resamples miss the single positive
    assert math.isfinite(result.lower) and math.isfinite(result.upper)


def test_bootstrap_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="length mismatch"):
        paired_bootstrap([0, 1, 1], [0.1, 0.9], [0.2, 0.8, 0.7], "roc_auc", target=BINARY)


def test_bootstrap_rejects_a_metric_of_another_kind() -> None:
    y, proba = _multiclass(50, seed=1)
    with pytest.raises(ValueError, match="'roc_auc' does not fit a multiclass target"):
        paired_bootstrap(y, proba, proba, "roc_auc", target=THREE, n_resamples=100)


@pytest.mark.parametrize("metric", ["roc_auc_ovr", "log_loss", "f1_macro", "accuracy", "balanced_accuracy"])
def test_multiclass_better_candidate_is_proven_and_worse_is_not(metric: str) -> None:
    """Five classes, one of them absent from today's rows: the interval still orders the two models."""
    five = Target("multiclass", ("a", "b", "c", "d", "e"))
    y, good = _multiclass(1500, seed=6, signal=2.0, k=5, absent=3)
    _, noise = _multiclass(1500, seed=7, signal=0.0, k=5)
    bad = 0.5 * good + 0.5 * noise
    better = paired_bootstrap(y, good, bad, metric, target=five, n_resamples=300)
    worse = paired_bootstrap(y, bad, good, metric, target=five, n_resamples=300)
    assert better.lower > 0 and worse.upper < 0
    assert better.n_resamples == worse.n_resamples == 300


def test_bootstrap_uses_each_models_own_threshold() -> None:
    """Identical scores, but the champion thresholds them badly: on F1 the candidate is better."""
    y, s = _classification(600, seed=8, noise=0.8)
    same = paired_bootstrap(y, s, s.copy(), "f1", target=BINARY, n_resamples=200)
    apart = paired_bootstrap(y, s, s.copy(), "f1", target=BINARY, thresholds=(0.5, 0.95), n_resamples=200)
    assert same.estimate == 0.0
    assert apart.estimate > 0 and apart.lower > 0
    # threshold-free metrics ignore it
    auc = paired_bootstrap(y, s, s.copy(), "roc_auc", target=BINARY, thresholds=(0.5, 0.95), n_resamples=50)
    assert auc.estimate == 0.0


def test_better_point_estimate_but_uncertain_interval_is_not_blessed() -> None:
    """THE key case: on few noisy rows a better-looking candidate has not proven it is no worse."""
    y, champion = _classification(80, seed=11, noise=2.0)
    rng = np.random.default_rng(12)
    candidate = np.clip(champion + 0.15 * (y - 0.5) + rng.normal(0, 0.25, len(y)), 0, 1)
    gate = GateSpec(max_regression=0.005)
    boot = paired_bootstrap(y, candidate, champion, "roc_auc", target=BINARY, n_resamples=1000)
    assert boot.estimate > 0  # the candidate looks better...
    assert boot.lower <= -gate.max_regression  # ...but the interval does not clear the margin
    metrics = {"roc_auc": metric_value("roc_auc", y, candidate, BINARY)}
    decision = decide(
        gate,
        primary_metric="roc_auc",
        candidate=metrics,
        champion={"roc_auc": metric_value("roc_auc", y, champion, BINARY)},
        bootstrap=boot,
        champion_version="3",
    )
    assert not decision.blessed
    assert _verdicts(decision) == {"non_inferiority": "fail"}
    assert "non_inferiority" in decision.reason


# -------------------------------------------------------------------------------------------- decision


@pytest.mark.parametrize(
    ("candidate", "failed"),
    [
        ({"roc_auc": 0.82, "brier": 0.15}, set()),
        ({"roc_auc": 0.65, "brier": 0.15}, {"roc_auc >= 0.7"}),
        ({"roc_auc": 0.82, "brier": 0.25}, {"brier <= 0.2"}),
        ({"roc_auc": 0.82}, {"brier <= 0.2"}),
        ({"roc_auc": float("nan"), "brier": 0.1}, {"roc_auc >= 0.7"}),
    ],
)
def test_absolute_thresholds(candidate: dict[str, float], failed: set[str]) -> None:
    decision = decide(GATE, primary_metric="roc_auc", candidate=candidate, champion=None, bootstrap=None)
    assert {c.name for c in decision.failed} == failed
    assert decision.blessed is (not failed)


def test_missing_metric_fails_with_reason() -> None:
    decision = decide(GATE, primary_metric="roc_auc", candidate={"roc_auc": 0.9}, champion=None, bootstrap=None)
    assert not decision.blessed
    assert "brier is missing or NaN" in decision.reason


@pytest.mark.parametrize(
    ("policy", "thresholds", "blessed", "first_run_verdict"),
    [
        ("absolute_only", GATE.thresholds, True, "pass"),
        ("reject", GATE.thresholds, False, "fail"),
        ("absolute_only", {}, False, "fail"),  # nothing proves the model
    ],
)
def test_first_run_policy(policy: str, thresholds: dict, blessed: bool, first_run_verdict: str) -> None:
    gate = GateSpec(thresholds=thresholds, first_run_policy=policy)
    decision = decide(gate, primary_metric="roc_auc", candidate=GOOD, champion=None, bootstrap=None)
    assert decision.blessed is blessed
    assert decision.first_run
    assert _verdicts(decision)["first_run"] == first_run_verdict
    assert "non_inferiority" not in _verdicts(decision)


def test_first_run_with_failing_threshold_is_not_blessed() -> None:
    decision = decide(
        GATE,
        primary_metric="roc_auc",
        candidate={"roc_auc": 0.6, "brier": 0.1},
        champion=None,
        bootstrap=None,
    )
    assert not decision.blessed
    assert decision.first_run


@pytest.mark.parametrize(
    ("bootstrap", "verdict"),
    [
        (_bootstrap(lower=0.001), "pass"),
        (_bootstrap(lower=-0.009), "pass"),
        (_bootstrap(lower=-0.01), "fail"),  # strict: the bound must exceed -max_regression
        (_bootstrap(lower=-0.03), "fail"),
        (_bootstrap(lower=float("nan")), "fail"),
        (_bootstrap(lower=0.01, metric="brier"), "fail"),  # interval on the wrong metric
        (None, "fail"),
    ],
)
def test_non_inferiority(bootstrap: BootstrapResult | None, verdict: str) -> None:
    decision = decide(
        GATE,
        primary_metric="roc_auc",
        candidate=GOOD,
        champion=GOOD,
        bootstrap=bootstrap,
        champion_version="7",
    )
    assert _verdicts(decision)["non_inferiority"] == verdict
    assert decision.blessed is (verdict == "pass")
    assert not decision.first_run
    assert "first_run" not in _verdicts(decision)


def test_champion_without_thresholds_is_judged_on_the_comparison() -> None:
    decision = decide(
        GateSpec(),
        primary_metric="rmse",
        candidate={"rmse": 1.0},
        champion={"rmse": 1.1},
        bootstrap=_bootstrap(0.02, metric="rmse"),
    )
    assert decision.blessed
    assert [c.name for c in decision.checks] == ["non_inferiority"]


@pytest.mark.parametrize(("estimate", "verdict"), [(0.03, "pass"), (0.02, "pass"), (0.01, "fail")])
def test_min_improvement(estimate: float, verdict: str) -> None:
    gate = GateSpec(thresholds=GATE.thresholds, min_improvement=0.02)
    decision = decide(
        gate, primary_metric="roc_auc", candidate=GOOD, champion=GOOD, bootstrap=_bootstrap(0.0, estimate)
    )
    assert _verdicts(decision)["min_improvement"] == verdict
    assert decision.blessed is (verdict == "pass")


def test_min_improvement_without_paired_estimate_fails() -> None:
    gate = GateSpec(thresholds=GATE.thresholds, min_improvement=0.0)
    decision = decide(gate, primary_metric="roc_auc", candidate=GOOD, champion=GOOD, bootstrap=None)
    assert _verdicts(decision) == {
        "roc_auc >= 0.7": "pass",
        "brier <= 0.2": "pass",
        "non_inferiority": "fail",
        "min_improvement": "fail",
    }
    assert not decision.blessed


@pytest.mark.parametrize(
    ("entry", "verdict"),
    [
        ({"n": 200, "candidate": 0.80, "champion": 0.82}, "pass"),
        ({"n": 200, "candidate": 0.70, "champion": 0.80}, "fail"),
        ({"n": 10, "candidate": 0.40, "champion": 0.90}, "skip"),  # too small to gate
        ({"n": 200, "candidate": float("nan"), "champion": 0.8}, "skip"),  # one class: undefined
    ],
)
def test_slice_non_regression(entry: dict, verdict: str) -> None:
    decision = decide(
        GATE,
        primary_metric="roc_auc",
        candidate=GOOD,
        champion=GOOD,
        bootstrap=_bootstrap(0.0),
        slices={"region=south": entry},
    )
    assert _verdicts(decision)["slice region=south"] == verdict
    assert decision.blessed is (verdict != "fail")


def test_slice_regression_is_oriented_for_lower_is_better() -> None:
    slices = {"region=north": {"n": 500, "candidate": 1.30, "champion": 1.20}}  # rmse rose by 0.1
    decision = decide(
        GateSpec(slice_max_regression=0.05),
        primary_metric="rmse",
        candidate={"rmse": 1.0},
        champion={"rmse": 1.0},
        bootstrap=_bootstrap(0.0, metric="rmse"),
        slices=slices,
    )
    check = next(c for c in decision.checks if c.name == "slice region=north")
    assert check.verdict == "fail"
    assert check.value == pytest.approx(-0.1)


def test_slice_metrics_structure_and_missing_category() -> None:
    y, cand = _classification(300, seed=8)
    champ = np.clip(cand + 0.05, 0, 1)
    region = np.array(["north", "south", None] * 100, dtype=object)
    result = slice_metrics("roc_auc", y, cand, champ, {"region": region}, target=BINARY)
    assert set(result) == {"region=north", "region=south", f"region={MISSING}"}
    assert sum(entry["n"] for entry in result.values()) == 300
    mask = region == "south"
    assert result["region=south"]["candidate"] == pytest.approx(metric_value("roc_auc", y[mask], cand[mask], BINARY))
    assert result["region=south"]["champion"] == pytest.approx(metric_value("roc_auc", y[mask], champ[mask], BINARY))
    no_champion = slice_metrics("roc_auc", y, cand, None, {"region": region}, target=BINARY)
    assert all(entry["champion"] is None for entry in no_champion.values())
    json.dumps(no_champion, allow_nan=False)  # XCom- and MLflow-safe


def test_slice_metrics_use_each_models_threshold() -> None:
    y, s = _classification(200, seed=9)
    region = np.array(["north", "south"] * 100, dtype=object)
    result = slice_metrics("f1", y, s, s.copy(), {"region": region}, target=BINARY, thresholds=(0.5, 0.9))
    mask = region == "north"
    assert result["region=north"]["candidate"] == pytest.approx(metric_value("f1", y[mask], s[mask], BINARY, 0.5))
    assert result["region=north"]["champion"] == pytest.approx(metric_value("f1", y[mask], s[mask], BINARY, 0.9))


def test_slice_metrics_multiclass_with_classes_missing_from_a_slice() -> None:
    """A slice holding one class has no roc_auc_ovr (None, not gated), never a crash."""
    y, proba = _multiclass(300, seed=10)
    region = np.where(y == 0, "north", "south").astype(object)  # north holds class 0 only
    result = slice_metrics("roc_auc_ovr", y, proba, proba[:, ::-1].copy(), {"region": region}, target=THREE)
    assert result["region=north"] == {"n": int((y == 0).sum()), "candidate": None, "champion": None}
    mask = region == "south"
    assert result["region=south"]["candidate"] == pytest.approx(
        metric_value("roc_auc_ovr", y[mask], proba[mask], THREE)
    )
    json.dumps(result, allow_nan=False)


# ------------------------------------------------------------------------------------------ serialising


def _full_decision() -> GateDecision:
    return decide(
        GATE,
        primary_metric="roc_auc",
        candidate={"roc_auc": 0.81, "brier": float("nan")},
        champion={"roc_auc": 0.8},
        bootstrap=_bootstrap(-0.02),
        slices={
            "region=north": {"n": 300, "candidate": 0.7, "champion": 0.8},
            "region=west": {"n": 5, "candidate": 0.9, "champion": 0.8},
        },
        champion_version="12",
    )


def test_decision_round_trips_through_json() -> None:
    decision = _full_decision()
    payload = json.dumps(decision.to_dict(), allow_nan=False)  # NaN would raise here
    assert len(payload) < 4000
    restored = GateDecision.from_dict(json.loads(payload))
    assert restored == decision
    assert not restored.blessed
    assert restored.champion_version == "12"
    assert {c.name for c in restored.failed} == {"brier <= 0.2", "non_inferiority", "slice region=north"}


def test_bootstrap_to_dict_is_json_safe() -> None:
    data = BootstrapResult("roc_auc", 0.01, float("nan"), 0.02, 0.95, 0).to_dict()
    assert data["lower"] is None
    json.dumps(data, allow_nan=False)


def test_decide_accepts_bootstrap_rebuilt_from_its_dict() -> None:
    data = BootstrapResult("roc_auc", 0.01, -0.004, float("nan"), 0.95, 1000).to_dict()
    decision = decide(GATE, primary_metric="roc_auc", candidate=GOOD, champion=GOOD, bootstrap=BootstrapResult(**data))
    assert decision.blessed
    detail = decision.checks[-1].detail
    assert "estimate +0.01" in detail and "undefined]" in detail  # upper was NaN -> None -> "undefined"
    nan_lower = BootstrapResult(**BootstrapResult("roc_auc", float("nan"), float("nan"), 0.0, 0.95, 0).to_dict())
    assert not decide(GATE, primary_metric="roc_auc", candidate=GOOD, champion=GOOD, bootstrap=nan_lower).blessed


def test_markdown_mentions_verdict_champion_and_every_check() -> None:
    decision = _full_decision()
    text = decision.to_markdown()
    assert "NOT BLESSED" in text
    assert "champion version 12" in text
    for check in decision.checks:
        assert f"| {check.name} |" in text
    first = decide(GATE, primary_metric="roc_auc", candidate=GOOD, champion=None, bootstrap=None)
    assert "BLESSED" in first.to_markdown() and "first run" in first.to_markdown()


# ------------------------------------------------------------------------------------------ fairness rule

LIMIT = "demographic_parity_difference(age_band) <= 0.1"
FAIRNESS_CHECK = f"fairness {LIMIT}"


def _gap(candidate: float | None, champion: float | None) -> list[dict]:
    """One criterion as ``fairness.compare`` hands it to the gate: both gaps on the same rows, max 0.1."""
    return [
        {
            "attribute": "age_band",
            "metric": "demographic_parity_difference",
            "max": 0.1,
            "value": candidate,
            "champion_value": champion,
            "detail": f"demographic_parity_difference over 'age_band' = {candidate}",
        }
    ]


def _judged(fairness: list[dict], bootstrap: BootstrapResult | None = None, **changes) -> GateDecision:
    """A candidate better than champion v3 on every metric (unless ``bootstrap`` says otherwise)."""
    args = {
        "primary_metric": "roc_auc",
        "candidate": GOOD,
        "champion": GOOD,
        "bootstrap": bootstrap or _bootstrap(lower=0.005, estimate=0.02),
        "champion_version": "3",
    } | changes
    return decide(GATE, **args, fairness=fairness)


@pytest.mark.parametrize(
    ("candidate_gap", "champion_gap", "blessed", "verdict", "excused", "champion_flagged"),
    [
        (0.05, 0.04, True, "pass", False, False),  # both within the limit
        (0.05, 0.30, True, "pass", False, True),  # within; the champion it replaces breaks it
        (0.20, 0.30, True, "pass", True, True),  # over, but the champion is further over: the less unfair wins
        (0.20, 0.20, False, "fail", False, True),  # over, and not less than the champion
        (0.30, 0.20, False, "fail", False, True),  # over, and more than the champion
        (0.20, 0.05, False, "fail", False, False),  # over; the champion is within
        (None, 0.30, False, "fail", False, True),  # undefined gap proves nothing
        (0.20, None, False, "fail", False, False),  # the champion's gap is unknown: no exception
    ],
)
def test_fairness_limit_against_the_champion_on_the_same_rows(
    candidate_gap, champion_gap, blessed, verdict, excused, champion_flagged
) -> None:
    decision = _judged(_gap(candidate_gap, champion_gap))
    assert decision.blessed is blessed
    assert _verdicts(decision)[FAIRNESS_CHECK] == verdict
    expected = {"limit": LIMIT, "metric": "demographic_parity_difference", "attribute": "age_band", "max": 0.1}
    record = expected | {"candidate": candidate_gap, "champion": champion_gap}
    assert decision.fairness_violations == ([record] if excused else [])
    assert decision.champion_fairness_breaches == ([record] if champion_flagged else [])
    restored = GateDecision.from_dict(json.loads(json.dumps(decision.to_dict(), allow_nan=False)))
    assert restored == decision


def test_candidate_less_unfair_than_the_champion_is_blessed_with_the_violation_named() -> None:
    decision = _judged(_gap(0.2, 0.3))
    assert decision.blessed
    assert f"fairness limit broken, less than the champion: {LIMIT}: candidate gap 0.2, champion gap 0.3" in (
        decision.reason
    )
    check = next(c for c in decision.checks if c.name == FAIRNESS_CHECK)
    assert "the champion breaks it more and the candidate passes every metric check" in check.detail
    text = decision.to_markdown()
    assert "Fairness limit broken, less than the champion" in text
    assert "**Champion fairness breach**: champion v3 breaks fairness limit(s)" in text
    assert f"{LIMIT}: gap 0.3 (candidate 0.2)" in text


@pytest.mark.parametrize(
    ("changes", "failed_metric_check"),
    [
        ({"bootstrap": _bootstrap(lower=-0.03, estimate=-0.02)}, "non_inferiority"),  # worse on the primary
        ({"candidate": {"roc_auc": 0.82, "brier": 0.25}}, "brier <= 0.2"),  # breaks an absolute threshold
        ({"slices": {"region=north": {"n": 300, "candidate": 0.7, "champion": 0.8}}}, "slice region=north"),
    ],
)
def test_less_unfair_candidate_worse_on_a_gated_metric_is_refused(changes: dict, failed_metric_check: str) -> None:
    decision = _judged(_gap(0.2, 0.3), **changes)
    assert not decision.blessed
    assert {c.name for c in decision.failed} == {failed_metric_check, FAIRNESS_CHECK}
    check = next(c for c in decision.checks if c.name == FAIRNESS_CHECK)
    assert "the champion breaks it more, but the candidate fails a metric check" in check.detail
    assert decision.fairness_violations == []
    assert [b["champion"] for b in decision.champion_fairness_breaches] == [0.3]  # the champion stays: flagged


def test_no_exception_without_a_champion() -> None:
    first = decide(
        GATE, primary_metric="roc_auc", candidate=GOOD, champion=None, bootstrap=None, fairness=_gap(0.2, None)
    )
    assert not first.blessed and [c.name for c in first.failed] == [FAIRNESS_CHECK]
    assert first.champion_fairness_breaches == [] and first.fairness_violations == []


def test_each_limit_is_judged_on_its_own() -> None:
    other = [dict(_gap(0.2, 0.1)[0], attribute="region", metric="equalized_odds_difference")]
    decision = _judged(_gap(0.2, 0.3) + other)
    assert not decision.blessed
    assert [c.name for c in decision.failed] == ["fairness equalized_odds_difference(region) <= 0.1"]
    assert [b["limit"] for b in decision.champion_fairness_breaches] == [LIMIT]


def test_refusal_notification_flags_the_champion_that_keeps_serving() -> None:
    where = {"base_url": "http://airflow", "dag_id": "ct_fair_credit", "run_id": "r1"}
    refused = notify.gate_rejected("fair_credit", _judged(_gap(0.3, 0.2)).to_dict(), **where)
    lines = [line.render(str) for line in refused.lines]
    assert (
        f"champion v3 breaks fairness limit(s) on the newest evaluation rows: {LIMIT}: gap 0.2 (candidate 0.3); "
        "it keeps serving" in lines
    )
    assert "keeps serving" in refused.html()
    fair_champion = notify.gate_rejected("fair_credit", _judged(_gap(0.3, 0.05)).to_dict(), **where)
    assert not any("breaks fairness limit" in line.render(str) for line in fair_champion.lines)
