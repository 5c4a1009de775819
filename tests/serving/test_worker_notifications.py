"""Workers of one model server pass reload notifications on through a shared folder (serving/models.py)."""

from __future__ import annotations

import os
from pathlib import Path

from mlops_airflow.serving.models import Follower


def test_a_second_notification_within_one_clock_tick_still_reaches_the_other_workers(tmp_path: Path) -> None:
    # Two workers' followers; no registry is read here (only the notification folder), so no slot is needed
    # beyond its name.
    one = Follower(None, {"credit_default": None}, poll_seconds=2, notify_dir=str(tmp_path))  # type: ignore[dict-item]
    two = Follower(None, {"credit_default": None}, poll_seconds=2, notify_dir=str(tmp_path))  # type: ignore[dict-item]
    one.notify("credit_default")
    two._wait()
    assert two._notified == {"credit_default"}
    two._notified.clear()

    mark = tmp_path / "credit_default"
    first = os.stat(mark)
    one.notify("credit_default")  # a rollback right after a promotion
    # A file system whose clock ticks coarsely gives the second mark the first one's time: set it so, as
    # such a file system would (the tick cannot be made coarse on purpose otherwise).
    os.utime(mark, ns=(first.st_atime_ns, first.st_mtime_ns))
    two._wait()
    assert two._notified == {"credit_default"}, "the second notification was taken for the first"
