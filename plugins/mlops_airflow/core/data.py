"""Landing zone and snapshots.

A snapshot is the immutable, content-hashed copy of one run's training window and evaluation set, written
as Parquet under the run's own prefix. Every later task reads the snapshot, never the landing zone, so a
retry sees exactly the data the first try saw. ``manifest.json`` is written last: a prefix without it is
an unfinished snapshot and is removed before a new attempt.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
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


def read_batch(path: Any, fmt: str) -> pd.DataFrame:
    """Read one batch; a file that is not a readable CSV/Parquet table raises :class:`DataError`."""
    suffix = "." + path.name.rsplit(".", 1)[-1].lower() if "." in path.name else ""
    kind = SUPPORTED_SUFFIXES.get(suffix, fmt)
    raw = path.read_bytes()
    if not raw:
        raise DataError(f"{path}: file is empty (0 bytes)")
    try:
        if kind == "parquet":
            return pd.read_parquet(io.BytesIO(raw))
        text = raw.decode("utf-8")
        return pd.read_csv(io.StringIO(text))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a {kind.upper()} file (bytes are not UTF-8 text)") from None
    except Exception as err:  # pandas/pyarrow raise many parser error types
        raise DataError(f"{path}: not a readable {kind.upper()} file: {err}") from None


def frame_hash(frame: pd.DataFrame) -> str:
    """SHA-256 over a frame's full content: column names, dtypes and every value."""
    digest = hashlib.sha256()
    digest.update(json.dumps([[str(c), str(t)] for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


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
                    frame = read_batch(path, spec.source.format)
                except DataError as err:
                    batches.append(BatchFile(path.name, str(path), part, read_error=str(err)))
                    digest.update(f"{path.name}:unreadable".encode())
                    continue
                target = f"{part}/{path.name.rsplit('.', 1)[0]}.parquet"
                out = dest / target
                out.parent.mkdir(parents=True, exist_ok=True)
                with out.open("wb") as fh:
                    frame.to_parquet(fh, index=False)
                digest.update(f"{part}/{path.name}:".encode())
                digest.update(frame_hash(frame).encode())
                batches.append(
                    BatchFile(path.name, str(path), part, len(frame), [str(c) for c in frame.columns], target)
                )
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


def load_part(snapshot: Snapshot, part: str) -> pd.DataFrame:
    """The training (``train``) or evaluation (``eval``) set of a snapshot as one frame."""
    root = snapshot.path()
    frames = []
    for batch in snapshot.batches:
        if batch.part != part:
            continue
        if batch.snapshot_file is None:
            raise DataError(f"{batch.source}: {batch.read_error}")
        with (root / batch.snapshot_file).open("rb") as fh:
            frames.append(pd.read_parquet(fh))
    if not frames:
        raise DataError(f"{snapshot.uri}: snapshot has no {part} batches")
    return pd.concat(frames, ignore_index=True)


def load_batch(snapshot: Snapshot, batch: BatchFile) -> pd.DataFrame:
    with (snapshot.path() / str(batch.snapshot_file)).open("rb") as fh:
        return pd.read_parquet(fh)


def split_xy(spec: ModelSpec, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Features (in spec order, categorical as strings) and label."""
    x = frame[spec.feature_names].copy()
    # Numeric features as float: an integer column with one missing value would break the model signature.
    for name in spec.numeric_features:
        x[name] = pd.to_numeric(x[name], errors="coerce").astype("float64")
    for name in spec.categorical_features:
        x[name] = x[name].astype("object").where(x[name].notna(), None)
    return x, frame[spec.label.name]
