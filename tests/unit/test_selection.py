"""Candidate selection on data shaped like a user's: one small file per real day, a rare class, integer
columns. The selection rows and the gate's evaluation set hold enough rows and classes (or training is
refused with the numbers), an undefined metric is ``null`` with its reason and ranks last, and the logged
model takes the frame ``pandas.read_csv`` gives of a landed file."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlops_airflow.core.config import parse_model_spec
from mlops_airflow.core.training import (
    CandidateResult,
    SplitError,
    best_candidate,
    check_evaluation_set,
    selection_split,
    train_candidate,
)

TIERS = ["basic", "plus", "rare"]


def tier_spec(**window: Any) -> Any:
    return parse_model_spec(
        {
            "name": "tiers",
            "task": "classification",
            "source": {"uri": "landing/tiers", "timestamp_column": "event_date"},
            "features": [
                {"name": "visits", "type": "numeric"},
                {"name": "tenure", "type": "numeric"},
                {"name": "spend", "type": "numeric"},
                {"name": "region", "type": "categorical"},
            ],
            "label": {"name": "tier", "values": TIERS},
            "window": {"train_batches": 30, "eval_batches": 6, **window},
            "estimator": {"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 300}},
            "primary_metric": "f1_macro",
        }
    )


def days(first: int, last: int, rows: int = 8, rare_days: tuple[int, ...] = ()) -> pd.DataFrame:
    """Days ``first..last`` of ``rows`` rows each (one file per day, as landed): tiers alternate ``basic`` and
    ``plus``, and one row is ``rare`` on each of ``rare_days``; integer counts, a float column."""
    frames = []
    for day in range(first, last + 1):
        tier = np.resize(np.array(["basic", "plus"], dtype=object), rows)
        if day in rare_days:
            tier[0] = "rare"
        visits = np.arange(rows) + day % 3
        frames.append(
            pd.DataFrame(
                {
                    "event_date": str(dt.date(2026, 1, 1) + dt.timedelta(days=day)),
                    "visits": visits + (tier == "plus") * 4,
                    "tenure": (visits * 7 + day) % 60,
                    "spend": (visits * 1.5 + 20.25).round(2),
                    "region": np.resize(np.array(["north", "south"], dtype=object), rows),
                    "tier": tier,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def test_selection_takes_the_newest_days_until_it_has_enough_rows_and_every_class() -> None:
    spec = tier_spec()
    train = days(0, 29, rare_days=(3, 20))  # 240 rows; the rare tier on two days, neither of the newest

    split = selection_split(spec, train)

    # 7 days would hold 56 rows; 10 (80 rows) reach back to the rare tier's day 20
    assert split.summary["batches"] == 10 and len(split.valid) == 80 == split.summary["rows"]
    assert set(split.valid["tier"]) == set(TIERS)
    # whole days, the newest ones, and the rest fits
    newest = sorted(train["event_date"].unique())[-split.summary["batches"] :]
    assert set(split.valid["event_date"]) == set(newest)
    assert split.fit["event_date"].max() < min(newest) and len(split.fit) + len(split.valid) == len(train)
    assert split.summary["classes"] == {t: int((split.valid["tier"] == t).sum()) for t in TIERS}
    fitted = train_candidate(spec, {}, train)
    assert fitted.undefined == {} and all(math.isfinite(v) for v in fitted.metrics.values())


def test_selection_never_takes_more_than_half_the_window_and_says_why_it_refuses() -> None:
    spec = tier_spec()
    train = days(0, 9, rare_days=(9,))  # 80 rows: half of them is under the 50 selection rows asked for

    with pytest.raises(SplitError) as refused:
        selection_split(spec, train)

    message = str(refused.value)
    assert "40 selection row(s), at least 50 needed (window.min_selection_rows)" in message
    assert "80 row(s) in 10 batch(es)" in message and "window.train_batches" in message
    # asked for fewer rows, the same window selects on its newest 4 days
    assert selection_split(tier_spec(min_selection_rows=30), train).summary["batches"] == 4


def test_a_single_day_window_holds_out_its_newest_rows() -> None:
    spec = tier_spec()
    train = days(0, 0, rows=400)

    split = selection_split(spec, train)

    assert len(split.valid) == 80 and split.summary["batches"] == 0  # a fifth of the day, its tail
    assert split.valid.index.min() == 320


def test_an_evaluation_set_too_small_for_the_gate_is_refused_with_the_numbers(tmp_path: Path) -> None:
    from mlops_airflow.core.data import write_snapshot

    spec = tier_spec(eval_batches=1)
    landing = tmp_path / "landing"
    landing.mkdir()
    for day in range(31):
        days(day, day).to_csv(landing / f"batch_{day:03d}.csv", index=False)
    snapshot = write_snapshot(spec, str(landing), str(tmp_path / "snap" / "run"))
    labels = pd.read_csv(landing / "batch_030.csv")["tier"]

    with pytest.raises(SplitError) as refused:
        check_evaluation_set(spec, labels, snapshot)

    message = str(refused.value)
    assert "evaluation set (batch_030.csv) holds 8 row(s)" in message
    assert "at least 50 rows (window.min_eval_rows)" in message
    assert "The newest 7 batch(es) of this snapshot hold 56 rows: set window.eval_batches to 7" in message
    one_class = pd.Series(["basic"] * 60)
    with pytest.raises(SplitError, match=r"60 row\(s\), classes \{'basic': 60\}.*rows of at least 2 classes"):
        check_evaluation_set(spec, one_class)
    assert check_evaluation_set(spec, pd.Series(["basic", "plus"] * 30))["classes"] == {"basic": 30, "plus": 30}


def result(index: int, value: float | None, **extra: Any) -> CandidateResult:
    return CandidateResult(index, {"C": index}, {"f1_macro": value}, 1.0, 0.5, extra)


def test_a_candidate_with_an_undefined_selection_metric_ranks_after_every_defined_one() -> None:
    spec = tier_spec()
    picked = best_candidate(spec, [result(0, None), result(1, float("nan")), result(2, 0.4), result(3, 0.6)])
    assert picked.index == 3
    assert best_candidate(spec, [result(0, float("nan")), result(1, 0.1)]).index == 1


def test_no_candidate_is_chosen_when_the_selection_metric_is_undefined_for_all() -> None:
    spec = tier_spec()
    extra = {
        "selection": {"rows": 1, "classes": {"plus": 1}},
        "undefined": {"f1_macro": "it needs rows of at least two classes; there are 1 row(s)"},
    }
    with pytest.raises(ValueError) as refused:
        best_candidate(spec, [result(0, None, **extra), result(1, float("nan"), **extra)])

    message = str(refused.value)
    assert "primary metric 'f1_macro' is undefined for all 2 candidate(s)" in message
    assert "1 selection row(s), classes {'plus': 1} of ['basic', 'plus', 'rare']" in message
    assert "it needs rows of at least two classes" in message


def strict(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_json_artifacts_carry_undefined_metrics_as_null(mlops_home: Path) -> None:
    from mlops_airflow.core import settings, tracking

    client = tracking.client_for(settings.default_tracking_uri())
    run = client.create_run(tracking.experiment_id(client, "tiers")).info.run_id

    tracking.log_json(client, run, {"roc_auc_ovr": float("nan"), "log_loss": np.float64(0.5)}, "m/metrics.json")

    text = Path(client.download_artifacts(run, "m/metrics.json", str(mlops_home))).read_text()
    assert strict(text) == {"roc_auc_ovr": None, "log_loss": 0.5}
    assert tracking.load_json(client, run, "m/metrics.json") == {"roc_auc_ovr": None, "log_loss": 0.5}
    assert tracking.load_json(client, run, "m/absent.json") is None


def test_the_registered_model_scores_the_frame_read_from_a_landed_file(mlops_home: Path, tmp_path: Path) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    from mlops_airflow.core import demo_data, settings, tracking
    from mlops_airflow.core.config import get_spec
    from mlops_airflow.core.scoring import predict_rows
    from mlops_airflow.core.training import fit_final
    from mlops_airflow.core.trust import ModelRegistry
    from mlops_airflow.operators.training import log_spec_model

    spec = get_spec("credit_default")
    client = tracking.client_for(settings.default_tracking_uri())
    train = pd.concat([demo_data.generate_batch(d, n_rows=200) for d in range(3)], ignore_index=True)
    pipeline = fit_final(spec, {"max_iter": 20}, train)
    run = client.create_run(tracking.experiment_id(client, spec.name)).info.run_id
    with mlflow.start_run(run_id=run):
        model_uri = log_spec_model(spec, pipeline, train, 0.5)
    version = ModelRegistry(client, spec.name).register(model_uri, run, {}).version
    client.set_registered_model_alias(spec.name, "champion", str(version))
    [landed] = demo_data.write_batches(tmp_path / "landing", range(20, 21), n_rows=50)
    with_gap = pd.read_csv(landed)
    with_gap.loc[3, "late_payments"] = None  # one gap: this integer column now reads as float
    with_gap.to_csv(tmp_path / "gap.csv", index=False)
    features = spec.model_features

    rows = pd.read_csv(landed)[features]
    assert rows["credit_lines"].dtype == "int64" and rows["late_payments"].dtype == "int64"
    gaps = pd.read_csv(tmp_path / "gap.csv")[features]
    assert gaps["late_payments"].dtype == "float64"
    model = mlflow.pyfunc.load_model(f"models:/{spec.name}@champion")
    answer = model.predict(rows)
    assert list(answer.columns) == ["prediction", "proba_0", "proba_1"] and len(answer) == 50
    assert model.predict(gaps)["proba_1"].notna().all()
    # the package's own scoring (gate, batch scoring) gets the same answer without MLflow's value-by-value check
    scored, _ = predict_rows(spec, model, pd.read_csv(landed))
    pd.testing.assert_frame_equal(scored, answer)
    # the same rows as a client of `mlflow models serve` sends them (JSON, a null for the gap), through the
    # function that answers its /invocations
    body = json.dumps({"dataframe_split": json.loads(gaps.to_json(orient="split", index=False))})
    served = scoring_server.invocations(body, "application/json", model, model.metadata.get_input_schema())
    assert served.status == 200, served.response
    scores = [row["proba_1"] for row in json.loads(served.response)["predictions"]]
    np.testing.assert_allclose(scores, model.predict(gaps)["proba_1"].to_numpy())
    # a value that is not a number is still refused, naming the column
    text = rows.astype({"credit_lines": object})
    text.loc[0, "credit_lines"] = "n/a"
    with pytest.raises((MlflowException, ValueError), match="column 'credit_lines' is a numeric feature"):
        model.predict(text)
