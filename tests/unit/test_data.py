"""Snapshots: immutable, content-hashed, idempotent, never left half-written."""

from __future__ import annotations

import pytest

from mlops_airflow.core import demo_data
from mlops_airflow.core.config import get_spec
from mlops_airflow.core.data import DataError, load_part, read_manifest, write_snapshot


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
    import pandas as pd

    calls = {"n": 0}
    real = pd.DataFrame.to_parquet

    def dies_on_the_fifth(self, *args, **kwargs):  # a disk or network fault we cannot cause for real
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", dies_on_the_fifth)
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
