"""Landing zone and snapshots.

A snapshot is the immutable, content-hashed copy of one run's training window and evaluation set, written
as Parquet under the run's own prefix. Every later task reads the snapshot, never the landing zone, so a
retry sees exactly the data the first try saw. ``manifest.json`` is written last: a prefix without it is
an unfinished snapshot and is removed before a new attempt.

Landed files are read through :mod:`~mlops_airflow.core.landing` (listed, confined to the landing roots,
checked whole and under the size cap) and go to the snapshot as Arrow tables (pyarrow's multi-threaded CSV
reader, no pandas in between). Each file's SHA-256 is taken from the bytes already read: the snapshot's
content hash needs no re-read, and a landed file's verdict can be reused by its hash
(:mod:`~mlops_airflow.core.validation`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import pandas as pd

from mlops_airflow.core.config import ModelSpec
from mlops_airflow.core.landing import DataError, LandingZone, as_path

MANIFEST = "manifest.json"


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
    #: The path object the snapshot was written to or read from: it carries the storage connection
    #: (``s3://conn_id@bucket/...`` in ``uri`` is not readable without it). Not serialized.
    root: Any = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(replace(self, root=None))
        del data["root"]
        return data

    def path(self) -> Any:
        return self.root if self.root is not None else as_path(self.uri)

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
        }


def read_batch(path: Any, fmt: str) -> pd.DataFrame:
    """One landed file, read through the landing zone's checks; a file that cannot be used raises
    :class:`DataError`."""
    zone = LandingZone(path, fmt)
    [batch] = zone.files()
    return zone.read_frame(batch)


def write_snapshot(
    spec: ModelSpec, source_uri: Any, dest_uri: Any, *, within: Any = None, run_id: str | None = None
) -> Snapshot:
    """Copy the training window and evaluation set of ``source_uri`` to ``dest_uri`` as Parquet.

    The newest ``window.eval_batches`` files are the evaluation set, the ``window.train_batches`` before
    them the training window. Idempotent: an existing complete snapshot at ``dest_uri`` is returned as is,
    if it was written for the same ``run_id``.

    :param within: the folder ``dest_uri`` must lie strictly below (the model's ``snapshots/``; default: the
        parent of ``dest_uri``); nothing outside it is ever deleted.
    :param run_id: the Airflow run the snapshot belongs to, recorded in its manifest.
    """
    dest = as_path(dest_uri)
    within = as_path(within) if within is not None else dest.parent
    check_below(dest, within)
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

    zone = LandingZone.of(spec, source_uri)
    files = zone.files()
    need = spec.window.eval_batches + 1
    if len(files) < need:
        raise DataError(
            f"{source_uri}: {len(files)} batch file(s) landed, at least {need} needed "
            f"({spec.window.eval_batches} for evaluation, 1 or more for training)"
        )
    try:
        dest.mkdir(parents=True, exist_ok=True)
        batches = _copy_window(spec, zone, files, dest)
        if len(batches) < need:
            raise zone.shortage(len(batches), need)
        digest = hashlib.sha256()
        for batch in batches:
            # The landed bytes' hash: every value, name and type is in them, and they are read once.
            read = f"{batch.part}/{batch.name}:{batch.sha256}" if batch.sha256 else f"{batch.name}:unreadable"
            digest.update(read.encode())
        snapshot = Snapshot(
            uri=str(dest_uri),
            content_hash=digest.hexdigest(),
            train_rows=sum(b.rows for b in batches if b.part == "train"),
            eval_rows=sum(b.rows for b in batches if b.part == "eval"),
            batches=batches,
            source_uri=str(source_uri),
            run_id=run_id,
            skipped=list(zone.skipped),
            root=dest,
        )
        (dest / MANIFEST).write_text(json.dumps(snapshot.to_dict(), indent=2))
    except BaseException:
        remove_tree(dest, within=within)  # never leave a partial snapshot behind
        raise
    return snapshot


def _copy_window(spec: ModelSpec, zone: LandingZone, files: list[Any], dest: Any) -> list[BatchFile]:
    """Copy the newest whole batches to ``dest`` as Parquet, newest first: ``window.eval_batches`` for
    evaluation, then up to ``window.train_batches`` for training. A refused or unreadable file keeps its place
    (validation fails on it); a batch not yet whole is skipped, or fails, as the landing protocol says.

    :returns: the batches, training oldest first, then evaluation oldest first.
    """
    eval_batches, window = spec.window.eval_batches, spec.window.eval_batches + spec.window.train_batches
    chosen: list[BatchFile] = []
    for path, outcome in zone.newest(window, files):
        part = "eval" if len(chosen) < eval_batches else "train"
        if isinstance(outcome, DataError):
            unread = BatchFile(
                path.name, str(path), part, read_error=str(outcome), read_rule=outcome.rule, read_column=outcome.column
            )
            chosen.append(unread)
            continue
        table, file_hash = outcome
        target = f"{part}/{path.name.rsplit('.', 1)[0]}.parquet"
        out = dest / target
        out.parent.mkdir(parents=True, exist_ok=True)
        write_parquet(table, out)
        columns = [str(c) for c in table.column_names]
        chosen.append(BatchFile(path.name, str(path), part, table.num_rows, columns, target, sha256=file_hash))
        del table, outcome
    return [b for b in reversed(chosen) if b.part == "train"] + [b for b in reversed(chosen) if b.part == "eval"]


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
    """One snapshot file as an Arrow table (only ``columns`` when given: Parquet reads no other).

    :param categorical: text columns to dictionary-encode (pandas reads them as categoricals).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if batch.snapshot_file is None:
        raise DataError(f"{batch.source}: {batch.read_error}")
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


def load_part(
    snapshot: Snapshot, part: str, columns: list[str] | None = None, categorical: Iterable[str] = ()
) -> pd.DataFrame:
    """The training (``train``) or evaluation (``eval``) set of a snapshot as one frame.

    :param columns: read only these columns (the others are never read from the Parquet files).
    :param categorical: text columns that come back as pandas categoricals: one copy of each distinct text
        instead of one string object per row (a million rows of a text column: ~8 MB instead of ~60 MB).
    """
    import pyarrow as pa

    categorical = list(categorical)
    tables = [read_snapshot_file(snapshot, b, columns, categorical) for b in snapshot.batches if b.part == part]
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
