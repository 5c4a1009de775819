"""Deployment settings, read from the environment (one place for every default).

============================  ==============================================================
``MLOPS_HOME``                local state of the embedded default (default ``<repo>/.local``)
``MLOPS_DATA_ROOT``           landing-zone root; relative ``source.uri`` values resolve under it
``MLOPS_ALLOWED_DATA_ROOTS``  more landing roots a trigger's ``data_uri`` may name (comma-separated
                              paths or URIs, e.g. ``/srv/landing,s3://partner-bucket/landing``)
``MLOPS_MAX_FILE_BYTES``      size cap of one landed file for specs without ``source.max_file_bytes``
                              (default 2 GiB)
``MLOPS_STORAGE_BASE``        base URI of snapshots and predictions (``file://`` or ``s3://``)
``MLOPS_STORAGE_CONN_ID``     Airflow connection for the object store (cluster only)
``MLOPS_MLFLOW_UI_URL``       where people open MLflow (links from Airflow task instances)
``MLFLOW_TRACKING_URI``       tracking store when no ``mlflow_default`` connection is set
============================  ==============================================================

A trigger's ``data_uri`` is untrusted input (docs/design.md 7): :func:`confine_data_uri` admits it only inside
``MLOPS_DATA_ROOT`` or one of ``MLOPS_ALLOWED_DATA_ROOTS``, and never inside the package's own storage.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from mlops_airflow.core.errors import MlopsError, SettingError

REPO_ROOT = Path(__file__).resolve().parents[3]


def mlops_home() -> Path:
    """``MLOPS_HOME``; else ``.local`` of this checkout, or, installed as a package, ``$AIRFLOW_HOME/mlops``."""
    if os.environ.get("MLOPS_HOME"):
        return Path(os.environ["MLOPS_HOME"])
    if (REPO_ROOT / "pyproject.toml").exists():
        return REPO_ROOT / ".local"
    return Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow") / "mlops"


def data_root() -> str:
    return os.environ.get("MLOPS_DATA_ROOT") or str(mlops_home() / "data")


def storage_base() -> str:
    return os.environ.get("MLOPS_STORAGE_BASE") or (mlops_home() / "storage").as_uri()


MAX_FILE_BYTES_ENV = "MLOPS_MAX_FILE_BYTES"


def max_file_bytes() -> int:
    """Size cap of one landed file (bytes) where the spec sets none: a file over it is refused unread."""
    value = os.environ.get(MAX_FILE_BYTES_ENV, "").strip()
    if not value:
        return 2 * 1024**3
    if not value.isdigit() or int(value) < 1:
        raise SettingError(f"{MAX_FILE_BYTES_ENV}={value!r}: expected a whole number of bytes, at least 1")
    return int(value)


def storage_conn_id() -> str | None:
    return os.environ.get("MLOPS_STORAGE_CONN_ID") or None


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{mlops_home() / 'mlflow' / 'mlflow.db'}"


def default_artifact_root() -> str:
    return os.environ.get("MLOPS_ARTIFACT_ROOT") or (mlops_home() / "mlflow" / "artifacts").as_uri()


def notify_retry_seconds() -> float:
    """``MLOPS_NOTIFY_RETRY_SECONDS``: the wait after a notification's first failed delivery (default 60 s;
    doubled after each further failure, at most an hour)."""
    return float(os.environ.get("MLOPS_NOTIFY_RETRY_SECONDS") or 60)


def mlflow_ui_url() -> str:
    return os.environ.get("MLOPS_MLFLOW_UI_URL", "http://127.0.0.1:5000").rstrip("/")


def resolve_source_uri(uri: str) -> str:
    """A spec's ``source.uri``: absolute paths and URIs as given, relative ones under the data root."""
    if "://" in uri or uri.startswith("/"):
        return uri
    return f"{data_root().rstrip('/')}/{uri}"


