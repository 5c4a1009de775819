"""The landing zone: the one door through which tasks read landed batch files.

Every reader of landed data (the ``snapshot`` task, ``predict_<model>``'s scoring, ``monitor_<model>``'s
recent batches) goes through :class:`LandingZone`, which, for each batch file:

1. **lists** it: a visible file (no leading ``.`` or ``_``) directly in the zone, oldest first by name;
2. **confines** it: a local path is resolved (symlinks followed) and refused unless it stays inside the zone
   or an allowed landing root (``MLOPS_DATA_ROOT``, ``MLOPS_ALLOWED_DATA_ROOTS``; never the package's own
   storage), before a byte of it is read, and checked again on the opened descriptor (the file listed, and
   where the descriptor leads), so a folder swapped for a symlink in between reads nothing outside. A trigger's
   zone (``confined``) is itself held to those roots. Object stores have no symlinks: keys are read as listed;
3. **checks it is whole**, as the model's landing protocol (``source.landing``) defines it: settled for
   ``settle_seconds``, covered by a ``_SUCCESS`` marker or by ``_MANIFEST.json`` (row count and SHA-256), and
   unchanged between listing and reading;
4. **checks its size** against ``source.max_file_bytes`` (default ``MLOPS_MAX_FILE_BYTES``, else 2 GiB)
   before reading it, and never reads past it;
5. **reads** it once, takes the SHA-256 of those bytes and parses them as an Arrow table whose column names
   are unique.

A file that breaks a rule raises :class:`RefusedFile`, whose message names the file, the column where there
is one, and the rule. A batch that is not whole yet is skipped with a warning naming it, or raises
:class:`IncompleteBatch`, as ``source.landing.on_incomplete`` says.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import logging
import os
import stat
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlops_airflow.core import settings
from mlops_airflow.core.encoding import dumps
from mlops_airflow.core.errors import MlopsError

if TYPE_CHECKING:
    from mlops_airflow.core.spec import LandingSpec, ModelSpec

log = logging.getLogger(__name__)

#: How a landed file is opened: never through a final symlink, and never waiting (a FIFO swapped in for a file
#: would block an ordinary open until someone writes to it).
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
SUPPORTED_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
SUCCESS_MARKER = "_SUCCESS"
MANIFEST_NAME = "_MANIFEST.json"
#: Bumped when the way a landed file becomes a table changes: a verdict about a file read the old way is not
#: reused (part of the validation cache key).
READER_VERSION = "arrow-1"


class DataError(MlopsError, ValueError):
    """Data that cannot be used; the message names the file and what is wrong.

    :param rule: the rule the data broke (``readable_table`` unless a more precise one applies).
    :param column: the column it concerns, where there is one.
    """

    def __init__(self, message: str, *, rule: str = "readable_table", column: str | None = None) -> None:
        super().__init__(message)
        self.rule = rule
        self.column = column


class MissingZone(DataError):
    """The landing zone itself does not exist."""


class RefusedFile(DataError):
    """A landed file that is never read as data: outside the landing roots, too large, or ambiguous."""


class IncompleteBatch(DataError):
    """A batch that is not (yet) whole by the landing protocol: still being written, or not covered."""


def as_path(uri: Any) -> Any:
    """A pathlib-like object for a URI or path (``ObjectStoragePath`` objects pass through)."""
    if isinstance(uri, str):
        from upath import UPath

        return UPath(uri)
    return uri


def _local(path: Any) -> str | None:
    """The local filesystem path of a path object, ``None`` for an object store."""
    protocol = getattr(path, "protocol", "") or ""
    if protocol not in {"", "file", "local"}:
        return None
    return str(getattr(path, "path", None) or path)


def _mtime(info: dict[str, Any]) -> float | None:
    """Last modification of an fsspec ``info`` entry, in seconds since the epoch (``None``: not known)."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified"):
        value = info.get(key)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, dt.datetime):
            return value.timestamp()
        if isinstance(value, str):
            try:
                return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


