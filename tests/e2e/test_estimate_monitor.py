"""``monitor_credit_default`` estimates the champion's ROC AUC on an unlabelled batch, logs it to MLflow, and
logs the estimate beside the realised ROC AUC once the batch's labels arrive."""

from __future__ import annotations

import json

import pytest

from mlops_airflow.core import demo_data

pytestmark = [pytest.mark.e2e, pytest.mark.demo_champion]  # each test starts from the first CT run


def metric_history(client, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_monitor_logs_the_estimate_then_estimated_vs_realised(demo_champion, run_dag, landing, mlflow_client):
    assert demo_champion.state == "success"
    version = mlflow_client.get_model_version_by_alias("credit_default", "champion")
    promoted = mlflow_client.get_run(version.run_id).data.metrics
    assert "candidate_ece" in promoted and "candidate_excess_ece" in promoted  # recorded at promotion

    # Day 15 lands before its labels: the default column is empty.
    unlabelled = demo_data.generate_batch(15).assign(default=None)
    unlabelled.to_csv(landing / demo_data.batch_file_name(15), index=False)
    first = run_dag("monitor_credit_default")
    assert first.state == "success", first.tasks
    estimate = first.xcom("monitor")["estimate"]
    assert estimate["estimated"] is True and estimate["realised"] is None, estimate
    assert estimate["low"] <= estimate["value"] <= estimate["high"]
    run_id = first.xcom("monitor")["mlflow_run_id"]
    assert metric_history(mlflow_client, run_id, "estimated_roc_auc") == [pytest.approx(estimate["value"])]
    assert metric_history(mlflow_client, run_id, "realised_roc_auc") == []
    tags = mlflow_client.get_run(run_id).data.tags
    assert tags["mlops.estimate_reason"].startswith("estimated from 1000 rows")

    # The labels arrive: the batch file is replaced under its name.
    demo_data.write_batch(landing, 15)
    second = run_dag("monitor_credit_default")
    assert second.state == "success", second.tasks
    later = second.xcom("monitor")["estimate"]
    assert later["value"] == pytest.approx(estimate["value"])  # same champion, same rows: the same estimate
    assert later["labelled"] == 1000 and later["realised"] is not None
    assert abs(later["error"]) < 0.05, later  # the demo feed without a concept change: the estimate holds
    run_id = second.xcom("monitor")["mlflow_run_id"]
    assert metric_history(mlflow_client, run_id, "realised_roc_auc") == [pytest.approx(later["realised"])]
    assert metric_history(mlflow_client, run_id, "estimate_error_roc_auc") == [pytest.approx(later["error"])]
    # the model page reads the same figures from the newest monitor run
    from mlops_airflow.core.ledger import last_monitor_run
    from mlops_airflow.ui.app import _estimate

    summary = last_monitor_run(mlflow_client, mlflow_client.get_run(run_id).info.experiment_id, "roc_auc")
    assert summary is not None and summary.mlflow_run_id == run_id
    assert summary.estimated_metric == pytest.approx(later["value"])
    assert summary.realised_metric == pytest.approx(later["realised"])
    shown = _estimate("roc_auc", summary)
    assert f"{later['value']:.4f}" in shown and f"realised {later['realised']:.4f}" in shown
    local = mlflow_client.download_artifacts(run_id, "estimate/batches.json")
    with open(local, encoding="utf-8") as fh:
        logged = json.load(fh)
    assert logged["calibration"]["usable"] is True
    assert [b["batch"] for b in logged["batches"]] == [demo_data.batch_file_name(15)]
