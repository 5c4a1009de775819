"""Permutation importance and partial dependence of a real fitted pipeline on the demo generator's data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mlops_airflow.core import assessment, demo_data, explain, tracking, training
from mlops_airflow.core.config import parse_model_spec
from mlops_airflow.core.scoring import encode_labels, model_config, model_input
from mlops_airflow.core.served_model import model_output

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


@pytest.fixture(autouse=True, scope="module")
def one_openmp_thread():
    """One OpenMP thread for the histogram trees: on a busy shared machine their spinning workers make every
    fit and prediction ten times slower (the smoke test runs its child with one thread for the same reason)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        yield


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
    # the baseline, then every feature shuffled twice, stacked into as few calls as the row budget allows
    assert calls[0] == 200 and sum(calls) == 200 * (1 + 2 * len(spec.model_features))
    assert len(calls) == 2


def test_stacked_importance_scores_every_shuffle_in_few_calls(fitted, monkeypatch):
    spec, pipeline, evaluation = fitted
    score = explain.pipeline_scores(spec, pipeline)
    whole = explain.permutation_importances(spec, score, evaluation, max_rows=300, n_repeats=3)
    # a row budget of one block per call scores each shuffle alone: the same drops, call for call
    monkeypatch.setattr(explain, "STACK_ROWS", 1)
    calls: list[int] = []

    def counting(x: pd.DataFrame) -> np.ndarray:
        calls.append(len(x))
        return score(x)

    single = explain.permutation_importances(spec, counting, evaluation, max_rows=300, n_repeats=3)
    assert len(calls) == 1 + 3 * len(spec.model_features) and set(calls) == {300}
    assert whole["features"] == single["features"]


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
        "basis": "on today's rows",
        "champion_registered": None,
        "champion_registered_rank": None,
        "champion_today": 0.05,
        "champion_today_rank": 2,
        "change": pytest.approx(0.15),
    }
    text = explain.change_markdown(change, "roc_auc")
    assert "relies most on `b`, which ranked 2 for the champion on today's rows" in text
    assert "worth a look" not in explain.change_markdown(explain.importance_change(champion, champion), "roc_auc")


# ------------------------------------------------------------------------------------------ concept drift

DRIVERS = ["x1", "x2", "x3", "x4", "x5"]


def spec_features() -> list[dict]:
    return [{"name": name, "type": "numeric", "nullable": False} for name in DRIVERS]


def drift_spec():
    """A binary model over five numeric inputs ``x1`` .. ``x5`` (the demo spec's label, gate and estimator)."""
    data = yaml.safe_load(DEMO_SPEC.read_text())
    data.update(features=spec_features(), slices=[])
    return parse_model_spec(data)


def concept(driver: str, n: int, seed: int) -> pd.DataFrame:
    """Rows whose label follows ``driver`` (strongly) and ``x3`` (weakly); the other inputs are noise."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({name: rng.normal(0, 1, n) for name in DRIVERS})
    logit = 3.0 * frame[driver] + 0.5 * frame["x3"]
    frame["default"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int64")
    return frame


class Answering:
    """A fitted pipeline answering as its logged pyfunc model does (``served_model.model_output``)."""

    def __init__(self, spec, pipeline) -> None:
        self.pipeline, self.config = pipeline, model_config(spec, 0.5, [])

    def predict(self, x: pd.DataFrame) -> pd.DataFrame:
        return model_output(self.pipeline, x, self.config)


def scored(spec, model: Answering, rows: pd.DataFrame) -> assessment.Scored:
    return assessment.Scored(model, explain.logged_model_scores(spec, model)(model_input(spec, rows)))


@pytest.fixture(scope="module")
def drifted():
    """The champion learned ``label ~ x1``; since then the label follows ``x2``, and the candidate learned that."""
    spec = drift_spec()
    champion = Answering(spec, training.fit(spec, {"max_iter": 40}, concept("x1", 3000, 1)))
    candidate = Answering(spec, training.fit(spec, {"max_iter": 40}, concept("x2", 3000, 2)))
    return spec, champion, candidate, concept("x1", 1000, 3), concept("x2", 1000, 4)


@pytest.fixture
def client(mlops_home):
    from mlops_airflow.core import settings
    from mlops_airflow.core.tracking import client_for

    return client_for(settings.default_tracking_uri())


def registration_run(client, spec, champion: Answering, rows: pd.DataFrame) -> str:
    """The champion's own CT run: its evaluate step logged the artifacts of its assessment, as the operator does."""
    run_id = client.create_run(client.create_experiment("drift")).info.run_id
    y = encode_labels(spec, rows["default"])
    for path, data in assessment.assess_versions(spec, rows, y, scored(spec, champion, rows), None).artifacts.items():
        tracking.log_json(client, run_id, data, path)
    return run_id