@dataclass(frozen=True)
class LandedFile:
    """One listed batch file: what listing saw of it, and why it cannot be used (if so)."""

    path: Any
    name: str
    size: int | None = None
    mtime: float | None = None
    #: The resolved local file that is read (``None`` on an object store).
    local: str | None = None
    #: Why the file is refused unread (it leads outside the landing roots).
    refused: str | None = None
    #: Device and inode of the local file listing stat-ed: the file opened for reading must be this one.
    ident: tuple[int, int] | None = None

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class Expected:
    """What ``_MANIFEST.json`` says a whole batch holds."""

    rows: int
    sha256: str


@dataclass
class LandingZone:
    """A landing zone (a folder, or one file) and the rules its batches are read by.

    :param root: a path or URI (``ObjectStoragePath`` objects carry their storage connection).
    :param fmt: the spec's format, for files without a known suffix.
    :param rules: the model's ``source.landing`` (``None``: no protocol, no settling).
    :param cap: the size cap of one file in bytes (``None``: the deployment's).
    :param confined: the zone itself is untrusted (a trigger's ``data_uri``): it must resolve inside an allowed
        landing root when it is listed, and its files are admitted by those roots alone, so a zone swapped for
        a symlink after the trigger was checked reads nothing outside them. ``False`` (a spec's reviewed
        ``source.uri``): the zone's own folder is trusted wherever it resolves.
    """

    root: Any
    fmt: str = "csv"
    rules: LandingSpec | None = None
    cap: int | None = None
    confined: bool = False
    #: Batches left out as not yet whole, ``name: reason`` (filled while reading).
    skipped: list[str] = field(default_factory=list)
    #: The size cap in force (``cap``, else the deployment's).
    max_bytes: int = field(init=False)
    _protocol_state: tuple[float | None, dict[str, Expected] | None] | None = field(default=None, repr=False)
    _allowed: tuple[Any, list[Any], list[Any]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.root = as_path(self.root)
        self.max_bytes = self.cap if self.cap is not None else settings.max_file_bytes()

    @classmethod
    def of(cls, spec: ModelSpec, root: Any, fmt: str | None = None, *, confined: bool = False) -> LandingZone:
        """The zone at ``root`` read by ``spec``'s landing protocol and size cap (``confined``: see the class)."""
        source = spec.source
        return cls(root, fmt or source.format, source.landing, source.max_file_bytes, confined=confined)

    @property
    def protocol(self) -> str:
        return self.rules.protocol if self.rules is not None else "none"

    @property
    def on_incomplete(self) -> str:
        return self.rules.on_incomplete if self.rules is not None else "skip"

    # -- list ---------------------------------------------------------------------------------------------

    def files(self) -> list[LandedFile]:
        """The zone's batch files, oldest first (batch files are named so that name order is time order).

        Nothing is read: local files are resolved and stat-ed, object-store keys listed with their size.
        """
        local = _local(self.root)
        found: list[LandedFile | None]
        if local is not None:
            if not os.path.exists(local):
                raise MissingZone(f"{self.root}: landing zone does not exist")
            if self.confined and not self._confined(os.path.realpath(local)):
                raise RefusedFile(
                    f"{self.root}: resolves to {os.path.realpath(local)}, outside the allowed landing roots "
                    f"({self._roots_text()}); not listed",
                    rule="landing_root",
                )
            if os.path.isfile(local):
                found = [self._landed_local(self.root, local)]
            else:
                found = [self._landed_local(self.root / os.path.basename(e), e) for e in self._scan(local)]
        else:
            invalidate = getattr(self.root.fs, "invalidate_cache", None)
            if invalidate is not None:  # a listing cached by an earlier read would hide what landed since
                invalidate(str(self.root.path))
            if not self.root.exists():
                raise MissingZone(f"{self.root}: landing zone does not exist")
            found = list(self._list_remote())
        files = sorted((f for f in found if f is not None), key=lambda f: f.name)
        self._protocol_state = None  # a fresh listing sees the marker or manifest as it is now
        self._protocol()  # a manifest that cannot be read fails the listing, not one batch
        return files

    @staticmethod
    def _scan(folder: str) -> list[str]:
        with os.scandir(folder) as entries:
            return [e.path for e in entries if not e.name.startswith((".", "_"))]

    def _landed_local(self, path: Any, entry: str) -> LandedFile | None:
        name = os.path.basename(entry)
        resolved = os.path.realpath(entry)
        if not self._confined(resolved):  # decided on the path alone: the target is not even stat-ed
            refused = (
                f"{path}: resolves outside the allowed landing roots ({self._roots_text()}); a landed file, or the "
                "file its symlink names, must stay inside them; not read"
            )
            return LandedFile(path, name, refused=refused)
        try:
            info = os.stat(resolved)
        except OSError:  # vanished since listing, or a dangling symlink: nothing to read
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        return LandedFile(path, name, info.st_size, info.st_mtime, local=resolved, ident=(info.st_dev, info.st_ino))

    def _list_remote(self) -> list[LandedFile]:
        fs, base = self.root.fs, str(self.root.path).rstrip("/")
        info = fs.info(base)
        if info.get("type") == "file":
            return [LandedFile(self.root, base.rsplit("/", 1)[-1], info.get("size"), _mtime(info))]
        found = []
        for entry in fs.ls(base, detail=True):
            name = str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]
            if entry.get("type") == "file" and not name.startswith((".", "_")):
                found.append(LandedFile(self.root / name, name, entry.get("size"), _mtime(entry)))
        return found

    # -- confine ------------------------------------------------------------------------------------------

    def _confined(self, resolved: str) -> bool:
        """Inside the zone itself, or inside an allowed landing root and outside the package's storage."""
        zone, roots, storage = self._roots()
        where = settings.DataLocation("", "", resolved)
        if not self.confined and where.is_within(zone):
            return True
        return any(where.is_within(r) for r in roots) and not any(where.is_within(s) for s in storage)

    def _roots(self) -> tuple[Any, list[Any], list[Any]]:
        if self._allowed is None:
            local = _local(self.root) or ""
            try:
                roots = settings.allowed_data_roots()
                storage = [
                    settings.parse_location(settings.storage_base(), what="MLOPS_STORAGE_BASE"),
                    settings.parse_location(settings.default_artifact_root(), what="MLOPS_ARTIFACT_ROOT"),
                ]
            except settings.DataRootError as err:
                raise DataError(f"{self.root}: the landing roots cannot be checked: {err}") from None
            zone = settings.DataLocation("", "", os.path.realpath(local))
            self._allowed = (zone, roots, storage)
        return self._allowed

    def _roots_text(self) -> str:
        zone, roots, _ = self._roots()
        return ", ".join(dict.fromkeys(str(r) for r in ([] if self.confined else [zone]) + roots))

    # -- whole or not -------------------------------------------------------------------------------------

    def _protocol(self) -> tuple[float | None, dict[str, Expected] | None]:
        """The zone's ``_SUCCESS`` marker time and ``_MANIFEST.json``, as the protocol asks (read once)."""
        if self._protocol_state is None:
            local = _local(self.root)
            marker = self._marker_time(local) if self.protocol == "success_marker" else None
            manifest = self._read_manifest(local) if self.protocol == "manifest" else None
            self._protocol_state = (marker, manifest)
        return self._protocol_state

    def _companion(self, local: str | None, name: str) -> Any:
        if local is not None and os.path.isfile(local):
            return self.root.parent / name
        return self.root / name

    def _marker_time(self, local: str | None) -> float | None:
        marker = self._companion(local, SUCCESS_MARKER)
        path = _local(marker)
        try:
            if path is not None:
                return os.stat(path).st_mtime
            return _mtime(marker.fs.info(marker.path))
        except OSError:
            return None

    def _read_manifest(self, local: str | None) -> dict[str, Expected] | None:
        manifest = self._companion(local, MANIFEST_NAME)
        path = _local(manifest)
        if path is None:
            if not manifest.exists():
                return None
        elif not os.path.isfile(path):
            return None
        elif not self._confined(os.path.realpath(path)):
            raise RefusedFile(f"{manifest}: resolves outside the allowed landing roots; not read", rule="landing_root")
        if path is not None:  # checked again on the open descriptor: a swap after the check reads nothing outside
            try:
                fd = os.open(os.path.realpath(path), _READ_FLAGS)
            except OSError as err:
                message = f"{manifest}: cannot be opened ({err.strerror}); not read"
                raise RefusedFile(message, rule="landing_root") from None
            with open(fd, "rb") as fh:
                self._check_opened(LandedFile(manifest, MANIFEST_NAME), fh.fileno())
                raw = fh.read(self.max_bytes + 1)
        else:
            with manifest.open("rb") as fh:
                raw = fh.read(self.max_bytes + 1)
        if len(raw) > self.max_bytes:
            raise RefusedFile(f"{manifest}: over the cap of {self.max_bytes} bytes; not read", rule="max_file_bytes")
        return parse_manifest(raw, str(manifest))

    def incomplete(self, batch: LandedFile) -> str | None:
        """Why ``batch`` is not whole by what listing saw (``None``: it looks whole; reading checks more)."""
        settle = self.rules.settle_seconds if self.rules is not None else 0
        age = time.time() - batch.mtime if batch.mtime is not None else None
        if settle and age is not None and age < settle:
            return f"last modified {max(age, 0):.0f} s ago, under source.landing.settle_seconds={settle:g}"
        marker, manifest = self._protocol()
        if self.protocol == "success_marker":
            if marker is None:
                return f"no {SUCCESS_MARKER} marker in the zone (landing protocol 'success_marker')"
            if batch.mtime is not None and batch.mtime > marker:
                return f"modified after the {SUCCESS_MARKER} marker (landing protocol 'success_marker')"
        if self.protocol == "manifest":
            if manifest is None:
                return f"no {MANIFEST_NAME} in the zone (landing protocol 'manifest')"
            if batch.name not in manifest:
                return f"not listed in {MANIFEST_NAME} (landing protocol 'manifest')"
        return None

    # -- size, read, hash ---------------------------------------------------------------------------------

    def read_bytes(self, batch: LandedFile) -> tuple[bytes, str]:
        """``batch``'s bytes and their SHA-256, read once, by every rule of the zone but the parse.

        :raises RefusedFile: outside the landing roots, or over the size cap.
        :raises IncompleteBatch: not whole by the landing protocol, or changed while being read.
        """
        if batch.refused:
            raise RefusedFile(batch.refused, rule="landing_root")
        why = self.incomplete(batch)
        if why:
            raise IncompleteBatch(f"{batch}: {why}", rule="whole_batch")
        self._check_size(batch, batch.size)
        raw = self._read_bytes(batch)
        digest = hashlib.sha256(raw).hexdigest()
        expected = (self._protocol()[1] or {}).get(batch.name)
        if expected is not None and expected.sha256 != digest:
            raise IncompleteBatch(
                f"{batch}: its {len(raw)} bytes do not match the SHA-256 {MANIFEST_NAME} gives: "
                "not whole yet, or replaced after the manifest was written",
                rule="whole_batch",
            )
        return raw, digest

    def read(self, batch: LandedFile) -> tuple[Any, str]:
        """``batch`` as an Arrow table and the SHA-256 of its bytes, read once.

        :raises RefusedFile: outside the landing roots, over the size cap, or a column name twice.
        :raises IncompleteBatch: not whole by the landing protocol, or changed while being read.
        :raises DataError: not a readable table.
        """
        raw, digest = self.read_bytes(batch)
        expected = (self._protocol()[1] or {}).get(batch.name)
        table = parse_table(raw, self._kind(batch.name), str(batch))
        del raw
        if expected is not None and expected.rows != table.num_rows:
            raise IncompleteBatch(
                f"{batch}: {table.num_rows} rows, {MANIFEST_NAME} says {expected.rows}", rule="whole_batch"
            )
        return table, digest

    def read_frame(self, batch: LandedFile) -> Any:
        """``batch`` as a pandas frame (see :meth:`read`)."""
        return self.read(batch)[0].to_pandas()

    def _kind(self, name: str) -> str:
        suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
        return SUPPORTED_SUFFIXES.get(suffix, self.fmt)

    def _check_size(self, batch: LandedFile, size: int | None) -> None:
        if size is not None and size > self.max_bytes:
            raise RefusedFile(
                f"{batch}: {size} bytes, over the cap of {self.max_bytes} bytes per landed file "
                f"(source.max_file_bytes, else {settings.MAX_FILE_BYTES_ENV}); not read",
                rule="max_file_bytes",
            )

    def _read_bytes(self, batch: LandedFile) -> bytes:
        """The file's bytes, never more than the cap, checked unchanged since listing."""
        # One byte more than listed (or than the cap) tells a file that grew from one that did not.
        limit = (batch.size if batch.size is not None else self.max_bytes) + 1
        if batch.local is None:  # an object-store read is of one version: its length is what can differ
            with batch.path.open("rb") as fh:
                raw = fh.read(limit)
            size, mtime = len(raw), batch.mtime
        else:
            try:
                fd = os.open(batch.local, _READ_FLAGS)
            except FileNotFoundError:
                raise IncompleteBatch(f"{batch}: gone since it was listed", rule="whole_batch") from None
            except OSError as err:
                if err.errno == errno.ELOOP:  # swapped for a symlink since it was resolved
                    message = f"{batch}: became a symlink while being read; not read"
                    raise RefusedFile(message, rule="landing_root") from None
                raise DataError(f"{batch}: cannot be read: {err.strerror}") from None
            with os.fdopen(fd, "rb") as fh:
                self._check_opened(batch, fh.fileno())
                raw = fh.read(limit)
                now = os.fstat(fh.fileno())
            size, mtime = now.st_size, now.st_mtime
        self._check_size(batch, len(raw))
        if batch.size is not None and (len(raw) != batch.size or (size, mtime) != (batch.size, batch.mtime)):
            raise IncompleteBatch(
                f"{batch}: changed while being read ({batch.size} bytes when listed, {max(size, len(raw))} "
                "now): still being written",
                rule="whole_batch",
            )
        if not raw:
            raise DataError(f"{batch}: file is empty (0 bytes)")
        return raw

    def _check_opened(self, batch: LandedFile, fd: int) -> None:
        """The check made on the open descriptor, not on the name: the file opened is the one listing stat-ed,
        and where the descriptor really leads (``/proc/self/fd``, where there is one) is inside the roots. A
        folder on the way swapped for a symlink after listing is caught here."""
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            message = f"{batch}: no longer a regular file since it was listed; not read"
            raise IncompleteBatch(message, rule="whole_batch")
        if batch.ident is not None and (opened.st_dev, opened.st_ino) != batch.ident:
            message = f"{batch}: replaced by another file since it was listed; not read"
            raise IncompleteBatch(message, rule="whole_batch")
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # no /proc: the same file as listed is what holds
            return
        if real.startswith("/") and not self._confined(real):
            raise RefusedFile(
                f"{batch}: opened as {real}, outside the allowed landing roots ({self._roots_text()}): a folder on "
                "its path was swapped for a symlink; not read",
                rule="landing_root",
            )

    # -- walk ---------------------------------------------------------------------------------------------

    def usable(self, batch: LandedFile) -> tuple[Any, str] | None:
        """:meth:`read`, except that a batch not yet whole is ``None`` (warned) when ``on_incomplete`` is
        ``skip``; with ``fail`` it raises :class:`IncompleteBatch`."""
        try:
            return self.read(batch)
        except IncompleteBatch as err:
            if self.on_incomplete == "fail":
                raise IncompleteBatch(f"{err} (source.landing.on_incomplete: fail)", rule=err.rule) from None
            reason = str(err).removeprefix(f"{batch}: ")
            log.warning("%s: not used: %s", batch.name, reason)
            self.skipped.append(f"{batch.name}: {reason}")
            return None

    def newest(self, count: int, files: list[LandedFile] | None = None) -> Iterator[tuple[LandedFile, Any]]:
        """The ``count`` newest whole batches, newest first, as ``(batch, (table, sha256))``, or
        ``(batch, DataError)`` for one that is refused or unreadable (it keeps its place in the window).

        Batches not yet whole are skipped (and older ones take their place) or fail, as the spec says;
        batches older than the window are never read.
        """
        taken = 0
        for batch in reversed(self.files() if files is None else files):
            if taken >= count:
                return
            try:
                outcome: Any = self.usable(batch)
            except IncompleteBatch:  # on_incomplete: fail
                raise
            except DataError as err:  # refused or unreadable: validation (or the task) names it
                outcome = err
            if outcome is None:
                continue
            taken += 1
            yield batch, outcome
            outcome = None  # the caller has the table: one landed table in memory at a time, not two

    def shortage(self, found: int, need: int) -> DataError:
        """The error for a zone with ``found`` whole batches where ``need`` are needed."""
        skipped = f"; not whole yet: {'; '.join(self.skipped)}" if self.skipped else ""
        return DataError(f"{self.root}: {found} whole batch file(s) landed, at least {need} needed{skipped}")


