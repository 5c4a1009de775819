"""Permutation importance and partial dependence of a real fitted pipeline on the demo generator's data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mlops_airflow.core import demo_data, explain, training
from mlops_airflow.core.config import parse_model_spec

DEMO_SPEC = Path(__file__).resolve().parents[2] / "include" / "models" / "credit_default.yaml"
#: The demo generator's strongest terms of the label's logit.
INFORMATIVE = ["utilization", "income", "late_payments", "debt_ratio", "employment_type"]


def spec_with_noise(**changes):
    data = yaml.safe_load(DEMO_SPEC.read_text())
    data["features"] = [*data["features"], {"name": "noise", "type": "numeric", "nullable": False}]
    return parse_model_spec({**data, **changes})


def rows(days: range) -> pd.DataFrame:
    frame = pd.concat([demo_data.generate_batch(day) for day in days], ignore_index=True)
    frame["noise"] = np.random.default_rng(days.start).normal(0, 1, len(frame))
    return frame


@pytest.fixture(scope="module")
def fitted():
    spec = spec_with_noise()
    pipeline = training.fit(spec, {"max_iter": 60}, rows(range(4)))
    return spec, pipeline, rows(range(10, 11))


def test_importance_ranks_informative_features_above_pure_noise(fitted):
    spec, pipeline, evaluation = fitted
    importance = explain.permutation_importances(spec, explain.pipeline_scores(spec, pipeline), evaluation)
    ranking = explain.ranking(importance)
    assert set(ranking) == set(spec.model_features)
    assert all(ranking.index(name) < ranking.index("noise") for name in INFORMATIVE), ranking
    by_name = {f["feature"]: f for f in importance["features"]}
    assert abs(by_name["noise"]["mean"]) < 2 * by_name["noise"]["std"] + 0.005
    # The spread over the repeats is reported, and is what the repeats say.
    top = by_name[ranking[0]]
    assert len(top["repeats"]) == importance["n_repeats"] == explain.N_REPEATS
    assert top["std"] == pytest.approx(float(np.std(top["repeats"])))
    assert top["mean"] > 0 and importance["metric"] == "roc_auc" and importance["rows"] == len(evaluation)


def test_importance_of_a_lower_is_better_metric_is_a_positive_drop(fitted):
    _, pipeline, evaluation = fitted
    spec = spec_with_noise(primary_metric="log_loss")
    importance = explain.permutation_importances(spec, explain.pipeline_scores(spec, pipeline), evaluation)
    by_name = {f["feature"]: f["mean"] for f in importance["features"]}
    assert by_name["utilization"] > 0.01 and importance["baseline"] > 0
    assert explain.ranking(importance).index("utilization") < explain.ranking(importance).index("noise")


def test_importance_runs_on_a_capped_sample(fitted):
    spec, pipeline, evaluation = fitted
    calls: list[int] = []
    score = explain.pipeline_scores(spec, pipeline)

    def counting(x: pd.DataFrame) -> np.ndarray:
        calls.append(len(x))
        return score(x)

    importance = explain.permutation_importances(spec, counting, evaluation, max_rows=200, n_repeats=2)
    assert importance["rows"] == 200 and importance["rows_total"] == len(evaluation)
    # one baseline of ours, one of scikit-learn, then every feature shuffled twice
    assert set(calls) == {200} and len(calls) == 2 + 2 * len(spec.model_features)


def test_partial_dependence_follows_the_generator(fitted):
    spec, pipeline, evaluation = fitted
    curves = explain.partial_dependence(
        spec, explain.pipeline_scores(spec, pipeline), evaluation, ["utilization", "employment_type"]
    )
    utilization = curves["utilization"]
    assert utilization["grid"] == sorted(utilization["grid"]) and len(utilization["grid"]) == explain.PD_GRID
    assert utilization["mean"][-1] > utilization["mean"][0] + 0.1  # default risk rises with utilization
    employment = dict(zip(curves["employment_type"]["grid"], curves["employment_type"]["mean"], strict=True))
    assert employment["unemployed"] > employment["salaried"]


def test_importance_change_calls_out_a_new_top_feature():
    candidate = {"features": [{"feature": "b", "mean": 0.2, "std": 0.01}, {"feature": "a", "mean": 0.1, "std": 0.0}]}
    champion = {"features": [{"feature": "a", "mean": 0.3, "std": 0.02}, {"feature": "b", "mean": 0.05, "std": 0.0}]}
    change = explain.importance_change(candidate, champion)
    assert change[0] == {
        "feature": "b",
        "candidate": 0.2,
        "candidate_std": 0.01,
        "candidate_rank": 1,
        "champion": 0.05,
        "champion_rank": 2,
        "change": pytest.approx(0.15),
    }
    text = explain.change_markdown(change, "roc_auc")
    assert "relies most on `b`, which ranked 2 for the champion" in text
    assert "worth a look" not in explain.change_markdown(explain.importance_change(champion, champion), "roc_auc")
