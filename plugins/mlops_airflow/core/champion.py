"""The one door to a servable model version.

Every consumer that loads "the champion" (batch scoring, the monitor's live metric, the gate's baseline, the
smoke test's challenger, the model server, the model page) asks :func:`resolve` and uses the version it
returns, by number (``models:/<model>/<version>``), never the alias again: what was proven is what is loaded.

:func:`resolve` reads the alias (or the version) once and proves the version blessed:

* with a signing key (every worker, the model server, the embedded default): the gate signature on the
  version itself (:meth:`~mlops_airflow.core.trust.ModelRegistry.verify_signed`), no further round trip;
* without one (a process that only reads, such as the model page on a cluster's api-server): the full
  provenance from the version's own ``ct_<model>`` run and gate decision
  (:meth:`~mlops_airflow.core.trust.ModelRegistry.verify_blessed`), reported as unsigned.

A version that is not proven raises :class:`~mlops_airflow.core.trust.UnblessedVersionError` naming the
model, the version and the rule broken; callers fail closed on it (no retry: waiting does not bless it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlops_airflow.core.registry import CHAMPION, RegistryError
from mlops_airflow.core.trust import ModelRegistry, Provenance, UnblessedVersionError

__all__ = ["NoVersionError", "Servable", "UnblessedVersionError", "resolve", "resolve_champion"]


class NoVersionError(RegistryError):
    """No version holds the alias (or the version asked for does not exist)."""


@dataclass(frozen=True)
class Servable:
    """A version proven blessed, and how it was proven."""

    name: str
    version: str
    alias: str | None
    model_version: Any
    provenance: Provenance

    @property
    def uri(self) -> str:
        """The version's own URI: loading it cannot pick up a later alias move."""
        return f"models:/{self.name}/{self.version}"

    @property
    def tags(self) -> dict[str, str]:
        return dict(self.model_version.tags or {})

    @property
    def run_id(self) -> str | None:
        return self.model_version.run_id or None


def resolve(
    client: Any, name: str, signing_key: bytes | None, *, alias: str = CHAMPION, version: str | None = None
) -> Servable:
    """The version holding ``alias`` (or ``version``), proven blessed; raises :class:`NoVersionError` or
    :class:`~mlops_airflow.core.trust.UnblessedVersionError` (both name the model and version)."""
    registry = ModelRegistry(client, name, signing_key=signing_key)
    if version is None:
        mv = registry.by_alias(alias)
        if mv is None:
            raise NoVersionError(f"model registry: no version of {name!r} holds alias {alias!r}; run ct_{name} first")
    else:
        mv = registry.version(version)
        if mv is None:
            raise NoVersionError(f"model registry: {name!r} version {version} does not exist")
    if signing_key is not None:
        proof = registry.verify_signed(mv)
    else:
        proof = registry.verify_blessed(str(mv.version))
    return Servable(name, str(mv.version), alias if version is None else None, mv, proof)


def resolve_champion(client: Any, name: str, signing_key: bytes | None) -> Servable | None:
    """:func:`resolve` of ``champion``, or None while no version holds it (a model before its first promotion)."""
    try:
        return resolve(client, name, signing_key)
    except NoVersionError:
        return None
