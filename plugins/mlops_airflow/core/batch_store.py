"""The batch store: each landed batch a snapshot uses, kept once as Parquet under the SHA-256 of its bytes.

Layout, below the model's storage folder (``<storage>/<model>/``)::

    batches/<sha256>.parquet      one batch, named by the hash of the object's own bytes (immutable)
    batches/tmp/<random>.part     an object being written (renamed to its final name when whole)
    snapshots/<key>/manifest.json a snapshot: its batches' hashes, parts, landed files and bounds
    snapshots/<key>/pending.json  while a snapshot is being written: the hashes it has taken so far

**Writing** (:meth:`BatchStore.put`). A batch's Arrow table is encoded as Parquet into a hashing sink (no
bytes kept, nothing written): the encoding is deterministic, so the same landed table gives the same hash.
When an object of that hash and size is stored already, nothing is written (on a local disk its
modification time is refreshed, see retention). Otherwise the table is encoded again into a temporary file
under ``tmp/``, hashed as it is written, and renamed (``os.replace`` locally, ``fs.mv`` on an object store)
to the hash of the bytes actually written: a partial object never carries a final name, and an object's name
is always the hash of its bytes. Choosing "recompute the Parquet hash" rather than a landed-file-hash index
keeps no second index that could go stale when the reader or pyarrow changes: it costs one Parquet encode
per batch per run (what every run spent before on its full copy), and writes only new batches.

**Reading** (:meth:`BatchStore.read_table`) checks the object's bytes against its name once per process
(the object is shared by every snapshot that names it), then reads only the columns asked for.

**Retention** (:func:`collect_garbage`, ``mlops gc``). An object is removed only when no retained snapshot
manifest names it, no registered model version's snapshot names it, no snapshot being written lists it in
its ``pending.json`` and it is older than the grace period. A writer records a hash in ``pending.json``
before it looks the object up, and refreshes the object's time when it reuses it; a collection renames an
object out of the store (``tmp/<hash>.parquet.gc``) before it judges the object's time a last time and deletes
it, so a collection running beside a snapshot never removes what that snapshot is about to reference (the
snapshot either refreshed it before the rename, and it is put back, or finds it gone and writes it again).
Killed at any point, a collection leaves no retained snapshot without its batches once the next reader or
collection has put back what it had renamed. It never follows a symlink: one in the store stops it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from mlops_airflow.core.errors import MlopsError
from mlops_airflow.core.landing import DataError, _local, _mtime, as_path

log = logging.getLogger(__name__)

#: The batch store's folder below the model's storage folder.
STORE = "batches"
#: The model's snapshots' folder below its storage folder.
SNAPSHOTS = "snapshots"
#: Objects being written, below the store.
TEMP = "tmp"
#: An object retention has taken out of the store and is about to delete (``tmp/<hash>.parquet.gc``): put back
#: by the next reader or collection when the deletion did not finish.
RETIRED = ".parquet.gc"
#: A snapshot being written: the batch hashes it has taken so far (removed once its manifest is written).
PENDING = "pending.json"
MANIFEST = "manifest.json"
#: How long an object no manifest names is kept (a snapshot being written may be about to name it).
DEFAULT_GRACE_SECONDS = 24 * 3600
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 8 * 2**20
#: Objects whose bytes were checked against their name in this process: (location, size, mtime).
_VERIFIED: set[tuple[str, int, float | None]] = set()


class _HashSink:
    """A write-only file that keeps the SHA-256 and the length of what is written to it, and passes the bytes
    on to ``target`` when there is one."""

    def __init__(self, target: Any = None) -> None:
        self.digest = hashlib.sha256()
        self.size = 0
        self.target = target
        self.closed = False

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        if self.target is not None:
            self.target.write(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        if self.target is not None:
            self.target.flush()

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True


def encode(table: Any, target: Any = None) -> tuple[str, int]:
    """Encode an Arrow table as Parquet (into ``target`` when given); the SHA-256 and size of the bytes."""
    import pyarrow.parquet as pq

    sink = _HashSink(target)
    pq.write_table(table, sink)
    return sink.digest.hexdigest(), sink.size


def check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise DataError(f"{digest!r}: not a batch hash (64 lowercase hex digits)", rule="batch_hash")
    return digest


def _info(path: Any) -> tuple[float | None, int | None]:
    """Modification time and size of a file (``None`` each where the filesystem does not say)."""
    local = _local(path)
    if local is not None:
        st = os.stat(local)
        return st.st_mtime, st.st_size
    info = path.fs.info(path.path)
    size = info.get("size")
    return _mtime(info), int(size) if isinstance(size, int) else None


def _entries(folder: Any) -> list[tuple[str, Any, bool]]:
    """``(name, path, is_folder)`` of the entries directly in ``folder`` (none when it does not exist).

    On a local disk a symlink, ``folder`` itself or an entry, raises :class:`RetentionError`: retention
    never follows a link out of the model's storage, and never decides what a link's target is worth.
    """
    local = _local(folder)
    if local is None:
        if not folder.exists():
            return []
        return [(child.name, child, child.is_dir()) for child in folder.iterdir()]
    if os.path.islink(local):
        raise RetentionError(f"{local}: a symlink where the store keeps a folder; retention never follows one")
    if not os.path.isdir(local):
        return []
    found = []
    with os.scandir(local) as entries:
        for entry in entries:
            if entry.is_symlink():
                raise RetentionError(f"{entry.path}: a symlink in the store; retention never follows one")
            found.append((entry.name, folder / entry.name, entry.is_dir(follow_symlinks=False)))
    return found


def _remove(path: Any) -> None:
    local = _local(path)
    if local is not None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(local)
    else:
        path.fs.rm(path.path)


def _remove_in(folder: Any, name: str) -> None:
    """Remove ``folder/name``; on a local disk through a descriptor of ``folder`` opened without following a
    symlink, so a folder swapped for one after it was listed removes nothing elsewhere."""
    local = _local(folder)
    if local is None:
        _remove(folder / name)
        return
    try:
        fd = os.open(local, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return
    except OSError as err:
        message = f"{local}: not a folder of the store ({err.strerror}); retention never follows a symlink"
        raise RetentionError(message) from None
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)


def _publish(temp: Any, final: Any) -> None:
    """Give the whole file ``temp`` its final name in one step (a local rename, or the object store's move)."""
    local, target = _local(temp), _local(final)
    if local is not None and target is not None:
        os.replace(local, target)
    else:
        temp.fs.mv(temp.path, final.path)


def _refresh(path: Any) -> bool:
    """Mark a reused object as just used (its modification time, on a local disk); ``False`` if it is gone."""
    local = _local(path)
    if local is None:
        return bool(path.exists())
    try:
        os.utime(local)
    except FileNotFoundError:
        return False
    return True


@dataclass(frozen=True)
class Stored:
    """One batch in the store: its hash, its size, and whether this call wrote it."""

    digest: str
    size: int
    written: bool


class BatchStore:
    """The batch store of one model (a folder of a local disk or an object store, as a path object)."""

    def __init__(self, root: Any) -> None:
        self.root = as_path(root)

    def __repr__(self) -> str:
        return f"BatchStore({self.root})"

    def object(self, digest: str) -> Any:
        return self.root / f"{check_digest(digest)}.parquet"

    def contains(self, digest: str, size: int | None = None) -> bool:
        """Whether the object is stored (with ``size`` bytes, when given); a reused object is refreshed."""
        path = self.object(digest)
        if not path.exists():
            return False
        try:
            stored = _info(path)[1]
        except FileNotFoundError:  # taken by retention since: written again
            return False
        if size is not None and stored not in (None, size):
            log.warning("%s: %s bytes, expected %s; written again", path, stored, size)
            return False
        return _refresh(path)

    def retired(self, digest: str) -> Any:
        """Where retention moves an object before deleting it (below ``tmp/``)."""
        return self.root / TEMP / f"{check_digest(digest)}{RETIRED}"

    def restore(self, digest: str) -> bool:
        """Put back an object whose removal did not finish (a collection that died between taking it out of
        the store and deleting it); ``True`` when one was put back."""
        retired, final = _local(self.retired(digest)), _local(self.object(digest))
        if retired is None or final is None or not os.path.isfile(retired) or os.path.islink(retired):
            return False
        try:
            os.replace(retired, final)  # same bytes whoever wrote the final name meanwhile
        except FileNotFoundError:
            return False
        return True

    def put(self, table: Any, digest: str | None = None, size: int | None = None) -> Stored:
        """Store an Arrow table as Parquet under the hash of its bytes; nothing is written when it is stored.

        :param digest: the table's hash from :func:`encode` (computed when not given).
        :param size: its size in bytes from :func:`encode`.
        """
        if digest is None:
            digest, size = encode(table)
        if self.contains(digest, size):
            return Stored(digest, int(size or 0), written=False)
        temp = self.root / TEMP / f"{uuid.uuid4().hex}.part"
        temp.parent.mkdir(parents=True, exist_ok=True)
        try:
            with temp.open("wb") as fh:
                written, written_size = encode(table, fh)
            if written != digest:  # the encoding changed between the two passes: name it by what was written
                log.warning("batch encoded as %s, then as %s; stored under the second", digest, written)
            _publish(temp, self.object(written))
        except BaseException:
            _remove(temp)
            raise
        return Stored(written, written_size, written=True)

    def verify(self, digest: str) -> Any:
        """The object's path, after its bytes were checked against its name (once per process)."""
        path = self.object(digest)
        if not path.exists() and not self.restore(digest):
            raise DataError(
                f"{path}: batch {digest} is not in the batch store {self.root} (removed by retention, or the "
                "store was moved); the snapshot cannot be read",
                rule="batch_store",
            )
        mtime, size = _info(path)
        key = (str(path), int(size or 0), mtime)
        if key in _VERIFIED:
            return path
        found = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                found.update(chunk)
        if found.hexdigest() != digest:
            raise DataError(
                f"{path}: its bytes hash to {found.hexdigest()}, not to its name; the stored batch was changed "
                "after it was written and is not read",
                rule="batch_hash",
            )
        _VERIFIED.add(key)
        return path

    def read_table(self, digest: str, columns: list[str] | None = None) -> Any:
        """One stored batch as an Arrow table (only ``columns`` when given)."""
        import pyarrow.parquet as pq

        with self.verify(digest).open("rb") as fh:
            return pq.read_table(fh, columns=columns)

    def objects(self) -> dict[str, tuple[Any, float | None, int]]:
        """Every stored object: hash -> (path, modification time, size)."""
        found = {}
        for name, path, is_dir in _entries(self.root):
            digest = name.removesuffix(".parquet")
            if not is_dir and name.endswith(".parquet") and _DIGEST.match(digest):
                mtime, size = _info(path)
                found[digest] = (path, mtime, int(size or 0))
        return found

    def temporaries(self) -> list[tuple[Any, float | None]]:
        found = []
        for name, path, is_dir in _entries(self.root / TEMP):
            if not is_dir and not (name.endswith(RETIRED) and _DIGEST.match(name.removesuffix(RETIRED))):
                found.append((path, _info(path)[0]))
        return found

    def restore_all(self) -> list[str]:
        """Put back every object a collection took out of the store and did not delete (see :meth:`restore`)."""
        restored = []
        for name, _, is_dir in _entries(self.root / TEMP):
            digest = name.removesuffix(RETIRED)
            if not is_dir and name.endswith(RETIRED) and _DIGEST.match(digest) and self.restore(digest):
                restored.append(digest)
        return restored

    def retire(self, digest: str, keep: Any) -> bool | None:
        """Delete an object unless ``keep(mtime)`` says it is in use, deciding on the object taken out of the
        store: ``True`` removed, ``False`` kept, ``None`` gone already.

        On a local disk the object is first renamed out of the store: from then on a snapshot being written
        cannot reuse it (it finds no object, and writes it again), and a reuse that refreshed it just before is
        seen in the time of the moved object; killed after the rename, the next reader or collection puts it
        back. An object store has no atomic rename: its object is checked, then deleted.
        """
        path = self.object(digest)
        local, retired = _local(path), _local(self.retired(digest))
        if local is None or retired is None:
            try:
                mtime, _ = _info(path)
            except FileNotFoundError:
                return None
            if keep(mtime):
                return False
            _remove(path)
            return True
        os.makedirs(os.path.dirname(retired), exist_ok=True)
        try:
            os.replace(local, retired)
        except FileNotFoundError:
            return None
        try:
            mtime = os.stat(retired).st_mtime
        except FileNotFoundError:  # a reader put it back meanwhile: in use
            return False
        try:
            if keep(mtime):
                self.restore(digest)
                return False
        except BaseException:
            self.restore(digest)
            raise
        with contextlib.suppress(FileNotFoundError):
            os.remove(retired)
        return True


def store_reference(dest: Any, store: Any) -> str:
    """Where ``store`` is, as a snapshot at ``dest`` records it: relative to the snapshot's folder
    (``../../batches``) when both are on one filesystem (and, on an object store, in one bucket), so a reader
    finds it from the path object it holds (with its connection); else the store's URI."""
    from mlops_airflow.core.data import _location

    protocol, segments = _location(as_path(dest))
    store_protocol, store_segments = _location(as_path(store))
    segments = [s for s in segments if s]
    store_segments = [s for s in store_segments if s]
    if protocol != store_protocol or (protocol != "file" and segments[:1] != store_segments[:1]):
        return str(store)
    common = 0
    while common < min(len(segments), len(store_segments)) and segments[common] == store_segments[common]:
        common += 1
    return "/".join([".."] * (len(segments) - common) + store_segments[common:])


def resolve_store(snapshot_path: Any, reference: str) -> BatchStore:
    """The batch store a snapshot's manifest names (see :func:`store_reference`)."""
    if "://" in reference or reference.startswith("/"):
        return BatchStore(as_path(reference))
    path = snapshot_path
    for segment in reference.split("/"):
        if segment == "..":
            path = path.parent
        elif segment and segment != ".":
            path = path / segment
    return BatchStore(path)


def write_pending(dest: Any, digests: Iterable[str]) -> None:
    """Record the hashes a snapshot being written has taken so far (read by :func:`collect_garbage`); written
    whole (a temporary name, then renamed), so a writer killed meanwhile never leaves a list retention cannot
    read."""
    from mlops_airflow.core.data import write_whole

    write_whole(dest / PENDING, json.dumps(sorted(set(digests))))


# ------------------------------------------------------------------------------------------------ retention


class RetentionError(MlopsError, RuntimeError):
    """Retention cannot tell safely what is in use; nothing was removed."""


@dataclass
class GcReport:
    """What a collection kept and removed (or, with ``dry_run``, would remove)."""

    model_root: str
    dry_run: bool
    keep_runs: int | None
    grace_seconds: float
    kept_snapshots: list[str] = field(default_factory=list)
    #: Snapshots kept because a registered model version was trained on them.
    protected_snapshots: list[str] = field(default_factory=list)
    removed_snapshots: list[str] = field(default_factory=list)
    #: Snapshots past ``keep_runs`` kept because their manifest is younger than the grace period: the DAG run
    #: that wrote it may still be training on it (and register a version that names it).
    young_snapshots: list[str] = field(default_factory=list)
    #: Snapshots being written (a fresh ``pending.json``): their batches are kept.
    in_progress: list[str] = field(default_factory=list)
    kept_batches: int = 0
    kept_bytes: int = 0
    removed_batches: list[str] = field(default_factory=list)
    removed_bytes: int = 0
    #: Batches no snapshot names, kept because they are younger than the grace period.
    young_batches: list[str] = field(default_factory=list)
    removed_temporaries: list[str] = field(default_factory=list)
    #: Batches a kept snapshot names that are not in the store (that snapshot cannot be read).
    missing_batches: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _snapshot_key(uri: str) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


def registered_snapshots(client: Any, model: str) -> dict[str, str | None]:
    """Every registered version of ``model`` -> the URI of the snapshot it was trained on (``None`` when it
    records none): its ``mlops.snapshot_uri`` tag (set at registration), else the ``snapshot_uri`` param of its
    CT run (the ``mlops.mlflow_run_id`` tag, the version's run or that run's parent)."""
    from mlflow.exceptions import MlflowException

    from mlops_airflow.core.tracking import all_pages

    name = model.replace("'", "\\'")
    found: dict[str, str | None] = {}
    for mv in all_pages(client.search_model_versions, filter_string=f"name = '{name}'"):
        tags = dict(mv.tags or {})
        uri = tags.get("mlops.snapshot_uri")
        runs = [tags.get("mlops.mlflow_run_id"), mv.run_id]
        while not uri and runs:
            run_id = runs.pop(0)
            if not run_id:
                continue
            try:
                run = client.get_run(run_id)
            except MlflowException:
                continue
            uri = run.data.params.get("snapshot_uri")
            runs.append(run.data.tags.get("mlflow.parentRunId"))
        found[str(mv.version)] = uri or None
    return found


def _read_manifest_hashes(manifest: Any) -> list[str]:
    try:
        data = json.loads(manifest.read_text())
        return [b["batch_hash"] for b in data.get("batches", []) if b.get("batch_hash")]
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as err:
        raise RetentionError(f"{manifest}: cannot be read as a snapshot manifest ({err}); nothing removed") from None


def _pending(dest: Any, now: float, grace: float) -> list[str] | None:
    """The hashes a snapshot being written has taken, or ``None`` when it is not being written (no
    ``pending.json``, or none touched within the grace period: an attempt that died)."""
    pending = dest / PENDING
    if not pending.exists():
        return None
    mtime, _ = _info(pending)
    if mtime is not None and now - mtime > grace:
        return None
    try:
        return [str(d) for d in json.loads(pending.read_text())]
    except ValueError:  # being rewritten this instant: keep everything rather than guess
        raise RetentionError(f"{pending}: being written; run again") from None


def collect_garbage(
    model_root: Any,
    *,
    keep_runs: int | None = None,
    protected: Iterable[str] = (),
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    dry_run: bool = False,
    now: float | None = None,
) -> GcReport:
    """Remove the snapshots retention lets go and the stored batches no kept snapshot names.

    :param model_root: the model's storage folder (``<storage>/<model>``), holding ``snapshots/`` and
        ``batches/``.
    :param keep_runs: keep the ``N`` (1 or more) newest complete snapshots (by their manifest's time) and remove
        older ones; ``None`` keeps every snapshot and removes only batches none of them names.
    :param protected: snapshot URIs that are never removed (those of registered model versions, from
        :func:`registered_snapshots`); matched by their folder name (the run's snapshot key).
    :param grace_seconds: a batch, temporary file, ``pending.json`` or snapshot manifest younger than this is
        left alone (a snapshot past ``keep_runs`` too: a DAG run may still be reading it).
    :param dry_run: report, remove nothing.
    """
    if keep_runs is not None and keep_runs < 1:  # the newest may be the one a running DAG run reads
        raise ValueError(f"keep_runs: {keep_runs}; keep 1 or more snapshots")
    started = time.time()
    now = started if now is None else now

    def clock() -> float:  # ``now``, advanced as the collection runs
        return now + time.time() - started

    root = as_path(model_root)
    store = BatchStore(root / STORE)
    report = GcReport(str(root), dry_run, keep_runs, grace_seconds)
    if not dry_run:  # a collection that died half-way through a removal: its object back first, judged again
        for digest in store.restore_all():
            log.warning("batch %s: put back in the store (a removal did not finish)", digest)
    # The store first: an object written after this listing is never a candidate.
    objects = store.objects()
    temporaries = store.temporaries()

    keys = {_snapshot_key(uri) for uri in protected if uri}
    complete: list[tuple[float, str, Any, list[str]]] = []
    referenced: set[str] = set()
    for name, path, is_dir in sorted(_entries(root / SNAPSHOTS), key=lambda e: e[0]):
        if not is_dir:
            continue
        manifest = path / MANIFEST
        if manifest.exists():
            mtime, _ = _info(manifest)
            complete.append((mtime or 0.0, name, path, _read_manifest_hashes(manifest)))
        elif (taken := _pending(path, now, grace_seconds)) is not None:
            report.in_progress.append(name)
            referenced.update(taken)
    complete.sort(key=lambda c: (c[0], c[1]), reverse=True)
    for index, (written, name, _path, hashes) in enumerate(complete):
        if keep_runs is None or index < keep_runs:
            report.kept_snapshots.append(name)
        elif name in keys:
            report.protected_snapshots.append(name)
        elif now - written <= grace_seconds:
            report.young_snapshots.append(name)
        else:
            report.removed_snapshots.append(name)
            continue
        referenced.update(hashes)
    report.missing_batches = sorted(referenced - set(objects))

    candidates = []
    for digest, (path, mtime, size) in objects.items():
        if digest in referenced:
            report.kept_batches += 1
            report.kept_bytes += size
        elif mtime is None or now - mtime <= grace_seconds:
            report.young_batches.append(digest)
        else:
            candidates.append((digest, path, size))
    if dry_run:
        report.removed_batches = sorted(d for d, _, _ in candidates)
        report.removed_bytes = sum(s for _, _, s in candidates)
        report.removed_temporaries = [str(p) for p, m in temporaries if m is not None and now - m > grace_seconds]
        return report

    from mlops_airflow.core.data import remove_tree

    for name in report.removed_snapshots:  # their batches go below unless a kept snapshot names them
        # The manifest first: killed half-way, what is left is no snapshot (never read as a whole one).
        _remove_in(root / SNAPSHOTS / name, MANIFEST)
        remove_tree(root / SNAPSHOTS / name, within=root / SNAPSHOTS)
    # Snapshots that started meanwhile: what they took is kept.
    for _, path, is_dir in _entries(root / SNAPSHOTS):
        if is_dir and not (path / MANIFEST).exists():
            referenced.update(_pending(path, clock(), grace_seconds) or [])
    for digest, _path, size in candidates:
        if digest in referenced:
            continue
        # Reused since it was listed (its time refreshed): kept.
        removed = store.retire(digest, lambda mtime: mtime is None or clock() - mtime <= grace_seconds)
        if removed is False:
            report.young_batches.append(digest)
        elif removed:
            report.removed_batches.append(digest)
            report.removed_bytes += size
    for path, mtime in temporaries:
        if mtime is not None and now - mtime > grace_seconds:
            _remove(path)
            report.removed_temporaries.append(str(path))
    report.removed_batches.sort()
    return report
