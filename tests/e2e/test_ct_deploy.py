"""``ct_credit_default`` from candidate to champion: the gate, the registry aliases, idempotency, rollback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops_airflow.core.trust import ModelRegistry

pytestmark = [pytest.mark.e2e, pytest.mark.demo_champion]  # each test starts from the first CT run
CT = "ct_credit_default"
ROLLBACK = "rollback_credit_default"
MODEL = "credit_default"


def aliases(client) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(MODEL).aliases.items()}


def versions(client) -> list[str]:
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'"))


def shuffle_training_labels(landing, days) -> None:
    """Destroy the relation between features and label in these batches (valid data, useless model)."""
    rng = np.random.default_rng(7)
    for path in sorted(landing.glob("batch_*.csv"))[days]:
        frame = pd.read_csv(path)
        frame["default"] = rng.permutation(frame["default"].to_numpy())
        frame.to_csv(path, index=False)


def test_first_run_promotes_then_a_good_day_promotes_again_and_rollback_returns(
    demo_champion, run_dag, demo_batches, mlflow_client
):
    first = demo_champion  # 15 landed days, then ct_credit_default
    assert first.state == "success", first.tasks
    decision = first.xcom("gate", key="gate_decision")
    assert decision["blessed"] and decision["first_run"], decision
    assert aliases(mlflow_client) == {"champion": "1"}  # challenger cleared on promotion
    v1 = mlflow_client.get_model_version(MODEL, "1")
    assert v1.tags["mlops.gate.blessed"] == "true"
    assert v1.tags["airflow.run_id"] == first.run_id
    assert len(v1.tags["mlops.data_hash"]) == 64 and v1.tags["mlops.git_commit"]
    assert first.xcom("smoke_test")["passed"] is True
    # The smoke test loaded the artifacts of the version it checked the alias against, not "whatever
    # challenger names now", and says so.
    smoke = json.loads(Path(mlflow_client.download_artifacts(v1.run_id, "smoke_test/result.json")).read_text())
    assert smoke["model_uri"] == f"models:/{MODEL}/1" and smoke["passed"] is True
    assert smoke["source"] == mlflow_client.get_model_version_download_uri(MODEL, "1")

    demo_batches(range(15, 16))  # a new day with a good batch
    second = run_dag(CT)
    assert second.state == "success", second.tasks
    decision = second.xcom("gate", key="gate_decision")
    assert decision["blessed"] and not decision["first_run"] and decision["champion_version"] == "1"
    assert {c["name"] for c in decision["checks"]} >= {"non_inferiority"}
    assert aliases(mlflow_client) == {"champion": "2", "previous_champion": "1"}  # challenger cleared on promotion

    # clearing a finished run re-runs every task under the same run id: no new version, no alias move
    again = run_dag(CT, same_as=second)
    assert again.state == "success", again.tasks
    assert versions(mlflow_client) == ["1", "2"]
    assert aliases(mlflow_client) == {"champion": "2", "previous_champion": "1"}  # challenger cleared on promotion
    assert again.xcom("promote")["changed"] is False
    runs = mlflow_client.search_runs(
        [mlflow_client.get_experiment_by_name(MODEL).experiment_id],
        f"tags.`airflow.run_id` = '{second.run_id}' and tags.`mlops.kind` = 'ct'",
    )
    assert len(runs) == 1

    back = run_dag(ROLLBACK, conf={"reason": "v2 misprices self-employed applicants"})
    assert back.state == "success", back.tasks
    assert aliases(mlflow_client)["champion"] == "1"
    assert mlflow_client.get_model_version(MODEL, "1").tags["mlops.rollback_reason"].startswith("v2 misprices")

    missing = run_dag(ROLLBACK, conf={"version": "42", "reason": "try a version that does not exist"})
    assert missing.state == "failed"
    assert aliases(mlflow_client)["champion"] == "1"


def test_candidate_trained_on_shuffled_labels_is_not_blessed(
    demo_champion, run_dag, demo_batches, landing, mlflow_client
):
    assert demo_champion.state == "success"

    demo_batches(range(15, 16))
    shuffle_training_labels(landing, slice(-15, -1))  # the next run's training window, not its eval day
    bad = run_dag(CT)

    decision = bad.xcom("gate", key="gate_decision")
    assert decision["blessed"] is False
    failed = {c["name"] for c in decision["checks"] if c["verdict"] == "fail"}
    assert "non_inferiority" in failed, decision
    assert bad.state_of("gate") == "success"  # a decision, not a crash
    for task in ("register_challenger", "smoke_test", "promote"):
        assert bad.state_of(task) == "skipped"
    assert versions(mlflow_client) == ["1"]
    assert aliases(mlflow_client) == {"champion": "1"}  # not blessed: no challenger, champion stays
    parent = mlflow_client.search_runs(
        [mlflow_client.get_experiment_by_name(MODEL).experiment_id],
        f"tags.`airflow.run_id` = '{bad.run_id}'and tags.`mlops.kind` = 'ct'",
    )[0]
    assert parent.data.tags["mlops.gate.blessed"] == "false"
    report = mlflow_client.download_artifacts(parent.info.run_id, "gate/report.md")
    with open(report) as fh:
        assert "non_inferiority" in fh.read()


def test_rollback_refuses_a_version_never_blessed(demo_champion, run_dag, mlflow_client):
    assert demo_champion.state == "success"
    registry = ModelRegistry(mlflow_client, MODEL)
    # a version registered by hand, outside the gate
    unblessed = registry.register(
        mlflow_client.get_model_version(MODEL, "1").source,
        None,
        {"origin": "hand"},  # type: ignore[arg-type]
    )
    result = run_dag(ROLLBACK, conf={"version": str(unblessed.version), "reason": "hand-made model"})
    assert result.state == "failed"
    assert aliases(mlflow_client)["champion"] == "1"
