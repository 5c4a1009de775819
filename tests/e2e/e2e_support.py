"""Helpers the end-to-end tests share (a module, not a conftest: test modules import it by name)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, done: Any, proc: subprocess.Popen, log: Path, seconds: float = 300) -> None:
    """Poll ``done()`` until true; fail with the process's log if it exits first or never gets there."""
    deadline = time.monotonic() + seconds
    while not done():
        assert proc.poll() is None, f"{what}: process exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{what}: not reached:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def snapshot_by_hand(run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run ``ct_credit_default``'s ``snapshot`` task outside a DAG run, for tests that then drive single tasks:
    the task context they share and the snapshot's XCom."""
    from mlops_airflow.dag_factory import build_dags

    context: dict[str, Any] = {
        "run_id": run_id,
        "ti": SimpleNamespace(try_number=1),
        "dag_run": SimpleNamespace(run_type="manual"),
        "params": {},
    }
    snapshot_task = build_dags()["ct_credit_default"].get_task("snapshot")
    snapshot_task.data_uri = None  # what the template renders without a data_uri param
    return context, snapshot_task.execute(context)
