"""The key of the gate signatures, and the operator's one-time re-sign command.

Every version the gate blesses is tagged with an HMAC over what makes it servable
(:func:`mlops_airflow.core.trust.gate_signature`); the champion resolver (:mod:`mlops_airflow.core.champion`)
serves nothing whose signature does not check. Where the key comes from:

1. ``MLOPS_SIGNING_KEY`` (a cluster: set in ``.env``, held by the Airflow workers and the model server only);
2. on the embedded default (a local MLflow store: ``sqlite:`` or a file path), a per-installation key file,
   ``$MLOPS_HOME/signing_key``, created on first use with mode 0600 and never logged;
3. otherwise none: a process that only reads (the model page on an api-server) then proves a blessing from
   the version's source run alone, and says so; the tasks that sign refuse to work without a key.

Versions blessed before the installation had a key carry no signature and do not serve. The operator re-signs
them once, explicitly (never automatically)::

    python -m mlops_airflow.core.signing resign <model> [--version N ...] [--yes]

which signs only versions registered before the key existed and whose blessing is proven from their own
``ct_<model>`` source run and gate decision.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import secrets
import sys
from pathlib import Path
from typing import TextIO

from mlops_airflow.core import settings
from mlops_airflow.core.errors import MlopsError

KEY_ENV = "MLOPS_SIGNING_KEY"
KEY_FILE = "signing_key"


class SigningKeyError(MlopsError, RuntimeError):
    """No usable signing key where one is required; the message says where one comes from."""


def is_local_store(tracking_uri: str) -> bool:
    """A tracking/registry store on this machine's disk (the embedded default), not a server."""
    return tracking_uri.startswith(("sqlite:", "file:")) or ":" not in tracking_uri


def key_path() -> Path:
    return settings.mlops_home() / KEY_FILE


def local_key(*, create: bool = True) -> bytes | None:
    """The embedded default's key, created on first use (0600, atomic: two first users agree on one key)."""
    path = key_path()
    try:
        key = path.read_bytes().strip()
    except FileNotFoundError:
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_hex(32).encode())
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # fails if another process created it first: then theirs is the key
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        key = path.read_bytes().strip()
    if len(key) < 16:
        raise SigningKeyError(f"signing key file {path} holds fewer than 16 characters; remove it to make a new one")
    return key


def signing_key(tracking_uri: str | None = None, *, explicit: str | None = None, create: bool = True) -> bytes | None:
    """The key of the gate signatures for a process talking to ``tracking_uri`` (see the module docs).

    :param explicit: a key from elsewhere (e.g. an Airflow variable), used when the environment has none.
    :param create: create the embedded default's key file if it does not exist yet.
    """
    value = os.environ.get(KEY_ENV) or explicit
    if value:
        if len(value) < 16:
            raise SigningKeyError(f"{KEY_ENV} must hold 16 or more characters (e.g. `openssl rand -hex 32`)")
        return value.encode()
    uri = tracking_uri if tracking_uri is not None else settings.default_tracking_uri()
    return local_key(create=create) if is_local_store(uri) else None


def key_created_at() -> dt.datetime | None:
    """When the embedded default's key file was made (None without one)."""
    try:
        return dt.datetime.fromtimestamp(key_path().stat().st_mtime, dt.UTC)
    except FileNotFoundError:
        return None


def resign(
    model: str,
    versions: list[str] | None,
    *,
    yes: bool,
    before: dt.datetime | None = None,
    out: TextIO = sys.stdout,
) -> list[str]:
    """Sign ``versions`` of ``model`` (default: every version) that carry no valid signature, were registered
    before the key existed (``before``; default: the local key file's creation time) and whose blessing is
    proven from their own source run. A version registered after the key existed and still unsigned was not
    signed by a gate: it is refused. Without ``yes`` nothing is written. Returns the versions (to be) signed.
    """
    from mlops_airflow.core import tracking
    from mlops_airflow.core.trust import ModelRegistry, UnblessedVersionError

    uri = settings.default_tracking_uri()
    key = signing_key(uri, create=False)
    if key is None:
        raise SigningKeyError(f"no signing key for {uri}: set {KEY_ENV} as the Airflow workers have it")
    cutoff = before or (key_created_at() if not os.environ.get(KEY_ENV) else None)
    if cutoff is None:
        raise SigningKeyError(f"with {KEY_ENV} set, say since when it signs: --before <ISO date-time>")
    client = tracking.client_for(uri)
    keyed, keyless = ModelRegistry(client, model, signing_key=key), ModelRegistry(client, model)
    found = {str(v.version): v for v in client.search_model_versions(f"name = '{model}'")}
    chosen = []
    for version in sorted(versions or found, key=int):
        mv = found.get(str(version))
        if mv is None:
            print(f"{model} v{version}: no such version", file=out)
            continue
        try:
            keyed.verify_signed(mv)
            print(f"{model} v{version}: already signed", file=out)
            continue
        except UnblessedVersionError:
            pass
        made = dt.datetime.fromtimestamp(int(mv.creation_timestamp) / 1000, dt.UTC)
        if made >= cutoff:
            print(f"{model} v{version}: NOT signed, registered {made:%Y-%m-%d %H:%M:%S} UTC, after the key existed "
                  f"({cutoff:%Y-%m-%d %H:%M:%S} UTC): a gate would have signed it", file=out)  # fmt: skip
            continue
        try:
            proof = keyless.verify_blessed(str(version))
        except UnblessedVersionError as err:
            print(f"{model} v{version}: NOT signed, {err}", file=out)
            continue
        if yes:
            keyed.sign(str(version), proof.decision)
        chosen.append(str(version))
        print(f"{model} v{version}: {'signed' if yes else 'would be signed (pass --yes)'}", file=out)
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlops_airflow.core.signing", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("resign", help="sign versions blessed before this installation had a signing key")
    cmd.add_argument("model")
    cmd.add_argument("--version", action="append", dest="versions", help="a version to sign (repeatable)")
    cmd.add_argument("--before", type=dt.datetime.fromisoformat, help="the key's first use (default: key file time)")
    cmd.add_argument("--yes", action="store_true", help="sign; without it the versions are only listed")
    args = parser.parse_args(argv)
    before = args.before if args.before is None or args.before.tzinfo else args.before.replace(tzinfo=dt.UTC)
    try:
        resign(args.model, args.versions, yes=args.yes, before=before)
    except SigningKeyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
