"""What ``evaluate_vs_champion`` decides (core/assessment.py), on scores made here: which version is the
baseline, the figures the gate reads, the champion's fairness breach and the task log's lines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from mlops_airflow.core.assessment import (
    BaselineChoice,
    Scored,
    champion_breach,
    choose_baseline,
    compare_scores,
    describe,
)
from mlops_airflow.core.config import parse_model_spec
from mlops_airflow.core.errors import AssessmentError, MlopsError

DEMO_SPEC = Path(__file__).resolve().parents[2] / "include" / "models" / "credit_default.yaml"
DAG, RUN = "ct_credit_default", "manual__2026-01-01"


@pytest.fixture(scope="module")
def spec():
    data = yaml.safe_load(DEMO_SPEC.read_text())
    data["gate"]["n_bootstrap"] = 200
    data["slices"] = ["region"]
    return parse_model_spec(data)


@pytest.fixture(scope="module")
def rows():
    """Labels, a good and a weaker score of them, and a region per row (400 rows, seeded)."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 400).astype("float64")
    good = 1 / (1 + np.exp(-(3.0 * (y - 0.5) + rng.normal(0, 1.0, 400))))
    weak = 1 / (1 + np.exp(-(1.0 * (y - 0.5) + rng.normal(0, 1.0, 400))))
    region = rng.choice(["north", "south"], 400)
    return y, good, weak, region


def test_the_champion_is_the_baseline():
    choice = choose_baseline("3", {"airflow.dag_id": DAG, "airflow.run_id": "scheduled__other"}, DAG, RUN)
    assert choice == BaselineChoice("3", "champion v3")


def test_no_champion_is_a_first_run():
    assert choose_baseline(None, None, DAG, RUN).version is None


def test_a_rerun_after_its_own_promotion_is_judged_against_the_version_it_was_judged_against():
    tags = {"airflow.dag_id": DAG, "airflow.run_id": RUN, "mlops.gate.champion_version": "2"}
    choice = choose_baseline("4", tags, DAG, RUN)
    assert choice.version == "2" and "this run's own v4 (now champion)" in choice.reason
    first = choose_baseline("4", {**tags, "mlops.gate.champion_version": ""}, DAG, RUN)
    assert first.version is None and "judged against no champion" in first.reason


def test_candidate_alone_has_its_metrics_and_nothing_to_compare(spec, rows):
    y, good, _, region = rows
    result = compare_scores(spec, y, Scored(None, good, 0.4), None, {"region": region})
    assert result["rows"] == 400 and result["candidate_threshold"] == 0.4
    assert 0.85 < result["candidate"]["roc_auc"] <= 1.0 and set(result["candidate"]) >= {"brier", "f1"}
    assert result["champion"] is result["bootstrap"] is result["slices"] is None


def test_a_better_candidate_is_ahead_in_the_bootstrap_and_every_slice(spec, rows):
    y, good, weak, region = rows
    result = compare_scores(
        spec, y, Scored(None, good), Scored(None, weak, 0.5), {"region": region}, champion_version="3"
    )
    assert result["champion_version"] == "3" and result["candidate"]["roc_auc"] > result["champion"]["roc_auc"]
    boot = result["bootstrap"]
    assert boot["metric"] == "roc_auc" and boot["n_resamples"] == 200 and 0 < boot["lower"] <= boot["estimate"]
    assert set(result["slices"]) == {"region=north", "region=south"}
    assert all(s["candidate"] > s["champion"] for s in result["slices"].values())
    assert sum(s["n"] for s in result["slices"].values()) == 400


def test_rows_that_cannot_be_compared_are_a_named_error(spec, rows):
    y, good, weak, region = rows
    with pytest.raises(AssessmentError, match="no evaluation rows"):
        compare_scores(spec, y[:0], Scored(None, good[:0]), None)
    with pytest.raises(AssessmentError, match="the champion scored 399 rows of the 400"):
        compare_scores(spec, y, Scored(None, good), Scored(None, weak[:-1]), {"region": region})
    with pytest.raises(MlopsError, match=r"lack the slice column\(s\) \['region'\]"):
        compare_scores(spec, y, Scored(None, good), Scored(None, weak), {})
    assert issubclass(AssessmentError, ValueError)


FAIRNESS = [
    {"metric": "demographic_parity_difference", "attribute": "gender", "max": 0.1, "value": 0.04},
    {"metric": "roc_auc_difference", "attribute": "region", "max": 0.05, "value": 0.08},
]
BREACH = {
    "limit": "demographic_parity_difference(gender) <= 0.1",
    "metric": "demographic_parity_difference",
    "attribute": "gender",
    "max": 0.1,
    "candidate": 0.04,
    "champion": 0.2,
}


def test_the_champion_breaking_a_fairness_limit_is_one_line_naming_it():
    assert champion_breach({"champion_fairness_breaches": [], "champion_version": "3"}) is None
    line = champion_breach({"champion_fairness_breaches": [BREACH], "champion_version": "3"})
    assert line == (
        "champion v3 breaks fairness limit(s) on the newest evaluation rows: "
        "demographic_parity_difference(gender) <= 0.1: gap 0.2 (candidate 0.04)"
    )


def test_the_log_says_what_was_decided_on_which_figures(spec, rows):
    y, good, weak, region = rows
    result = compare_scores(spec, y, Scored(None, good), Scored(None, weak), {"region": region}, champion_version="3")
    result.update(
        fairness=FAIRNESS,
        champion_fairness_breaches=[BREACH],
        importance=[{"feature": "income", "champion_rank": 4}],
    )
    lines = describe(result, BaselineChoice("3", "champion v3"))
    assert lines[0] == "baseline: champion v3"
    assert lines[1] == (
        f"on the same 400 evaluation rows: candidate roc_auc {result['candidate']['roc_auc']}, champion v3 "
        f"{result['champion']['roc_auc']}"
    )
    boot = result["bootstrap"]
    assert lines[2] == (
        f"candidate - champion on roc_auc: {boot['estimate']:.4g}, 95% interval [{boot['lower']:.4g}, "
        f"{boot['upper']:.4g}] over 200 resamples"
    )
    assert lines[3] == (
        "fairness: 2 criteria; candidate over a limit on roc_auc_difference of region; champion over a limit "
        "on demographic_parity_difference(gender) <= 0.1"
    )
    assert lines[4] == "importance: the candidate relies most on income (rank 4 for the champion)"
    first = describe(compare_scores(spec, y, Scored(None, good), None), BaselineChoice(None, "no champion yet"))
    assert first == [
        "baseline: no champion yet",
        f"on the same 400 evaluation rows: candidate roc_auc {result['candidate']['roc_auc']}, champion none "
        "(first run)",
    ]
