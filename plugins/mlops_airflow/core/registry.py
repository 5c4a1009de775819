"""The MLflow model registry as an alias and tag store: versions, the three aliases, tags and the champion ledger.

:class:`AliasStore` owns the client. The champion is always resolved by alias (``get_model_version_by_alias``),
never by "latest version" or a search. Every :class:`~mlflow.exceptions.MlflowException` is re-raised as
:class:`RegistryError` naming the model and version. What may move an alias (proof of blessing, the gate
signature, compare-and-set, pins) is :mod:`mlops_airflow.core.trust`, whose
:class:`~mlops_airflow.core.trust.ModelRegistry` is the store guarded by those rules.

Alias lifecycle:

* ``challenger``: the version a CT run registered and is smoke-testing; cleared when that version becomes
  ``champion`` (it then is no longer a challenger).
* ``champion``: what serves. Every move of it is appended to the champion ledger (registered-model tag
  ``mlops.champion.ledger``: op, from, to, when, which DAG run).
* ``previous_champion``: the version that held ``champion`` right before the current one (audit).
* A rollback's default target is the last *good* champion before the current one, read from the ledger: the
  newest version that held ``champion`` and has not been rolled away from since. After v1 -> v2 -> rollback
  to v1, a second default rollback has no target (v2 was rolled away from) instead of re-serving v2.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlops_airflow.core.errors import MlopsError

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous_champion"
TAG_DAG_ID = "airflow.dag_id"
TAG_RUN_ID = "airflow.run_id"
# registered-model tags
TAG_INTENT = "mlops.champion.intent"  # JSON: the alias move in progress
TAG_LEDGER = "mlops.champion.ledger"  # JSON list: the last LEDGER_SIZE champion moves, oldest first
#: Characters a registered-model tag holds (MLflow's column).
MAX_MODEL_TAG_CHARS = 5000
LEDGER_SIZE = 40  # a registered-model tag holds 5,000 characters; one entry takes about 110


class RegistryError(MlopsError, RuntimeError):
    """A registry operation failed; the message names the model and version."""


@dataclass(frozen=True)
class Actor:
    """The Airflow DAG run (and the person who triggered it, if known) behind an alias move."""

    dag_id: str
    run_id: str
    user: str | None = None

    def __str__(self) -> str:
        return f"{self.dag_id} run {self.run_id}" + (f" by {self.user}" if self.user else "")


@dataclass(frozen=True)
class AliasMove:
    """What a promotion or rollback did (small, for XCom and the audit trail).

    ``outcome``: ``promoted``, ``rolled back``, ``already champion``, ``already done by this run``,
    ``stale: ...`` or ``pinned: ...`` (the last two moved nothing on purpose).
    """

    model: str
    alias: str
    to_version: str
    from_version: str | None
    changed: bool
    at: str
    outcome: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def utc_now() -> str:
    """Now, as the registry's audit tags record it (UTC, ISO 8601, seconds)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def version_or_none(value: Any) -> str | None:
    """A version number as text; None for none (as tags and JSON spell it: empty, ``None``)."""
    return None if value in (None, "", "None") else str(value)


def unreadable_record(model: str, key: str, raw: str) -> RegistryError:
    """The error for a registered-model tag that should hold a JSON record and does not, with the way out."""
    return RegistryError(
        f"model registry: tag {key!r} of {model!r} is not a JSON record ({raw[:200]!r}): cut short (a release "
        "before reasons were shortened cut records at 5,000 characters) or written by hand. Check the aliases of "
        f"{model!r} in MLflow, then delete the tag to go on: "
        f"MlflowClient().delete_registered_model_tag({model!r}, {key!r})"
    )


