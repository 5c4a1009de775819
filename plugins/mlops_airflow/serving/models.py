"""Which version answers: one :class:`ModelSlot` per model, kept at ``champion`` by a :class:`Follower`.

A swap never blocks or fails a request. The follower first proves the new version blessed
through the champion resolver (:func:`mlops_airflow.core.champion.resolve`: the version's HMAC gate
signature, made with the key only Airflow and this server hold; READ access to registered models is
enough). Tags are no evidence: ``champion`` moved by hand to a
version no gate blessed is refused before any of its files are downloaded or its code runs. Then it loads
the version (download, ``mlflow.pyfunc.load_model``), warms it up on the version's own input example (the
rows it was logged with) through the same path requests take, checks the answer's shape (one row per input,
``prediction`` and a ``proba_<class>`` per spec class, probabilities in [0, 1]), and only then replaces the
slot's :class:`LoadedModel` with one reference assignment. A request takes the slot's model once, at its
start, and finishes on it: requests in flight end on the old version. A version refused, or that fails to
load or warm up, is not swapped in; the slot records why (``last_load_error`` of ``GET /v1/models/<model>``)
and keeps serving what it had. With no version ever proven (a cold start on an unblessed ``champion``),
``/ready`` stays false and predict answers 503 with the reason. The follower tries a failed version again
only when notified (``POST /v1/models/<model>/reload``); a registry it cannot read decides nothing and is
read again at the next poll.

The follower learns of moves by polling the registry every ``MLOPS_SERVING_POLL_SECONDS``, and at once when
a ``promote``/``rollback`` task notifies the server (:mod:`mlops_airflow.core.serving_client`). With several
worker processes a notification reaches one of them; it passes it on to the others through a shared folder
(``MLOPS_SERVING_NOTIFY_DIR``, set by ``python -m mlops_airflow.serving --workers N``) that every follower
looks at a few times a second.

Each version's files are downloaded to a temporary folder ``mlops-serving-<model>-v<N>-p<pid>-*``; it is
removed when the version is no longer held and on a clean stop, and a starting server removes the folders a
process that no longer runs left behind (:func:`remove_stale_copies`).

Swaps are fast because the version usually is loaded already: the follower keeps ``challenger`` (proven
blessed through the champion resolver with ``alias="challenger"``) loaded and warmed up before it is promoted,
and the previous champion loaded for a rollback; a promotion or rollback to either is one reference
assignment. ``challenger`` also answers the canary (``serving.canary``) and scores the shadow
(``serving.shadow``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlops_airflow.core.errors import MlopsError
from mlops_airflow.core.served_model import proba_column
from mlops_airflow.core.spec import ModelSpec

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


_USERINFO = re.compile(r"(?<=://)[^/\s@]*@")


def redacted(text: str) -> str:
    """``text`` with the user and password of every URI in it masked (``http://***@host``): MLflow's errors
    quote the URI they called (``MLFLOW_TRACKING_URI`` may carry ``user:password@``), and these messages
    reach the model page, predict's 503 and the log."""
    return _USERINFO.sub("***@", text)


@dataclass
class LoadedModel:
    """One registered version, loaded and warmed up: what a request holds while it is scored."""

    name: str
    version: str
    alias: str
    pyfunc: Any
    threshold: float
    info: dict[str, Any]
    loaded_at: str
    local_dir: str | None = None
    #: the pyfunc's own model, called without MLflow's per-call schema enforcement (the request's rows are
    #: checked against the spec before; used only when it answered the warm-up exactly as the pyfunc did)
    direct: Any = field(default=None, repr=False)

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
        answer = (self.direct or self.pyfunc).predict(rows)
        if not isinstance(answer, pd.DataFrame):
            answer = pd.DataFrame({"prediction": np.asarray(answer).ravel()})
        return answer.reset_index(drop=True)

    def use_direct_path(self, rows: pd.DataFrame, expected: pd.DataFrame | None = None) -> bool:
        """Call the pyfunc's model directly from now on if it answers ``rows`` exactly as ``pyfunc.predict``
        (``expected``, when already computed)."""
        impl = getattr(self.pyfunc, "_model_impl", None)
        if impl is None or not callable(getattr(impl, "predict", None)):
            return False
        try:
            self.direct = None
            expected = self.predict(rows) if expected is None else expected
            self.direct = impl
            pd.testing.assert_frame_equal(self.predict(rows), expected, check_exact=True)
        except Exception:
            self.direct = None
            return False
        return True


@dataclass
class ModelSlot:
    """The versions of one model the server holds: ``current`` answers, ``shadow`` scores beside it."""

    spec: ModelSpec
    current: LoadedModel | None = None
    shadow: LoadedModel | None = None
    #: ``challenger``, loaded and warmed up ahead of its promotion (and answering the canary, scoring the
    #: shadow when configured); None while no version other than the champion holds it
    challenger: LoadedModel | None = None
    #: the champion before the current one, kept loaded for a rollback
    previous: LoadedModel | None = None
    #: version -> why it was not swapped in (kept until the version loads or the follower is notified)
    failed: dict[str, dict[str, str]] = field(default_factory=dict)
    last_error: dict[str, str] | None = None
    registry_error: str | None = None
    #: the version the registry's ``champion`` names (it differs from ``current`` while a swap is pending
    #: or after a refusal)
    registry_champion: str | None = None
    checked_at: str | None = None
    swaps: int = 0

    def describe(self) -> dict[str, Any]:
        current, shadow = self.current, self.shadow
        return {
            "model": self.spec.name,
            "kind": self.spec.kind,
            "ready": current is not None,
            "version": current.version if current else None,
            "loaded_at": current.loaded_at if current else None,
            **(current.info if current else {}),
            "shadow": {"enabled": self.spec.serving.shadow, "version": shadow.version if shadow else None},
            "challenger": self.challenger.version if self.challenger else None,
            "previous": self.previous.version if self.previous else None,
            "registry_champion": self.registry_champion,
            "last_load_error": self.last_error,
            "registry_error": self.registry_error,
            "checked_at": self.checked_at,
            "swaps": self.swaps,
            "features": self.spec.model_features,
        }


def version_info(mv: Any, proof: Any) -> dict[str, Any]:
    """What ``GET /v1/models/<model>`` tells of a version: its proven provenance (``proof``, a
    :class:`~mlops_airflow.core.registry.Provenance`) and, from its tags, when it was promoted and why."""
    tags = mv.tags or {}
    return {
        "data_hash": proof.data_hash,
        "promoted_at": tags.get("mlops.rolled_back_to_at") or tags.get("mlops.promoted_at"),
        "promotion": tags.get("mlops.promotion") or ("rolled back to" if tags.get("mlops.rolled_back_to_at") else None),
        "gate": {
            "blessed": True,  # proven from the source run, never read from a tag
            "signed": proof.signed,
            "reason": tags.get("mlops.gate.reason"),
            "judged_against": proof.judged_against,
            "smoke_test": tags.get("mlops.smoke_test"),
        },
        "source_run": proof.run_id,
        "trained_by": tags.get("airflow.run_id"),
    }


class WarmUpError(MlopsError, RuntimeError):
    """A version that loaded but does not answer as the spec says it must."""


def check_answer(spec: ModelSpec, rows: pd.DataFrame, answer: pd.DataFrame) -> None:
    """The shape a served answer must have; :class:`WarmUpError` naming what is wrong otherwise."""
    if len(answer) != len(rows):
        raise WarmUpError(f"answered {len(answer)} rows for {len(rows)}")
    wanted = ["prediction"] + [proba_column(c) for c in spec.classes]
    absent = [c for c in wanted if c not in answer.columns]
    if absent:
        raise WarmUpError(f"the answer lacks column(s) {absent}")
    if spec.is_classifier:
        proba = answer[wanted[1:]].to_numpy(dtype="float64")
        if not np.isfinite(proba).all() or (proba < 0).any() or (proba > 1).any():
            raise WarmUpError("class probabilities outside [0, 1]")
    elif not np.isfinite(answer["prediction"].to_numpy(dtype="float64")).all():
        raise WarmUpError("non-finite predictions")


COPY_PREFIX = "mlops-serving-"
_COPY_OWNER = re.compile(r"-v[^/]*?-p(\d+)-[^-/]*$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_copies(root: str | None = None, models: list[str] | None = None) -> list[str]:
    """Remove the version copies (``mlops-serving-<model>-v<N>-p<pid>-*`` under the temp folder) whose process
    no longer runs; copies of a live process (another worker, another server) are left alone. Copies named
    without a process id (an older server's) are removed once a day old. Returns the folders removed."""
    root = root or tempfile.gettempdir()
    removed = []
    for name in models or ["*"]:
        for path in glob.glob(os.path.join(glob.escape(root), f"{COPY_PREFIX}{name}-v*")):
            if not os.path.isdir(path):
                continue
            owner = _COPY_OWNER.search(os.path.basename(path))
            if owner is not None:
                stale = int(owner.group(1)) != os.getpid() and not _alive(int(owner.group(1)))
            else:
                try:
                    stale = time.time() - os.path.getmtime(path) > 86_400
                except OSError:
                    continue
            if stale:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    if removed:
        log.info("removed %d stale model cop%s: %s", len(removed), "y" if len(removed) == 1 else "ies", removed[:5])
    return removed


class RefusedVersionError(MlopsError, RuntimeError):
    """A version the registry names but that is not proven blessed: it is never downloaded nor loaded."""


class AliasMovedError(MlopsError, RuntimeError):
    """The alias moved on while a version was being proven: nothing is decided, the next read goes on."""


def prove_blessed(client: Any, spec: ModelSpec, version: str, signing_key: bytes | None, alias: str = CHAMPION) -> Any:
    """The version's :class:`~mlops_airflow.core.registry.Provenance` from the champion resolver
    (:func:`mlops_airflow.core.champion.resolve`), or :class:`RefusedVersionError` naming the trust rule it
    breaks. ``challenger`` is resolved by its alias (and must still name ``version``). A registry that cannot
    be read raises :class:`~mlops_airflow.core.registry.RegistryError` (retried at the next poll, nothing is
    decided)."""
    from mlops_airflow.core.champion import NoVersionError, UnblessedVersionError, resolve

    try:
        if alias == CHALLENGER:
            servable = resolve(client, spec.name, signing_key, alias=CHALLENGER)
            if servable.version != str(version):
                raise AliasMovedError(f"{CHALLENGER} moved from v{version} to v{servable.version}")
            return servable.provenance
        return resolve(client, spec.name, signing_key, version=version).provenance
    except (UnblessedVersionError, NoVersionError) as err:
        raise RefusedVersionError(f"refused, not proven blessed: {err}") from None


def load_version(client: Any, spec: ModelSpec, version: str, alias: str, proof: Any) -> LoadedModel:
    """Download, load and warm up one version already proven blessed (``proof``); raises on any failure
    (nothing is half-loaded)."""
    import mlflow
    from mlflow.models import Model

    from mlops_airflow.core.scoring import model_threshold

    mv = client.get_model_version(spec.name, version)
    local = tempfile.mkdtemp(prefix=f"{COPY_PREFIX}{spec.name}-v{version}-p{os.getpid()}-")
    try:
        # models:/ resolves against the process's registry URI (core.tracking.client_for set it)
        path = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{spec.name}/{version}", dst_path=local)
        pyfunc = mlflow.pyfunc.load_model(path)
        example = Model.load(path).load_input_example(path)
        if not isinstance(example, pd.DataFrame) or example.empty:
            raise WarmUpError("the version has no input example to warm up on")
        info = version_info(mv, proof)
        loaded = LoadedModel(spec.name, str(version), alias, pyfunc, model_threshold(pyfunc), info, _now(), local)
        rows = example.reset_index(drop=True)
        answer = loaded.predict(rows)
        check_answer(spec, rows, answer)
        loaded.use_direct_path(rows, answer)
        return loaded
    except BaseException:
        shutil.rmtree(local, ignore_errors=True)
        raise


NOTIFY_DIR_ENV = "MLOPS_SERVING_NOTIFY_DIR"
NOTIFY_CHECK_SECONDS = 0.2


class Follower:
    """Keeps every :class:`ModelSlot` at its registry aliases, on one background thread.

    :param client: an ``MlflowClient`` (READ access to registered models and experiments is enough).
    :param slots: model name -> slot.
    :param poll_seconds: how often the registry is read without a notification.
    :param signing_key: the gate signatures' key (``MLOPS_SIGNING_KEY``); None (a test only) = blessing is proven by the
        source run alone.
    :param notify_dir: a folder the worker processes of one server share: a notification one of them gets is
        written there and acted on by all (None: a single process).
    """

    def __init__(
        self,
        client: Any,
        slots: dict[str, ModelSlot],
        poll_seconds: float,
        signing_key: bytes | None = None,
        notify_dir: str | None = None,
    ) -> None:
        self.client = client
        self.slots = slots
        self.poll_seconds = poll_seconds
        self.signing_key = signing_key
        self.notify_dir = notify_dir
        self._seen_marks: dict[str, str] = self._marks()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._notified: set[str] = set()
        self._lock = threading.Lock()
        #: set after the first pass over the slots (each then holds its champion, or records why it does not)
        self.first_pass = threading.Event()
        self._thread = threading.Thread(target=self._run, name="champion-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def notify(self, model: str) -> None:
        """Re-read ``model``'s aliases now (in every worker), and retry a version that failed before."""
        if self.notify_dir is not None:
            try:
                mark = os.path.join(self.notify_dir, model)
                tmp = f"{mark}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
                with open(tmp, "w") as out:  # a notification of its own: unique text, whatever the clock says
                    out.write(f"{time.time_ns()} {os.getpid()} {uuid.uuid4().hex}")
                os.replace(tmp, mark)
            except OSError as err:
                log.warning("could not pass the notification for %s on to the other workers: %s", model, err)
        with self._lock:
            self._notified.add(model)
        self._wake.set()

    def _marks(self) -> dict[str, str]:
        """The last notification of each model as written (its text, not the file's time: two notifications
        within one tick of the file system's clock have the same time, and the second would be missed)."""
        if self.notify_dir is None:
            return {}
        marks = {}
        for name in self.slots:
            with contextlib.suppress(OSError), open(os.path.join(self.notify_dir, name), "rb") as mark:
                marks[name] = mark.read(200).decode("ascii", "replace")
        return marks

    def _wait(self) -> None:
        """Until the poll interval passes, a notification arrives, or another worker passes one on."""
        if self.notify_dir is None:
            self._wake.wait(self.poll_seconds)
            return
        deadline = time.monotonic() + self.poll_seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self._wake.wait(min(NOTIFY_CHECK_SECONDS, left)):
                return
            marks = self._marks()
            changed = {name for name, mark in marks.items() if self._seen_marks.get(name) != mark}
            if changed:
                self._seen_marks = marks
                with self._lock:
                    self._notified |= changed
                return

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                notified, self._notified = self._notified, set()
            self._wake.clear()
            self._seen_marks = self._marks() or self._seen_marks
            for name, slot in self.slots.items():
                if self._stop.is_set():
                    break
                try:
                    self.refresh(slot, retry_failed=name in notified)
                except Exception:  # the follower must outlive any one model's trouble
                    log.exception("following %s failed", name)
            self.first_pass.set()
            self._wait()

    def _alias_version(self, name: str, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException as err:
            if err.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "PERMISSION_DENIED"}:
                # no such alias (or model) yet; MLflow's basic auth denies an unregistered model to non-admins
                return None
            raise

    def refresh(self, slot: ModelSlot, retry_failed: bool = False) -> None:
        """Bring ``slot`` to the registry's ``champion`` (and ``challenger`` when it shadows or canaries)."""
        name = slot.spec.name
        try:
            champion = self._alias_version(name, CHAMPION)
            challenger = self._alias_version(name, CHALLENGER)
        except Exception as err:  # registry down: keep serving what is loaded
            slot.registry_error = redacted(f"{type(err).__name__}: {err}")[:500]
            log.warning("registry unreachable for %s: %s", name, slot.registry_error)
            return
        slot.registry_error = None
        slot.registry_champion = champion
        slot.checked_at = _now()
        if retry_failed:
            slot.failed.clear()
        if champion is not None:
            current = slot.current
            if current is None or current.version != champion:
                loaded = self._held(slot, champion) or self._load(slot, champion, CHAMPION)
                if loaded is not None:
                    slot.current = loaded  # the swap: one reference assignment
                    slot.swaps += 1
                    log.info("%s: now serving version %s (was %s)", name, champion,
                             current.version if current else None)  # fmt: skip
                    if current is not None:
                        replaced, slot.previous = slot.previous, current  # kept loaded for a rollback
                        self._release(replaced)
        wanted = challenger if challenger is not None and challenger != champion else None
        held = slot.challenger
        if wanted is None:
            slot.challenger = None
            self._release(held)
        elif held is None or held.version != wanted:
            loaded = self._held(slot, wanted) or self._load(slot, wanted, CHALLENGER)
            if loaded is not None:
                slot.challenger = loaded
                self._release(held)
        slot.shadow = slot.challenger if slot.spec.serving.shadow else None

    @staticmethod
    def _held(slot: ModelSlot, version: str) -> LoadedModel | None:
        """``version`` if the slot holds it loaded already (the challenger or the previous champion)."""
        for model in (slot.challenger, slot.previous, slot.current):
            if model is not None and model.version == version and version not in slot.failed:
                return model
        return None

    def _load(self, slot: ModelSlot, version: str, alias: str) -> LoadedModel | None:
        from mlops_airflow.core.registry import RegistryError

        name = slot.spec.name
        if version in slot.failed:
            return None
        started = time.perf_counter()
        stage = "verify"
        try:
            proof = prove_blessed(self.client, slot.spec, version, self.signing_key, alias)
            stage = "load"
            loaded = load_version(self.client, slot.spec, version, alias, proof)
        except (RegistryError, AliasMovedError) as err:  # nothing decided: read again at the next poll
            slot.registry_error = redacted(f"proving {alias} v{version} blessed: {err}")[:1000]
            log.warning("%s v%s (%s): %s", name, version, alias, slot.registry_error)
            return None
        except Exception as err:
            why = redacted(f"{type(err).__name__}: {err}")[:1000]
            error = {"version": version, "alias": alias, "stage": stage, "error": why, "at": _now()}
            slot.failed[version] = error
            slot.last_error = error
            log.error("%s v%s (%s) not swapped in: %s", name, version, alias, error["error"])
            return None
        log.info("%s v%s (%s) proven blessed, loaded and warmed up in %.1fs", name, version, alias,
                 time.perf_counter() - started)  # fmt: skip
        return loaded

    def _release(self, model: LoadedModel | None) -> None:
        """Drop an unused version's files; requests still holding it keep its pipeline in memory."""
        if model is None or model.local_dir is None:
            return
        slot = self.slots.get(model.name)
        if slot is not None and any(
            model is held for held in (slot.current, slot.shadow, slot.challenger, slot.previous)
        ):
            return
        shutil.rmtree(model.local_dir, ignore_errors=True)

    def release_all(self) -> None:
        """Remove every held version's files (a clean stop, once no request is in flight)."""
        for slot in self.slots.values():
            for model in (slot.current, slot.shadow, slot.challenger, slot.previous):
                if model is not None and model.local_dir is not None:
                    shutil.rmtree(model.local_dir, ignore_errors=True)
