"""Landing zone and snapshots.

A snapshot is the immutable, content-hashed record of one run's training window and evaluation set: a
manifest under the run's own prefix naming, per batch, the landed file and its hash, its part, its rows and
the Parquet object that holds it in the model's batch store (:mod:`~mlops_airflow.core.batch_store`), where
each batch is stored once and shared by every snapshot that uses it. Every later task reads the snapshot,
never the landing zone, so a retry sees exactly the data the first try saw. ``manifest.json`` is written
last: a prefix without it is an unfinished snapshot and is removed before a new attempt. Snapshots written
before the store (a Parquet copy of each batch under the run's prefix, no ``store`` in the manifest) stay
readable.

Landed files are read through :mod:`~mlops_airflow.core.landing` (listed, confined to the landing roots,
checked whole and under the size cap) and go to the snapshot as Arrow tables (pyarrow's multi-threaded CSV
reader, no pandas in between). Each file's SHA-256 is taken from the bytes already read: the snapshot's
content hash needs no re-read, and a landed file's verdict can be reused by its hash
(:mod:`~mlops_airflow.core.validation`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import pandas as pd

from mlops_airflow.core.batch_store import PENDING, STORE, BatchStore, encode, resolve_store, store_reference
from mlops_airflow.core.batch_store import write_pending as _write_pending
from mlops_airflow.core.encoding import dumps
from mlops_airflow.core.landing import DataError, LandingZone, _local, as_path
from mlops_airflow.core.spec import ModelSpec

MANIFEST = "manifest.json"
log = logging.getLogger(__name__)


def safe_name(text: str) -> str:
    """A run id made readable as a name (run ids hold ``:`` and ``+``); not unique, never a storage key."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def snapshot_key(run_id: str) -> str:
    """The path segment of one run's snapshot: a readable prefix and a hash of the exact run id.

    Distinct run ids give distinct keys (``a:b`` and ``a+b`` read alike, their hashes differ), and a key is
    never ``.``, ``..`` or empty: the prefix keeps only letters, digits, ``_`` and ``-``.
    """
    prefix = re.sub(r"[^A-Za-z0-9_-]+", "_", run_id).strip("_-")[:64] or "run"
    digest = hashlib.sha256(run_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{prefix}-{digest}"


@dataclass(frozen=True)
class BatchFile:
    """One landed batch and how it went into the snapshot."""

    name: str
    source: str
    part: str  # "train" or "eval"
    rows: int = 0
    columns: list[str] = field(default_factory=list)
    snapshot_file: str | None = None
    #: Why the file could not be read as a table (validation fails on it).
    read_error: str | None = None
    #: SHA-256 of the landed file's bytes (``None`` in snapshots written before it was recorded).
    sha256: str | None = None
    #: The rule an unread file broke (``readable_table``, ``landing_root``, ``max_file_bytes``, ...).
    read_rule: str | None = None
    #: The column that rule names, where there is one.
    read_column: str | None = None
    #: Rows of it inside its part's time bounds (``None``: every row; windows by batches or rows).
    window_rows: int | None = None
    #: Rows of it (inside the bounds) without a label: never trained or evaluated on.
    unlabelled: int = 0
    #: It holds a row of the newest ``label.delay_days`` days: its labels may still be missing.
    awaiting_labels: bool = False
    #: SHA-256 of the Parquet object holding it in the batch store (``None``: a copy under the snapshot's own
    #: prefix, in snapshots written before the store, or not read).
    batch_hash: str | None = None

    @property
    def used_rows(self) -> int:
        """The rows loading gives of it: inside its part's bounds, with a label."""
        return (self.rows if self.window_rows is None else self.window_rows) - self.unlabelled


@dataclass(frozen=True)
class Snapshot:
    """Reference to a written snapshot: small enough for XCom."""

    uri: str
    content_hash: str
    train_rows: int
    eval_rows: int
    batches: list[BatchFile]
    source_uri: str
    #: The Airflow run id the snapshot was written for (``None`` in snapshots written without one).
    run_id: str | None = None
    #: Batches left out as not yet whole by the landing protocol, ``name: reason``.
    skipped: list[str] = field(default_factory=list)
    #: A window by time: ``{"column": ..., "train": [start, end], "eval": [start, end]}`` (ISO-8601, UTC, the
    #: start included, the end not). Loading uses the rows inside a part's bounds only.
    bounds: dict[str, Any] | None = None
    #: The label column: loading leaves out rows without a value in it (``None``: every row).
    label_column: str | None = None
    #: Rows of the window without a label (left out of training and evaluation).
    unlabelled_rows: int = 0
    #: The batch store its batches are in, relative to the snapshot's folder (``../../batches``) or a URI
    #: (:func:`~mlops_airflow.core.batch_store.store_reference`); ``None``: written before the store, each
    #: batch a copy under the snapshot's own prefix.
    store: str | None = None
    #: The path object the snapshot was written to or read from: it carries the storage connection
    #: (``s3://conn_id@bucket/...`` in ``uri`` is not readable without it). Not serialized.
    root: Any = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(replace(self, root=None))
        del data["root"]
        return data

    def path(self) -> Any:
        return self.root if self.root is not None else as_path(self.uri)

    def batch_store(self) -> BatchStore | None:
        """The batch store its batches are read from (``None`` for a snapshot of per-run copies)."""
        return None if self.store is None else resolve_store(self.path(), self.store)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Snapshot:
        batches = [BatchFile(**b) for b in data["batches"]]
        return cls(**{**data, "batches": batches})

    def summary(self) -> dict[str, Any]:
        """What goes to XCom: the reference and counts, not the file list."""
        return {
            "snapshot_uri": self.uri,
            "content_hash": self.content_hash,
            "train_rows": self.train_rows,
            "eval_rows": self.eval_rows,
            "batches": len(self.batches),
            "eval_batches": [b.name for b in self.batches if b.part == "eval"],
            "skipped_batches": [s.split(":", 1)[0] for s in self.skipped],
            "unlabelled_rows": self.unlabelled_rows,
            "time_bounds": self.bounds,
        }


def read_batch(path: Any, fmt: str) -> pd.DataFrame:
    """One landed file, read through the landing zone's checks; a file that cannot be used raises
    :class:`DataError`."""
    zone = LandingZone(path, fmt)
    [batch] = zone.files()
    return zone.read_frame(batch)


def write_snapshot(
    spec: ModelSpec,
    source_uri: Any,
    dest_uri: Any,
    *,
    within: Any = None,
    run_id: str | None = None,
    store: Any = None,
    confined: bool = False,
) -> Snapshot:
    """Snapshot the training window and evaluation set of ``source_uri`` at ``dest_uri``: each batch stored as
    Parquet in the batch store ``store`` (once: a batch stored by an earlier run is not written again) and a
    manifest naming them at ``dest_uri``.

    The window is measured as the spec's ``window`` says (:class:`~mlops_airflow.core.config.WindowSpec`):
    in batches, in time (whole batches covering it, and its bounds in the manifest) or in labelled rows.
    Idempotent: an existing complete snapshot at ``dest_uri`` is returned as is, if it was written for the
    same ``run_id``; it names the bytes it read, so a batch landed again later is not seen by that run.

    :param within: the folder ``dest_uri`` must lie strictly below (the model's ``snapshots/``; default: the
        parent of ``dest_uri``); nothing outside it is ever deleted.
    :param run_id: the Airflow run the snapshot belongs to, recorded in its manifest.
    :param store: the model's batch store (``<storage>/<model>/batches``; default: ``batches`` beside
        ``within`` when it is given, which is that for ``within`` = ``<storage>/<model>/snapshots``, else
        beside ``dest_uri``). It must not lie below ``dest_uri``.
    :param confined: ``source_uri`` is a trigger's: the zone is read by the landing roots alone
        (:class:`~mlops_airflow.core.landing.LandingZone`'s ``confined``).
    """
    dest = as_path(dest_uri)
    if store is not None:
        store_path = as_path(store)
    else:  # beside the snapshots' folder (the model's), or beside the snapshot
        store_path = (dest.parent if within is None else as_path(within).parent) / STORE
    within = as_path(within) if within is not None else dest.parent
    check_below(dest, within)
    if _is_below(store_path, dest):
        raise DataError(f"{store_path}: the batch store lies inside the snapshot {dest_uri}; it must not")
    existing = read_manifest(dest)
    if existing is not None:
        if existing.run_id != run_id:
            raise DataError(
                f"{dest_uri}: snapshot belongs to run {existing.run_id!r}, not {run_id!r}; "
                "a snapshot key is never shared between runs"
            )
        return existing
    if dest.exists():  # an earlier attempt died half-way: start clean
        remove_tree(dest, within=within)

    zone = LandingZone.of(spec, source_uri, confined=confined)
    files = zone.files()
    window = spec.window
    if window.kind == "batches" and len(files) < (need := window.eval_size + 1):
        raise DataError(
            f"{source_uri}: {len(files)} batch file(s) landed, at least {need} needed "
            f"({window.eval_size} for evaluation, 1 or more for training)"
        )
    if not files:
        raise DataError(f"{source_uri}: no batch file landed")
    try:
        dest.mkdir(parents=True, exist_ok=True)
        placer = Placer(spec)
        reference = store_reference(dest, store_path)
        batches = _copy_window(placer, zone, files, dest, BatchStore(store_path), reference)
        placer.check(batches, zone, source_uri)
        snapshot = replace(_manifest(spec, placer, batches, dest, dest_uri, source_uri, run_id, zone), store=reference)
        write_whole(dest / MANIFEST, dumps(snapshot.to_dict(), indent=2))
    except BaseException:
        remove_tree(dest, within=within)  # never leave a partial snapshot behind
        raise
    with contextlib.suppress(FileNotFoundError):
        (dest / PENDING).unlink()  # the manifest names them now
    if snapshot.unlabelled_rows:
        log.info(
            "%d row(s) without a label are left out of training and evaluation: %s",
            snapshot.unlabelled_rows,
            ", ".join(f"{b.name} ({b.unlabelled})" for b in snapshot.batches if b.unlabelled),
        )
    return snapshot


def _manifest(
    spec: ModelSpec,
    placer: Placer,
    batches: list[BatchFile],
    dest: Any,
    dest_uri: Any,
    source_uri: Any,
    run_id: str | None,
    zone: LandingZone,
) -> Snapshot:
    """The snapshot's manifest: its batches, their rows used and without a label, and its content hash (the
    landed bytes of each batch in its part, and the time bounds of a window by time)."""
    digest = hashlib.sha256()
    for batch in batches:
        # The landed bytes' hash: every value, name and type is in them, and they are read once.
        read = f"{batch.part}/{batch.name}:{batch.sha256}" if batch.sha256 else f"{batch.name}:unreadable"
        digest.update(read.encode())
    bounds = placer.bounds()
    if bounds is not None:  # the same bytes cut at other days are other data
        digest.update(json.dumps(bounds, sort_keys=True).encode())
    return Snapshot(
        uri=str(dest_uri),
        content_hash=digest.hexdigest(),
        train_rows=sum(b.used_rows for b in batches if b.part == "train"),
        eval_rows=sum(b.used_rows for b in batches if b.part == "eval"),
        batches=batches,
        source_uri=str(source_uri),
        run_id=run_id,
        skipped=list(zone.skipped),
        bounds=bounds,
        label_column=spec.label.name,
        unlabelled_rows=sum(b.unlabelled for b in batches),
        root=dest,
    )


DAY = pd.Timedelta(days=1)


def row_times(values: Any) -> pd.Series:
    """A timestamp column (Arrow or pandas) as UTC moments: ISO-8601 text, dates or timestamps; a time without
    a zone is UTC. ``NaT`` where a value is missing or not an ISO-8601 time."""
    series = values if isinstance(values, pd.Series) else values.to_pandas()
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        return pd.to_datetime(series, utc=True)
    return pd.to_datetime(series.astype("object"), utc=True, errors="coerce", format="ISO8601")


def has_label(values: Any) -> Any:
    """Per row of an Arrow column, whether it holds a value (null, and NaN in a float column, do not)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    present = pc.is_valid(values)
    if pa.types.is_floating(values.type):
        present = pc.and_(present, pc.invert(pc.fill_null(pc.is_nan(values), True)))
    return np.asarray(present.to_numpy(zero_copy_only=False), dtype=bool)


@dataclass
class Placement:
    """Where one landed batch goes: its parts, and per part the rows inside its bounds and without a label."""

    parts: list[str]
    window_rows: dict[str, int | None] = field(default_factory=dict)
    unlabelled: dict[str, int] = field(default_factory=dict)
    awaiting_labels: bool = False


class Placer:
    """Decides, batch by batch from the newest, which part of the snapshot a batch goes to, as the spec's
    window says (:class:`~mlops_airflow.core.config.WindowSpec`), and when the window is full.

    A window by time ends with the day of the newest landed row (the newest batch's); a batch whose earliest
    row is at or before the training window's start is its last (batch files are named in time order).
    """

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.window = spec.window
        #: Batches (window by batches or time) or labelled rows (window by rows) taken, per part.
        self.taken = {"eval": 0, "train": 0}
        #: The day after the newest landed row (windows by time, and label delays).
        self.end: pd.Timestamp | None = None
        self.done = False
        self.needs_times = self.window.kind == "time" or spec.label.delay_days > 0
        #: Batches read without the timestamp column, and with it but no time in it (a window by time says so).
        self.timeless = {"no column": 0, "no time": 0}

    def full(self) -> bool:
        """Whether the window holds all it needs before the next batch is read."""
        if self.window.kind == "time":
            return self.done
        return self.taken["train"] >= self.window.train_size

    def current(self) -> str:
        """The part an unplaceable batch (unreadable, no time) keeps its place in."""
        if self.window.kind == "time":
            return "train" if self.taken["train"] else "eval"
        return "eval" if self.taken["eval"] < self.window.eval_size else "train"

    def bounds(self) -> dict[str, Any] | None:
        """The time bounds of a window by time (``None`` before any row had a time, or for other windows)."""
        if self.window.kind != "time" or self.end is None:
            return None
        eval_start = self.end - self.window.eval_size * DAY
        train_start = eval_start - self.window.train_size * DAY
        text = [t.isoformat() for t in (train_start, eval_start, self.end)]
        return {"column": self.spec.source.timestamp_column, "train": text[:2], "eval": text[1:]}

    def unreadable(self) -> str:
        """The part of a batch that cannot be read: it keeps its place, so that validation names it."""
        part = self.current()
        self.taken[part] += 1 if self.window.kind != "rows" else 0
        return part

    def place(self, table: Any) -> Placement:
        """The placement of one readable batch (an Arrow table), newest first."""
        import numpy as np

        n = table.num_rows
        label = self.spec.label.name
        labelled = has_label(table.column(label)) if label in table.column_names else np.ones(n, dtype=bool)
        times = self._times(table)
        awaiting = False
        if times is not None and self.end is not None and self.spec.label.delay_days and times.notna().any():
            awaiting = bool(times.max() >= self.end - self.spec.label.delay_days * DAY)
        if self.window.kind != "time":
            part = self.current()
            self.taken[part] += int(labelled.sum()) if self.window.kind == "rows" else 1
            return Placement([part], {part: None}, {part: int((~labelled).sum())}, awaiting)
        return self._place_in_time(times, labelled, awaiting)

    def _times(self, table: Any) -> pd.Series | None:
        column = self.spec.source.timestamp_column
        if not self.needs_times:
            return None
        if column not in table.column_names:
            self.timeless["no column"] += 1
            return None
        times = row_times(table.column(column))
        if not times.notna().any():
            self.timeless["no time"] += 1
        if self.end is None and times.notna().any():
            self.end = times.max().floor("D") + DAY
        return times

    def _place_in_time(self, times: pd.Series | None, labelled: Any, awaiting: bool) -> Placement:
        bounds = self.bounds()
        if times is None or bounds is None or not times.notna().any():
            part = self.current()  # no time to place it by: it keeps its place, and validation names it
            return Placement([part], {part: 0}, {part: 0}, awaiting)
        placement = Placement([], awaiting_labels=awaiting)
        for part in ("eval", "train"):
            start, stop = (pd.Timestamp(t) for t in bounds[part])
            inside = ((times >= start) & (times < stop)).to_numpy()
            if inside.any():
                placement.parts.append(part)
                placement.window_rows[part] = int(inside.sum())
                placement.unlabelled[part] = int((inside & ~labelled).sum())
                self.taken[part] += 1
        if times.min() <= pd.Timestamp(bounds["train"][0]):
            self.done = True  # older batches hold older rows
        return placement

    def check(self, batches: list[BatchFile], zone: LandingZone, source_uri: Any) -> None:
        """Refuse a snapshot without a training batch, or without the rows a window by rows needs."""
        train = [b for b in batches if b.part == "train"]
        evaluation = [b for b in batches if b.part == "eval"]
        kind = self.window.kind
        if kind == "batches" and len(batches) < self.window.eval_size + 1:
            raise zone.shortage(len(batches), self.window.eval_size + 1)
        if kind == "rows" and self.taken["eval"] < self.window.eval_size:
            raise DataError(
                f"{source_uri}: {len(evaluation)} whole batch(es) landed, holding {self.taken['eval']} labelled "
                f"row(s); window.eval_rows needs {self.window.eval_size} for evaluation and 1 or more batch(es) "
                "before them for training"
            )
        if kind == "time" and self.end is None and any(self.timeless.values()):
            column = self.spec.source.timestamp_column
            lacking, empty = self.timeless["no column"], self.timeless["no time"]
            found = ", ".join(
                text
                for n, text in ((lacking, f"{lacking} lack the column"), (empty, f"{empty} hold no time in it"))
                if n
            )
            raise DataError(
                f"{source_uri}: no batch holds a time in column {column!r} (source.timestamp_column"
                f"{', the default' if 'timestamp_column' not in self.spec.source.model_fields_set else ''}), which a "
                f"window in days needs ({self.window.describe()}): of the batches read, {found}; name the column "
                "that holds each row's time in source.timestamp_column, or use a window by batches or rows",
                rule="timestamp_column",
                column=column,
            )
        if not train or not evaluation:
            bounds = self.bounds()
            where = f" (training window {bounds['train'][0]} to {bounds['train'][1]})" if bounds else ""
            raise DataError(
                f"{source_uri}: {len(evaluation)} batch(es) for evaluation and {len(train)} for training"
                f"{where}; a snapshot needs 1 or more of each ({self.window.describe()})"
            )


def _copy_window(
    placer: Placer, zone: LandingZone, files: list[Any], dest: Any, store: BatchStore, reference: str
) -> list[BatchFile]:
    """Put the newest whole batches in the batch store as Parquet, newest first, as ``placer`` places them,
    until the window is full; a batch already stored is not written again. A refused or unreadable file keeps
    its place (validation fails on it); a batch not yet whole is skipped, or fails, as the landing protocol
    says. A batch with rows in both parts of a window by time is stored once and listed in both.

    Each batch's hash goes to ``dest``'s ``pending.json`` before the store is looked at, so that retention
    running meanwhile keeps it (:func:`~mlops_airflow.core.batch_store.collect_garbage`).

    :param reference: where the store is, as the manifest records it (relative to ``dest``, or a URI).
    :returns: the batches, training oldest first, then evaluation oldest first.
    """
    chosen: list[BatchFile] = []
    taken: list[str] = []
    written = 0
    reads = zone.newest(len(files), files)
    while not placer.full():
        try:
            path, outcome = next(reads)
        except StopIteration:
            break
        if isinstance(outcome, DataError):
            unread = BatchFile(
                path.name,
                str(path),
                placer.unreadable(),
                read_error=str(outcome),
                read_rule=outcome.rule,
                read_column=outcome.column,
            )
            chosen.append(unread)
            continue
        table, file_hash = outcome
        placement = placer.place(table)
        if not placement.parts:
            log.warning("%s: no row inside the window (%s); not used", path.name, placer.window.describe())
        else:
            digest, size = encode(table)
            taken.append(digest)
            _write_pending(dest, taken)
            stored = store.put(table, digest, size)
            written += stored.written
            target = f"{reference}/{stored.digest}.parquet"
            columns = [str(c) for c in table.column_names]
            for part in placement.parts:
                chosen.append(
                    BatchFile(
                        path.name,
                        str(path),
                        part,
                        table.num_rows,
                        columns,
                        target,
                        sha256=file_hash,
                        window_rows=placement.window_rows.get(part),
                        unlabelled=placement.unlabelled.get(part, 0),
                        awaiting_labels=placement.awaiting_labels,
                        batch_hash=stored.digest,
                    )
                )
        del table, outcome
    log.info("batch store %s: %d batch(es) written, %d already stored", store.root, written, len(taken) - written)
    return [b for b in reversed(chosen) if b.part == "train"] + [b for b in reversed(chosen) if b.part == "eval"]


def write_whole(path: Any, text: str) -> None:
    """Write ``text`` to ``path`` so that no reader, and no process killed half-way, ever leaves part of it
    under that name: a temporary name beside it, synced, then renamed (an object-store put is whole already)."""
    local = _local(path)
    if local is None:
        path.write_text(text)
        return
    folder, name = os.path.split(local)
    temp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, local)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)
        raise


def write_parquet(table: Any, out: Any) -> None:
    """Write an Arrow table to ``out`` (a path object of any filesystem) as one Parquet file."""
    import pyarrow.parquet as pq

    with out.open("wb") as fh:
        pq.write_table(table, fh)


def read_manifest(dest_uri: Any) -> Snapshot | None:
    manifest = as_path(dest_uri) / MANIFEST
    if not manifest.exists():
        return None
    return replace(Snapshot.from_dict(json.loads(manifest.read_text())), root=as_path(dest_uri))


def _location(path: Any) -> tuple[str, list[str]]:
    """Protocol and path segments of a path object, as the filesystem will see them (no normalisation)."""
    protocol = getattr(path, "protocol", "") or "file"
    text = getattr(path, "path", None) or str(path)
    return ("file" if protocol in {"file", "local"} else str(protocol)), str(text).split("/")


def _is_below(path: Any, root: Any) -> bool:
    """Whether ``path`` is ``root`` or lies below it (same filesystem)."""
    protocol, segments = _location(as_path(path))
    root_protocol, root_segments = _location(as_path(root))
    segments = [s for s in segments if s]
    root_segments = [s for s in root_segments if s]
    return protocol == root_protocol and segments[: len(root_segments)] == root_segments


def check_below(path: Any, root: Any) -> None:
    """Raise :class:`DataError` unless ``path`` lies strictly below ``root`` with no ``.``/``..`` segment."""
    protocol, segments = _location(as_path(path))
    root_protocol, root_segments = _location(as_path(root))
    if {".", ".."} & set(segments + root_segments):
        raise DataError(f"{path}: a '.' or '..' segment in a snapshot path (below {root}) is not allowed")
    segments = [s for s in segments if s]
    root_segments = [s for s in root_segments if s]
    if (
        protocol != root_protocol
        or len(segments) <= len(root_segments)
        or segments[: len(root_segments)] != root_segments
    ):
        raise DataError(f"{path}: not strictly below {root}; refusing to write or delete there")


def remove_tree(path: Any, *, within: Any) -> None:
    """Delete ``path`` and everything below it, only if it lies strictly below ``within``."""
    path = as_path(path)
    check_below(path, within)
    if not path.exists():
        return
    fs = getattr(path, "fs", None)
    if fs is not None:
        fs.rm(path.path, recursive=True)
    else:  # plain pathlib
        import shutil

        shutil.rmtree(path)


def read_snapshot_file(
    snapshot: Snapshot, batch: BatchFile, columns: list[str] | None = None, categorical: Iterable[str] = ()
) -> Any:
    """One batch of a snapshot as an Arrow table (only ``columns`` when given: Parquet reads no other): from
    the batch store (its bytes checked against its hash), or, in a snapshot written before the store, from
    its copy under the snapshot's prefix.

    :param categorical: text columns to dictionary-encode (pandas reads them as categoricals).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if batch.snapshot_file is None:
        raise DataError(f"{batch.source}: {batch.read_error}")
    store = snapshot.batch_store() if batch.batch_hash else None
    if store is not None and batch.batch_hash:
        table = store.read_table(batch.batch_hash, columns)
    else:
        with (snapshot.path() / batch.snapshot_file).open("rb") as fh:
            table = pq.read_table(fh, columns=columns)
    wanted = set(categorical)
    for index, column in enumerate(table.schema):
        if column.name in wanted and (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            table = table.set_column(index, column.name, table.column(index).dictionary_encode())
    return table


def concat_frame(tables: list[Any]) -> pd.DataFrame:
    """Arrow tables as one pandas frame, converted once; tables whose types differ go through pandas."""
    import pyarrow as pa

    if len({t.schema.remove_metadata() for t in tables}) == 1:
        return pa.concat_tables(tables).to_pandas(split_blocks=True, self_destruct=True)
    return pd.concat([t.to_pandas() for t in tables], ignore_index=True)


def used_rows(
    snapshot: Snapshot, batch: BatchFile, columns: list[str] | None = None, categorical: Iterable[str] = ()
) -> Any:
    """The rows of one snapshot file its part uses, as an Arrow table: inside the part's time bounds (a window
    by time) and with a label. The columns these rules read are read too, and dropped unless asked for."""
    import pyarrow as pa

    window = snapshot.bounds or {}
    bounds = window.get(batch.part)
    time_column = window["column"] if bounds and batch.window_rows != batch.rows else None
    label = snapshot.label_column if batch.unlabelled else None
    extra = [c for c in dict.fromkeys([time_column, label]) if c and columns is not None and c not in columns]
    table = read_snapshot_file(snapshot, batch, None if columns is None else [*columns, *extra], categorical)
    keep = None
    if time_column is not None and bounds is not None:
        times = row_times(table.column(time_column))
        keep = ((times >= pd.Timestamp(bounds[0])) & (times < pd.Timestamp(bounds[1]))).to_numpy()
    if label is not None:
        labelled = has_label(table.column(label))
        keep = labelled if keep is None else keep & labelled
    if keep is not None:
        table = table.filter(pa.array(keep))
    return table.drop_columns(extra) if extra else table


def load_part(
    snapshot: Snapshot, part: str, columns: list[str] | None = None, categorical: Iterable[str] = ()
) -> pd.DataFrame:
    """The training (``train``) or evaluation (``eval``) set of a snapshot as one frame: the rows of its
    batches inside the part's time bounds and with a label (:func:`used_rows`).

    :param columns: read only these columns (the others are never read from the Parquet files).
    :param categorical: text columns that come back as pandas categoricals: one copy of each distinct text
        instead of one string object per row (a million rows of a text column: ~8 MB instead of ~60 MB).
    """
    import pyarrow as pa

    categorical = list(categorical)
    tables = [used_rows(snapshot, b, columns, categorical) for b in snapshot.batches if b.part == part]
    if not tables:
        raise DataError(f"{snapshot.uri}: snapshot has no {part} batches")
    frame = concat_frame(tables)
    del tables
    # The Arrow buffers are gone; hand their pages back rather than keep them pooled for the task's lifetime.
    pa.default_memory_pool().release_unused()
    return frame


def load_batch(snapshot: Snapshot, batch: BatchFile) -> pd.DataFrame:
    return read_snapshot_file(snapshot, batch).to_pandas()


def split_xy(spec: ModelSpec, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Features (in spec order, categorical as strings) and label."""
    x = frame[spec.feature_names].copy()
    # Numeric features as float: an integer column with one missing value would break the model signature.
    for name in spec.numeric_features:
        x[name] = pd.to_numeric(x[name], errors="coerce").astype("float64")
    for name in spec.categorical_features:
        x[name] = x[name].astype("object").where(x[name].notna(), None)
    return x, frame[spec.label.name]
