"""The registry's trust rules (core/trust.py) on a real MLflow store (SQLite, local artifacts).

Versions are made the way ``ct_<model>`` makes them (a CT parent run, its logged model, the gate decision
as tag and artifact, a registered version, the signature), without training: what is under test is what
the registry accepts, not the model. No Airflow.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from mlops_airflow.core.registry import (
    CHAMPION,
    PREVIOUS_CHAMPION,
    TAG_DAG_ID,
    TAG_INTENT,
    TAG_RUN_ID,
    Actor,
    RegistryError,
)
from mlops_airflow.core.trust import (
    DECISION_ARTIFACT,
    TAG_BLESSED,
    TAG_PIN_INFO,
    TAG_PINNED,
    TAG_PROMOTION,
    TAG_SIGNATURE,
    ModelRegistry,
    UnblessedVersionError,
)

MODEL = "churn"
KEY = b"key-only-airflow-holds"
PERSON = Actor("rollback_churn", "manual__rollback", "alice")


@pytest.fixture
def client(mlops_home: Any) -> Any:
    from mlops_airflow.core import settings
    from mlops_airflow.core.tracking import client_for

    return client_for(settings.default_tracking_uri())


def ct_run(client: Any, *, blessed: bool = True, judged_against: str | None = None) -> tuple[str, str, dict]:
    """A ``ct_churn`` parent run as snapshot, select_candidate and gate leave it: (run id, model uri, decision)."""
    from mlops_airflow.core.tracking import experiment_id

    exp = experiment_id(client, MODEL)
    airflow_run = f"scheduled__{uuid.uuid4().hex[:8]}"
    run_id = client.create_run(exp, tags={TAG_DAG_ID: f"ct_{MODEL}", TAG_RUN_ID: airflow_run, "mlops.kind": "ct"})
    run_id = run_id.info.run_id
    client.log_param(run_id, "data_hash", uuid.uuid4().hex * 2)
    model_uri = f"models:/{client.create_logged_model(exp, source_run_id=run_id, name='model').model_id}"
    client.set_tag(run_id, "mlops.candidate_model_uri", model_uri)
    decision = {"blessed": blessed, "champion_version": judged_against, "first_run": judged_against is None}
    client.set_tag(run_id, TAG_BLESSED, str(blessed).lower())
    client.log_dict(run_id, decision, DECISION_ARTIFACT)
    return run_id, model_uri, decision


def ct_version(client: Any, key: bytes | None = KEY, judged_against: str | None = None) -> str:
    """A version registered and signed as register_challenger does after a blessing gate."""
    run_id, model_uri, decision = ct_run(client, judged_against=judged_against)
    registry = ModelRegistry(client, MODEL, signing_key=key)
    airflow_run = client.get_run(run_id).data.tags[TAG_RUN_ID]
    tags = {TAG_DAG_ID: f"ct_{MODEL}", TAG_RUN_ID: airflow_run, TAG_BLESSED: "true", "mlops.mlflow_run_id": run_id}
    version = str(registry.register(model_uri, run_id, tags).version)
    registry.sign(version, decision)
    return version


def ct(version: str) -> Actor:
    return Actor(f"ct_{MODEL}", f"run-of-v{version}")


def aliases(client: Any) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(MODEL).aliases.items()}


def model_tags(client: Any) -> dict[str, str]:
    return dict(client.get_registered_model(MODEL).tags)


@pytest.fixture
def two_champions(client: Any) -> ModelRegistry:
    """v1 promoted on the first run, v2 promoted over it: champion 2, previous_champion 1."""
    registry = ModelRegistry(client, MODEL, signing_key=KEY)
    assert registry.promote(ct_version(client), "first run", ct("1")).changed
    assert registry.promote(ct_version(client, judged_against="1"), "better", ct("2")).changed
    assert aliases(client) == {CHAMPION: "2", PREVIOUS_CHAMPION: "1"}
    return registry


# ------------------------------------------------------------- blessed is proven by the source run


def test_a_version_of_a_blessing_ct_run_is_proven_blessed(client: Any) -> None:
    version = ct_version(client)
    proof = ModelRegistry(client, MODEL, signing_key=KEY).verify_blessed(version)
    assert proof.signed and proof.decision["blessed"] is True and proof.judged_against is None


def _hand_run_model(client: Any) -> tuple[str, str]:
    """Someone's own run with a logged model, outside ct_churn."""
    from mlops_airflow.core.tracking import experiment_id

    exp = experiment_id(client, MODEL)
    run_id = client.create_run(exp).info.run_id
    return run_id, f"models:/{client.create_logged_model(exp, source_run_id=run_id).model_id}"


