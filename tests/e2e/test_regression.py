"""A regression model runs the same CT DAG: scikit-learn's bundled diabetes data, RMSE as primary metric."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlops_airflow.core.demo_data import write_diabetes_batches

pytestmark = pytest.mark.e2e
MODELS = Path(__file__).parent / "models"


def test_regression_model_trains_gates_and_promotes(run_dag, mlops_home, mlflow_client, monkeypatch):
    monkeypatch.setenv("MLOPS_MODELS_DIR", str(MODELS))
    write_diabetes_batches(mlops_home / "data" / "landing" / "diabetes_progression", days=15)

    result = run_dag("ct_diabetes_progression")

    assert result.state == "success", result.tasks
    assert [result.state_of(f"train[{i}]") for i in range(3)] == ["success"] * 3
    evaluation = result.xcom("evaluate_vs_champion")
    assert set(evaluation["candidate"]) == {"rmse", "mae", "r2", "mape"}
    assert evaluation["candidate"]["r2"] > 0.2
    decision = result.xcom("gate", key="gate_decision")
    assert decision["blessed"] and decision["first_run"] and decision["primary_metric"] == "rmse"
    model = mlflow_client.get_registered_model("diabetes_progression")
    assert str(model.aliases["champion"]) == "1"

    exp = mlflow_client.get_experiment_by_name("diabetes_progression")
    parent = mlflow_client.search_runs([exp.experiment_id], "tags.`mlops.kind` = 'ct'")[0]
    plots = {a.path for a in mlflow_client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/residuals.png"}
