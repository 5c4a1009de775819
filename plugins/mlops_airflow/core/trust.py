"""The registry's trust rules (docs/design.md 7): who may serve, and who may move ``champion``.

:class:`ModelRegistry` is the alias store (:class:`~mlops_airflow.core.registry.AliasStore`) guarded by them:

* "Blessed" is proven, never read from a version tag: :meth:`ModelRegistry.verify_blessed` checks the gate
  decision recorded in the version's own source run (a ``ct_<model>`` parent run whose logged model is
  the version's source) and, when a signing key is configured, an HMAC over that provenance which only
  Airflow can compute (:func:`gate_signature`; :meth:`ModelRegistry.sign` writes it,
  :meth:`ModelRegistry.verify_signed` checks it from the version alone).
* Moving ``champion`` is compare-and-set: a promotion moves it only from the version its candidate was
  judged against, and not while a rollback pins another version; a rollback pins its target until a person
  unpins it or a gate runs against it.
* Every move writes an intent (registered-model tag) first; a retry after a crash at any point finishes
  the move from the intent, so it happens exactly once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import asdict, dataclass
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlops_airflow.core.encoding import clean_text
from mlops_airflow.core.registry import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS_CHAMPION,
    TAG_DAG_ID,
    TAG_INTENT,
    TAG_LEDGER,
    TAG_RUN_ID,
    Actor,
    AliasMove,
    AliasStore,
    RegistryError,
    unreadable_record,
    utc_now,
    version_or_none,
)

TAG_BLESSED = "mlops.gate.blessed"
TAG_SIGNATURE = "mlops.gate.signature"
TAG_PROMOTION = "mlops.promotion"
# registered-model tags
TAG_PINNED = "mlops.champion.pinned"  # the version a rollback pinned (authoritative: deleted last)
TAG_PIN_INFO = "mlops.champion.pinned_by"  # JSON: who, why, when, which DAG run
TAG_UNPINNED = "mlops.champion.unpinned"  # JSON: the last unpin
DONE_PREFIX = "mlops.rollback.done."  # + digest of the rollback's DAG run: JSON of the finished move
DECISION_ARTIFACT = "gate/decision.json"
#: Characters a reason may take in a move's JSON records (intent, pin, done marker, unpin), escapes included:
#: each record is a registered-model tag of at most 5,000 characters, and every other field is short.
REASON_JSON_CHARS = 2000
SHORTENED = " [shortened]"


def fitted_reason(reason: str) -> str:
    """``reason`` as a move records it: valid text, shortened (and marked so) until its JSON form fits
    :data:`REASON_JSON_CHARS`. A record cut at the tag's limit instead was invalid JSON, and every later move
    failed on reading it."""
    text = clean_text(str(reason)).strip()
    if len(json.dumps(text)) <= REASON_JSON_CHARS:
        return text
    low, high = 0, len(text)  # the longest prefix that fits with the mark
    while low < high:
        middle = (low + high + 1) // 2
        if len(json.dumps(text[:middle].rstrip() + SHORTENED)) <= REASON_JSON_CHARS:
            low = middle
        else:
            high = middle - 1
    return text[:low].rstrip() + SHORTENED


class UnblessedVersionError(RegistryError):
    """The version has no verifiable gate blessing: it may never serve (fail closed, no retry)."""


@dataclass(frozen=True)
class Provenance:
    """A version's verified origin: its CT run and the gate decision recorded there."""

    version: str
    run_id: str
    data_hash: str
    decision: dict[str, Any]
    signed: bool

    @property
    def judged_against(self) -> str | None:
        """The champion version the gate compared this candidate with (None on a first run)."""
        return version_or_none(self.decision.get("champion_version"))


