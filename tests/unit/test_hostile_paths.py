"""Paths and params as a hostile user shapes them: a landing zone or a folder on its way swapped for a symlink
after it was checked, a store folder that is a symlink out of the model's storage, retention racing a snapshot,
and processes killed half-way through a write or a removal."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from mlops_airflow.core import batch_store, demo_data
from mlops_airflow.core.batch_store import TEMP, BatchStore, RetentionError, collect_garbage
from mlops_airflow.core.config import get_spec
from mlops_airflow.core.data import load_part, read_manifest, snapshot_key, write_snapshot
from mlops_airflow.core.landing import IncompleteBatch, LandingZone, RefusedFile
from mlops_airflow.core.settings import confine_data_uri

HOUR = 3600.0
SECRET = "card_number,pin\n4111111111111111,1234\n"


@pytest.fixture
def spec():
    return get_spec("credit_default")


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    """A model's storage folder as the ``snapshot`` task lays it out, and its landing zone (days 0-15)."""
    demo_data.write_batches(tmp_path / "landing", range(16), n_rows=200)
    return tmp_path / "storage" / "credit_default"


def snap(spec: Any, storage: Path, run_id: str) -> Any:
    """``write_snapshot`` as the ``snapshot`` task calls it."""
    snapshots = storage / "snapshots"
    return write_snapshot(
        spec,
        str(storage.parents[1] / "landing"),
        str(snapshots / snapshot_key(run_id)),
        within=str(snapshots),
        run_id=run_id,
        store=storage / "batches",
    )


def age(paths: Any, seconds: float) -> None:
    when = time.time() - seconds
    for path in paths:
        os.utime(path, (when, when))


def swap_for_symlink(folder: Path, target: Path) -> None:
    """What someone with write access to the landing root does between a check and a read."""
    folder.rename(folder.with_name(folder.name + ".moved"))
    folder.symlink_to(target, target_is_directory=True)


# A landed file is checked on the descriptor that is read, not on its name.


def test_a_zone_swapped_for_a_symlink_between_listing_and_reading_reads_nothing_outside(mlops_home, tmp_path):
    zone = mlops_home / "data" / "landing" / "credit_default"
    zone.mkdir(parents=True)
    outside = tmp_path / "secrets"
    outside.mkdir()
    (outside / "batch_001.csv").write_text(SECRET)
    # The landed file looks like the secret file to a size-and-time check: same length, same time.
    landed = zone / "batch_001.csv"
    landed.write_text("x" * len(SECRET))
    stamp = time.time() - HOUR
    for path in (landed, outside / "batch_001.csv"):
        os.utime(path, (stamp, stamp))
    reader = LandingZone(str(zone))
    [batch] = reader.files()
    swap_for_symlink(zone, outside)

    with pytest.raises((RefusedFile, IncompleteBatch)) as caught:
        reader.read(batch)
    assert "batch_001.csv" in str(caught.value)
    assert "4111" not in str(caught.value)


def test_a_fifo_swapped_in_for_a_listed_file_is_not_waited_on(mlops_home):
    zone = mlops_home / "data" / "landing" / "credit_default"
    zone.mkdir(parents=True)
    landed = zone / "batch_001.csv"
    landed.write_text("a,b\n1,2\n")
    reader = LandingZone(str(zone))
    [batch] = reader.files()
    landed.unlink()
    os.mkfifo(landed)  # no one ever writes to it: an ordinary open would wait for ever

    with pytest.raises(IncompleteBatch, match=r"batch_001\.csv"):
        reader.read(batch)


def test_a_trigger_zone_swapped_for_a_symlink_after_its_check_is_refused_unread(spec, mlops_home, tmp_path):
    root = mlops_home / "data"
    zone = root / "landing" / "credit_default"
    demo_data.write_batches(zone, range(16), n_rows=200)
    outside = tmp_path / "other_team"
    demo_data.write_batches(outside, range(16), n_rows=200)
    checked = confine_data_uri("landing/credit_default")  # what the trigger's data_uri passed as
    swap_for_symlink(zone, outside)
    snapshots = mlops_home / "storage" / "credit_default" / "snapshots"

    with pytest.raises(RefusedFile, match="outside the allowed landing roots"):
        write_snapshot(spec, checked, snapshots / "run", within=snapshots, run_id="run", confined=True)
    assert not (snapshots / "run").exists()
    # The spec's own source.uri is reviewed like code: its folder is trusted wherever it resolves.
    assert write_snapshot(spec, checked, snapshots / "spec", within=snapshots, run_id="spec").train_rows > 0


