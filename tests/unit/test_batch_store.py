"""The batch store: each landed batch stored once under the hash of its Parquet bytes, snapshots as manifests
naming them, written atomically, snapshots of per-run copies still readable, and retention that never removes
what a kept snapshot, a registered model version or a snapshot being written needs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from test_demo_data_s3 import BUCKET, s3_endpoint  # noqa: F401  (the S3 fixture)

from mlops_airflow.core import batch_store, demo_data
from mlops_airflow.core.batch_store import PENDING, TEMP, BatchStore, collect_garbage, registered_snapshots
from mlops_airflow.core.config import get_spec
from mlops_airflow.core.data import DataError, load_part, read_manifest, snapshot_key, write_snapshot

HOUR = 3600.0


@pytest.fixture
def spec():
    return get_spec("credit_default")


@pytest.fixture
def storage(tmp_path):
    """A model's storage folder as the ``snapshot`` task lays it out, and its landing zone (days 0-15)."""
    demo_data.write_batches(tmp_path / "landing", range(16), n_rows=200)
    return tmp_path / "storage" / "credit_default"


def snap(spec, storage: Path, run_id: str, landing: Path | None = None) -> Any:
    """``write_snapshot`` as the ``snapshot`` task calls it."""
    snapshots = storage / "snapshots"
    landing = landing or storage.parents[1] / "landing"
    dest = snapshots / snapshot_key(run_id)
    return write_snapshot(
        spec, str(landing), str(dest), within=str(snapshots), run_id=run_id, store=storage / "batches"
    )


def land(storage: Path, day: int) -> None:
    demo_data.write_batch(storage.parents[1] / "landing", day, n_rows=200)


def objects(storage: Path) -> dict[str, Path]:
    return {p.name.removesuffix(".parquet"): p for p in (storage / "batches").glob("*.parquet")}


def age(paths: Any, seconds: float) -> None:
    when = time.time() - seconds
    for path in paths:
        os.utime(path, (when, when))


def day_of(snapshot: Any, name: str) -> Any:
    return next(b for b in snapshot.batches if b.name == name)


def test_a_daily_run_stores_only_the_new_batch_and_its_snapshot_is_a_manifest(spec, storage):
    first = snap(spec, storage, "scheduled__day-15")
    stored = objects(storage)
    assert len(stored) == 15 and {b.batch_hash for b in first.batches} == set(stored)
    for digest, path in stored.items():  # an object's name is the hash of its bytes
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert not list((storage / "snapshots").rglob("*.parquet"))  # no copy under the run's prefix
    assert not (Path(first.uri) / PENDING).exists()

    age(stored.values(), 2 * HOUR)
    land(storage, 16)
    second = snap(spec, storage, "scheduled__day-16")
    after = objects(storage)
    assert len(after) == 16 and set(after) - set(stored) == {day_of(second, "batch_2026-01-17.csv").batch_hash}
    shared = {b.batch_hash for b in second.batches} & set(stored)
    assert len(shared) == 14
    # a reused batch is marked as used again: retention's grace period starts anew
    assert all(time.time() - after[d].stat().st_mtime < HOUR for d in shared)

    manifest = json.loads((Path(second.uri) / "manifest.json").read_text())
    assert manifest["store"] == "../../batches"
    assert {b["batch_hash"] for b in manifest["batches"]} == {b.batch_hash for b in second.batches}
    assert len(load_part(second, "train")) == 14 * 200 and len(load_part(second, "eval")) == 200

    # The data hash still names the landed bytes of each batch in its part, as before the store.
    landing = storage.parents[1] / "landing"
    digest = hashlib.sha256()
    for batch in second.batches:
        landed = hashlib.sha256((landing / batch.name).read_bytes()).hexdigest()
        assert batch.sha256 == landed
        digest.update(f"{batch.part}/{batch.name}:{landed}".encode())
    assert second.content_hash == digest.hexdigest()


