"""Candidate selection on data shaped like a user's (one small file per real day, integer columns, gaps, a
rare class), through ``ct_<model>`` with ``dag.test()``: enough selection and evaluation rows or a refusal
with the numbers; an undefined selection metric is ``null`` in XCom and in MLflow, with its reason; a retry of
``select_candidate`` keeps the logged model of a registered version (SQLite store and ``mlflow server``)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from e2e_support import snapshot_by_hand

pytestmark = pytest.mark.e2e
START = dt.date(2026, 1, 1)


def land_days(folder: Path, first: int, last: int, rows: int = 8, constant_days: range = range(0)) -> list[Path]:
    """One CSV per real day, as a user lands them: a few rows, integer counts (``visits``, ``tenure``), gaps in
    ``spend``, a ``tier`` that is ``rare`` in one row every ninth day, and a numeric ``basket`` (10.0 on every
    row of ``constant_days``)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for day in range(first, last + 1):
        rng = np.random.default_rng(day)
        visits = rng.poisson(6, rows)
        tenure = rng.integers(0, 60, rows)
        spend = rng.lognormal(4.0, 0.5, rows).round(2)
        spend[rng.random(rows) < 0.1] = np.nan
        tier = np.where(visits + rng.normal(0, 1.5, rows) > 6.5, "plus", "basic").astype(object)
        if day % 9 == 0:
            tier[0] = "rare"
        basket = (3.0 * visits + 0.2 * tenure + rng.normal(0, 1.0, rows)).round(2)
        if day in constant_days:
            basket[:] = 10.0
        date = START + dt.timedelta(days=day)
        frame = pd.DataFrame(
            {
                "event_date": date.isoformat(),
                "visits": visits,
                "tenure": tenure,
                "spend": spend,
                "region": rng.choice(["north", "south"], rows),
                "tier": tier,
                "basket": basket,
            }
        )
        path = folder / f"events_{date.isoformat()}.csv"
        frame.to_csv(path, index=False)
        paths.append(path)
    return paths


FEATURES = [
    {"name": "visits", "type": "numeric", "nullable": False, "min": 0},
    {"name": "tenure", "type": "numeric", "nullable": False, "min": 0},
    {"name": "spend", "type": "numeric", "min": 0, "max_null_fraction": 0.6},
    {"name": "region", "type": "categorical", "nullable": False, "categories": ["north", "south"]},
]


def write_spec(folder: Path, name: str, **changes: Any) -> None:
    spec = {
        "name": name,
        "task": "classification",
        "source": {"uri": f"landing/{name}", "format": "csv", "timestamp_column": "event_date"},
        "features": FEATURES,
        "label": {"name": "tier", "values": ["basic", "plus", "rare"]},
        "window": {"train_batches": 30, "eval_batches": 7},
        "estimator": {
            "class": "sklearn.linear_model.LogisticRegression",
            "params": {"max_iter": 500},
            "search_space": {"C": [0.1, 1.0]},
        },
        "primary_metric": "f1_macro",
        "schedule": None,
        "gate": {"thresholds": {"accuracy": {"min": 0.3}}, "n_bootstrap": 200, "min_slice_size": 20},
        "smoke_test": {"max_latency_ms_per_row": 500.0, "rows": 20},
        **changes,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec))


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "models"
    monkeypatch.setenv("MLOPS_MODELS_DIR", str(folder))
    return folder


def test_small_daily_files_select_on_enough_rows_and_the_champion_scores_a_landed_file(
    run_dag, mlops_home, models, mlflow_client
):
    import mlflow

    write_spec(models, "tiers")
    landed = land_days(mlops_home / "data" / "landing" / "tiers", 0, 39)

    result = run_dag("ct_tiers")

    assert result.state == "success", result.tasks
    for index in range(2):
        trained = result.xcom("train", map_index=index)
        selection = trained["selection"]
        # the newest day alone is 8 rows; selection took the newest whole days up to 50 rows and the rare tier
        assert selection["rows"] >= 50 and selection["batches"] >= 7, selection
        assert set(selection["classes"]) == {"basic", "plus", "rare"}, selection
        assert trained["undefined"] == {} and all(v is not None for v in trained["metrics"].values())
    # the champion takes the frame pandas reads from a landed file: integer columns, gaps
    rows = pd.read_csv(landed[-1])
    assert rows["visits"].dtype == "int64" and rows["tenure"].dtype == "int64"
    model = mlflow.pyfunc.load_model("models:/tiers@champion")
    answer = model.predict(rows[["visits", "tenure", "spend", "region"]])
    assert set(answer["prediction"]) <= {"basic", "plus", "rare"} and len(answer) == 8