def _forge(client: Any, how: str, blessed_run: str) -> str:
    """A version never blessed by a gate, registered by hand, carrying every tag a blessed one has."""
    registry = ModelRegistry(client, MODEL)
    genuine = client.get_model_version(MODEL, "1")
    if how == "no source run":
        run_id = None  # the blessed model's files, registered by path
        source = client.get_logged_model(genuine.source.removeprefix("models:/")).artifact_location
    elif how == "blessed model again":  # MLflow fills in the logged model's run
        run_id, source = None, genuine.source
    elif how == "run outside ct":
        run_id, source = _hand_run_model(client)
    elif how == "blessed run, other model":
        run_id, source = blessed_run, _hand_run_model(client)[1]
    else:  # "ct run the gate refused", its run tag rewritten to true as well
        run_id, source, _ = ct_run(client, blessed=False, judged_against="1")
        client.set_tag(run_id, TAG_BLESSED, "true")
    tags = dict(genuine.tags)
    if run_id is not None:
        tags[TAG_RUN_ID] = client.get_run(run_id).data.tags.get(TAG_RUN_ID, "")
    forged = registry.register(source, run_id, tags)  # type: ignore[arg-type]
    return str(forged.version)


@pytest.mark.parametrize(
    "how", ["no source run", "blessed model again", "run outside ct", "blessed run, other model", "ct run refused"]
)
@pytest.mark.parametrize("key", [KEY, None], ids=["signed", "no key"])
def test_a_blessed_tag_written_by_hand_never_makes_a_version_servable(client: Any, how: str, key: bytes) -> None:
    registry = ModelRegistry(client, MODEL, signing_key=key)
    assert registry.promote(ct_version(client, key), "first run", ct("1")).changed
    forged = _forge(client, how, client.get_model_version(MODEL, "1").run_id)
    client.set_model_version_tag(MODEL, forged, TAG_BLESSED, "true")
    assert client.get_model_version(MODEL, forged).tags[TAG_BLESSED] == "true"

    with pytest.raises(UnblessedVersionError, match=f"version {forged} may not serve"):
        registry.rollback("serve the hand-made one", PERSON, forged)
    with pytest.raises(UnblessedVersionError, match=f"version {forged} may not serve"):
        registry.promote(forged, "promote the hand-made one", ct(forged))
    assert aliases(client) == {CHAMPION: "1"}
    assert TAG_PINNED not in model_tags(client)


def test_with_a_key_a_rewritten_gate_decision_is_refused(client: Any) -> None:
    """Someone who can write the CT run itself (tag and gate/decision.json) still cannot sign."""
    registry = ModelRegistry(client, MODEL, signing_key=KEY)
    assert registry.promote(ct_version(client), "first run", ct("1")).changed
    run_id, source, decision = ct_run(client, blessed=False, judged_against="1")
    client.set_tag(run_id, TAG_BLESSED, "true")
    client.log_dict(run_id, {**decision, "blessed": True}, DECISION_ARTIFACT)
    tags = {**client.get_model_version(MODEL, "1").tags, TAG_RUN_ID: client.get_run(run_id).data.tags[TAG_RUN_ID]}
    forged = str(registry.register(source, run_id, tags).version)  # v1's signature copied too
    with pytest.raises(UnblessedVersionError, match=f"{TAG_SIGNATURE} is not valid"):
        registry.rollback("serve it", PERSON, forged)
    assert aliases(client) == {CHAMPION: "1"}
    # Without a key this forgery passes: the source-run check alone trusts whoever can write the CT run.
    assert ModelRegistry(client, MODEL).verify_blessed(forged).signed is False


def test_a_signature_binds_the_judged_against_version(client: Any) -> None:
    version = ct_version(client, judged_against="7")
    registry = ModelRegistry(client, MODEL, signing_key=KEY)
    run_id = client.get_model_version(MODEL, version).run_id
    client.log_dict(run_id, {"blessed": True, "champion_version": None}, DECISION_ARTIFACT)
    with pytest.raises(UnblessedVersionError, match="not valid"):
        registry.verify_blessed(version)
    unsigned = ct_version(client, key=None)
    with pytest.raises(UnblessedVersionError, match=f"{TAG_SIGNATURE} is missing"):
        registry.verify_blessed(unsigned)


