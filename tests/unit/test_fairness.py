"""Fairness criteria: spec validation per task kind, values against fairlearn and by hand, and the gate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

from mlops_airflow.core import fairness
from mlops_airflow.core.config import parse_model_spec
from mlops_airflow.core.gate import decide
from mlops_airflow.core.model_card import build_card
from mlops_airflow.core.spec import GateSpec, ModelSpecError

ROOT = Path(__file__).resolve().parents[2]
DEMO_SPEC = ROOT / "include" / "models" / "credit_default.yaml"
TIER_SPEC = ROOT / "include" / "examples" / "product_tier.yaml"


def credit(criteria, **changes):
    data = yaml.safe_load(DEMO_SPEC.read_text())
    data["features"] = [*data["features"], {"name": "band", "type": "categorical", "use": "drop"}]
    return parse_model_spec({**data, "fairness": criteria, **changes})


def scored_rows(n: int = 3000, seed: int = 0):
    """Labels, P(positive) and a group per row; group ``b`` is predicted positive far more often."""
    rng = np.random.default_rng(seed)
    band = rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2])
    y = (rng.random(n) < 0.3).astype("float64")
    score = np.clip(0.35 * y + 0.45 * rng.random(n) + np.where(band == "b", 0.25, 0.0), 0, 1)
    return pd.DataFrame({"band": band}), y, score


@pytest.mark.parametrize(
    ("criterion", "message"),
    [
        ({"attribute": "age", "metric": "demographic_parity_difference", "max": 0.1}, "fairness.0.attribute"),
        ({"attribute": "absent", "metric": "demographic_parity_difference", "max": 0.1}, "fairness.0.attribute"),
        ({"attribute": "band", "metric": "rmse_difference", "max": 0.1}, "fairness.0.metric"),
        ({"attribute": "band", "metric": "parity", "max": 0.1}, "fairness.0.metric"),
        ({"attribute": "band", "metric": "roc_auc_difference", "max": -0.1}, "fairness.0.max"),
    ],
)
def test_spec_rejects_a_criterion_that_does_not_fit(criterion, message):
    with pytest.raises(ModelSpecError, match=message):
        credit([criterion])


def test_spec_takes_a_dropped_attribute_and_metrics_of_its_own_kind():
    spec = credit(
        [{"attribute": "band", "metric": "equalized_odds_difference", "max": 0.1}],
        model_card={"intended_use": "review queue", "limitations": ["synthetic"]},
    )
    assert "band" not in spec.model_features and spec.fairness[0].min_group_size == 30
    assert spec.model_card.limitations == ["synthetic"]
    tier = yaml.safe_load(TIER_SPEC.read_text())
    ok = parse_model_spec({**tier, "fairness": [{"attribute": "region", "metric": "log_loss_difference", "max": 1}]})
    assert ok.fairness[0].metric == "log_loss_difference"
    with pytest.raises(ModelSpecError, match=r"fairness\.0\.metric: 'demographic_parity_difference' does not fit"):
        parse_model_spec(
            {**tier, "fairness": [{"attribute": "region", "metric": "demographic_parity_difference", "max": 1}]}
        )


def test_group_metrics_agree_with_fairlearn_and_name_the_groups_furthest_apart():
    rows, y, score = scored_rows()
    spec = credit(
        [
            {"attribute": "band", "metric": "demographic_parity_difference", "max": 0.1},
            {"attribute": "band", "metric": "equalized_odds_difference", "max": 0.1},
            {"attribute": "band", "metric": "roc_auc_difference", "max": 0.1},
        ]
    )
    dp, eo, auc = fairness.assess(spec, rows, y, score, threshold=0.5)
    predicted = (score >= 0.5).astype(int)
    groups = rows["band"].to_numpy()
    assert dp["value"] == pytest.approx(
        demographic_parity_difference(y.astype(int), predicted, sensitive_features=groups)
    )
    rates = {g: predicted[groups == g].mean() for g in "abc"}
    assert dp["high"] == "b" and dp["value"] == pytest.approx(rates["b"] - min(rates.values()))
    assert f"selection_rate b={rates['b']:.4g}" in dp["detail"]
    assert eo["value"] == pytest.approx(equalized_odds_difference(y.astype(int), predicted, sensitive_features=groups))
    gaps = {
        rate: max(v[rate] for v in eo["groups"].values()) - min(v[rate] for v in eo["groups"].values())
        for rate in ("true_positive_rate", "false_positive_rate")
    }
    assert eo["rate"] == max(gaps, key=gaps.get) and eo["value"] == pytest.approx(max(gaps.values()))
    from sklearn.metrics import roc_auc_score

    per_group = {g: roc_auc_score(y[groups == g], score[groups == g]) for g in "abc"}
    assert auc["value"] == pytest.approx(max(per_group.values()) - min(per_group.values()))
    assert dp["groups"]["a"]["roc_auc"] == pytest.approx(per_group["a"])
    assert sum(v["n"] for v in dp["groups"].values()) == len(y)


def test_small_groups_are_reported_not_compared_and_an_undefined_gap_is_none():
    rows, y, score = scored_rows(n=400)
    rows.loc[rows.index[:5], "band"] = None  # five rows without a band: a group of their own, too small
    spec = credit([{"attribute": "band", "metric": "demographic_parity_difference", "max": 0.1}])
    (result,) = fairness.assess(spec, rows, y, score)
    assert result["groups"]["<missing>"]["n"] == 5 and result["excluded"] == ["<missing>"]
    assert "groups under 30 rows not compared: <missing>" in result["detail"]
    strict = credit(
        [{"attribute": "band", "metric": "demographic_parity_difference", "max": 0.1, "min_group_size": 150}]
    )
    (only_one,) = fairness.assess(strict, rows, y, score)
    assert only_one["value"] is None and "fewer than two groups of at least 150 rows" in only_one["detail"]


def test_regression_and_multiclass_gap_of_their_own_metric():
    data = yaml.safe_load((ROOT / "tests" / "e2e" / "models" / "diabetes_progression.yaml").read_text())
    spec = parse_model_spec({**data, "fairness": [{"attribute": "sex", "metric": "mae_difference", "max": 5}]})
    rows = pd.DataFrame({"sex": ["sex_1"] * 40 + ["sex_2"] * 40})
    y = np.arange(80, dtype="float64")
    prediction = y + np.r_[np.full(40, 2.0), np.full(40, -7.0)]
    (result,) = fairness.assess(spec, rows, y, prediction)
    assert result["value"] == pytest.approx(5.0) and result["high"] == "sex_2" and result["rate"] == "mae"
    tier = yaml.safe_load(TIER_SPEC.read_text())
    spec = parse_model_spec({**tier, "fairness": [{"attribute": "region", "metric": "accuracy_difference", "max": 1}]})
    rows = pd.DataFrame({"region": ["north"] * 30 + ["south"] * 30})
    y = np.array(["basic", "plus", "premium"] * 20, dtype=object)
    proba = np.tile(np.eye(3), (20, 1))
    proba[30:] = np.roll(proba[30:], 1, axis=1)  # every south row wrong
    (result,) = fairness.assess(spec, rows, y, proba)
    assert result["value"] == pytest.approx(1.0) and result["groups"]["north"]["log_loss"] < 1e-6


def gate_input(value, champion_value=0.04):
    return [
        {
            "attribute": "band",
            "metric": "demographic_parity_difference",
            "max": 0.1,
            "value": value,
            "champion_value": champion_value,
            "detail": "selection_rate b=0.5 vs a=0.2",
        }
    ]


def test_gate_blocks_a_fairness_violation_and_keeps_its_numbers():
    gate = GateSpec(thresholds={"roc_auc": {"min": 0.7}})
    common = {"primary_metric": "roc_auc", "candidate": {"roc_auc": 0.8}, "champion": None, "bootstrap": None}
    without = decide(gate, **common)
    assert without.blessed and without == decide(gate, **common, fairness=None)
    blocked = decide(gate, **common, fairness=gate_input(0.3))
    assert not blocked.blessed
    (check,) = blocked.failed
    assert (check.name, check.value, check.bound) == ("fairness demographic_parity_difference(band) <= 0.1", 0.3, 0.1)
    assert "b=0.5 vs a=0.2" in check.detail and "champion on the same rows 0.04" in check.detail
    assert "b=0.5 vs a=0.2" in blocked.reason and "0.3" in blocked.to_markdown()
    assert decide(gate, **common, fairness=gate_input(0.1)).blessed
    undefined = decide(gate, **common, fairness=gate_input(None))
    assert not undefined.blessed and undefined.failed[0].value is None


def test_gate_prefers_the_less_unfair_of_two_models_that_both_break_the_limit():
    """Both models favour group ``b``, by different margins: the one with the smaller gap (and no worse AUC on
    the same rows) is blessed over the other, and never the other way round; the champion is flagged."""
    from mlops_airflow.core.evaluation import Target, metric_value
    from mlops_airflow.core.gate import BootstrapResult, paired_bootstrap

    rng = np.random.default_rng(3)
    n = 3000
    band = rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2])
    rows = pd.DataFrame({"band": band})
    y = (rng.random(n) < 0.3).astype("float64")
    base = 0.35 * y + 0.45 * rng.random(n)
    fairer, unfairer = (np.clip(base + np.where(band == "b", shift, 0.0), 0, 1) for shift in (0.12, 0.3))
    spec = credit([{"attribute": "band", "metric": "demographic_parity_difference", "max": 0.05}])
    gate = GateSpec(thresholds={"roc_auc": {"min": 0.6}}, max_regression=0.01, n_bootstrap=200)

    def judge(candidate: np.ndarray, champion: np.ndarray):
        compared = fairness.compare(fairness.assess(spec, rows, y, candidate), fairness.assess(spec, rows, y, champion))
        target = Target.of(spec)
        boot = paired_bootstrap(y, candidate, champion, "roc_auc", target=target, n_resamples=200)
        return compared, decide(
            gate,
            primary_metric="roc_auc",
            candidate={"roc_auc": metric_value("roc_auc", y, candidate, target)},
            champion={"roc_auc": metric_value("roc_auc", y, champion, target)},
            bootstrap=BootstrapResult(**boot.to_dict()),
            champion_version="1",
            fairness=compared,
        )

    compared, blessed = judge(fairer, unfairer)
    gap, champion_gap = compared[0]["value"], compared[0]["champion_value"]
    assert 0.05 < gap < champion_gap  # both break the limit on the same rows
    assert blessed.blessed, blessed.reason
    (violation,) = blessed.fairness_violations
    assert (violation["candidate"], violation["champion"]) == (gap, champion_gap)
    assert [b["champion"] for b in blessed.champion_fairness_breaches] == [champion_gap]
    evaluation = {"candidate": {}, "fairness": compared}
    card = build_card(
        spec, version="2", run_id="r", snapshot={}, decision=blessed.to_dict(), evaluation=evaluation, validation=None
    )
    assert "| over max, less than the champion |" in card  # the card does not call the blessed version a pass

    _, refused = judge(unfairer, fairer)
    assert not refused.blessed
    failed = {c.name: c for c in refused.failed}
    assert "fairness demographic_parity_difference(band) <= 0.05" in failed  # its own gap is the larger one
    assert "champion breaks it more" not in failed["fairness demographic_parity_difference(band) <= 0.05"].detail
    assert refused.fairness_violations == [] and [b["champion"] for b in refused.champion_fairness_breaches] == [gap]