def test_importance_change_reads_the_champion_at_registration_under_concept_drift(client, drifted):
    spec, champion, candidate, old_rows, today = drifted
    run_id = registration_run(client, spec, champion, old_rows)
    recorded = explain.recorded_importance(client, spec, "1", run_id)
    assert recorded.importance is not None and explain.ranking(recorded.importance)[0] == "x1"

    y = encode_labels(spec, today["default"])
    summary = assessment.assess_versions(
        spec, today, y, scored(spec, candidate, today), scored(spec, champion, today), recorded
    ).summary
    rows = {r["feature"]: r for r in summary["importance"]}
    x1, x2 = rows["x1"], rows["x2"]
    # What the champion relies on: x1, first at its registration, as on its own card.
    assert x1["basis"] == "at registration" and x1["champion_rank"] == x1["champion_registered_rank"] == 1
    assert x1["change"] == pytest.approx(x1["candidate"] - x1["champion_registered"]) and x1["change"] < -0.2
    # On today's rows x1 no longer predicts the label: measured there, the champion looks as if it had never
    # used x1, and the candidate's dropping it would read as no change at all.
    assert abs(x1["champion_today"]) < 0.05 < x1["champion_registered"]
    assert abs(x1["candidate"] - x1["champion_today"]) < 0.05
    assert summary["importance"][0]["feature"] == "x2" and x2["change"] > 0.1
    text = assessment.report_markdown(summary, spec.primary)
    assert f"Champion importance at registration: read from champion v1's run {run_id}" in text
    assert (
        "| champion at registration | rank | champion on today's rows | rank | change vs champion at registration |"
        in (text)
    )
    assert f"which ranked {x2['champion_rank']} for the champion at registration: worth a look" in text
    # Recorded on another primary metric than today's: not comparable, and said so.
    data = yaml.safe_load(DEMO_SPEC.read_text())
    data.update(features=spec_features(), slices=[], primary_metric="log_loss")
    other = explain.recorded_importance(client, parse_model_spec(data), "1", run_id)
    assert other.importance is None and "on 'roc_auc', not the primary metric 'log_loss'" in other.note


def test_importance_change_without_a_recorded_importance_says_so_and_uses_todays_rows(client, drifted):
    spec, champion, candidate, _, today = drifted
    older = client.create_run(client.create_experiment("older")).info.run_id  # registered before the record
    recorded = explain.recorded_importance(client, spec, "1", older)
    assert recorded.importance is None and "explain/importance_candidate.json" in recorded.note

    y = encode_labels(spec, today["default"])
    summary = assessment.assess_versions(
        spec, today, y, scored(spec, candidate, today), scored(spec, champion, today), recorded
    ).summary
    x1 = next(r for r in summary["importance"] if r["feature"] == "x1")
    assert x1["basis"] == "on today's rows" and x1["champion_registered"] is None
    assert x1["champion_rank"] == x1["champion_today_rank"]
    assert x1["change"] == pytest.approx(x1["candidate"] - x1["champion_today"])
    text = assessment.report_markdown(summary, spec.primary)
    assert (
        f"Champion importance at registration not recorded (champion v1's run {older} has no "
        "explain/importance_candidate.json): the change is against the champion's importance on today's rows."
    ) in text
    assert "change vs champion on today's rows" in text
