"""Snapshots: immutable, content-hashed, idempotent, never left half-written; windows in batches, days or
rows; rows without a label counted and never loaded."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops_airflow.core import demo_data
from mlops_airflow.core.config import get_spec, parse_model_spec
from mlops_airflow.core.data import DataError, load_part, read_manifest, write_snapshot
from mlops_airflow.core.spec import ModelSpec

TICKETS = Path(__file__).resolve().parents[1] / "e2e" / "models" / "ticket_outcome.yaml"
DAY_0 = dt.date(2026, 2, 1)
OUTCOMES = ["resolved", "reopened", "escalated"]


def ticket_spec(label: dict[str, Any] | None = None, **changes: Any) -> ModelSpec:
    """The end-to-end tests' ticket model (outcomes three days late, a window of 28 + 7 days), changed."""
    data = yaml.safe_load(TICKETS.read_text())
    data["label"].update(label or {})
    return parse_model_spec({**data, **changes})


def land_tickets(
    folder: Path,
    first: int,
    last: int,
    *,
    rows: int = 10,
    span: int = 1,
    unlabelled: dict[int, int] | None = None,
    plan_codes: Any = None,
) -> list[Path]:
    """Ticket files from day ``first`` to ``last`` (day 0 is 2026-02-01), one per ``span`` days, ``rows`` tickets a
    day opened at 09:00 (``span`` 1: the date alone). ``unlabelled``: day -> tickets of that day without an
    outcome; ``plan_codes``: the day's plan codes (default integers 3..8)."""
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for start in range(first, last + 1, span):
        frames = []
        for day in range(start, min(start + span, last + 1)):
            date = DAY_0 + dt.timedelta(days=day)
            outcome: list[Any] = [OUTCOMES[(day + i) % 3] for i in range(rows)]
            for i in range((unlabelled or {}).get(day, 0)):
                outcome[-1 - i] = None
            frames.append(
                pd.DataFrame(
                    {
                        "opened_on": date.isoformat() if span == 1 else f"{date.isoformat()}T09:00:00",
                        "wait_minutes": [float(5 * i) for i in range(rows)],
                        "plan_code": plan_codes
                        if plan_codes is not None
                        else [[3, 4, 5, 6, 8][i % 5] for i in range(rows)],
                        "first_contact": [i % 2 == 0 for i in range(rows)],
                        "channel": ["email", "phone"] * (rows // 2) + ["chat"] * (rows % 2),
                        "outcome": outcome,
                    }
                )
            )
        path = folder / f"tickets_{DAY_0 + dt.timedelta(days=start):%Y-%m-%d}.csv"
        pd.concat(frames, ignore_index=True).to_csv(path, index=False)
        paths.append(path)
    return paths


def day_file(day: int) -> str:
    return f"tickets_{DAY_0 + dt.timedelta(days=day):%Y-%m-%d}.csv"


@pytest.fixture
def spec():
    return get_spec("credit_default")


@pytest.fixture
def landing(tmp_path):
    demo_data.write_batches(tmp_path / "landing", range(16), n_rows=200)
    return tmp_path / "landing"


def test_snapshot_holds_the_window_and_the_newest_day_for_evaluation(spec, landing, tmp_path):
    snap = write_snapshot(spec, str(landing), str(tmp_path / "snap"))
    assert [b.name for b in snap.batches if b.part == "eval"] == ["batch_2026-01-16.csv"]
    train_names = [b.name for b in snap.batches if b.part == "train"]
    assert train_names[0] == "batch_2026-01-02.csv" and len(train_names) == 14  # oldest day left out
    assert snap.train_rows == 14 * 200 and snap.eval_rows == 200
    assert len(load_part(snap, "train")) == 2800


def test_snapshot_is_idempotent_and_hash_follows_content(spec, landing, tmp_path):
    first = write_snapshot(spec, str(landing), str(tmp_path / "a"))
    again = write_snapshot(spec, str(landing), str(tmp_path / "a"))
    assert again == first  # a retry reuses the finished snapshot
    same_data = write_snapshot(spec, str(landing), str(tmp_path / "b"))
    assert same_data.content_hash == first.content_hash

    newest = sorted(landing.iterdir())[-1]
    newest.write_text(newest.read_text().replace(",north,", ",south,", 1))
    changed = write_snapshot(spec, str(landing), str(tmp_path / "c"))
    assert changed.content_hash != first.content_hash


def test_a_failed_snapshot_leaves_nothing_behind(spec, landing, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    calls = {"n": 0}
    real = pq.write_table

    def dies_on_the_fifth(*args, **kwargs):  # a disk or network fault we cannot cause for real
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(pq, "write_table", dies_on_the_fifth)
    dest = tmp_path / "snap"
    with pytest.raises(OSError):
        write_snapshot(spec, str(landing), str(dest))
    assert not dest.exists()
    monkeypatch.undo()
    assert read_manifest(str(dest)) is None
    assert write_snapshot(spec, str(landing), str(dest)).train_rows == 2800


def test_too_few_batches_is_a_clear_error(spec, tmp_path):
    demo_data.write_batches(tmp_path / "one", range(1), n_rows=50)
    with pytest.raises(DataError, match="1 batch file"):
        write_snapshot(spec, str(tmp_path / "one"), str(tmp_path / "snap"))
    with pytest.raises(DataError, match="does not exist"):
        write_snapshot(spec, str(tmp_path / "nowhere"), str(tmp_path / "snap"))


def test_demo_day_lands_the_day_after_the_newest_batch(tmp_path):
    assert demo_data.next_day(tmp_path) == 0
    demo_data.main([str(tmp_path), "--days", "3", "--rows", "50"])
    demo_data.main([str(tmp_path), "--next", "--days", "1", "--rows", "50"])
    demo_data.main([str(tmp_path), "--next", "--days", "1", "--rows", "50"])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [demo_data.batch_file_name(day) for day in range(5)]
    assert demo_data.next_day(tmp_path) == 5


def test_demo_batches_go_to_a_file_url_like_to_an_object_store(tmp_path):
    url = (tmp_path / "landing").as_uri()
    demo_data.main([url, "--days", "2", "--rows", "50"])
    demo_data.main([url, "--next", "--days", "1", "--rows", "50"])
    assert sorted(p.name for p in (tmp_path / "landing").iterdir()) == [demo_data.batch_file_name(d) for d in range(3)]


# Snapshot keys: one key per run id, and a task deletes nothing outside its own run's prefix.


def test_run_ids_that_shared_a_folder_get_distinct_snapshot_keys():
    from mlops_airflow.core.data import safe_name, snapshot_key

    pairs = [
        ("manual__2026-01-01T00:00:00+00:00", "manual__2026-01-01T00_00_00_00_00"),
        ("a:b", "a+b"),
        ("run 1", "run/1"),
        ("x", "x_"),
        ("+.+", "."),
    ]
    for first, second in pairs:
        assert safe_name(first) == safe_name(second)  # the old key: one folder for both runs
        assert snapshot_key(first) != snapshot_key(second)
    key = snapshot_key("manual__2026-01-01T00:00:00+00:00")
    assert key.startswith("manual__2026-01-01T00_00_00_00_00-") and len(key.rsplit("-", 1)[1]) == 12
    for run_id in ("+.+", ".", "..", "", "/", "../../x", "a/../..", "\x00"):
        assert snapshot_key(run_id) not in {"", ".", ".."} and "/" not in snapshot_key(run_id)
        assert set(snapshot_key(run_id)) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def test_a_later_run_never_reuses_another_runs_snapshot(spec, landing, tmp_path):
    from mlops_airflow.core.data import snapshot_key

    snapshots = tmp_path / "storage" / "credit_default" / "snapshots"
    first, second = "manual__2026-01-01T00:00:00+00:00", "manual__2026-01-01T00_00_00_00_00"
    a = write_snapshot(spec, str(landing), str(snapshots / snapshot_key(first)), within=str(snapshots), run_id=first)
    newest = sorted(landing.iterdir())[-1]
    newest.write_text(newest.read_text().replace(",north,", ",south,", 1))
    b = write_snapshot(spec, str(landing), str(snapshots / snapshot_key(second)), within=str(snapshots), run_id=second)
    assert a.uri != b.uri and a.content_hash != b.content_hash
    assert (a.run_id, b.run_id) == (first, second)
    # even a key shared by force is not reused: the manifest names the run it belongs to
    with pytest.raises(DataError, match="belongs to run"):
        write_snapshot(spec, str(landing), a.uri, within=str(snapshots), run_id=second)
    assert write_snapshot(spec, str(landing), a.uri, within=str(snapshots), run_id=first) == a  # a retry reuses


@pytest.mark.parametrize("run_id", ["+.+", "..", ".", "../..", "+/+"])
def test_a_run_id_cannot_delete_other_runs_snapshots(spec, landing, tmp_path, run_id):
    from airflow.sdk import ObjectStoragePath

    from mlops_airflow.core.data import snapshot_key

    # the operator's own path objects: ObjectStoragePath keeps '.' and '..' segments as given
    snapshots = ObjectStoragePath((tmp_path / "storage").as_uri()) / "credit_default" / "snapshots"
    sibling = tmp_path / "storage" / "credit_default" / "snapshots" / "scheduled__2026-01-01-0123456789ab"
    sibling.mkdir(parents=True)
    (sibling / "manifest.json").write_text("{}")
    snap = write_snapshot(spec, str(landing), snapshots / snapshot_key(run_id), within=snapshots, run_id=run_id)
    assert snap.train_rows == 2800
    assert (sibling / "manifest.json").read_text() == "{}"  # the other run's snapshot is untouched
    assert sorted(p.name for p in sibling.parent.iterdir()) == sorted([sibling.name, snapshot_key(run_id)])


def test_remove_tree_refuses_anything_not_strictly_below_its_root(tmp_path):
    from airflow.sdk import ObjectStoragePath

    from mlops_airflow.core.data import remove_tree

    base = tmp_path / "storage" / "m" / "snapshots"
    (base / "run-1").mkdir(parents=True)
    (base / "run-1" / "part.parquet").write_bytes(b"x")
    (tmp_path / "storage" / "m" / "keep.txt").write_text("keep")
    root = ObjectStoragePath(base.as_uri())
    for target in (root / ".", root / "..", root / "run-1" / ".." / "..", root, root.parent, root / "run-1/../.."):
        with pytest.raises(DataError, match=r"snapshot path|not strictly below"):
            remove_tree(target, within=root)
    with pytest.raises(DataError, match="not strictly below"):
        remove_tree(str(tmp_path / "storage" / "m"), within=str(base))
    with pytest.raises(DataError, match="not strictly below"):
        remove_tree(str(tmp_path / "storage" / "m" / "snapshots2" / "x"), within=str(base))
    assert (base / "run-1" / "part.parquet").exists() and (tmp_path / "storage" / "m" / "keep.txt").exists()
    remove_tree(root / "run-1", within=root)
    assert not (base / "run-1").exists() and base.exists()


def test_landed_csv_reads_as_pandas_reads_it(landing):
    """The multi-threaded Arrow reader types columns as ``pandas.read_csv`` does (gaps missing, dates text)."""
    import pandas as pd

    from mlops_airflow.core.data import read_batch

    path = sorted(landing.iterdir())[0]
    ours, theirs = read_batch(path, "csv"), pd.read_csv(path)
    assert dict(ours.dtypes) == dict(theirs.dtypes)

    def missing_as_none(frame):  # a text gap reads as None here, NaN there: both are missing
        return frame.astype(object).where(frame.notna(), None)

    pd.testing.assert_frame_equal(missing_as_none(ours), missing_as_none(theirs))


def test_text_columns_read_compactly_hold_the_same_values_and_train_the_same_model(spec, landing, tmp_path):
    import numpy as np
    import pandas as pd

    from mlops_airflow.core.training import fit_candidate, score_rows

    snap = write_snapshot(spec, str(landing), str(tmp_path / "snap"))
    plain = load_part(snap, "train", spec.input_columns)
    compact = load_part(snap, "train", spec.input_columns, spec.text_columns)
    assert set(spec.text_columns) == {"event_date", "employment_type", "region", "home_ownership"}
    for column in plain.columns:
        if column in spec.text_columns:
            assert isinstance(compact[column].dtype, pd.CategoricalDtype), column
            assert compact[column].astype(object).equals(plain[column]), column  # missing values stay missing
        else:
            assert compact[column].dtype == plain[column].dtype and compact[column].equals(plain[column]), column
    assert plain["employment_type"].isna().any()  # the demo feed has gaps there: they survive the encoding
    assert compact.memory_usage(deep=True).sum() < plain.memory_usage(deep=True).sum() / 2

    evaluation = load_part(snap, "eval", spec.input_columns)
    params = {"learning_rate": 0.1, "max_leaf_nodes": 15}
    (model_a, (metrics_a, _, _)), (model_b, (metrics_b, _, _)) = (
        fit_candidate(spec, params, plain),
        fit_candidate(spec, params, compact),
    )
    assert metrics_a == metrics_b
    assert np.array_equal(score_rows(spec, model_a, evaluation), score_rows(spec, model_b, evaluation))


def test_the_newest_training_day_validates_without_copying_the_window(spec, landing, tmp_path):
    import numpy as np

    from mlops_airflow.core.training import validation_split

    snap = write_snapshot(spec, str(landing), str(tmp_path / "snap"))
    for train in (
        load_part(snap, "train", spec.input_columns),
        load_part(snap, "train", spec.input_columns, spec.text_columns),
    ):
        fit, valid = validation_split(spec, train)
        assert set(valid["event_date"].astype(str)) == {"2026-01-15"} and len(valid) == 200
        assert fit["event_date"].astype(str).max() == "2026-01-14" and len(fit) == 13 * 200
        assert np.shares_memory(fit["age"].to_numpy(), train["age"].to_numpy())  # a view, not a copy
        shuffled = train.sample(frac=1.0, random_state=0)  # rows out of time order: still split by day
        fit_s, valid_s = validation_split(spec, shuffled)
        assert sorted(valid_s.index) == sorted(valid.index) and sorted(fit_s.index) == sorted(fit.index)


def test_a_window_in_days_keeps_whole_batches_and_loads_the_rows_inside_its_bounds(tmp_path):
    """Weekly files and a window of 20 + 10 days: the files the bounds cut are kept whole (one copy even when
    both parts use it), the manifest records the bounds, and loading uses the rows inside them only."""
    spec = ticket_spec(window={"train_days": 20, "eval_days": 10})
    land_tickets(tmp_path / "landing", 0, 69, span=7)  # weeks 0..9; the newest row is on day 69

    snap = write_snapshot(spec, str(tmp_path / "landing"), str(tmp_path / "snap"))

    week = [day_file(7 * k) for k in range(10)]
    assert [b.name for b in snap.batches if b.part == "eval"] == week[8:10]
    assert [b.name for b in snap.batches if b.part == "train"] == week[5:9]  # week 5 holds days 40-41
    assert snap.bounds == {
        "column": "opened_on",
        "train": ["2026-03-13T00:00:00+00:00", "2026-04-02T00:00:00+00:00"],
        "eval": ["2026-04-02T00:00:00+00:00", "2026-04-12T00:00:00+00:00"],
    }
    assert read_manifest(str(tmp_path / "snap")).bounds == snap.bounds
    assert len(list((tmp_path / "batches").glob("*.parquet"))) == 5  # week 8 is stored once
    assert (snap.train_rows, snap.eval_rows) == (200, 100)
    train, evaluation = load_part(snap, "train"), load_part(snap, "eval")
    assert (len(train), len(evaluation)) == (200, 100)
    days = {part: frame["opened_on"].str[:10] for part, frame in (("train", train), ("eval", evaluation))}
    assert (days["train"].min(), days["train"].max()) == ("2026-03-13", "2026-04-01")
    assert (days["eval"].min(), days["eval"].max()) == ("2026-04-02", "2026-04-11")
    assert list(load_part(snap, "eval", ["outcome"]).columns) == ["outcome"]  # the bounds' column read, not given


def test_a_window_in_rows_takes_the_newest_whole_batches_holding_the_labelled_rows_it_needs(tmp_path):
    spec = ticket_spec({"max_unlabelled_fraction": 0.5, "delay_days": 0}, window={"train_rows": 100, "eval_rows": 25})
    land_tickets(tmp_path / "landing", 0, 29, unlabelled={29: 4})

    snap = write_snapshot(spec, str(tmp_path / "landing"), str(tmp_path / "snap"))

    assert [b.name for b in snap.batches if b.part == "eval"] == [day_file(d) for d in (27, 28, 29)]  # 26 rows
    assert [b.name for b in snap.batches if b.part == "train"] == [day_file(d) for d in range(17, 27)]
    assert (snap.train_rows, snap.eval_rows, snap.unlabelled_rows) == (100, 26, 4)
    with pytest.raises(DataError, match=r"holding 296 labelled row\(s\); window.eval_rows needs 1000"):
        write_snapshot(
            ticket_spec({"max_unlabelled_fraction": 0.5}, window={"train_rows": 100, "eval_rows": 1000}),
            str(tmp_path / "landing"),
            str(tmp_path / "short"),
        )


def test_a_window_in_days_with_no_training_day_landed_is_refused(tmp_path):
    land_tickets(tmp_path / "landing", 0, 4)
    with pytest.raises(DataError, match=r"5 batch\(es\) for evaluation and 0 for training"):
        write_snapshot(ticket_spec(), str(tmp_path / "landing"), str(tmp_path / "snap"))
    assert not (tmp_path / "snap").exists()


def test_rows_without_a_label_are_counted_and_never_loaded(tmp_path):
    spec = ticket_spec(
        {"delay_days": 2, "max_unlabelled_fraction": 0.2}, window={"train_batches": 5, "eval_batches": 2}
    )
    land_tickets(tmp_path / "landing", 0, 9, unlabelled={3: 2, 9: 10})  # day 9: no outcome yet

    snap = write_snapshot(spec, str(tmp_path / "landing"), str(tmp_path / "snap"))

    assert {b.name: b.unlabelled for b in snap.batches if b.unlabelled} == {day_file(3): 2, day_file(9): 10}
    assert [b.name for b in snap.batches if b.awaiting_labels] == [day_file(8), day_file(9)]  # the newest 2 days
    assert (snap.unlabelled_rows, snap.summary()["unlabelled_rows"]) == (12, 12)
    assert (snap.train_rows, snap.eval_rows) == (48, 10)
    evaluation = load_part(snap, "eval", spec.input_columns)
    assert len(evaluation) == 10 and evaluation["outcome"].notna().all()
    assert len(load_part(snap, "train", ["wait_minutes"])) == 48  # the label is read to leave rows out, not given


def test_labels_landed_later_are_used_by_the_next_run_and_a_cleared_run_keeps_the_bytes_it_read(tmp_path):
    spec = ticket_spec({"delay_days": 2}, window={"train_batches": 5, "eval_batches": 2})
    landing, snapshots = tmp_path / "landing", tmp_path / "snapshots"
    land_tickets(landing, 0, 9, unlabelled={8: 10, 9: 10})
    first = write_snapshot(spec, str(landing), str(snapshots / "run-1"), run_id="run-1")
    assert (first.eval_rows, first.unlabelled_rows) == (0, 20)

    land_tickets(landing, 8, 9)  # the outcomes arrive: the same files, landed again with them

    cleared = write_snapshot(spec, str(landing), str(snapshots / "run-1"), run_id="run-1")
    assert cleared == first and len(load_part(cleared, "eval")) == 0  # its own snapshot, not the new files
    second = write_snapshot(spec, str(landing), str(snapshots / "run-2"), run_id="run-2")
    assert second.content_hash != first.content_hash
    assert (second.eval_rows, second.unlabelled_rows) == (20, 0) and len(load_part(second, "eval")) == 20


def test_a_window_in_days_over_batches_without_the_timestamp_column_names_the_column(tmp_path):
    # A spec that left source.timestamp_column out (default event_date) over files holding `opened_on`: the
    # snapshot said "21 batch(es) for evaluation and 0 for training", which sent the user looking elsewhere.
    spec = ticket_spec(window={"train_days": 20, "eval_days": 10})
    spec = spec.model_copy(update={"source": spec.source.model_copy(update={"timestamp_column": "event_date"})})
    land_tickets(tmp_path / "landing", 0, 20)
    with pytest.raises(
        DataError, match=r"no batch holds a time in column 'event_date' \(source\.timestamp_column"
    ) as err:
        write_snapshot(spec, str(tmp_path / "landing"), str(tmp_path / "snap"))
    assert "21 lack the column" in str(err.value) and err.value.rule == "timestamp_column"
    assert not (tmp_path / "snap").exists()
