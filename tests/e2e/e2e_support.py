"""Helpers the end-to-end tests share (a module, not a conftest: test modules import it by name)."""

from __future__ import annotations

import datetime as dt
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


class DagRunResult:
    """A finished DAG run: its state, each task instance's state, and what tasks pushed to XCom."""

    def __init__(self, dag_run: Any) -> None:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session

        self.run_id = dag_run.run_id
        self.state = str(dag_run.state)
        self.tasks: dict[str, str] = {}
        with create_session() as session:
            tis = (
                session.query(TaskInstance)
                .filter(TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id)
                .all()
            )
            for ti in tis:
                key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
                self.tasks[key] = str(ti.state)
        self.dag_id = dag_run.dag_id
        self.run_after: dt.datetime | None = None

    def state_of(self, task_id: str) -> str:
        return self.tasks[task_id]

    def xcom(self, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        with create_session() as session:
            row = (
                session.query(XComModel)
                .filter(
                    XComModel.dag_id == self.dag_id,
                    XComModel.run_id == self.run_id,
                    XComModel.task_id == task_id,
                    XComModel.key == key,
                    XComModel.map_index == map_index,
                )
                .one_or_none()
            )
            return None if row is None else XComModel.deserialize_value(row)
