"""Unpausing a model's DAG starts nothing by itself (the trigger form's "unpause on trigger" gave two runs for
one click: the user's and the latest cron slot's). Computed by Airflow's own scheduling code on the
serialized DAG, as the scheduler computes a DAG's next run."""

from __future__ import annotations

import datetime as dt

import pytest

from mlops_airflow.dag_factory import build_dags


@pytest.mark.parametrize("dag_id", ["ct_credit_default", "monitor_credit_default"])
def test_a_dag_without_runs_first_runs_at_its_next_cron_slot_not_a_past_one(dag_id: str) -> None:
    from airflow.serialization.serialized_objects import DagSerialization

    dag = DagSerialization.from_dict(DagSerialization.to_dict(build_dags()[dag_id]))
    before = dt.datetime.now(dt.UTC)
    info = dag.next_dagrun_info(last_automated_run_info=None)
    assert info is not None and info.run_after > before, (
        f"{dag_id}: its first scheduled run is due at {info and info.run_after}, before now: unpausing it "
        "would start that slot at once"
    )


def test_the_ct_schedule_names_its_cron_beside_the_asset() -> None:
    dag = build_dags()["ct_credit_default"]
    assert "0 2 * * *" in (dag.description or "") and "retrain request" in (dag.description or "")
    assert dag.timetable.timetable.expression == "0 2 * * *"  # type: ignore[attr-defined]
