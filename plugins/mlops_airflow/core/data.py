"""Landing zone and snapshots.

A snapshot is the immutable, content-hashed copy of one run's training window and evaluation set, written
as Parquet under the run's own prefix. Every later task reads the snapshot, never the landing zone, so a
retry sees exactly the data the first try saw. ``manifest.json`` is written last: a prefix without it is
an unfinished snapshot and is removed before a new attempt.

Landed files go to the snapshot as Arrow tables (pyarrow's multi-threaded CSV reader, no pandas in between),
and each file's SHA-256 is taken from the bytes already read: the snapshot's content hash needs no re-read,
and a landed file's verdict can be reused by its hash (:mod:`~mlops_airflow.core.validation`).
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

MANIFEST = "manifest.json"
SUPPORTED_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


class DataError(ValueError):
    """Data that cannot be used; the message names the file and what is wrong."""


def as_path(uri: Any) -> Any:
    """A pathlib-like object for a URI or path (``ObjectStoragePath`` objects pass through)."""
    if isinstance(uri, str):
        from upath import UPath

        return UPath(uri)
    return uri


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
        }


def list_batches(source_uri: Any, fmt: str) -> list[Any]:
    """Landed batch files, oldest first (batch files are named so that name order is time order)."""
    root = as_path(source_uri)
    if not root.exists():
        raise DataError(f"{source_uri}: landing zone does not exist")
    if root.is_file():
        return [root]
    files = [p for p in root.iterdir() if p.is_file() and not p.name.startswith((".", "_"))]
    return sorted(files, key=lambda p: p.name)


#: Bumped when the way a landed file becomes a table changes: a verdict about a file read the old way is not
#: reused (part of the validation cache key).
READER_VERSION = "arrow-1"


def _csv_table(raw: bytes) -> Any:
    """A CSV file as an Arrow table, typed as ``pandas.read_csv`` would type it.

    Multi-threaded pyarrow reader; an empty text field is missing (not ``""``), dates stay text (the
    timestamp column is compared as ISO text) and an all-missing column is float (as pandas reads it).
    """
    import pyarrow as pa
    from pyarrow import csv

    table = csv.read_csv(pa.py_buffer(raw), convert_options=csv.ConvertOptions(strings_can_be_null=True))
    for index, column in enumerate(table.schema):
        kind = column.type
        if pa.types.is_date(kind) or pa.types.is_timestamp(kind) or pa.types.is_time(kind):
            table = table.set_column(index, column.name, table.column(index).cast(pa.string()))
        elif pa.types.is_null(kind):
            table = table.set_column(index, column.name, table.column(index).cast(pa.float64()))
    return table


def read_table(path: Any, fmt: str) -> tuple[Any, str]:
    """One batch as an Arrow table and the SHA-256 of its bytes; an unreadable file raises :class:`DataError`."""
    suffix = "." + path.name.rsplit(".", 1)[-1].lower() if "." in path.name else ""
    kind = SUPPORTED_SUFFIXES.get(suffix, fmt)
    raw = path.read_bytes()
    if not raw:
        raise DataError(f"{path}: file is empty (0 bytes)")
    digest = hashlib.sha256(raw).hexdigest()
    try:
        if kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            return pq.read_table(pa.py_buffer(raw)), digest
        raw.decode("utf-8")  # the reader's own message about bad UTF-8 names no byte offset
        return _csv_table(raw), digest
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a {kind.upper()} file (bytes are not UTF-8 text)") from None
    except Exception as err:  # pyarrow raises many parser error types
        raise DataError(f"{path}: not a readable {kind.upper()} file: {err}") from None


def read_batch(path: Any, fmt: str) -> pd.DataFrame:
    """Read one batch; a file that is not a readable CSV/Parquet table raises :class:`DataError`."""
    return read_table(path, fmt)[0].to_pandas()


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

    files = list_batches(source_uri, spec.source.format)
    need = spec.window.eval_batches + 1
    if len(files) < need:
        raise DataError(
            f"{source_uri}: {len(files)} batch file(s) landed, at least {need} needed "
            f"({spec.window.eval_batches} for evaluation, 1 or more for training)"
        )
    eval_files = files[-spec.window.eval_batches :]
    train_files = files[-(spec.window.eval_batches + spec.window.train_batches) : -spec.window.eval_batches]

    batches: list[BatchFile] = []
    digest = hashlib.sha256()
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for part, group in (("train", train_files), ("eval", eval_files)):
            for path in group:
                try:
                    table, file_hash = read_table(path, spec.source.format)
                except DataError as err:
                    batches.append(BatchFile(path.name, str(path), part, read_error=str(err)))
                    digest.update(f"{path.name}:unreadable".encode())
                    continue
                target = f"{part}/{path.name.rsplit('.', 1)[0]}.parquet"
                out = dest / target
                out.parent.mkdir(parents=True, exist_ok=True)
                write_parquet(table, out)
                # The landed bytes' hash: every value, name and type is in them, and they are read once.
                digest.update(f"{part}/{path.name}:".encode())
                digest.update(file_hash.encode())
                batches.append(
                    BatchFile(
                        path.name,
                        str(path),
                        part,
                        table.num_rows,
                        [str(c) for c in table.column_names],
                        target,
                        sha256=file_hash,
                    )
                )
                del table
        snapshot = Snapshot(
            uri=str(dest_uri),
            content_hash=digest.hexdigest(),
            train_rows=sum(b.rows for b in batches if b.part == "train"),
            eval_rows=sum(b.rows for b in batches if b.part == "eval"),
            batches=batches,
            source_uri=str(source_uri),
            run_id=run_id,
            root=dest,
        )
        (dest / MANIFEST).write_text(json.dumps(snapshot.to_dict(), indent=2))
    except BaseException:
        remove_tree(dest, within=within)  # never leave a partial snapshot behind
        raise
    return snapshot


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
