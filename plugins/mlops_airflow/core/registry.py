"""The MLflow model registry as this project uses it: versions, the three aliases, and their audit trail.

One class owns the client. The champion is always resolved by alias (``get_model_version_by_alias``),
never by "latest version" or a search. Every :class:`~mlflow.exceptions.MlflowException` is re-raised as
:class:`RegistryError` naming the model and version.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous_champion"
TAG_BLESSED = "mlops.gate.blessed"
TAG_DAG_ID = "airflow.dag_id"
TAG_RUN_ID = "airflow.run_id"


class RegistryError(RuntimeError):
    """A registry operation failed; the message names the model and version."""


@dataclass(frozen=True)
class AliasMove:
    """What a promotion or rollback did (small, for XCom and the audit trail)."""

    model: str
    alias: str
    to_version: str
    from_version: str | None
    changed: bool
    at: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class ModelRegistry:
    """Registered model ``name`` in the registry behind ``client``.

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
            raise self._fail(f"alias {alias!r} lookup", err) from err

    def champion(self) -> Any | None:
        return self.by_alias(CHAMPION)

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

    def tag(self, version: str, tags: dict[str, str]) -> None:
        try:
            for key, value in tags.items():
                self.client.set_model_version_tag(self.name, str(version), key, str(value)[:5000])
        except MlflowException as err:
            raise self._fail("tagging", err, version) from err

    def promote(self, version: str, reason: str) -> AliasMove:
        """Make ``version`` the champion; the current champion becomes ``previous_champion``.

        The champion is re-read right before acting: promoting the version that already is champion
        (a retried or cleared task) changes nothing.
        """
        version = str(version)
        current = self.champion()
        at = _now()
        if current is not None and str(current.version) == version:
            return AliasMove(self.name, CHAMPION, version, version, changed=False, at=at)
        if current is not None:
            self.set_alias(PREVIOUS_CHAMPION, str(current.version))
            self.tag(str(current.version), {"mlops.demoted_at": at, "mlops.demoted_by_version": version})
        self.set_alias(CHAMPION, version)
        self.tag(version, {"mlops.promoted_at": at, "mlops.promotion_reason": reason})
        return AliasMove(self.name, CHAMPION, version, None if current is None else str(current.version), True, at)

    def rollback(self, reason: str, version: str | None = None) -> AliasMove:
        """Move ``champion`` to ``version`` (default: the ``previous_champion``), which must be blessed."""
        if version in (None, "", "previous_champion"):
            target = self.by_alias(PREVIOUS_CHAMPION)
            if target is None:
                raise RegistryError(f"rollback of {self.name!r}: no version holds alias 'previous_champion'")
        else:
            target = self.version(str(version))
            if target is None:
                raise RegistryError(f"rollback of {self.name!r}: version {version} does not exist")
        target_version = str(target.version)
        if (target.tags or {}).get(TAG_BLESSED) != "true":
            raise RegistryError(
                f"rollback of {self.name!r}: version {target_version} was never blessed by the gate; "
                "only a version that passed the gate may serve"
            )
        current = self.champion()
        at = _now()
        if current is not None and str(current.version) == target_version:
            return AliasMove(self.name, CHAMPION, target_version, target_version, changed=False, at=at)
        self.set_alias(CHAMPION, target_version)
        self.tag(target_version, {"mlops.rolled_back_to_at": at, "mlops.rollback_reason": reason})
        if current is not None:
            self.set_alias(PREVIOUS_CHAMPION, str(current.version))
            self.tag(str(current.version), {"mlops.rolled_back_from_at": at, "mlops.rollback_reason": reason})
        return AliasMove(
            self.name, CHAMPION, target_version, None if current is None else str(current.version), True, at
        )
