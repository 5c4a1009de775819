"""The spec's ``retrain:`` section governs ``monitor_<model>``: its weekly cap counts the model's CT runs in MLflow,
and its ``max_estimated_drop`` asks for a retrain from the label-free estimate before any label has arrived."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from mlops_airflow.core import demo_data

pytestmark = pytest.mark.e2e
INCLUDED = Path(__file__).resolve().parents[2] / "include" / "models" / "credit_default.yaml"


@pytest.fixture
def write_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, dict[str, Any]], Path]:
    """``write_spec("folder", retrain)``: the demo spec with that ``retrain:`` section, in its own models folder
    (``MLOPS_MODELS_DIR``), so that a test can change the section between two DAG runs."""

    def _write(name: str, retrain: dict[str, Any]) -> Path:
        spec = yaml.safe_load(INCLUDED.read_text())
        spec["retrain"] = retrain
        spec.setdefault("drift", {})["cooldown_hours"] = 0  # no spacing between runs: only the policy holds back
        folder = tmp_path / name
        folder.mkdir()
        (folder / "credit_default.yaml").write_text(yaml.safe_dump(spec))
        monkeypatch.setenv("MLOPS_MODELS_DIR", str(folder))
        return folder

    return _write


def test_drift_after_the_weeks_one_ct_run_is_held_back_by_the_cap(write_spec, run_dag, demo_batches):
    write_spec("models", {"max_runs_per_week": 1})
    demo_batches(range(15))
    assert run_dag("ct_credit_default").state == "success"
    demo_batches(range(15, 16), feature_shift=1.0)  # drift that would ask for a retrain without the cap

    monitored = run_dag("monitor_credit_default")
    assert monitored.state == "success", monitored.tasks
    decision = monitored.xcom("monitor")
    assert decision["drifted_features"] and decision["request"] is False
    assert "1 runs this week = max 1" in decision["reason"]
    assert monitored.state_of("request_retrain") == "skipped"


def alike_unlabelled_batch(day: int) -> pd.DataFrame:
    """Day ``day``'s applications made alike (each numeric feature pulled 80% towards its median, one employment
    type and region), landed before their labels: the champion's probabilities bunch together, so its estimated
    ROC AUC falls although no label says so yet."""
    frame = demo_data.generate_batch(day)
    for column in ("age", "income", "debt_ratio", "credit_lines", "late_payments", "utilization"):
        median = frame[column].median()
        frame[column] = median + 0.2 * (frame[column] - median)
    return frame.assign(employment_type="salaried", region="north", default=None)


def test_an_estimated_drop_without_labels_requests_a_retrain_only_with_the_trigger(
    write_spec, run_dag, demo_batches, landing, mlflow_client
):
    write_spec("without_trigger", {"on_drift": False})  # drift is no trigger: only the estimate can ask
    demo_batches(range(15))
    assert run_dag("ct_credit_default").state == "success"
    alike_unlabelled_batch(15).to_csv(landing / demo_data.batch_file_name(15), index=False)

    quiet = run_dag("monitor_credit_default")
    assert quiet.state == "success", quiet.tasks
    decision = quiet.xcom("monitor")
    assert decision["live_metric"] is None and decision["estimate"]["estimated"] is True, decision
    assert decision["request"] is False and "estimated" not in decision["reason"], decision["reason"]
    assert quiet.state_of("request_retrain") == "skipped"

    write_spec("with_trigger", {"on_drift": False, "max_estimated_drop": 0.02})
    triggered = run_dag("monitor_credit_default")
    assert triggered.state == "success", triggered.tasks
    decision = triggered.xcom("monitor")
    assert decision["request"] is True, decision["reason"]
    promoted = mlflow_client.get_run(
        mlflow_client.get_model_version_by_alias("credit_default", "champion").run_id
    ).data.metrics["candidate_roc_auc"]
    drop = decision["estimated_drop"]
    assert drop == pytest.approx(promoted - decision["estimate"]["value"]) and drop > 0.02
    assert decision["reason"] == f"estimated roc_auc drop {drop:.3f} > 0.02"
    assert triggered.state_of("request_retrain") == "success"
    monitor_run = mlflow_client.get_run(decision["mlflow_run_id"]).data
    assert monitor_run.tags["mlops.retrain_requested"] == "true"
    assert monitor_run.tags["mlops.retrain_reason"] == decision["reason"]
    assert monitor_run.metrics["estimated_drop_roc_auc"] == pytest.approx(drop)
    assert monitor_run.tags["mlops.estimated_drop_reason"] == (
        f"estimated roc_auc {decision['estimate']['value']:.4f} on {demo_data.batch_file_name(15)} "
        f"vs {promoted:.4f} at promotion (drop {drop:.4f})"
    )