# ------------------------------------------------------------------ compare-and-set and the pin


def test_promotion_over_a_rollback_is_stale_and_moves_nothing(client: Any, two_champions: ModelRegistry) -> None:
    registry = two_champions
    v3 = ct_version(client, judged_against="2")  # gated while 2 was champion
    back = registry.rollback("v2 misprices", PERSON)  # meanwhile a person rolls back to 1
    assert (back.from_version, back.to_version, back.changed) == ("2", "1", True)

    move = registry.promote(v3, "gate", ct(v3))
    assert not move.changed and move.outcome == "stale: champion moved from 2 to 1"
    assert aliases(client) == {CHAMPION: "1", PREVIOUS_CHAMPION: "2"}
    assert client.get_model_version(MODEL, v3).tags[TAG_PROMOTION] == "stale: champion moved from 2 to 1"


def test_first_run_promotion_is_stale_if_a_champion_appeared(client: Any) -> None:
    registry = ModelRegistry(client, MODEL, signing_key=KEY)
    early, late = ct_version(client), ct_version(client)  # both judged with no champion
    assert registry.promote(late, "first", ct(late)).changed
    move = registry.promote(early, "first too", ct(early))
    assert not move.changed and move.outcome == f"stale: champion moved from (none) to {late}"
    assert aliases(client) == {CHAMPION: late}


def test_a_rollback_pins_until_a_person_unpins(client: Any, two_champions: ModelRegistry) -> None:
    registry = two_champions
    registry.rollback("v2 misprices", PERSON)
    tags = model_tags(client)
    assert tags[TAG_PINNED] == "1"
    pin = json.loads(tags[TAG_PIN_INFO])
    assert pin["user"] == "alice" and pin["reason"] == "v2 misprices" and pin["run_id"] == PERSON.run_id and pin["at"]
    # An admin moves champion in the MLflow UI; a candidate judged against that passes compare-and-set,
    # but the pin still holds it back.
    client.set_registered_model_alias(MODEL, CHAMPION, "2")
    v3 = ct_version(client, judged_against="2")
    move = registry.promote(v3, "gate", ct(v3))
    assert not move.changed and move.outcome.startswith("pinned: a rollback pinned champion at version 1")
    assert aliases(client)[CHAMPION] == "2"

    assert registry.unpin("v3 reviewed", Actor("rollback_churn", "manual__unpin", "bob")) == "1"
    assert TAG_PINNED not in model_tags(client) and TAG_PIN_INFO not in model_tags(client)
    assert registry.promote(v3, "gate", ct(v3)).outcome == "promoted"
    assert aliases(client) == {CHAMPION: v3, PREVIOUS_CHAMPION: "2"}


def test_a_gate_judged_against_the_pinned_version_promotes_and_clears_the_pin(
    client: Any, two_champions: ModelRegistry
) -> None:
    registry = two_champions
    registry.rollback("v2 misprices", PERSON)
    v3 = ct_version(client, judged_against="1")  # a new CT run, gated against the pinned champion
    move = registry.promote(v3, "gate", ct(v3))
    assert move.changed and move.outcome == "promoted"
    assert aliases(client) == {CHAMPION: v3, PREVIOUS_CHAMPION: "1"}
    assert TAG_PINNED not in model_tags(client)


def test_a_cleared_rollback_run_does_not_roll_back_twice(client: Any, two_champions: ModelRegistry) -> None:
    registry = two_champions
    assert registry.rollback("v2 misprices", PERSON).changed
    again = registry.rollback("v2 misprices", PERSON)  # the same DAG run, cleared
    assert not again.changed and again.outcome == "already done by this run"
    assert aliases(client) == {CHAMPION: "1", PREVIOUS_CHAMPION: "2"}


# --------------------------------------------------------------------------------- crash safety


class Crash(BaseException):
    """The worker dies (a BaseException, so that no ``except`` in the code under test stops it)."""


class CrashingClient:
    """The real client, except that the process 'dies' instead of making registry write number ``n``.

    A mock, because a worker killed between two HTTP calls cannot be produced on purpose otherwise; every
    call before the crash is real.
    """

    WRITES = frozenset(
        {
            "set_registered_model_alias",
            "set_registered_model_tag",
            "delete_registered_model_tag",
            "set_model_version_tag",
        }
    )

    def __init__(self, client: Any, n: int) -> None:
        self._client, self._left, self.crashed = client, n, False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name not in self.WRITES:
            return attr

        def write(*args: Any, **kwargs: Any) -> Any:
            if self._left == 0:
                self.crashed = True
                raise Crash(f"killed before {name}{args}")
            self._left -= 1
            return attr(*args, **kwargs)

        return write


