"""The alias lifecycle (core/trust.py) on a real MLflow store: ``challenger`` is cleared when its version
becomes ``champion``; a rollback's default target is the last *good* champion before the current one, read
from the champion ledger, never a version that was just rolled away from. No Airflow."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_registry import KEY, MODEL, aliases, ct, ct_run, ct_version, model_tags

from mlops_airflow.core.registry import CHALLENGER, CHAMPION, PREVIOUS_CHAMPION, TAG_LEDGER, Actor, RegistryError
from mlops_airflow.core.trust import ModelRegistry, UnblessedVersionError


@pytest.fixture
def client(mlops_home: Any) -> Any:
    from mlops_airflow.core import settings
    from mlops_airflow.core.tracking import client_for

    return client_for(settings.default_tracking_uri())


def person(n: int) -> Actor:
    return Actor(f"rollback_{MODEL}", f"manual__rollback_{n}", "alice")


def promote_as_ct_does(registry: ModelRegistry, judged_against: str | None) -> str:
    """register_challenger sets ``challenger``, promote moves ``champion``."""
    version = ct_version(registry.client, judged_against=judged_against)
    registry.set_alias(CHALLENGER, version)
    assert registry.promote(version, "gate", ct(version)).outcome == "promoted"
    return version


def test_challenger_is_cleared_when_its_version_becomes_champion(client: Any) -> None:
    registry = ModelRegistry(client, MODEL, signing_key=KEY)
    v1 = promote_as_ct_does(registry, None)
    assert aliases(client) == {CHAMPION: v1}
    v2 = promote_as_ct_does(registry, v1)
    assert aliases(client) == {CHAMPION: v2, PREVIOUS_CHAMPION: v1}


def test_a_challenger_of_another_run_stays(client: Any) -> None:
    registry = ModelRegistry(client, MODEL, signing_key=KEY)
    v1 = ct_version(client)
    v2 = ct_version(client)  # a later run registered v2 and is smoke-testing it
    registry.set_alias(CHALLENGER, v2)
    registry.promote(v1, "gate", ct(v1))
    assert aliases(client) == {CHAMPION: v1, CHALLENGER: v2}


def test_a_second_default_rollback_never_serves_what_was_rolled_away_from(client: Any) -> None:
    registry = ModelRegistry(client, MODEL, signing_key=KEY)
    v1 = promote_as_ct_does(registry, None)
    v2 = promote_as_ct_does(registry, v1)
    back = registry.rollback("v2 misprices", person(1))
    assert (back.from_version, back.to_version) == (v2, v1)
    assert registry.rollback_target() is None
    with pytest.raises(
        RegistryError,
        match=r"no good champion before the current one \(1\).*blessed versions are 1$",  # not v2
    ):
        registry.rollback("again", person(2))
    assert aliases(client)[CHAMPION] == v1
    ledger = json.loads(model_tags(client)[TAG_LEDGER])
    assert [(e["op"], e["from"], e["to"]) for e in ledger] == [
        ("promote", None, v1),
        ("promote", v1, v2),
        ("rollback", v2, v1),
    ]


def test_default_rollbacks_walk_back_over_good_champions_only(client: Any) -> None:
    registry = ModelRegistry(client, MODEL, signing_key=KEY)
    v1 = promote_as_ct_does(registry, None)
    v2 = promote_as_ct_does(registry, v1)
    v3 = promote_as_ct_does(registry, v2)
    assert registry.rollback("v3 bad", person(1)).to_version == v2
    assert registry.rollback("v2 bad too", person(2)).to_version == v1  # not v3, rolled away from
    registry.unpin("reviewed", person(3))
    v4 = promote_as_ct_does(registry, v1)
    assert registry.rollback_target() == v1  # v2 and v3 were rolled away from since they served
    assert registry.rollback("v4 bad", person(4)).to_version == v1
    assert aliases(client)[CHAMPION] == v1 and v3 != v4


def test_a_person_may_still_choose_a_rolled_away_version_explicitly(client: Any) -> None:
    registry = ModelRegistry(client, MODEL, signing_key=KEY)
    v1 = promote_as_ct_does(registry, None)
    v2 = promote_as_ct_does(registry, v1)
    registry.rollback("v2 suspected", person(1))
    assert registry.rollback("v2 was fine after all", person(2), version=v2).to_version == v2
    # the rule holds both ways: v1 was rolled away from now, so no default target is left
    assert registry.rollback_target() is None


def test_a_rollback_to_a_missing_or_unblessed_version_lists_the_blessed_ones(client: Any) -> None:
    registry = ModelRegistry(client, MODEL, signing_key=KEY)
    v1 = promote_as_ct_does(registry, None)
    promote_as_ct_does(registry, v1)
    with pytest.raises(RegistryError, match="version 99 does not exist; blessed versions are 2, 1"):
        registry.rollback("typo", person(1), version="99")
    run_id, model_uri, _ = ct_run(client, blessed=False)
    unblessed = str(registry.register(model_uri, run_id, {}).version)
    with pytest.raises(UnblessedVersionError, match="blessed versions are 2, 1"):
        registry.rollback("not blessed", person(2), version=unblessed)
    assert registry.blessed_versions() == ["2", "1"]
