"""The registry trust rules through the real DAGs: ``ct_credit_default`` and ``rollback_credit_default``.

* A version registered by hand and tagged ``mlops.gate.blessed=true`` never serves (embedded store, no
  signing key: the source-run check alone).
* On a real MLflow server process, with a signing key: a rollback killed between its two alias writes is
  finished exactly once by its retry, pins the version it rolled back to, and a CT run gated against the
  champion a rollback has since replaced stops at ``promote`` without moving anything.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pytest

from mlops_airflow.core.registry import CHAMPION, PREVIOUS_CHAMPION, TAG_INTENT, TAG_RUN_ID, Actor
from mlops_airflow.core.trust import TAG_BLESSED, TAG_PINNED, TAG_PROMOTION, ModelRegistry, UnblessedVersionError

pytestmark = pytest.mark.e2e
CT = "ct_credit_default"
ROLLBACK = "rollback_credit_default"
MODEL = "credit_default"


def aliases(client: Any) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(MODEL).aliases.items()}


@pytest.mark.demo_champion
def test_rollback_never_serves_a_version_blessed_by_a_hand_written_tag(demo_champion, run_dag, mlflow_client) -> None:
    assert demo_champion.state == "success"
    genuine = mlflow_client.get_model_version(MODEL, "1")
    assert genuine.tags[TAG_BLESSED] == "true"

    # Someone with MLflow write access registers a model of their own from their own run, copies every tag
    # of the blessed version onto it, and points previous_champion at it.
    exp = mlflow_client.get_experiment_by_name(MODEL).experiment_id
    with mlflow.start_run(experiment_id=exp) as own_run:
        logged = mlflow.pyfunc.log_model(name="model", python_model=ConstantModel())
    registry = ModelRegistry(mlflow_client, MODEL)
    forged = [
        registry.register(logged.model_uri, own_run.info.run_id, dict(genuine.tags)),  # outside ct_
        registry.register(logged.model_uri, genuine.run_id, dict(genuine.tags)),  # claims the blessed run
        registry.register(genuine.source, genuine.run_id, dict(genuine.tags)),  # the blessed model, again
    ]
    for version in forged:
        mlflow_client.set_model_version_tag(MODEL, version.version, TAG_BLESSED, "true")
        result = run_dag(ROLLBACK, conf={"version": str(version.version), "reason": "serve mine"})
        assert result.state == "failed", version.version
        assert aliases(mlflow_client)[CHAMPION] == "1"
        with pytest.raises(UnblessedVersionError, match=f"version {version.version} may not serve") as refused:
            registry.verify_blessed(str(version.version))  # the rule the rollback task failed on
        print(f"\nv{version.version}: {refused.value}")
    mlflow_client.set_registered_model_alias(MODEL, PREVIOUS_CHAMPION, forged[0].version)
    assert run_dag(ROLLBACK, conf={"reason": "back to the previous champion"}).state == "failed"
    assert aliases(mlflow_client)[CHAMPION] == "1"
    assert TAG_PINNED not in mlflow_client.get_registered_model(MODEL).tags


class ConstantModel(mlflow.pyfunc.PythonModel):
    """A model that is not the gate's (stands for any model someone wants to slip in)."""

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]  # MLflow reads hints
        return [0.0] * len(model_input)


# ---------------------------------------------------------------------------- on a real MLflow server


@pytest.fixture
def server_client(mlflow_server: str) -> Any:
    from mlops_airflow.core.tracking import client_for

    return client_for(mlflow_server)


def test_rollback_crash_retry_pin_and_stale_promotion_on_a_server(
    mlflow_server, server_client, run_dag, demo_batches, monkeypatch
) -> None:
    client = server_client
    monkeypatch.setenv("MLOPS_SIGNING_KEY", "only-airflow-holds-this")
    demo_batches(range(15))
    assert run_dag(CT).state == "success"
    demo_batches(range(15, 16))
    assert run_dag(CT).state == "success"
    assert aliases(client) == {CHAMPION: "2", PREVIOUS_CHAMPION: "1"}  # challenger cleared on promotion
    assert client.get_model_version(MODEL, "2").tags["mlops.gate.signature"].startswith("hmac-sha256:")

    # Rollback killed between its two alias writes. A mock, because a worker cannot be killed between two
    # HTTP calls on purpose otherwise: the second alias write of the task raises; every other call is real.
    from mlflow.tracking import MlflowClient

    real_set_alias = MlflowClient.set_registered_model_alias
    calls: list[tuple[str, str]] = []

    def dies_on_second_alias_write(self: Any, name: str, alias: str, version: Any) -> None:
        calls.append((alias, str(version)))
        if len(calls) == 2:
            raise RuntimeError("worker killed between the two alias writes")
        real_set_alias(self, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", dies_on_second_alias_write)
    conf = {"reason": "v2 misprices self-employed applicants"}
    crashed = run_dag(ROLLBACK, conf=conf)
    assert crashed.state == "failed" and len(calls) == 2
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", real_set_alias)

    retried = run_dag(ROLLBACK, conf=conf, same_as=crashed)  # the task cleared: its retry
    assert retried.state == "success", retried.tasks
    assert aliases(client) == {CHAMPION: "1", PREVIOUS_CHAMPION: "2"}
    tags = client.get_registered_model(MODEL).tags
    assert tags[TAG_PINNED] == "1" and TAG_INTENT not in tags
    again = run_dag(ROLLBACK, conf=conf, same_as=crashed)  # cleared once more: nothing moves twice
    assert again.state == "success" and again.xcom("rollback")["changed"] is False
    assert aliases(client)[CHAMPION] == "1"

    # A CT run gated against the pinned champion 1; while it smoke-tests, a person rolls back to 2.
    from mlops_airflow.operators.deploy import SmokeTestOperator

    smoke = SmokeTestOperator.execute

    def rollback_during_smoke_test(self: Any, context: Any) -> Any:
        result = smoke(self, context)
        person = Actor(ROLLBACK, "manual__during_ct", "alice")
        ModelRegistry(client, MODEL, b"only-airflow-holds-this").rollback("v1 was worse after all", person, "2")
        return result

    monkeypatch.setattr(SmokeTestOperator, "execute", rollback_during_smoke_test)
    demo_batches(range(16, 17))
    third = run_dag(CT)
    decision = third.xcom("gate", key="gate_decision")
    assert decision["blessed"] and decision["champion_version"] == "1", decision
    assert third.state_of("promote") == "skipped"
    assert aliases(client)[CHAMPION] == "2"  # the rollback stands
    assert client.get_registered_model(MODEL).tags[TAG_PINNED] == "2"
    stale = "stale: champion moved from 1 to 2"
    assert client.get_model_version(MODEL, "3").tags[TAG_PROMOTION] == stale
    parent = client.search_runs(
        [client.get_experiment_by_name(MODEL).experiment_id],
        f"tags.`{TAG_RUN_ID}` = '{third.run_id}' and tags.`mlops.kind` = 'ct'",
    )[0]
    assert parent.data.tags[TAG_PROMOTION] == stale