def parse_manifest(raw: bytes, where: str) -> dict[str, Expected]:
    """``_MANIFEST.json``: ``{"batches": {"<file name>": {"rows": <int>, "sha256": "<64 hex>"}}}``."""
    rule = 'expected {"batches": {"<file name>": {"rows": <int>, "sha256": "<hex>"}}}'
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{where}: not valid JSON ({err}); {rule}", rule="landing_manifest") from None
    batches = data.get("batches") if isinstance(data, dict) else None
    if not isinstance(batches, dict):
        raise DataError(f"{where}: no 'batches' object; {rule}", rule="landing_manifest")
    expected = {}
    for name, entry in batches.items():
        rows = entry.get("rows") if isinstance(entry, dict) else None
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        valid_digest = isinstance(digest, str) and len(digest) == 64 and set(digest.lower()) <= set("0123456789abcdef")
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0 or not valid_digest:
            raise DataError(f"{where}: batch {name!r}: {rule}", rule="landing_manifest")
        expected[str(name)] = Expected(rows, str(digest).lower())
    return expected


def write_manifest(directory: Any, fmt: str = "csv") -> Any:
    """Write ``_MANIFEST.json`` (row count and SHA-256 of every batch) for the batches in ``directory``.

    For producers and tests: run it after the last batch of a delivery is whole. The manifest is written
    under a temporary name and renamed (an object-store put is atomic), so no reader sees half of it.
    """
    zone = LandingZone(directory, fmt)
    batches = {}
    for batch in zone.files():
        table, digest = zone.read(batch)
        batches[batch.name] = {"rows": table.num_rows, "sha256": digest}
    text = dumps({"batches": batches}, indent=2)
    target = zone.root / MANIFEST_NAME
    if _local(zone.root) is None:
        target.write_text(text)
        return target
    tmp = zone.root / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(text)
    os.replace(_local(tmp) or "", _local(target) or "")
    return target


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