def test_an_evaluation_day_too_small_for_the_gate_stops_training_with_the_numbers(run_dag, mlops_home, models):
    from airflow.sdk.exceptions import AirflowFailException

    from mlops_airflow.dag_factory import build_dags
    from mlops_airflow.operators.training import TrainCandidateOperator

    write_spec(models, "tiers", window={"train_batches": 30, "eval_batches": 1})
    land_days(mlops_home / "data" / "landing" / "tiers", 0, 39)

    result = run_dag("ct_tiers")

    assert result.state == "failed"
    assert result.state_of("validate_data") == "success"
    # failed, not up_for_retry: more tries would read the same rows
    assert [result.state_of(f"train[{i}]") for i in range(2)] == ["failed", "failed"], result.tasks
    assert result.state_of("select_candidate") == "upstream_failed"
    train = TrainCandidateOperator(
        task_id="probe",
        model_name="tiers",
        snapshot=result.xcom("snapshot"),
        candidate={"index": 0, "params": {"C": 0.1}},
        dag=build_dags()["ct_tiers"],
    )
    context = {"run_id": result.run_id, "ti": SimpleNamespace(try_number=3)}
    with pytest.raises(AirflowFailException) as refused:
        train.execute(context)  # type: ignore[arg-type]
    message = str(refused.value)
    assert "the evaluation set (events_2026-02-09.csv) holds 8 row(s)" in message, message
    assert "at least 50 rows (window.min_eval_rows)" in message
    assert "The newest 7 batch(es) of this snapshot hold 56 rows: set window.eval_batches to 7" in message


def test_an_undefined_selection_metric_is_null_with_its_reason(run_dag, mlops_home, models, mlflow_client):
    from mlops_airflow.core import tracking

    # a week in which the target never moved is what the candidates are compared on: r2 is undefined there
    write_spec(
        models,
        "basket",
        task="regression",
        label={"name": "basket"},
        estimator={"class": "sklearn.linear_model.Ridge", "search_space": {"alpha": [0.1, 10.0]}},
        primary_metric="rmse",
        gate={"thresholds": {"rmse": {"max": 100.0}}, "n_bootstrap": 200, "min_slice_size": 20},
    )
    land_days(mlops_home / "data" / "landing" / "basket", 0, 43, constant_days=range(30, 37))

    result = run_dag("ct_basket")

    assert result.state == "success", result.tasks
    for index in range(2):
        trained = result.xcom("train", map_index=index)
        assert trained["metrics"]["r2"] is None and trained["metrics"]["rmse"] > 0
        assert trained["undefined"]["r2"].startswith("the target is constant (56 row(s)")
        recorded = tracking.load_json(mlflow_client, trained["mlflow_run_id"], "selection/candidate.json")
        assert recorded["metrics"]["r2"] is None and recorded["undefined"] == trained["undefined"]
    selected = result.xcom("select_candidate")
    assert selected["validation_metrics"]["r2"] is None and selected["eval_metrics"]["r2"] is not None
    text = Path(
        mlflow_client.download_artifacts(selected["mlflow_run_id"], "selection/candidate.json", str(mlops_home))
    ).read_text()
    assert "NaN" not in text and json.loads(text)["undefined"]["selection"]["r2"]


@pytest.mark.parametrize("store", ["sqlite", "mlflow_server"])
def test_a_retry_of_select_keeps_the_model_a_registered_version_points_at(store, request, demo_batches, mlops_home):
    import mlflow

    from mlops_airflow.core import settings
    from mlops_airflow.core.config import candidate_grid, get_spec
    from mlops_airflow.core.tracking import client_for
    from mlops_airflow.core.trust import ModelRegistry
    from mlops_airflow.dag_factory import build_dags
    from mlops_airflow.operators.training import TrainCandidateOperator

    uri = request.getfixturevalue("mlflow_server") if store == "mlflow_server" else settings.default_tracking_uri()
    client = client_for(uri)
    [landed, *_] = demo_batches(range(15), n_rows=200)
    dag = build_dags()["ct_credit_default"]
    context, snapshot = snapshot_by_hand("manual__2026-01-01T00:00:00+00:00")
    grid = candidate_grid(get_spec("credit_default"))
    train = TrainCandidateOperator(
        task_id="train_probe",
        model_name="credit_default",
        snapshot=snapshot,
        candidate={"index": 0, "params": grid[0]},
        dag=dag,
    )
    trained = train.execute(context)
    # the same hyperparameters under another index: the grid of a spec whose search_space was reordered
    reordered = {**trained, "index": 1}
    parent = snapshot["mlflow_run_id"]

    def select(chosen: list[dict[str, Any]], try_number: int) -> str:
        """select_candidate as Airflow runs it again once the DAG run is cleared (a fresh task object)."""
        task = build_dags()["ct_credit_default"].get_task("select_candidate")
        task.snapshot, task.candidates = snapshot, chosen
        return task.execute({**context, "ti": SimpleNamespace(try_number=try_number)})["model_uri"]

    def models_of_run() -> set[str]:
        experiment = client.get_experiment_by_name("credit_default").experiment_id
        return {m.model_id for m in client.search_logged_models([experiment], f"source_run_id = '{parent}'")}

    first = select([trained], 1)
    version = ModelRegistry(client, "credit_default").register(first, parent, {}).version
    client.set_registered_model_alias("credit_default", "champion", str(version))
    # the DAG run is cleared after the grid was reordered, then once more after it was put back: the run records
    # another candidate index each time, so select logs a new model and clears what earlier tries left
    second = select([reordered], 2)
    third = select([trained], 3)

    ids = {uri: uri.removeprefix("models:/") for uri in (first, second, third)}
    assert models_of_run() == {ids[first], ids[third]}  # the unregistered leftover went, v1's model stayed
    assert str(client.get_logged_model(ids[first]).status) == "READY"
    champion = mlflow.pyfunc.load_model("models:/credit_default@champion")
    rows = pd.read_csv(landed)[get_spec("credit_default").model_features]
    assert len(champion.predict(rows)) == len(rows)