def test_the_same_landed_data_is_stored_once_whatever_the_run(spec, storage):
    a = snap(spec, storage, "manual__a")
    b = snap(spec, storage, "manual__b")
    assert a.content_hash == b.content_hash and len(objects(storage)) == 15
    assert [x.batch_hash for x in a.batches] == [x.batch_hash for x in b.batches]


def test_a_changed_stored_batch_is_not_read(spec, storage):
    snapshot = snap(spec, storage, "manual__a")
    newest = day_of(snapshot, "batch_2026-01-16.csv")
    path = objects(storage)[newest.batch_hash]
    tampered = pd.read_parquet(path)
    tampered.loc[0, "income"] = 1e9
    tampered.to_parquet(path)
    with pytest.raises(DataError, match="not to its name") as err:
        load_part(read_manifest(snapshot.uri), "eval")
    assert err.value.rule == "batch_hash"


def test_a_missing_stored_batch_fails_naming_it(spec, storage):
    snapshot = snap(spec, storage, "manual__a")
    newest = day_of(snapshot, "batch_2026-01-16.csv")
    objects(storage)[newest.batch_hash].unlink()
    with pytest.raises(DataError, match=f"batch {newest.batch_hash} is not in the batch store"):
        load_part(read_manifest(snapshot.uri), "eval")