ALLOWED_DATA_ROOTS_ENV = "MLOPS_ALLOWED_DATA_ROOTS"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(.*)$", re.DOTALL)
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\]")
#: Unicode categories never allowed in a location: controls (``U+0085`` too), invisible format characters
#: (zero-width and bidirectional marks that make a name read as another), unpaired surrogates, line and
#: paragraph separators.
_INVISIBLE = {"Cc", "Cf", "Cs", "Zl", "Zp"}


class DataRootError(MlopsError, ValueError):
    """A data location outside the landing roots, or one that cannot be checked; the message says which rule."""


@dataclass(frozen=True)
class DataLocation:
    """A normalised data location: ``scheme`` and ``netloc`` empty for a local path.

    ``path`` is absolute, free of ``.``/``..``, empty segments and percent-escapes; for a local path all its
    symlinks are resolved. ``str()`` is the form tasks read, so what was checked is what is read.
    """

    scheme: str
    netloc: str
    path: str

    def __str__(self) -> str:
        return self.path if not self.scheme else f"{self.scheme}://{self.netloc}{self.path}"

    def is_within(self, root: DataLocation) -> bool:
        """Same scheme, same bucket/host (and connection), and ``root``'s path a prefix on a segment boundary."""
        if (self.scheme, self.netloc) != (root.scheme, root.netloc):
            return False
        base = root.path.rstrip("/")
        return base == "" or self.path == base or self.path.startswith(base + "/")


def parse_location(text: str, *, what: str, base: str | None = None) -> DataLocation:
    """Normalise a path or URI: one round of percent-decoding, ``file://`` as a local path, lower-case scheme
    and host, ``..`` and ``//`` collapsed, local symlinks resolved.

    A relative path resolves under ``base`` (itself a path or URI) or, without one, the working directory.
    What cannot be normalised without guessing (a host-less URI, a query, chained ``a::b`` URLs, text that is
    still percent-encoded after one decoding, ``..`` above a bucket) raises :class:`DataRootError`
    naming ``what``.
    """
    raw = text.strip(" \t\r\n")
    if not raw:
        raise DataRootError(f"{what} is empty")
    try:
        decoded = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise DataRootError(f"{what} {text!r}: percent-escapes that are not UTF-8") from None
    if _ESCAPE.search(decoded):
        raise DataRootError(f"{what} {text!r}: percent-encoded more than once")
    if _FORBIDDEN.search(decoded):
        raise DataRootError(f"{what} {text!r}: control characters or backslashes are not allowed")
    if any(unicodedata.category(char) in _INVISIBLE for char in decoded):
        raise DataRootError(
            f"{what} {text!r}: control, invisible format (zero-width, bidirectional) or unpaired surrogate "
            "characters are not allowed"
        )
    if decoded != decoded.strip():  # a name that ends in a space is read as another folder than it names
        raise DataRootError(f"{what} {text!r}: leading or trailing white space (after percent-decoding)")
    match = _SCHEME.match(decoded)
    if match is None:  # a plain path
        if not decoded.startswith("/") and base is not None:
            return parse_location(f"{base.rstrip('/')}/{decoded}", what=what)
        return _local_location(decoded, what, text)
    scheme = match.group(1).lower()
    if "::" in decoded:
        raise DataRootError(f"{what} {text!r}: chained URLs ('::') are not allowed")
    parts = urlsplit(decoded)
    if parts.query or parts.fragment or "?" in decoded or "#" in decoded:
        raise DataRootError(f"{what} {text!r}: a query ('?') or fragment ('#') is not allowed")
    if scheme == "file":
        if parts.netloc.lower() not in {"", "localhost"}:
            raise DataRootError(f"{what} {text!r}: a file:// URI must name this machine, not {parts.netloc!r}")
        if not parts.path.startswith("/"):
            raise DataRootError(f"{what} {text!r}: a file:// URI needs an absolute path")
        return _local_location(parts.path, what, text)
    if not match.group(2).startswith("//"):
        raise DataRootError(f"{what} {text!r}: expected {scheme}://<bucket or host>/<path>")
    userinfo, at, host = parts.netloc.rpartition("@")
    if not host:
        raise DataRootError(f"{what} {text!r}: no bucket or host after {scheme}://")
    segments: list[str] = []
    for segment in parts.path.split("/"):
        if segment in {"", "."}:
            continue
        if segment == "..":
            if not segments:
                raise DataRootError(f"{what} {text!r}: '..' climbs above {scheme}://{host}")
            segments.pop()
        else:
            segments.append(segment)
    path = "/" + "/".join(segments) if segments else ""
    # The bucket or host is case-insensitive; a connection id (``s3://conn_id@bucket``) is not.
    return DataLocation(scheme, f"{userinfo}{at}{host.lower()}", path)