# Retention never follows a symlink out of the model's storage.


def test_retention_never_follows_a_symlinked_store_folder_out_of_the_storage(spec, storage, tmp_path):
    snap(spec, storage, "a")
    victim = tmp_path / "someone_else"
    victim.mkdir()
    (victim / "notes.txt").write_text("keep me")
    age([victim / "notes.txt"], 48 * HOUR)
    (storage / "batches" / TEMP).rmdir()  # empty once the snapshot's objects are published
    (storage / "batches" / TEMP).symlink_to(victim, target_is_directory=True)

    with pytest.raises(RetentionError, match="symlink"):
        collect_garbage(storage, keep_runs=1, grace_seconds=HOUR)
    assert (victim / "notes.txt").read_text() == "keep me"


def test_retention_stops_at_a_symlinked_snapshot_and_removes_nothing(spec, storage, tmp_path):
    kept = snap(spec, storage, "a")
    victim = tmp_path / "elsewhere"
    victim.mkdir()
    (victim / "manifest.json").write_text('{"batches": []}')
    age([victim / "manifest.json"], 48 * HOUR)
    (storage / "snapshots" / "old").symlink_to(victim, target_is_directory=True)
    before = sorted(p.name for p in (storage / "batches").iterdir())

    with pytest.raises(RetentionError, match="symlink"):
        collect_garbage(storage, keep_runs=1, grace_seconds=0)
    assert (victim / "manifest.json").exists()
    assert sorted(p.name for p in (storage / "batches").iterdir()) == before
    assert load_part(kept, "train").shape[0] == kept.train_rows


# Retention beside a snapshot being written, and killed half-way.


class _Clock:
    """``time`` as retention sees it, which runs ``act`` once, the first time retention reads the clock
    after its start: the instant between its judging a batch unused and removing it."""

    def __init__(self, act: Any) -> None:
        self.act, self.calls = act, 0

    def time(self) -> float:
        self.calls += 1
        if self.calls == 2:
            self.act()
        return time.time()


def test_a_snapshot_written_while_retention_removes_a_batch_it_reuses_stays_readable(spec, storage, monkeypatch):
    # The interleaving is forced (it cannot be produced on demand otherwise): a new run's snapshot reuses the
    # batches of a snapshot that was let go, at the instant retention has judged one of them unused.
    first = snap(spec, storage, "old")
    (storage / "snapshots" / snapshot_key("old") / "manifest.json").unlink()
    (storage / "snapshots" / snapshot_key("old")).rmdir()
    age((storage / "batches").glob("*.parquet"), 48 * HOUR)
    written: list[Any] = []
    monkeypatch.setattr(batch_store, "time", _Clock(lambda: written.append(snap(spec, storage, "new"))))

    report = collect_garbage(storage, grace_seconds=HOUR)

    [new] = written
    assert {b.batch_hash for b in new.batches} == {b.batch_hash for b in first.batches}
    assert load_part(new, "train").shape[0] == new.train_rows
    assert load_part(new, "eval").shape[0] == new.eval_rows
    store = BatchStore(storage / "batches")
    assert all(Path(str(store.object(b.batch_hash))).exists() for b in new.batches)
    assert report.young_batches or report.removed_batches  # it did run beside the snapshot


def test_retention_killed_after_taking_a_batch_out_puts_it_back_and_the_rerun_keeps_what_is_named(
    spec, storage, monkeypatch
):
    # A kill cannot be placed on one line of a real process on demand: it is simulated by an exception at the
    # line after the rename (no handler of retention's runs on a real kill, and none is reached here either).
    kept = snap(spec, storage, "kept")
    digest = kept.batches[0].batch_hash
    store = BatchStore(storage / "batches")
    original = os.replace

    def killed(src: Any, dst: Any) -> None:
        original(src, dst)
        if str(dst).endswith(batch_store.RETIRED):
            raise SystemExit("killed")

    def kill_after_rename() -> None:
        """What a collection killed right after its rename leaves: the object out of the store."""
        monkeypatch.setattr(batch_store.os, "replace", killed)
        with pytest.raises(SystemExit):
            store.retire(digest, lambda mtime: False)
        monkeypatch.setattr(batch_store.os, "replace", original)
        assert not Path(str(store.object(digest))).exists()

    # The next collection puts it back first and judges it again: a kept snapshot names it, so it stays.
    kill_after_rename()
    report = collect_garbage(storage, keep_runs=1, grace_seconds=0)
    assert digest not in report.removed_batches
    assert not list((storage / "batches" / TEMP).glob(f"*{batch_store.RETIRED}"))
    assert load_part(kept, "train").shape[0] == kept.train_rows
    # A reader of the kept snapshot that comes first finds it too.
    kill_after_rename()
    assert load_part(kept, "train").shape[0] == kept.train_rows
    assert Path(str(store.object(digest))).exists()


