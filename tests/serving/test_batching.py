"""Merging concurrent requests (serving/batching.py), the canary's judgement (serving/canary.py) and the
removal of stale version copies, in-process on a real model logged as ``select_candidate`` logs it (a local
MLflow store, real scikit-learn): no server process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from serving_support import MODEL, REPO, rows

from mlops_airflow.core.config import load_model_spec
from mlops_airflow.serving.batching import Batcher
from mlops_airflow.serving.canary import Canary
from mlops_airflow.serving.inputs import Limits, check_rows, parse_body
from mlops_airflow.serving.models import LoadedModel, remove_stale_copies


@pytest.fixture
def served(mlops_home: Path) -> tuple[Any, Any]:
    """The demo spec and its pyfunc, trained on a little demo data, logged and loaded back from the store."""
    import mlflow

    from mlops_airflow.core import demo_data
    from mlops_airflow.core.training import fit_final
    from mlops_airflow.operators.training import log_spec_model

    spec = load_model_spec(REPO / "include" / "models" / f"{MODEL}.yaml")
    train = pd.concat([demo_data.generate_batch(d, n_rows=200, seed=d) for d in range(2)], ignore_index=True)
    pipeline = fit_final(spec, {"max_iter": 20}, train)
    mlflow.set_tracking_uri(f"sqlite:///{mlops_home / 'mlflow' / 'mlflow.db'}")
    # an experiment of this store: the fluent API keeps the active experiment id of an earlier test's store
    experiment = mlflow.set_experiment("batching")
    with mlflow.start_run(experiment_id=experiment.experiment_id):
        uri = log_spec_model(spec, pipeline, train, 0.5)
    return spec, mlflow.pyfunc.load_model(uri)


def checked_rows(spec: Any, body: list[dict[str, Any]]) -> pd.DataFrame:
    columns = parse_body(json.dumps(body).encode(), spec.model_features, Limits(10_000, 1000))
    return check_rows(spec, columns, 10_000).rows


def test_merged_requests_each_get_their_own_rows_answers_and_a_failing_one_fails_alone(served) -> None:
    spec, pyfunc = served
    model = LoadedModel(MODEL, "1", "champion", pyfunc, 0.5, {}, "now")
    assert model.use_direct_path(checked_rows(spec, rows(3, day=1)))  # the server's path, without MLflow's checks
    bodies = [rows(n, day=30 + i) for i, n in enumerate([1, 3, 100, 1, 7, 2])]
    frames = [checked_rows(spec, body) for body in bodies]
    # rows the model itself refuses (the served model checks numbers; the server's checks are bypassed here
    # to make a request that fails inside the merged call: a real fault of the model, no mock)
    bad = frames[1].copy()
    bad["income"] = bad["income"].astype(object)
    bad.loc[1, "income"] = "not a number"
    batcher = Batcher(MODEL, max_rows=1000, max_wait_s=0.0)
    futures = [batcher.submit(model, frame) for frame in frames[:3]]
    bad_future = batcher.submit(model, bad)
    futures += [batcher.submit(model, frame) for frame in frames[3:]]
    batcher.start()  # every request already waits: the first batch takes them all
    try:
        answers = [future.result(timeout=120) for future in futures]
        with pytest.raises(Exception, match="income"):
            bad_future.result(timeout=120)
    finally:
        batcher.stop()
    assert batcher.merged_requests == 7  # one merged call for all seven (which failed, then one by one)
    for frame, answer in zip(frames, answers, strict=True):
        expected = pyfunc.predict(frame).reset_index(drop=True)  # in-process pyfunc, the request's rows alone
        pd.testing.assert_frame_equal(answer, expected, check_exact=True)

    # without a failing request: one call answers every request, and each answer is its own rows'
    batcher = Batcher(MODEL, max_rows=1000, max_wait_s=0.0)
    futures = [batcher.submit(model, frame) for frame in frames]
    batcher.start()
    try:
        answers = [future.result(timeout=120) for future in futures]
    finally:
        batcher.stop()
    assert (batcher.calls, batcher.merged_requests, batcher.largest_batch_rows) == (1, 6, 114)
    for frame, answer in zip(frames, answers, strict=True):
        pd.testing.assert_frame_equal(answer, pyfunc.predict(frame).reset_index(drop=True), check_exact=True)


def test_a_batch_holds_one_version_and_at_most_max_rows(served) -> None:
    spec, pyfunc = served
    one = LoadedModel(MODEL, "1", "champion", pyfunc, 0.5, {}, "now")
    two = LoadedModel(MODEL, "2", "champion", pyfunc, 0.5, {}, "now")
    frames = [checked_rows(spec, rows(n, day=40 + i)) for i, n in enumerate([2, 2, 2, 5, 2])]
    batcher = Batcher(MODEL, max_rows=6, max_wait_s=0.0)
    owners = [one, one, two, two, two]
    futures = [batcher.submit(m, f) for m, f in zip(owners, frames, strict=True)]
    batcher.start()
    try:
        answers = [future.result(timeout=120) for future in futures]
    finally:
        batcher.stop()
    # [v1: 2+2], [v2: 2] (5 more rows would pass 6), [v2: 5], [v2: 2] ... or [v2: 5] then [v2: 2]
    assert batcher.calls == 4 and batcher.largest_batch_rows == 4
    assert [len(a) for a in answers] == [2, 2, 2, 5, 2]


def canary(**limits: Any) -> Canary:
    config = SimpleNamespace(**{"percent": 50.0, "min_requests": 10, "max_error_rate": 0.1,
                                "max_latency_p99_ms": None, **limits})  # fmt: skip
    return Canary(MODEL, config)


def test_canary_routes_a_caller_to_one_side_and_stops_on_error_rate() -> None:
    watch = canary()
    sides = {f"caller-{i}": watch.routes_to_challenger("7", f"caller-{i}") for i in range(400)}
    assert {k: watch.routes_to_challenger("7", k) for k in sides} == sides  # sticky per caller key
    assert 100 < sum(sides.values()) < 300  # about half of the callers
    assert not canary(percent=100.0).routes_to_challenger(None, "caller-1")  # no challenger loaded: never

    for _ in range(9):
        watch.record(True, "7", False, 1.0)  # nine failures: judged only from min_requests on
        watch.record(False, "3", True, 1.0)
    assert watch.stopped is None and watch.describe()["active"]
    watch.record(True, "7", True, 1.0)
    stopped = watch.describe()["stopped"]
    assert stopped is not None and stopped["version"] == "7" and "above max_error_rate 0.1" in stopped["reason"]
    assert stopped["challenger"]["errors"] == 9 and stopped["champion"]["error_rate"] == 0.0
    assert not any(watch.routes_to_challenger("7", k) for k in sides)  # out of traffic
    watch.routes_to_challenger("8", "caller-1")  # challenger moved to another version: judged afresh
    assert watch.stopped is None and watch.describe()["challenger"]["requests"] == 0


def test_canary_stops_on_latency() -> None:
    watch = canary(max_error_rate=1.0, max_latency_p99_ms=50.0, min_requests=5)
    watch.routes_to_challenger("7", None)
    for latency in (10.0, 12.0, 11.0, 9.0):
        watch.record(True, "7", True, latency)
    assert watch.stopped is None
    watch.record(True, "7", True, 500.0)
    assert "p99 latency 500.0 ms above max_latency_p99_ms 50" in watch.stopped["reason"]


def test_stale_version_copies_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(ended.stdout)  # a process that no longer runs
    stale = tmp_path / f"mlops-serving-{MODEL}-v3-p{dead}-abc123"
    live = tmp_path / f"mlops-serving-{MODEL}-v4-p{os.getppid()}-def456"  # another live process's copy
    mine = tmp_path / f"mlops-serving-{MODEL}-v5-p{os.getpid()}-ghi789"
    old = tmp_path / f"mlops-serving-{MODEL}-v2-xyz"  # named without a process id, two days old
    recent = tmp_path / f"mlops-serving-{MODEL}-v1-uvw"
    other = tmp_path / "mlops-serving-notify-abc"
    for folder in (stale, live, mine, old, recent, other):
        folder.mkdir()
        (folder / "MLmodel").write_text("x")
    os.utime(old, (0, 0))
    removed = remove_stale_copies(str(tmp_path), [MODEL])
    assert sorted(removed) == sorted([str(stale), str(old)])
    assert all(p.exists() for p in (live, mine, recent, other)) and not stale.exists() and not old.exists()
