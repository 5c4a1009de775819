"""``ct_credit_default`` up to a trained candidate, and bad batches stopped at ``validate_data``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlops_airflow.core import tracking
from mlops_airflow.core.config import candidate_grid, get_spec

pytestmark = pytest.mark.e2e
DAG_ID = "ct_credit_default"


def parent_run(client, run_id):
    exp = client.get_experiment_by_name("credit_default")
    assert exp is not None, "the CT run created no MLflow experiment"
    run = tracking.find_run(
        client,
        exp.experiment_id,
        {tracking.TAG_DAG_ID: DAG_ID, tracking.TAG_RUN_ID: run_id, tracking.TAG_KIND: "ct"},
    )
    assert run is not None
    return exp, run


@pytest.mark.demo_champion
def test_ct_run_trains_candidates_and_logs_model(demo_champion, mlflow_client):
    result = demo_champion  # 15 landed days, then ct_credit_default

    n_candidates = len(candidate_grid(get_spec("credit_default")))
    for task in ("snapshot", "validate_data", "select_candidate"):
        assert result.state_of(task) == "success", result.tasks
    assert [result.state_of(f"train[{i}]") for i in range(n_candidates)] == ["success"] * n_candidates

    exp, run = parent_run(mlflow_client, result.run_id)
    assert run.data.tags["mlops.validation"] == "passed"
    assert len(run.data.tags["mlops.data_hash"]) == 64
    children = mlflow_client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"
    )
    assert len(children) == n_candidates
    assert all("val_roc_auc" in c.data.metrics for c in children)

    # a credible model: the demo label depends on the features
    assert run.data.metrics["eval_roc_auc"] > 0.75
    artifacts = {a.path for a in mlflow_client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/roc_curve.png", "plots/pr_curve.png", "plots/confusion_matrix.png"}
    with open(mlflow_client.download_artifacts(run.info.run_id, "validation/summary.json")) as fh:
        summary = json.load(fh)
    assert summary["success"] is True and summary["files"] == 15

    # the fitted pipeline is logged with a signature and loads back as a pyfunc model
    import mlflow

    selected = result.xcom("select_candidate")
    model = mlflow.pyfunc.load_model(selected["model_uri"])
    assert model.metadata.signature is not None
    assert {i.name for i in model.metadata.get_input_schema().inputs} >= {"income", "region"}
    # it answers the label and one probability column per class, named after the classes
    answer = model.predict(model.input_example)
    assert list(answer.columns) == ["prediction", "proba_0", "proba_1"]
    assert set(answer["prediction"]) <= {0, 1}
    assert ((answer["proba_0"] + answer["proba_1"] - 1).abs() < 1e-9).all()
    files = {a.path for a in mlflow_client.list_artifacts(run.info.run_id, "model")} | {
        p.name for p in Path(mlflow.artifacts.download_artifacts(selected["model_uri"])).iterdir()
    }
    assert "uv.lock" not in files and "pyproject.toml" not in files
    # its environment is what serving needs, pinned to what trained it, not the Airflow deployment
    from importlib.metadata import version

    requirements = Path(mlflow.pyfunc.get_model_dependencies(selected["model_uri"]))
    pins = {line.split("==")[0]: line.split("==")[1] for line in requirements.read_text().split() if "==" in line}
    assert pins["scikit-learn"] == version("scikit-learn") and pins["mlflow"] == version("mlflow")
    assert "apache-airflow" not in pins and "great-expectations" not in pins
    inputs = {d.dataset.name for d in mlflow_client.get_run(run.info.run_id).inputs.dataset_inputs}
    assert inputs == {"credit_default-train", "credit_default-eval"}

    # XCom carries references, never frames
    assert len(json.dumps(result.xcom("snapshot"))) < 4096
    assert len(json.dumps(selected)) < 4096


@pytest.mark.parametrize(
    ("corruption", "expected_rule"),
    [
        ("missing_column", "expect_column_to_exist"),
        ("wrong_dtype", "expect_column_values_to_be_in_type_list"),
        ("nulls_in_required", "expect_column_values_to_not_be_null"),
        ("out_of_range", "expect_column_values_to_be_between"),
        ("empty", "expect_table_row_count_to_be_between"),
        ("not_tabular", "not a CSV file"),
    ],
)
def test_bad_batch_fails_validation_and_trains_nothing(corruption, expected_rule, run_dag, demo_batches, mlflow_client):
    demo_batches(range(14))
    demo_batches(range(14, 15), corrupt=corruption)
    result = run_dag(DAG_ID)

    assert result.state == "failed"
    assert result.state_of("snapshot") == "success"
    assert result.state_of("validate_data") == "failed"
    assert result.state_of("select_candidate") == "upstream_failed"
    assert not any(k.startswith("train[") and v == "success" for k, v in result.tasks.items())

    summary = result.xcom("validate_data", key="validation_summary")
    assert summary["success"] is False
    broken = summary["failed"]
    assert all(f["file"] == "batch_2026-01-15.csv" for f in broken), broken
    assert any(expected_rule in f["expectation"] or expected_rule in f["rule"] for f in broken), broken

    exp, run = parent_run(mlflow_client, result.run_id)
    assert run.data.tags["mlops.validation"] == "failed"
    # no candidate run, no logged model
    assert mlflow_client.search_runs([exp.experiment_id], "tags.`mlops.kind` = 'candidate'") == []
    assert "mlops.candidate_model_uri" not in run.data.tags
