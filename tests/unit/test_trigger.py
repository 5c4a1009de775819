"""What started a CT run is recorded in its MLflow run: schedule, manual, or a drift request with its reason."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest

from mlops_airflow.operators.data import describe_trigger


def context(run_type: str, events: dict | None = None) -> dict:
    return {"dag_run": SimpleNamespace(run_type=run_type), "triggering_asset_events": events or {}}


def test_scheduled_and_manual_runs():
    assert describe_trigger(context("scheduled")) == {"mlops.trigger": "scheduled"}
    assert describe_trigger(context("DagRunType.MANUAL")) == {"mlops.trigger": "manual"}


def test_a_manual_reason_is_kept():
    ctx = {**context("manual"), "params": {"reason": "new feature pipeline deployed"}}
    assert describe_trigger(ctx)["mlops.trigger.reason"] == "new feature pipeline deployed"


def test_a_drift_request_carries_its_reason_and_report():
    event = SimpleNamespace(
        extra={"trigger": "drift", "reason": "4/9 features drifted: income, utilization", "drift_report_run_id": "abc"}
    )
    tags = describe_trigger(context("asset_triggered", {"mlops://credit_default/retrain-request": [event]}))
    assert tags == {
        "mlops.trigger": "drift",
        "mlops.trigger.reason": "4/9 features drifted: income, utilization",
        "mlops.trigger.drift_run_id": "abc",
    }


def test_a_producer_names_its_trigger_in_the_event_extra():
    event = SimpleNamespace(extra={"trigger": "new_data", "reason": "batch 2026-11-22 landed"})
    tags = describe_trigger(context("asset_triggered", {"mlops://credit_default/retrain-request": [event]}))
    assert tags == {"mlops.trigger": "new_data", "mlops.trigger.reason": "batch 2026-11-22 landed"}


def test_an_asset_event_without_extra_is_recorded_as_asset_triggered():
    event = SimpleNamespace(extra=None)
    tags = describe_trigger(context("asset_triggered", {"mlops://credit_default/retrain-request": [event]}))
    assert tags == {"mlops.trigger": "asset_triggered"}


@pytest.mark.parametrize("build", ["build_ct_dag", "build_predict_dag", "build_monitor_dag"])
@pytest.mark.parametrize("value", ["a" * 5000, "landing/x\x00/etc", "landing/x\n", "landing/\x85x"])
def test_the_trigger_form_refuses_a_data_uri_no_path_can_be(build, value):
    """Longer than any path, or holding a control character: refused when the run is triggered, before a task
    starts (the task confines what passes to the landing roots)."""
    from airflow.sdk.exceptions import ParamValidationError

    from mlops_airflow import dag_factory
    from mlops_airflow.core.config import get_spec

    params = copy.deepcopy(getattr(dag_factory, build)(get_spec("credit_default")).params)
    with pytest.raises(ParamValidationError, match="data_uri"):
        params.update({"data_uri": value})
    params.update({"data_uri": "landing/credit_default"})
    params.update({"data_uri": None})
    params.validate()