def gate_signature(
    key: bytes,
    *,
    model: str,
    version: str,
    source: str,
    run_id: str,
    data_hash: str,
    blessed: bool,
    champion_version: str | None,
) -> str:
    """HMAC-SHA256 over what makes a version servable: which model and source, which run, which data,
    the gate's verdict and the champion it was judged against."""
    payload = json.dumps(
        {
            "model": model,
            "version": str(version),
            "source": source,
            "run_id": run_id,
            "data_hash": data_hash,
            "blessed": bool(blessed),
            "champion_version": version_or_none(champion_version),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return "hmac-sha256:" + hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


class ModelRegistry(AliasStore):
    """Registered model ``name`` in the registry behind ``client``, its aliases moved only as the trust rules
    allow.

    :param client: an MLflow client bound to the tracking/registry server.
    :param name: the registered model's name (the model spec's name).
    :param signing_key: the key of the gate signatures (only Airflow holds it); None = no signatures,
        blessing is then proven by the source run alone.
    """

    def __init__(self, client: MlflowClient, name: str, signing_key: bytes | None = None) -> None:
        super().__init__(client, name)
        self.signing_key = signing_key or None

    def pinned(self) -> str | None:
        """The version a rollback pinned as champion, or None."""
        return self.model_tags().get(TAG_PINNED) or None

    def blessed_versions(self, limit: int = 20) -> list[str]:
        """The newest ``limit`` versions proven blessed (those a rollback may serve), newest first."""
        try:
            found = self.client.search_model_versions(f"name = '{self.name}'")
        except MlflowException as err:
            raise self._fail("search", err) from err
        blessed = []
        for version in sorted((str(v.version) for v in found), key=int, reverse=True)[:limit]:
            try:
                self.verify_blessed(version)
            except UnblessedVersionError:
                continue
            blessed.append(version)
        return blessed

    # ------------------------------------------------------------------------------------- provenance

    def verify_blessed(self, version: str) -> Provenance:
        """Prove that ``version`` was blessed by the gate of its own ``ct_<model>`` run, or raise
        :class:`UnblessedVersionError` naming the rule broken. Version tags are not evidence: anyone with
        write access to the registry can set them."""
        version = str(version)
        mv = self.version(version)
        if mv is None:
            raise UnblessedVersionError(f"model registry: {self.name!r} version {version} does not exist")

        def refuse(rule: str) -> UnblessedVersionError:
            return UnblessedVersionError(
                f"model registry: {self.name!r} version {version} may not serve: {rule}. Only a version that "
                f"ct_{self.name} registered after its gate blessed it may be champion"
            )

        run_id = str(mv.run_id or "")
        if not run_id:
            raise refuse("it has no source MLflow run")
        try:
            run = self.client.get_run(run_id)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise refuse(f"its source run {run_id} does not exist") from None
            raise self._fail("reading the source run", err, version) from err
        tags, params = run.data.tags, run.data.params
        if tags.get(TAG_DAG_ID) != f"ct_{self.name}" or tags.get("mlops.kind") != "ct":
            raise refuse(f"its source run {run_id} is not a ct_{self.name} run (tag {TAG_DAG_ID}, mlops.kind)")
        if (mv.tags or {}).get(TAG_RUN_ID, tags.get(TAG_RUN_ID)) != tags.get(TAG_RUN_ID):
            raise refuse(f"its tag {TAG_RUN_ID} names another DAG run than its source run {run_id}")
        source = str(mv.source or "")
        if not source.startswith("models:/m-") or tags.get("mlops.candidate_model_uri") != source:
            raise refuse(f"its source {source!r} is not the model logged by its source run {run_id}")
        try:
            logged = self.client.get_logged_model(source.removeprefix("models:/"))
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise refuse(f"its logged model {source} does not exist") from None
            raise self._fail("reading the logged model", err, version) from err
        if logged.source_run_id != run_id:
            raise refuse(f"its logged model {source} comes from run {logged.source_run_id}, not {run_id}")
        # register_challenger registers one version per run; a later one from the same run was made by hand
        first = self._first_version_of_run(run_id, version)
        if first != version:
            raise refuse(f"ct_{self.name} registered version {first} from run {run_id}; this one was added later")
        if tags.get(TAG_BLESSED) != "true":
            raise refuse(f"its source run {run_id} records no blessing (tag {TAG_BLESSED})")
        decision = self._decision(run_id, version)
        if decision is None or decision.get("blessed") is not True:
            raise refuse(f"its source run {run_id} has no {DECISION_ARTIFACT} with blessed true")
        data_hash = str(params.get("data_hash", ""))
        if not data_hash:
            raise refuse(f"its source run {run_id} has no data_hash param")
        signed = False
        if self.signing_key is not None:
            expected = self._signature(mv, data_hash, decision)
            given = (mv.tags or {}).get(TAG_SIGNATURE, "")
            if not hmac.compare_digest(given, expected):
                raise refuse(
                    f"its tag {TAG_SIGNATURE} is {'missing' if not given else 'not valid'} (the gate signature "
                    "over model, version, source, run, data hash and decision, made with MLOPS_SIGNING_KEY)"
                )
            signed = True
        return Provenance(version, run_id, data_hash, decision, signed)

    def verify_signed(self, mv: Any) -> Provenance:
        """Prove ``mv`` (a model version as the registry returned it, tags included) blessed by its gate
        signature alone: no registry round trip. The signature covers model, version, source, run, data hash,
        verdict and the champion it was judged against, all read from the version itself, so a version whose
        tags or alias were set by hand does not check. Raises :class:`UnblessedVersionError` naming the rule.
        """
        if self.signing_key is None:
            raise RegistryError(f"model registry: no signing key to check {self.name!r} version {mv.version} with")
        tags = mv.tags or {}
        given = tags.get(TAG_SIGNATURE, "")
        data_hash = tags.get("mlops.data_hash", "")
        decision = {"blessed": True, "champion_version": version_or_none(tags.get("mlops.gate.champion_version"))}
        if not given or not data_hash or not hmac.compare_digest(given, self._signature(mv, data_hash, decision)):
            state = "missing" if not given else "not valid"
            raise UnblessedVersionError(
                f"model registry: {self.name!r} version {mv.version} may not serve: its gate signature (tag "
                f"{TAG_SIGNATURE}) is {state}. Only a version that ct_{self.name} registered after its gate "
                "blessed it carries one; a version blessed before this installation had a signing key is re-signed "
                "by an operator with `python -m mlops_airflow.core.signing resign " + self.name + "`"
            )
        return Provenance(str(mv.version), str(mv.run_id or ""), data_hash, decision, True)

    def _first_version_of_run(self, run_id: str, version: str) -> str:
        try:
            found = self.client.search_model_versions(f"name = '{self.name}' and run_id = '{run_id}'")
        except MlflowException as err:
            raise self._fail("search", err, version) from err
        return str(min((int(v.version) for v in found), default=int(version)))

    def _decision(self, run_id: str, version: str) -> dict[str, Any] | None:
        from mlops_airflow.core.errors import ArtifactError
        from mlops_airflow.core.tracking import MAX_REPORT_BYTES, read_artifact_json

        try:  # the one capped reader: a forged multi-GB decision file is refused unread, not downloaded
            data = read_artifact_json(self.client, run_id, DECISION_ARTIFACT, MAX_REPORT_BYTES, store_errors=True)
        except MlflowException as err:
            raise self._fail(f"reading {DECISION_ARTIFACT}", err, version) from err
        except ArtifactError:  # over the cap, not UTF-8 or not JSON: no decision (refused)
            return None
        return data if isinstance(data, dict) else None

    def _signature(self, mv: Any, data_hash: str, decision: dict[str, Any]) -> str:
        assert self.signing_key is not None
        return gate_signature(
            self.signing_key,
            model=self.name,
            version=str(mv.version),
            source=str(mv.source),
            run_id=str(mv.run_id),
            data_hash=data_hash,
            blessed=bool(decision.get("blessed")),
            champion_version=version_or_none(decision.get("champion_version")),
        )

    def sign(self, version: str, decision: dict[str, Any]) -> bool:
        """Tag ``version`` with the gate signature over ``decision`` (the gate's own output, from Airflow);
        False when no signing key is configured."""
        if self.signing_key is None:
            return False
        mv = self.version(version)
        if mv is None or not mv.run_id:
            raise RegistryError(f"model registry: cannot sign {self.name!r} version {version}: no such version/run")
        try:
            data_hash = str(self.client.get_run(mv.run_id).data.params.get("data_hash", ""))
        except MlflowException as err:
            raise self._fail("reading the source run", err, str(version)) from err
        self.tag(str(version), {TAG_SIGNATURE: self._signature(mv, data_hash, decision)})
        return True

    # ----------------------------------------------------------------------------------- alias moves

    def promote(self, version: str, reason: str, actor: Actor) -> AliasMove:
        """Make ``version`` champion if it is proven blessed, ``champion`` still is the version its gate
        judged it against, and no rollback pinned another version. Otherwise nothing moves and the
        version is tagged ``mlops.promotion`` with why (``stale: ...`` / ``pinned: ...``).

        Callers hold the ``mlflow_registry`` pool: MLflow has no atomic compare-and-set on aliases.
        """
        version = str(version)
        pending = self._finish_pending()
        mine = {"op": "promote", "to": version, "dag_id": actor.dag_id, "run_id": actor.run_id}
        if pending and all(pending[0].get(k) == v for k, v in mine.items()):
            return pending[1]  # this task's own move, interrupted by a crash and now finished
        expected = self.verify_blessed(version).judged_against
        current = self._champion_version()
        at = utc_now()
        if current == version:  # a retried or cleared task: it is done
            # A cleared re-run registers nothing new but points challenger at it again for its smoke test.
            challenger = self.by_alias(CHALLENGER)
            if challenger is not None and str(challenger.version) == version:
                self.delete_alias(CHALLENGER)
            return AliasMove(self.name, CHAMPION, version, current, False, at, "already champion")
        if current != expected:
            return self._stopped(version, f"stale: champion moved from {expected or '(none)'} to {current}", at)
        pinned = self.pinned()
        if pinned is not None and pinned != expected:
            return self._stopped(
                version,
                f"pinned: a rollback pinned champion at version {pinned}; this candidate was judged against "
                f"{expected or '(none)'}",
                at,
            )
        intent = {
            "op": "promote",
            "from": current,
            "to": version,
            "unpin": pinned is not None,
            "reason": fitted_reason(reason),
        }
        return self._apply({**intent, **asdict(actor), "at": at})

    def rollback(self, reason: str, actor: Actor, version: str | None = None) -> AliasMove:
        """Move ``champion`` to ``version`` (default: :meth:`rollback_target`, the last good champion before
        the current one), which must be proven blessed, and pin it there. Exactly once per DAG run, whatever
        crashed before."""
        pending = self._finish_pending()
        if pending:
            intent, move = pending
            if intent.get("dag_id") == actor.dag_id and intent.get("run_id") == actor.run_id:
                return move
            raise RegistryError(
                f"rollback of {self.name!r}: an interrupted {intent.get('op')} by {intent.get('dag_id')} run "
                f"{intent.get('run_id')} (champion {intent.get('from')} -> {intent.get('to')}) was finished first; "
                f"champion is now {move.to_version}. Trigger the rollback again if it is still wanted"
            )
        done = self.model_tags().get(_done_key(actor))
        if done:
            try:
                record = json.loads(done)
            except ValueError:
                record = None
            if not isinstance(record, dict) or not {"to", "from"} <= record.keys():
                raise unreadable_record(self.name, _done_key(actor), done)
            return AliasMove(
                self.name, CHAMPION, record["to"], record["from"], False, utc_now(), "already done by this run"
            )
        if version in (None, "", PREVIOUS_CHAMPION):
            target_version = self.rollback_target()
            if target_version is None:
                raise RegistryError(
                    f"rollback of {self.name!r}: no good champion before the current one "
                    f"({self._champion_version()}) in the champion ledger (tag {TAG_LEDGER}); choose a version: "
                    f"blessed versions are {self._blessed_list()}"
                )
        else:
            if self.version(str(version)) is None:
                raise RegistryError(
                    f"rollback of {self.name!r}: version {version} does not exist; blessed versions are "
                    f"{self._blessed_list()}"
                )
            target_version = str(version)
        try:
            self.verify_blessed(target_version)
        except UnblessedVersionError as err:
            raise UnblessedVersionError(f"{err}; blessed versions are {self._blessed_list()}") from None
        intent = {
            "op": "rollback",
            "from": self._champion_version(),
            "to": target_version,
            "reason": fitted_reason(reason),
        }
        return self._apply({**intent, **asdict(actor), "at": utc_now()})

    def _blessed_list(self) -> str:
        last = {str(v): e for e in self.ledger() for v in (e.get("from"), e["to"]) if v is not None}  # newest move
        away = {v for v, e in last.items() if e["op"] == "rollback" and str(e["to"]) != v}  # rolled away from since
        return ", ".join(v for v in self.blessed_versions() if v not in away) or "(none)"

    def unpin(self, reason: str, actor: Actor) -> str | None:
        """Remove a rollback's pin (a person's decision); returns the version that was pinned, or None."""
        self._finish_pending()
        pinned = self.pinned()
        if pinned is not None:
            self._release_pin({"version": pinned, "reason": fitted_reason(reason), **asdict(actor), "at": utc_now()})
        return pinned

    def _release_pin(self, record: dict[str, Any]) -> None:
        # the pin itself goes last: a crash in between leaves it pinned, and a retry repeats the release
        self._set_model_tag(TAG_UNPINNED, json.dumps(record, sort_keys=True))
        self._delete_model_tag(TAG_PIN_INFO)
        self._delete_model_tag(TAG_PINNED)

    def _stopped(self, version: str, outcome: str, at: str) -> AliasMove:
        self.tag(version, {TAG_PROMOTION: outcome, "mlops.promotion_checked_at": at})
        return AliasMove(self.name, CHAMPION, version, self._champion_version(), False, at, outcome)

    def _finish_pending(self) -> tuple[dict[str, Any], AliasMove] | None:
        """Finish a move a crash interrupted (its intent is still recorded); None if there was none.

        If ``champion`` has since been moved outside the pool (to neither end of the move), the move is
        dropped: finishing it would overwrite a newer decision.
        """
        raw = self.model_tags().get(TAG_INTENT)
        if not raw:
            return None
        try:
            intent = json.loads(raw)
        except ValueError as err:
            raise unreadable_record(self.name, TAG_INTENT, raw) from err
        if not isinstance(intent, dict) or not {"op", "from", "to", "at"} <= intent.keys():
            raise unreadable_record(self.name, TAG_INTENT, raw)
        if self._champion_version() not in (intent.get("from"), intent.get("to")):
            self._delete_model_tag(TAG_INTENT)
            return None
        return intent, self._apply(intent)

    def _apply(self, intent: dict[str, Any]) -> AliasMove:
        """Carry out ``intent``; every step is idempotent and re-derivable from the intent, so a retry
        after a crash at any line (or the next promotion/rollback) redoes it to the same end state."""
        frm, to, op, at = intent["from"], intent["to"], intent["op"], intent["at"]
        self._set_model_tag(TAG_INTENT, json.dumps(intent, sort_keys=True))
        # Compare-and-set, as far as MLflow allows: re-read right before writing, re-verify after. Within
        # Airflow the pool `mlflow_registry` (one slot) serialises promote and rollback. A writer outside it
        # (the MLflow UI or API) that moves champion between the re-read and our write is overwritten
        # unseen: that window is one HTTP round trip, and only people with registry write access have it.
        before = self._champion_version()
        if before not in (frm, to):
            self._delete_model_tag(TAG_INTENT)
            raise RegistryError(
                f"model registry: champion of {self.name!r} is {before}, not {frm}: it was moved outside the "
                f"registry pool; the {op} to {to} moved nothing"
            )
        if frm is not None and frm != to:
            self.set_alias(PREVIOUS_CHAMPION, frm)
        self.set_alias(CHAMPION, to)
        after = self._champion_version()
        if after != to:
            self._delete_model_tag(TAG_INTENT)
            raise RegistryError(
                f"model registry: champion of {self.name!r} is {after} right after this {op} set it to {to}: "
                "another writer outside the registry pool moved it"
            )
        who = {k: intent.get(k) for k in ("dag_id", "run_id", "user", "reason", "at")}
        if op == "rollback":
            self._set_model_tag(TAG_PIN_INFO, json.dumps({"version": to, **who}, sort_keys=True))
            self._set_model_tag(TAG_PINNED, to)
            self._set_model_tag(_done_key(Actor(intent["dag_id"], intent["run_id"])), json.dumps(intent))
            self.tag(to, {"mlops.rolled_back_to_at": at, "mlops.rollback_reason": intent["reason"]})
            if frm is not None and frm != to:
                self.tag(frm, {"mlops.rolled_back_from_at": at, "mlops.rollback_reason": intent["reason"]})
            outcome = "rolled back" if frm != to else "pinned the champion"
        else:
            if intent.get("unpin"):  # the gate ran against the pinned version and blessed this one
                self._release_pin({"version": frm, **who, "reason": f"gate against pinned version: {who['reason']}"})
            if frm is not None:
                self.tag(frm, {"mlops.demoted_at": at, "mlops.demoted_by_version": to})
            challenger = self.by_alias(CHALLENGER)
            if challenger is not None and str(challenger.version) == to:  # it serves now: no challenger left
                self.delete_alias(CHALLENGER)
            self.tag(
                to, {"mlops.promoted_at": at, "mlops.promotion_reason": intent["reason"], TAG_PROMOTION: "promoted"}
            )
            outcome = "promoted"
        self._record_move(intent)
        self._delete_model_tag(TAG_INTENT)
        return AliasMove(self.name, CHAMPION, to, frm, frm != to, at, outcome)


def _done_key(actor: Actor) -> str:
    return DONE_PREFIX + hashlib.sha256(f"{actor.dag_id}/{actor.run_id}".encode()).hexdigest()[:16]