def parse_table(raw: bytes, kind: str, where: str) -> Any:
    """The bytes of one landed file as an Arrow table; unreadable bytes or a column name used twice raise
    :class:`DataError` / :class:`RefusedFile` naming ``where``."""
    import pyarrow as pa

    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            _unique_names(pq.read_schema(pa.py_buffer(raw)).names, where)  # the footer: before any column
            return pq.read_table(pa.py_buffer(raw))
        raw.decode("utf-8")  # the reader's own message about bad UTF-8 names no byte offset
        table = _csv_table(raw)
    except UnicodeDecodeError:
        raise DataError(f"{where}: not a {kind.upper()} file (bytes are not UTF-8 text)") from None
    except RefusedFile:
        raise
    except Exception as err:  # pyarrow raises many parser error types
        raise DataError(f"{where}: not a readable {kind.upper()} file: {err}") from None
    _unique_names(table.column_names, where)
    return table


def _unique_names(names: list[str], where: str) -> None:
    """A column name used twice makes every later lookup by name ambiguous: refuse the file."""
    twice = [name for name, n in Counter(names).items() if n > 1]
    if twice:
        raise RefusedFile(
            f"{where}: column {twice[0]!r} appears {names.count(twice[0])} times in the header; "
            "column names must be unique",
            rule="unique_column_names",
            column=str(twice[0]),
        )


def main(argv: list[str] | None = None) -> None:
    """``python -m mlops_airflow.core.landing DIR``: write DIR's ``_MANIFEST.json`` (landing protocol ``manifest``)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("directory")
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv")
    args = parser.parse_args(argv)
    print(f"wrote {write_manifest(args.directory, args.format)}")


if __name__ == "__main__":
    main()