#: Longest name of one folder or file, and longest path, of a local filesystem (Linux: NAME_MAX, PATH_MAX).
NAME_MAX_BYTES = 255
PATH_MAX_BYTES = 4096


def _local_location(path: str, what: str, text: str) -> DataLocation:
    """A local path with its symlinks resolved; a name no filesystem holds is refused here, by name, rather
    than reported later as a zone that does not exist."""
    long = [part for part in path.split("/") if len(part.encode("utf-8")) > NAME_MAX_BYTES]
    if long or len(path.encode("utf-8")) > PATH_MAX_BYTES:
        shown = f"{text[:60]}...({len(text)} characters)"
        rule = f"a name over {NAME_MAX_BYTES} bytes" if long else f"a path over {PATH_MAX_BYTES} bytes"
        raise DataRootError(f"{what} {shown!r}: {rule} is not allowed")
    return DataLocation("", "", os.path.realpath(path))


def allowed_data_roots() -> list[DataLocation]:
    """``MLOPS_DATA_ROOT`` and every entry of ``MLOPS_ALLOWED_DATA_ROOTS``, normalised."""
    roots = [parse_location(data_root(), what="MLOPS_DATA_ROOT")]
    for entry in os.environ.get(ALLOWED_DATA_ROOTS_ENV, "").split(","):
        if entry.strip():
            roots.append(parse_location(entry, what=ALLOWED_DATA_ROOTS_ENV))
    return roots


def confine_data_uri(uri: str, *, param: str = "data_uri") -> str:
    """A trigger's data location, normalised, if it lies inside an allowed landing root; else :class:`DataRootError`.

    Relative values resolve under ``MLOPS_DATA_ROOT`` (as a spec's ``source.uri`` does). The package's own
    storage (snapshots and predictions under ``MLOPS_STORAGE_BASE``, MLflow's local artifacts) is refused
    even where a landing root holds it. Pure: reads the environment and, for local paths, resolves symlinks;
    never lists or opens the location.
    """
    roots = allowed_data_roots()
    allowed = ", ".join(str(r) for r in roots)
    rule = f"allowed landing roots: {allowed} (MLOPS_DATA_ROOT, {ALLOWED_DATA_ROOTS_ENV})"
    try:
        location = parse_location(uri, what=param, base=data_root())
    except DataRootError as err:
        raise DataRootError(f"{err}; {rule}") from None
    if not any(location.is_within(root) for root in roots):
        raise DataRootError(f"{param} {uri!r} resolves to {location}, outside the {rule}")
    for name, value in (("MLOPS_STORAGE_BASE", storage_base()), ("MLOPS_ARTIFACT_ROOT", default_artifact_root())):
        if location.is_within(parse_location(value, what=name)):
            raise DataRootError(
                f"{param} {uri!r} resolves to {location}, inside {name} ({value}), which is no landing zone; {rule}"
            )
    return str(location)


def git_commit() -> str:
    """The deployed code's commit (``MLOPS_GIT_COMMIT`` in images; ``git`` in a checkout)."""
    commit = os.environ.get("MLOPS_GIT_COMMIT")
    if commit:
        return commit
    head = REPO_ROOT / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            ref_path = REPO_ROOT / ".git" / ref[5:]
            if ref_path.exists():
                return ref_path.read_text().strip()
            packed = REPO_ROOT / ".git" / "packed-refs"
            for line in packed.read_text().splitlines() if packed.exists() else []:
                if line.endswith(ref[5:]):
                    return line.split()[0]
            return "unknown"
        return ref
    except OSError:
        return "unknown"
