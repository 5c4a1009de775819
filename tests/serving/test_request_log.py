"""The request log writer (serving/request_log.py) on a real local store, without a server: a request whose
rows Parquet cannot hold is dropped and counted, and never holds back the rows around it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd

from mlops_airflow.core import request_log
from mlops_airflow.serving.request_log import Entry, RequestLog

MODEL = "credit_default"


def entry(request_id: str, region: str) -> Entry:
    rows = pd.DataFrame({"age": [41.0, 52.0], "region": [region, "north"]})
    answer = pd.DataFrame({"prediction": [0, 1], "proba_0": [0.8, 0.3], "proba_1": [0.2, 0.7]})
    return Entry(MODEL, request_id, dt.datetime.now(dt.UTC), "3", request_log.CHAMPION_ROLE, 0.5, rows, answer)


def test_an_unwritable_request_is_dropped_and_counted_and_the_others_are_written(tmp_path: Path) -> None:
    storage = tmp_path.as_uri()
    writer = RequestLog(storage, flush_rows=1000, flush_seconds=60, max_rows=1000)
    # text the server's input checks would have cleaned: here it reaches the writer as is (a real fault)
    for i, region in enumerate(["south", "\ud800", "east"]):
        writer.append(entry(f"r{i}", region))
    assert writer.flush() == 4
    writer.append(entry("r3", "west"))
    assert writer.flush() == 2  # nothing of the bad request is waiting to fail the next write again

    log = request_log.read_log(storage, MODEL)
    assert sorted(set(log["request_id"])) == ["r0", "r2", "r3"] and len(log) == 6
    state = writer.describe()
    assert state["unloggable_rows"] == 2 and state["pending_rows"] == 0 and state["dropped_rows"] == 0
    assert "r1" in state["last_error"] and "surrogates not allowed" in state["last_error"]
