"""``monitor_credit_default`` requests a retrain on drift (once per cooldown); ``predict_credit_default`` scores
with the champion."""

from __future__ import annotations

import pandas as pd
import pytest

from mlops_airflow.core import demo_data

pytestmark = [pytest.mark.e2e, pytest.mark.demo_champion]  # each test starts from the first CT run
RETRAIN_URI = "mlops://credit_default/retrain-request"


def retrain_events() -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.uri == RETRAIN_URI)
            .all()
        )
        return [dict(r.extra or {}) for r in rows]


@pytest.fixture
def champion(demo_champion):
    assert demo_champion.state == "success", demo_champion.tasks


def test_drift_requests_a_retrain_once_per_cooldown(champion, run_dag, demo_batches):
    before = len(retrain_events())
    demo_batches(range(15, 16), feature_shift=1.0)  # poorer, more indebted applicants from today on

    drifted = run_dag("monitor_credit_default")
    assert drifted.state == "success", drifted.tasks
    assert drifted.state_of("request_retrain") == "success"
    decision = drifted.xcom("monitor")
    assert decision["request"] is True and decision["drifted_features"]
    events = retrain_events()
    assert len(events) == before + 1
    assert events[-1]["trigger"] == "drift"
    assert any(feature in events[-1]["reason"] for feature in decision["drifted_features"])

    demo_batches(range(16, 17), feature_shift=1.0)  # still drifted, but a request was just made
    again = run_dag("monitor_credit_default")
    assert again.state_of("request_retrain") == "skipped"
    assert again.xcom("monitor")["in_cooldown"] is True
    assert len(retrain_events()) == before + 1


def test_no_request_on_an_undrifted_batch(champion, run_dag, demo_batches, mlflow_client):
    before = len(retrain_events())
    demo_batches(range(15, 16))
    result = run_dag("monitor_credit_default")
    assert result.state_of("monitor") == "success"
    assert result.state_of("request_retrain") == "skipped"
    decision = result.xcom("monitor")
    assert decision["request"] is False and decision["live_metric"] > 0.75
    assert len(retrain_events()) == before
    run = mlflow_client.get_run(decision["mlflow_run_id"])
    assert run.data.tags["mlops.retrain_requested"] == "false"
    assert {a.path for a in mlflow_client.list_artifacts(run.info.run_id, "drift")} >= {
        "drift/report.json",
        "drift/report.md",
    }


def test_predictions_carry_the_champion_version_and_are_not_made_twice(champion, run_dag, mlops_home):
    scoring = mlops_home / "data" / "scoring" / "credit_default"
    scoring.mkdir(parents=True)
    frame = demo_data.generate_batch(20, n_rows=300).drop(columns=["default"])
    frame.to_csv(scoring / "batch_2026-01-21.csv", index=False)

    first = run_dag("predict_credit_default")
    assert first.state == "success", first.tasks
    out = first.xcom("predict")
    assert out["written"] == 1 and out["model_version"] == "1"
    predictions = pd.read_parquet(out["files"][0].removeprefix("file://"))
    assert len(predictions) == 300
    assert set(predictions["model_version"]) == {"1"}
    assert predictions["prediction"].between(0, 1).all()
    assert list(predictions["application_id"]) == list(frame["application_id"])

    again = run_dag("predict_credit_default")
    assert again.xcom("predict") | {} == {**again.xcom("predict"), "written": 0, "skipped": 1}

    # Another folder's file of the same name (passed as data_uri) is a different batch: scored, not skipped
    resend = mlops_home / "data" / "scoring" / "credit_default_resend"
    resend.mkdir(parents=True)
    other = demo_data.generate_batch(21, n_rows=120).drop(columns=["default"])
    other.to_csv(resend / "batch_2026-01-21.csv", index=False)
    third = run_dag("predict_credit_default", conf={"data_uri": str(resend)})
    assert third.state == "success", third.tasks
    assert third.xcom("predict")["written"] == 1
    (path,) = third.xcom("predict")["files"]
    assert path != out["files"][0]
    assert list(pd.read_parquet(path.removeprefix("file://"))["application_id"]) == list(other["application_id"])
    assert len(pd.read_parquet(out["files"][0].removeprefix("file://"))) == 300  # the first batch's, kept

    # the same batch landed again with other bytes is scored again; the same bytes touched are not
    frame.iloc[:50].to_csv(scoring / "batch_2026-01-21.csv", index=False)
    fourth = run_dag("predict_credit_default")
    assert fourth.xcom("predict")["written"] == 1
    assert len(pd.read_parquet(fourth.xcom("predict")["files"][0].removeprefix("file://"))) == 50
    (scoring / "batch_2026-01-21.csv").touch()
    for uri in (None, str(resend)):
        rerun = run_dag("predict_credit_default", conf={"data_uri": uri} if uri else None)
        assert rerun.xcom("predict")["written"] == 0, rerun.xcom("predict")