def _writes_of(action: Any, client: Any) -> int:
    """How many registry writes ``action`` makes when nothing crashes (on a throwaway copy of the state)."""
    counting = CrashingClient(client, 10_000)
    action(counting)
    return 10_000 - counting._left


@pytest.mark.parametrize("op", ["rollback", "promote"])
def test_a_crash_before_any_registry_write_is_finished_exactly_once_by_the_retry(
    client: Any, two_champions: ModelRegistry, op: str
) -> None:
    v3 = ct_version(client, judged_against="2")
    snapshot = (aliases(client), model_tags(client))

    def act(c: Any) -> Any:
        registry = ModelRegistry(c, MODEL, signing_key=KEY)
        if op == "rollback":
            return registry.rollback("v2 misprices", PERSON)
        return registry.promote(v3, "gate", ct(v3))

    expected = {CHAMPION: "1", PREVIOUS_CHAMPION: "2"} if op == "rollback" else {CHAMPION: v3, PREVIOUS_CHAMPION: "2"}
    total = _writes_of(act, client)
    assert aliases(client) == expected
    for n in range(total):
        # back to the state before the move, then crash before write n and retry
        for alias, version in snapshot[0].items():
            client.set_registered_model_alias(MODEL, alias, version)
        for key in set(model_tags(client)) - set(snapshot[1]):
            client.delete_registered_model_tag(MODEL, key)
        for key, value in snapshot[1].items():  # tags the move rewrote (the champion ledger) as they were
            client.set_registered_model_tag(MODEL, key, value)
        crashing = CrashingClient(client, n)
        with pytest.raises(Crash):
            act(crashing)
        retry = act(client)
        state = aliases(client)
        assert state == expected, f"crash before write {n} of {total}: {state}"
        assert state[CHAMPION] != state[PREVIOUS_CHAMPION]
        assert TAG_INTENT not in model_tags(client), f"crash before write {n}: intent left"
        assert retry.to_version == expected[CHAMPION] and retry.from_version == "2", (n, retry)
        assert retry.changed, f"crash before write {n}: the retry did not report the move it finished"
        if op == "rollback":
            assert model_tags(client)[TAG_PINNED] == "1"
        else:
            assert TAG_PINNED not in model_tags(client)


def test_an_interrupted_rollback_is_finished_by_the_next_promotion_which_then_respects_it(
    client: Any, two_champions: ModelRegistry
) -> None:
    registry = two_champions
    v3 = ct_version(client, judged_against="2")
    with pytest.raises(Crash):  # the rollback dies after its intent and the previous_champion write
        ModelRegistry(CrashingClient(client, 2), MODEL, signing_key=KEY).rollback("v2 misprices", PERSON)
    assert aliases(client)[CHAMPION] == "2" and TAG_INTENT in model_tags(client)
    move = registry.promote(v3, "gate", ct(v3))
    assert not move.changed and move.outcome == "stale: champion moved from 2 to 1"
    assert aliases(client) == {CHAMPION: "1", PREVIOUS_CHAMPION: "2"}
    assert model_tags(client)[TAG_PINNED] == "1" and TAG_INTENT not in model_tags(client)


def test_another_runs_interrupted_rollback_is_finished_and_this_one_stops(
    client: Any, two_champions: ModelRegistry
) -> None:
    with pytest.raises(Crash):
        ModelRegistry(CrashingClient(client, 1), MODEL, signing_key=KEY).rollback("v2 misprices", PERSON)
    other = Actor("rollback_churn", "manual__second", "bob")
    with pytest.raises(RegistryError, match="interrupted rollback by rollback_churn run manual__rollback"):
        two_champions.rollback("v2 misprices", other)
    assert aliases(client) == {CHAMPION: "1", PREVIOUS_CHAMPION: "2"}


