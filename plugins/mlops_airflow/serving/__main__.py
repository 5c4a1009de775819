"""``python -m mlops_airflow.serving [--host H] [--port P] [--workers N]``: run the model server.

Settings come from the environment (:mod:`mlops_airflow.serving.settings`). Each worker process is a whole
server (its own follower, batcher and request log) following ``champion`` on its own; a reload notification
that reaches one worker is passed on to the others (:mod:`mlops_airflow.serving.models`). Scale with more
workers or more replicas behind one address.
SIGTERM (and SIGINT) is a clean stop: in-flight requests finish, the request log is written, the downloaded
version copies are removed, and the process exits 0 after a SIGTERM (``make serve`` ends without an error).
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import shutil
import signal
import sys
import tempfile
from typing import Any

from fastapi import FastAPI


def configure() -> tuple[Any, list[Any]]:
    """The settings and the specs to serve; :class:`ServingConfigError` naming what is wrong."""
    from mlops_airflow.core.config import load_specs_tolerant
    from mlops_airflow.serving.settings import ServingConfigError, ServingSettings

    config = ServingSettings.from_env()
    specs, errors = load_specs_tolerant()
    for path, err in errors.items():  # one bad YAML breaks only its own model
        logging.getLogger(__name__).error("not serving %s: %s", path, err)
    if config.models:
        unknown = sorted(set(config.models) - {s.name for s in specs})
        if unknown:
            raise ServingConfigError(f"MLOPS_SERVING_MODELS names {unknown}: no valid spec of that name")
        specs = [s for s in specs if s.name in config.models]
    if not specs:
        raise ServingConfigError("no model to serve: no valid spec under MLOPS_MODELS_DIR / include/models")
    if config.default_model and config.default_model not in {s.name for s in specs}:
        raise ServingConfigError(f"MLOPS_SERVING_DEFAULT_MODEL={config.default_model!r} is not a served model")
    return config, specs


def build_app() -> FastAPI:
    """The app for the current environment (uvicorn factory: ``mlops_airflow.serving.__main__:build_app``)."""
    from mlops_airflow.core import settings
    from mlops_airflow.core.tracking import client_for
    from mlops_airflow.serving.app import Server, create_app

    config, specs = configure()
    client = client_for(settings.default_tracking_uri())
    return create_app(Server(config, specs, client, settings.storage_base()))


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def worker_log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging plus this package's records, each naming its process: every worker sets its logging
    up from this (``logging.basicConfig`` in the parent does not reach the worker processes)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["records"] = {"format": LOG_FORMAT.replace("%(name)s:", "%(name)s [pid %(process)d]:")}
    config["handlers"]["records"] = {"class": "logging.StreamHandler", "formatter": "records",
                                     "stream": "ext://sys.stderr"}  # fmt: skip
    config["root"] = {"handlers": ["records"], "level": level.upper()}
    return config


def _exit_cleanly(signum: int, frame: Any) -> None:
    """SIGTERM outside uvicorn's own handling (before it starts, or re-raised once it has shut down)."""
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from mlops_airflow.serving.models import NOTIFY_DIR_ENV
    from mlops_airflow.serving.settings import ServingConfigError

    parser = argparse.ArgumentParser(prog="python -m mlops_airflow.serving", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    if args.workers < 1:
        sys.exit(f"model server: --workers {args.workers}: must be at least 1")
    signal.signal(signal.SIGTERM, _exit_cleanly)
    notify_dir = None
    try:
        if args.workers == 1:
            app = build_app()  # configuration errors surface here, before the port opens
            uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
        else:
            configure()  # configuration errors surface here, before any worker starts
            notify_dir = tempfile.mkdtemp(prefix="mlops-serving-notify-")
            os.environ[NOTIFY_DIR_ENV] = notify_dir  # the workers pass reload notifications on through it
            uvicorn.run("mlops_airflow.serving.__main__:build_app", factory=True, host=args.host, port=args.port,
                        workers=args.workers, log_level=args.log_level, access_log=False,
                        log_config=worker_log_config(args.log_level))  # fmt: skip
    except ServingConfigError as err:
        sys.exit(f"model server: {err}")
    finally:
        if notify_dir is not None:
            shutil.rmtree(notify_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
