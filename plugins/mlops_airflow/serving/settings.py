"""The model server's settings, read from the environment (one place for every default).

===================================  ===========================================================
``MLOPS_SERVING_TOKEN``              bearer token every request but ``/health``, ``/ready`` and
                                     ``/ping`` must carry (required: the server refuses to start
                                     without one); also the secret of the reload notification
``MLOPS_SERVING_MODELS``             models to serve, comma-separated (default: every spec)
``MLOPS_SERVING_DEFAULT_MODEL``      the model of ``POST /invocations`` (default: the only one)
``MLOPS_SERVING_POLL_SECONDS``       registry poll interval (default 5); a ``promote``/``rollback``
                                     task's notification is acted on at once, by every worker
``MLOPS_SERVING_MAX_BATCH_ROWS``     rows one merged predict call takes at most: concurrent
                                     requests for the same version are scored together (default
                                     1024: a call costs about the same for 1 row as for 800, so
                                     the bound is on memory and wait; a larger request is scored
                                     alone; 1 turns merging off)
``MLOPS_SERVING_MAX_WAIT_MS``        longest the first request of a batch waits for others to
                                     join it, under concurrent traffic only (default 5; 0 = merge
                                     only what is already waiting)
``MLOPS_SERVING_MAX_BODY_BYTES``     largest request body (default 5 MB; more answers 413)
``MLOPS_SERVING_MAX_COLUMNS``        distinct column names one request may carry, model features
                                     included (default 1000; more answers 413)
``MLOPS_SERVING_LOG_FLUSH_ROWS``     request-log rows that trigger a write (default 5000)
``MLOPS_SERVING_LOG_FLUSH_SECONDS``  longest a logged row waits before it is written (default 10)
``MLOPS_SERVING_LOG_MAX_ROWS``       rows the log holds in memory at most; a request that finds
                                     it full writes it out before answering (default 100000)
``MLOPS_SERVING_LOG_MAX_BYTES``      the same bound in bytes of the request bodies the waiting
                                     rows came from (default 256 MB: a few rows of long text
                                     weigh what they are)
``MLOPS_SERVING_SHADOW_QUEUE``       shadow requests waiting for ``challenger`` at most; more are
                                     not shadow-scored, and counted (default 1000)
``MLOPS_SIGNING_KEY``                the gate signatures' key: a version serves only with a valid
                                     signature (the HMAC ``register_challenger`` tags it with).
                                     Required with a registry server; on the embedded default's
                                     local store the installation's key file is used
``MLFLOW_TRACKING_URI``              the registry (default: the embedded store); a server reads it
                                     with ``MLFLOW_TRACKING_USERNAME`` / ``..._PASSWORD``, a user with
                                     READ on registered models and experiments (the proof of a
                                     blessing is the version's CT run and its gate decision)
``MLOPS_STORAGE_BASE``               where the request log goes (``<base>/<model>/serving/``)
===================================  ===========================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from mlops_airflow.core.errors import MlopsError

TOKEN_ENV = "MLOPS_SERVING_TOKEN"


class ServingConfigError(MlopsError, RuntimeError):
    """A setting the server cannot start with; the message names the variable."""


def _number(name: str, default: float, minimum: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ServingConfigError(f"{name}={raw!r}: not a number") from None
    if value < minimum:
        raise ServingConfigError(f"{name}={raw!r}: must be at least {minimum:g}")
    return value


@dataclass(frozen=True)
class ServingSettings:
    token: str = field(repr=False)
    models: list[str] = field(default_factory=list)
    default_model: str | None = None
    poll_seconds: float = 5.0
    max_batch_rows: int = 1024
    max_wait_ms: float = 5.0
    max_body_bytes: int = 5 * 1024 * 1024
    max_columns: int = 1000
    log_flush_rows: int = 5000
    log_flush_seconds: float = 10.0
    log_max_rows: int = 100_000
    log_max_bytes: int = 256 * 1024 * 1024
    shadow_queue: int = 1000
    signing_key: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls) -> ServingSettings:
        token = os.environ.get(TOKEN_ENV, "")
        if len(token) < 16:
            raise ServingConfigError(
                f"{TOKEN_ENV} must be set to a secret of 16+ characters (e.g. `openssl rand -hex 24`): every "
                "predict request and every reload notification is checked against it"
            )
        models = [m.strip() for m in os.environ.get("MLOPS_SERVING_MODELS", "").split(",") if m.strip()]
        return cls(
            token=token,
            models=models,
            default_model=os.environ.get("MLOPS_SERVING_DEFAULT_MODEL", "").strip() or None,
            poll_seconds=_number("MLOPS_SERVING_POLL_SECONDS", 5.0, 0.1),
            max_batch_rows=int(_number("MLOPS_SERVING_MAX_BATCH_ROWS", 1024, 1)),
            max_wait_ms=_number("MLOPS_SERVING_MAX_WAIT_MS", 5.0, 0.0),
            max_body_bytes=int(_number("MLOPS_SERVING_MAX_BODY_BYTES", 5 * 1024 * 1024, 1024)),
            max_columns=int(_number("MLOPS_SERVING_MAX_COLUMNS", 1000, 1)),
            log_flush_rows=int(_number("MLOPS_SERVING_LOG_FLUSH_ROWS", 5000, 1)),
            log_flush_seconds=_number("MLOPS_SERVING_LOG_FLUSH_SECONDS", 10.0, 0.05),
            log_max_rows=int(_number("MLOPS_SERVING_LOG_MAX_ROWS", 100_000, 1)),
            log_max_bytes=int(_number("MLOPS_SERVING_LOG_MAX_BYTES", 256 * 1024 * 1024, 1024)),
            shadow_queue=int(_number("MLOPS_SERVING_SHADOW_QUEUE", 1000, 1)),
            signing_key=_signing_key(),
        )


def _signing_key() -> bytes:
    from mlops_airflow.core.settings import default_tracking_uri
    from mlops_airflow.core.signing import KEY_ENV, SigningKeyError, signing_key

    uri = default_tracking_uri()
    try:
        key = signing_key(uri)
    except SigningKeyError as err:
        raise ServingConfigError(str(err)) from None
    if key is None:
        raise ServingConfigError(
            f"{KEY_ENV} must be set (the key the Airflow workers sign blessed versions with): without it no "
            f"version of the registry at {uri} can be proven blessed, so nothing would serve"
        )
    return key