def test_a_long_reason_never_breaks_the_records_a_later_move_reads(client: Any, two_champions: ModelRegistry) -> None:
    """A rollback reason of 6,000 characters (any text a trigger form takes, emoji and quotes included): the move's
    records (intent, pin, done marker, each a JSON registered-model tag of at most 5,000 characters) were cut at
    5,000 characters into invalid JSON, and the next promotion or rollback failed on "is not JSON" for good. The
    reason is shortened to fit, marked as shortened; a move interrupted after its intent is finished by the next."""
    reason = 'v2 "misprices" \U0001f4a5\n' * 300 + "the end"
    with pytest.raises(Crash):  # dies after its intent and the previous_champion write
        ModelRegistry(CrashingClient(client, 2), MODEL, signing_key=KEY).rollback(reason, PERSON)
    assert aliases(client)[CHAMPION] == "2"
    move = two_champions.rollback(reason, PERSON)  # the same run, retried: it finishes its own move
    assert move.to_version == "1" and aliases(client)[CHAMPION] == "1"
    tags = model_tags(client)
    records = {k: json.loads(v) for k, v in tags.items() if v.startswith("{")}  # every JSON record parses
    pin = records[TAG_PIN_INFO]
    assert len(tags[TAG_PIN_INFO]) <= 5000 and pin["reason"].startswith('v2 "misprices" \U0001f4a5')
    assert pin["reason"].endswith("[shortened]") and "the end" not in pin["reason"]
    assert two_champions.unpin(reason, Actor("rollback_churn", "manual__unpin", "bob")) == "1"
    v3 = ct_version(client, judged_against="1")
    assert two_champions.promote(v3, reason, ct(v3)).outcome == "promoted"


@pytest.mark.parametrize("raw", ['{"op": "rollback", "reason": "cut sh', "[1, 2]", '{"op": "promote"}'])
def test_a_record_cut_short_or_written_by_hand_says_how_to_go_on(
    client: Any, two_champions: ModelRegistry, raw: str
) -> None:
    """A registry left with a cut intent (by a release that cut long records) or a hand-written one: every move
    refuses, naming the tag and how to go on, instead of a JSON traceback or a KeyError."""
    client.set_registered_model_tag(MODEL, TAG_INTENT, raw)
    v3 = ct_version(client, judged_against="2")
    way_out = rf"delete_registered_model_tag\('{MODEL}', '{TAG_INTENT}'\)"
    with pytest.raises(RegistryError, match=rf"tag '{TAG_INTENT}' of '{MODEL}' is not a JSON record.*{way_out}"):
        two_champions.promote(v3, "gate", ct(v3))
    with pytest.raises(RegistryError, match=way_out):
        two_champions.rollback("v2 misprices", PERSON)
    assert aliases(client) == {CHAMPION: "2", PREVIOUS_CHAMPION: "1"}  # nothing moved
    client.delete_registered_model_tag(MODEL, TAG_INTENT)  # the way out, as the message gives it
    assert two_champions.promote(v3, "gate", ct(v3)).outcome == "promoted"


def test_the_champion_ledger_keeps_fewer_moves_rather_than_being_cut_into_invalid_json(
    client: Any, two_champions: ModelRegistry
) -> None:
    """DAG run ids may take 250 characters: forty such moves do not fit the ledger's 5,000-character tag. The
    oldest moves give way; the ledger was cut into invalid JSON and every later move failed on reading it."""
    for n in range(40):
        run_id = f"manual__{n:03d}" + "x" * 240
        at = f"2026-01-01T00:{n:02d}:00+00:00"
        two_champions._record_move(
            {"op": "promote", "from": "1", "to": "2", "at": at, "dag_id": "ct_churn", "run_id": run_id}
        )
    ledger = two_champions.ledger()  # it parses
    assert 10 <= len(ledger) < 40 and ledger[-1]["run_id"].startswith("manual__039")
    assert len(model_tags(client)["mlops.champion.ledger"]) <= 5000


def test_a_gate_decision_over_the_read_cap_is_no_blessing_and_is_not_downloaded(client: Any) -> None:
    """Anyone who can write to the tracking server can replace gate/decision.json with a huge file: it is
    refused by its listed size (never read into memory) and the version is not servable."""
    from mlops_airflow.core.tracking import MAX_REPORT_BYTES

    version = ct_version(client, key=None)
    registry = ModelRegistry(client, MODEL)
    registry.verify_blessed(version)  # blessed, as its CT run made it
    run_id = client.get_model_version(MODEL, version).run_id
    padded = {"blessed": True, "champion_version": None, "first_run": True, "pad": "x" * MAX_REPORT_BYTES}
    client.log_dict(run_id, padded, DECISION_ARTIFACT)
    with pytest.raises(UnblessedVersionError, match=r"has no gate/decision\.json with blessed true"):
        registry.verify_blessed(version)