def test_retention_keeps_a_young_snapshot_past_keep_runs_that_its_dag_run_may_still_read(spec, storage):
    # Run A wrote its snapshot and is still training; run B, for the next day, wrote its own meanwhile.
    running = snap(spec, storage, "scheduled__day-15")
    demo_data.write_batch(storage.parents[1] / "landing", 16, n_rows=200)
    newer = snap(spec, storage, "scheduled__day-16")
    age((storage / "batches").glob("*.parquet"), 48 * HOUR)  # old batches, reused run after run
    age([Path(running.uri) / "manifest.json"], 60)
    only_running = {b.batch_hash for b in running.batches} - {b.batch_hash for b in newer.batches}
    assert only_running

    report = collect_garbage(storage, keep_runs=1, grace_seconds=HOUR)

    still = read_manifest(running.uri)
    assert still is not None and load_part(still, "train").shape[0] == running.train_rows
    assert not only_running & set(report.removed_batches)
    assert report.young_snapshots == [snapshot_key("scheduled__day-15")] and not report.removed_snapshots
    # Once the grace period is over it goes, as --keep-runs says.
    later = collect_garbage(storage, keep_runs=1, grace_seconds=HOUR, now=time.time() + 2 * HOUR)
    assert later.removed_snapshots == [snapshot_key("scheduled__day-15")]


# A snapshot's manifest is never half-written, even by a process killed while writing it.

_KILL_MID_MANIFEST = """
import builtins, io, os, sys
real_open = builtins.open

class HalfThenDie:
    def __init__(self, fh):
        self.fh = fh
    def write(self, data):
        self.fh.write(data[: max(1, len(data) // 2)])
        self.fh.flush()
        os._exit(9)  # the process dies here: no handler runs
    def __getattr__(self, name):
        return getattr(self.fh, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.fh.close()

def dying_open(file, mode="r", *args, **kwargs):
    fh = real_open(file, mode, *args, **kwargs)
    if "w" in str(mode) and "manifest.json" in os.path.basename(str(file)):
        return HalfThenDie(fh)
    return fh

builtins.open = io.open = dying_open  # pathlib opens through io.open
from mlops_airflow.core.config import get_spec
from mlops_airflow.core.data import write_snapshot
landing, dest, within = sys.argv[1:4]
write_snapshot(get_spec("credit_default"), landing, dest, within=within, run_id="run", store=within + "/../batches")
"""


def test_a_snapshot_task_killed_while_writing_its_manifest_leaves_no_half_manifest_and_its_retry_works(spec, storage):
    snapshots = storage / "snapshots"
    dest = snapshots / snapshot_key("run")
    landing = storage.parents[1] / "landing"
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILL_MID_MANIFEST), str(landing), str(dest), str(snapshots)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    assert child.returncode == 9, child.stderr[-2000:]
    assert read_manifest(dest) is None  # nothing a reader or retention takes for a snapshot

    retried = snap(spec, storage, "run")
    assert read_manifest(dest) == retried
    assert load_part(retried, "train").shape[0] == retried.train_rows


def test_predict_and_monitor_read_a_trigger_zone_swapped_after_its_check_not_at_all(spec, mlops_home, tmp_path):
    # The zone the predict_ and monitor_ tasks read when a trigger's data_uri names it (operators/base.py)
    from airflow.sdk.exceptions import AirflowFailException

    from mlops_airflow.operators.base import LandedBatches

    zone = mlops_home / "data" / "scoring" / "credit_default"
    demo_data.write_batches(zone, range(2), n_rows=50)
    outside = tmp_path / "other_team"
    demo_data.write_batches(outside, range(2), n_rows=50)
    checked = confine_data_uri("scoring/credit_default")
    swap_for_symlink(zone, outside)

    with pytest.raises(AirflowFailException, match="outside the allowed landing roots"):
        landed = LandedBatches(spec, checked, "csv", "scoring zone", confined=True)
        for batch in landed.files:
            landed.frame(batch)
    # the spec's own scoring zone is reviewed like code: trusted wherever it resolves
    own = LandedBatches(spec, checked, "csv", "scoring zone")
    assert all(own.frame(batch) is not None for batch in own.files)