def test_a_write_that_dies_leaves_no_object_under_its_final_name(spec, storage, monkeypatch):
    # A full disk in the middle of an object cannot be made for real here: the sink fails after its first
    # bytes are written (a fault injected by monkeypatch).
    real_write = batch_store._HashSink.write

    def disk_full(self: Any, data: bytes) -> int:
        if self.target is not None and self.size > 0:
            raise OSError(28, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(batch_store._HashSink, "write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        snap(spec, storage, "manual__a")
    assert not objects(storage) and not list((storage / "batches" / TEMP).iterdir())
    assert not (storage / "snapshots" / snapshot_key("manual__a")).exists()  # no partial snapshot either

    monkeypatch.setattr(batch_store._HashSink, "write", real_write)
    snapshot = snap(spec, storage, "manual__a")  # the retry writes it whole
    assert len(objects(storage)) == 15 and snapshot.train_rows == 2800


def old_format(new: Any, dest: Path, run_id: str) -> Path:
    """A snapshot as written before the store: a Parquet copy of each batch under ``<part>/<stem>.parquet`` of
    its own prefix and a manifest without ``store`` or ``batch_hash``."""
    data = json.loads((Path(new.uri) / "manifest.json").read_text())
    store = new.batch_store()
    del data["store"]
    for batch in data["batches"]:
        digest = batch.pop("batch_hash")
        target = f"{batch['part']}/{batch['name'].rsplit('.', 1)[0]}.parquet"
        (dest / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(str(store.object(digest)), dest / target)
        batch["snapshot_file"] = target
    data["uri"], data["run_id"] = str(dest), run_id
    (dest / "manifest.json").write_text(json.dumps(data, indent=2))
    return dest


def test_a_snapshot_of_per_run_copies_stays_readable(spec, storage):
    new = snap(spec, storage, "scheduled__new")
    old = read_manifest(str(old_format(new, storage / "snapshots" / snapshot_key("scheduled__old"), "scheduled__old")))
    assert old.store is None and old.batch_store() is None
    assert {b.batch_hash for b in old.batches} == {None}
    assert old.content_hash == new.content_hash
    for part in ("train", "eval"):
        pd.testing.assert_frame_equal(load_part(old, part), load_part(new, part))
    columns = ["age", "region"]
    pd.testing.assert_frame_equal(
        load_part(old, "train", columns, ["region"]), load_part(new, "train", columns, ["region"])
    )
    # A retry of that old run returns its snapshot as is.
    assert snap(spec, storage, "scheduled__old") == old


def test_retention_keeps_the_newest_runs_and_removes_batches_only_older_ones_name(spec, storage):
    old = [snap(spec, storage, "scheduled__day-15")]
    for day in (16, 17, 18):
        land(storage, day)
        old.append(snap(spec, storage, f"scheduled__day-{day}"))
    newest = old.pop()
    for i, snapshot in enumerate(old):  # manifests in the order the runs wrote them
        age([Path(snapshot.uri) / "manifest.json"], (4 - i) * HOUR)
    only_old = {b.batch_hash for s in old for b in s.batches} - {b.batch_hash for b in newest.batches}
    assert len(only_old) == 3  # days 1, 2 and 3
    later = time.time() + 2 * HOUR  # every object older than one hour's grace by then

    dry = collect_garbage(storage, keep_runs=1, grace_seconds=HOUR, dry_run=True, now=later)
    assert set(dry.removed_batches) == only_old and len(dry.removed_snapshots) == 3
    assert len(objects(storage)) == 18 and all((Path(s.uri) / "manifest.json").exists() for s in old)

    # Without --keep-runs every snapshot is kept: nothing is removed.
    assert not collect_garbage(storage, grace_seconds=HOUR, now=later).removed_batches

    report = collect_garbage(storage, keep_runs=1, grace_seconds=HOUR, now=later)
    assert report.kept_snapshots == [snapshot_key("scheduled__day-18")]
    assert set(report.removed_batches) == only_old and set(objects(storage)) == {b.batch_hash for b in newest.batches}
    assert not any(Path(s.uri).exists() for s in old)
    assert len(load_part(read_manifest(newest.uri), "train")) == 2800


def test_retention_leaves_young_batches_and_what_a_snapshot_being_written_took(spec, storage):
    snapshot = snap(spec, storage, "manual__a")
    stored = objects(storage)
    shutil.rmtree(Path(snapshot.uri))  # its run's snapshot gone: every batch unreferenced
    age(stored.values(), 3 * HOUR)
    named, stale_named, *rest = sorted(stored)
    writing = storage / "snapshots" / snapshot_key("manual__b")
    writing.mkdir(parents=True)
    (writing / PENDING).write_text(json.dumps([named]))  # a snapshot being written took it
    dead = storage / "snapshots" / snapshot_key("manual__c")
    dead.mkdir()
    (dead / PENDING).write_text(json.dumps([stale_named]))  # an attempt that died hours ago
    age([dead / PENDING], 2 * HOUR)
    young = rest.pop()
    age([stored[young]], 0)  # written a moment ago
    leftover = storage / "batches" / TEMP / "0123.part"  # a temporary file of a writer that was killed
    leftover.write_bytes(b"PAR1 half")
    age([leftover], 2 * HOUR)

    report = collect_garbage(storage, grace_seconds=HOUR)
    assert report.in_progress == [writing.name]
    assert set(objects(storage)) == {named, young}
    assert set(report.removed_batches) == {stale_named, *rest}
    assert report.young_batches == [young] and not leftover.exists()


def test_retention_never_removes_a_registered_versions_snapshot(spec, mlops_home, monkeypatch):
    """Versions registered by a CT run record their snapshot (the ``mlops.snapshot_uri`` tag, else their CT
    run's ``snapshot_uri`` param); ``mlops gc`` reads them from MLflow and keeps those snapshots whole."""
    from mlops_airflow import cli
    from mlops_airflow.core import settings
    from mlops_airflow.core.landing import as_path
    from mlops_airflow.core.tracking import client_for, experiment_id

    storage_base = settings.storage_base()
    storage = Path(as_path(storage_base).path) / "credit_default"
    demo_data.write_batches(mlops_home / "landing", range(16), n_rows=200)
    landing = mlops_home / "landing"
    runs = [snap(spec, storage, "scheduled__day-15", landing)]
    for day in (16, 17, 18):
        demo_data.write_batch(landing, day, n_rows=200)
        runs.append(snap(spec, storage, f"scheduled__day-{day}", landing))
    for i, snapshot in enumerate(runs):
        age([Path(snapshot.uri) / "manifest.json"], (4 - i) * HOUR)
    age(objects(storage).values(), 2 * HOUR)

    client = client_for(settings.default_tracking_uri())
    client.create_registered_model("credit_default")
    versions = []
    for snapshot, by_tag in ((runs[0], True), (runs[1], False)):
        run_id = client.create_run(experiment_id(client, "credit_default")).info.run_id
        client.log_param(run_id, "snapshot_uri", snapshot.uri)  # as the snapshot task logs it
        tags = {"mlops.snapshot_uri": snapshot.uri} if by_tag else {}  # as register_challenger tags it
        mv = client.create_model_version("credit_default", f"runs:/{run_id}/model", run_id=run_id, tags=tags)
        versions.append(mv.version)
    assert registered_snapshots(client, "credit_default") == {
        str(v): s.uri for v, s in zip(versions, runs[:2], strict=True)
    }

    def gc(*args: str) -> tuple[int, dict[str, Any]]:
        out, err = _Capture(), _Capture()
        code = cli.main(["gc", "credit_default", "--keep-runs", "1", "--grace-hours", "1", "--format", "json",
                         "--storage", storage_base, *args], out, err)  # fmt: skip
        return code, json.loads(out.text) if out.text else {"error": err.text}

    # Without the registered versions, the batches only their snapshots name (days 1, 2 and 3) would go.
    unprotected = collect_garbage(storage, keep_runs=1, grace_seconds=HOUR, dry_run=True)
    assert len(unprotected.removed_batches) == 3 and len(unprotected.removed_snapshots) == 3
    code, dry = gc("--dry-run")
    assert code == 0 and dry["removed_snapshots"] == [snapshot_key("scheduled__day-17")]
    assert not dry["removed_batches"]  # day 3 is in day 16's snapshot too, which v2 was trained on
    code, report = gc()
    assert code == 0 and sorted(report["protected_snapshots"]) == sorted(Path(s.uri).name for s in runs[:2])
    assert not report["removed_batches"] and report["removed_snapshots"] == [snapshot_key("scheduled__day-17")]
    for snapshot in runs[:2]:  # the registered versions' training data is whole
        assert len(load_part(read_manifest(snapshot.uri), "train")) == 2800

    code, refused = gc("--keep-runs", "0")  # the newest snapshot may be the one a running DAG run reads
    assert code == 2 and "must be 1 or more" in refused["error"]
    # Without the registry's word nothing is removed.
    code, refused = gc("--tracking-uri", f"sqlite:///{mlops_home / 'elsewhere.db'}")
    assert code == 2 and "nothing removed" in refused["error"]


def test_an_object_store_holds_the_batches_and_retention_works_there(spec, storage, s3_endpoint):  # noqa: F811
    """The store on S3 (moto's server through s3fs): objects moved into place whole, read back, collected."""
    from upath import UPath

    root = UPath(f"s3://{BUCKET}/storage/credit_default")
    snapshots = root / "snapshots"
    landing = str(storage.parents[1] / "landing")
    first = write_snapshot(spec, landing, snapshots / "run-1", within=snapshots, run_id="run-1", store=root / "batches")
    land(storage, 16)
    second = write_snapshot(
        spec, landing, snapshots / "run-2", within=snapshots, run_id="run-2", store=root / "batches"
    )
    keys = [o["Key"] for o in s3_endpoint.list_objects_v2(Bucket=BUCKET, Prefix="storage/")["Contents"]]
    stored = [k for k in keys if k.startswith("storage/credit_default/batches/") and k.endswith(".parquet")]
    assert len(stored) == 16 and not [k for k in keys if "/tmp/" in k or k.endswith(PENDING)]
    assert second.store == "../../batches" and len(load_part(read_manifest(snapshots / "run-2"), "eval")) == 200

    report = collect_garbage(root, keep_runs=1, grace_seconds=HOUR, now=time.time() + 2 * HOUR)
    assert report.removed_snapshots == ["run-1"]
    assert report.removed_batches == [day_of(first, "batch_2026-01-02.csv").batch_hash]
    assert len(load_part(read_manifest(snapshots / "run-2"), "train")) == 2800


class _Capture:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


def test_the_store_refuses_a_name_that_is_not_a_hash(tmp_path):
    store = BatchStore(tmp_path / "batches")
    with pytest.raises(DataError, match="not a batch hash"):
        store.object("../../etc/passwd")