class AliasStore:
    """Registered model ``name`` in the registry behind ``client``: its versions, aliases and tags.

    :param client: an MLflow client bound to the tracking/registry server.
    :param name: the registered model's name (the model spec's name).
    """

    def __init__(self, client: MlflowClient, name: str) -> None:
        self.client = client
        self.name = name

    def _fail(self, action: str, err: Exception, version: str | None = None) -> RegistryError:
        where = f"{self.name!r}" + (f" version {version}" if version else "")
        return RegistryError(f"model registry: {action} of {where} failed: {err}")

    def ensure_model(self, description: str = "") -> None:
        try:
            self.client.get_registered_model(self.name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise self._fail("lookup", err) from err
            try:
                self.client.create_registered_model(self.name, description=description or None)
            except MlflowException as create_err:
                if create_err.error_code != "RESOURCE_ALREADY_EXISTS":  # created concurrently
                    raise self._fail("creation", create_err) from create_err

    def by_alias(self, alias: str) -> Any | None:
        """The version holding ``alias``, or None when no version holds it (or no model exists yet)."""
        try:
            return self.client.get_model_version_by_alias(self.name, alias)
        except MlflowException as err:
            if err.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
                return None
            # MLflow's basic auth denies a non-admin an alias of a model that does not exist yet
            if err.error_code == "PERMISSION_DENIED" and not self._exists():
                return None
            raise self._fail(f"alias {alias!r} lookup", err) from err

    def _exists(self) -> bool:
        try:
            self.client.get_registered_model(self.name)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise self._fail("lookup", err) from err
        return True

    def champion(self) -> Any | None:
        return self.by_alias(CHAMPION)

    def _champion_version(self) -> str | None:
        current = self.champion()
        return None if current is None else str(current.version)

    def version(self, version: str | int) -> Any | None:
        try:
            return self.client.get_model_version(self.name, str(version))
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise self._fail("lookup", err, str(version)) from err

    def version_of_run(self, dag_id: str, run_id: str) -> Any | None:
        """The version a DAG run registered (so that a retry or a cleared run registers no second one)."""
        query = f"name = '{self.name}' and tags.`{TAG_DAG_ID}` = '{dag_id}' and tags.`{TAG_RUN_ID}` = '{run_id}'"
        try:
            found = self.client.search_model_versions(query)
        except MlflowException as err:
            raise self._fail("search", err) from err
        return min(found, key=lambda v: int(v.version)) if found else None

    def register(self, model_uri: str, run_id: str, tags: dict[str, str], description: str = "") -> Any:
        """A new version of the model from ``model_uri`` (a logged model), tagged with its provenance."""
        self.ensure_model()
        # A tracking server accepts a logged model's ``models:/<model_id>`` source only with its model_id.
        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        try:
            return self.client.create_model_version(
                self.name,
                source=model_uri,
                run_id=run_id,
                model_id=model_id,
                tags=tags,
                description=description or None,
            )
        except MlflowException as err:
            raise self._fail("registration", err) from err

    def set_alias(self, alias: str, version: str) -> None:
        try:
            self.client.set_registered_model_alias(self.name, alias, str(version))
        except MlflowException as err:
            raise self._fail(f"setting alias {alias!r}", err, version) from err

    def delete_alias(self, alias: str) -> None:
        try:
            self.client.delete_registered_model_alias(self.name, alias)
        except MlflowException as err:
            if err.error_code not in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
                raise self._fail(f"deleting alias {alias!r}", err) from err

    def tag(self, version: str, tags: dict[str, str]) -> None:
        try:
            for key, value in tags.items():
                self.client.set_model_version_tag(self.name, str(version), key, str(value)[:5000])
        except MlflowException as err:
            raise self._fail("tagging", err, version) from err

    # ------------------------------------------------------------------------------ registered-model tags

    def model_tags(self) -> dict[str, str]:
        try:
            return dict(self.client.get_registered_model(self.name).tags or {})
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise self._fail("reading tags", err) from err

    def _set_model_tag(self, key: str, value: str) -> None:
        if len(value) > MAX_MODEL_TAG_CHARS:  # cut, a JSON record would no longer parse: refused whole instead
            raise RegistryError(
                f"model registry: tag {key!r} of {self.name!r} would hold {len(value)} characters; a registered "
                f"model's tag holds {MAX_MODEL_TAG_CHARS}"
            )
        try:
            self.client.set_registered_model_tag(self.name, key, value)
        except MlflowException as err:
            raise self._fail(f"setting tag {key!r}", err) from err

    def _delete_model_tag(self, key: str) -> None:
        try:
            self.client.delete_registered_model_tag(self.name, key)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise self._fail(f"deleting tag {key!r}", err) from err

    # ------------------------------------------------------------------------------ the champion ledger

    def ledger(self) -> list[dict[str, Any]]:
        """Every recorded move of ``champion``, oldest first: ``op`` (promote|rollback), ``from``, ``to``,
        ``at``, ``dag_id``, ``run_id``."""
        raw = self.model_tags().get(TAG_LEDGER)
        if not raw:
            return []
        try:
            entries = json.loads(raw)
        except ValueError as err:
            raise unreadable_record(self.name, TAG_LEDGER, raw) from err
        if not isinstance(entries, list):
            raise RegistryError(f"model registry: tag {TAG_LEDGER} of {self.name!r} is not a JSON list")
        return [e for e in entries if isinstance(e, dict) and e.get("to")]

    def _record_move(self, intent: dict[str, Any]) -> None:
        """Append the move to the ledger once (a retry finishing the same intent appends nothing)."""
        entry = {k: intent.get(k) for k in ("op", "from", "to", "at", "dag_id", "run_id")}
        entries = self.ledger()
        if entry in entries:
            return
        kept = [*entries, entry][-LEDGER_SIZE:]
        text = json.dumps(kept, separators=(",", ":"))
        while len(text) > MAX_MODEL_TAG_CHARS and len(kept) > 1:  # long run ids: fewer of the oldest moves
            kept = kept[1:]
            text = json.dumps(kept, separators=(",", ":"))
        self._set_model_tag(TAG_LEDGER, text)

    def rollback_target(self) -> str | None:
        """The default version a rollback serves: the last good champion before the current one.

        Good = it held ``champion`` and no rollback has moved away from it since it last did. Without a
        ledger (a registry older than it), ``previous_champion``.
        """
        current = self._champion_version()
        entries = self.ledger()
        if not entries:
            previous = self.by_alias(PREVIOUS_CHAMPION)
            return None if previous is None or str(previous.version) == current else str(previous.version)
        good: dict[str, bool] = {}
        for entry in entries:
            if entry["op"] == "rollback" and entry.get("from"):
                good[str(entry["from"])] = False
            good[str(entry["to"])] = True
        for entry in reversed(entries):
            # a promotion's "from" covers a champion set before the ledger began
            for version in (entry["to"], entry.get("from") if entry["op"] == "promote" else None):
                if version is not None and str(version) != current and good.get(str(version), True):
                    return str(version)
        return None
