"""The landing zone's one door: listed, confined, whole, under the size cap, read once and hashed."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from test_demo_data_s3 import BUCKET, s3_endpoint  # noqa: F401  (the S3 fixture)

from mlops_airflow.core import demo_data
from mlops_airflow.core.config import get_spec
from mlops_airflow.core.data import DataError, read_manifest, write_snapshot
from mlops_airflow.core.landing import (
    MANIFEST_NAME,
    SUCCESS_MARKER,
    IncompleteBatch,
    LandingZone,
    RefusedFile,
    write_manifest,
)
from mlops_airflow.core.spec import LandingSpec
from mlops_airflow.core.validation import validate_snapshot

HOUR = 3600.0


@pytest.fixture
def spec():
    return get_spec("credit_default")


@pytest.fixture
def landing(mlops_home: Path) -> Path:
    """Sixteen 200-row demo batches under ``MLOPS_DATA_ROOT``, each last modified an hour ago or more."""
    folder = mlops_home / "data" / "landing" / "credit_default"
    for age, path in enumerate(reversed(demo_data.write_batches(folder, range(16), n_rows=200)), start=1):
        backdate(path, age * HOUR)
    return folder


def backdate(path: Path, seconds: float) -> None:
    past = path.stat().st_mtime - seconds
    os.utime(path, (past, past))


def with_landing(spec, **rules):
    source = spec.source.model_copy(update={"landing": LandingSpec(**rules)})
    return spec.model_copy(update={"source": source})


def cut(path: Path, rows: int) -> None:
    """Keep the header and the first ``rows`` rows: a batch caught half-way through landing."""
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[: rows + 1]))


def newest(folder: Path) -> Path:
    return sorted(folder.glob("batch_*"))[-1]


# Confinement: a landed path is resolved and must stay inside the zone or an allowed landing root.


def test_a_symlink_out_of_the_roots_is_refused_naming_the_file_not_its_content(spec, landing, tmp_path):
    outside = tmp_path / "outside.csv"
    outside.write_text("age,secret\n30,S3CRET-42\n")
    link = landing / "batch_2026-01-17.csv"
    link.symlink_to(outside)
    zone = LandingZone.of(spec, str(landing))
    batch = zone.files()[-1]
    with pytest.raises(RefusedFile) as caught:
        zone.read(batch)
    assert caught.value.rule == "landing_root"
    message = str(caught.value)
    assert str(link) in message and "outside the allowed landing roots" in message and "S3CRET" not in message

    snap = write_snapshot(spec, str(landing), str(tmp_path / "snap"))
    [refused] = [b for b in snap.batches if b.snapshot_file is None]
    assert (refused.name, refused.read_rule, refused.part) == (link.name, "landing_root", "eval")
    assert "S3CRET" not in json.dumps(snap.to_dict())
    summary = validate_snapshot(spec, snap)
    assert not summary.success and [f.expectation for f in summary.failed] == ["landing_root"]
    assert "S3CRET" not in summary.message()


def test_symlinks_that_stay_inside_the_roots_are_read(spec, landing, mlops_home, tmp_path, monkeypatch):
    # a batch shared from elsewhere under MLOPS_DATA_ROOT, and one from an allow-listed root
    shared = mlops_home / "data" / "shared"
    [day16] = demo_data.write_batches(shared, [16], n_rows=200)
    [day17] = demo_data.write_batches(tmp_path / "partner", [17], n_rows=200)
    monkeypatch.setenv("MLOPS_ALLOWED_DATA_ROOTS", str(tmp_path / "partner"))
    (landing / day16.name).symlink_to(day16)
    (landing / day17.name).symlink_to(day17)
    zone = LandingZone.of(spec, str(landing))
    table, digest = zone.read(zone.files()[-1])
    assert table.num_rows == 200 and digest == hashlib.sha256(day17.read_bytes()).hexdigest()

    # the zone itself may be a symlink (the spec's source.uri is reviewed like code)
    alias = tmp_path / "alias"
    alias.symlink_to(landing)
    assert write_snapshot(spec, str(alias), str(tmp_path / "snap")).eval_rows == 200


def test_a_symlink_into_the_package_storage_is_refused(spec, landing, mlops_home, monkeypatch):
    storage = mlops_home / "data" / "storage"  # storage inside a landing root: still no landing zone
    monkeypatch.setenv("MLOPS_STORAGE_BASE", storage.as_uri())
    [kept] = demo_data.write_batches(storage / "credit_default" / "predictions", [16], n_rows=20)
    (landing / kept.name).symlink_to(kept)
    zone = LandingZone.of(spec, str(landing))
    with pytest.raises(RefusedFile, match="outside the allowed landing roots"):
        zone.read(zone.files()[-1])


# Size cap: checked before a byte is read.


def test_a_file_over_the_spec_cap_is_refused_and_the_deployment_cap_applies_without_one(
    spec, landing, tmp_path, monkeypatch
):
    path = newest(landing)
    size = path.stat().st_size
    capped = spec.model_copy(update={"source": spec.source.model_copy(update={"max_file_bytes": size - 1})})
    zone = LandingZone.of(capped, str(landing))
    with pytest.raises(RefusedFile) as caught:
        zone.read(zone.files()[-1])
    assert caught.value.rule == "max_file_bytes"
    assert f"{path}: {size} bytes, over the cap of {size - 1} bytes" in str(caught.value)

    monkeypatch.setenv("MLOPS_MAX_FILE_BYTES", str(size - 1))
    snap = write_snapshot(spec, str(landing), str(tmp_path / "snap"))
    assert {b.read_rule for b in snap.batches if b.snapshot_file is None} == {"max_file_bytes"}
    roomy = spec.model_copy(update={"source": spec.source.model_copy(update={"max_file_bytes": size})})
    zone = LandingZone.of(roomy, str(landing))  # the spec's own cap wins over the deployment's
    assert zone.read(zone.files()[-1])[0].num_rows == 200


def test_the_default_cap_refuses_a_file_of_three_gibibytes_unread(landing, monkeypatch):
    monkeypatch.delenv("MLOPS_MAX_FILE_BYTES", raising=False)
    huge = landing / "batch_2026-02-01.csv"
    with huge.open("wb") as fh:  # sparse: no disk, and never read
        fh.truncate(3 * 1024**3)
    zone = LandingZone(str(landing))
    with pytest.raises(RefusedFile, match=f"over the cap of {2 * 1024**3} bytes"):
        zone.read(zone.files()[-1])


# Whole batches only: the landing protocol.


def test_a_batch_that_grows_between_listing_and_reading_is_not_used(spec, landing):
    zone = LandingZone.of(spec, str(landing))
    batch = zone.files()[-1]
    with open(batch.local, "a") as fh:  # the producer is still appending
        fh.write("2026-01-16,41,52000.0,0.3,4,0,0.2,salaried,north,rent,0\n")
    with pytest.raises(IncompleteBatch, match="changed while being read"):
        zone.read(batch)
    assert zone.usable(batch) is None and zone.skipped[0].startswith(f"{batch.name}: changed while being read")
    strict = LandingZone.of(with_landing(spec, on_incomplete="fail"), str(landing))
    with pytest.raises(IncompleteBatch, match="on_incomplete: fail"):
        strict.usable(batch)


def test_a_batch_newer_than_settle_seconds_is_left_out_and_older_batches_fill_the_window(spec, landing, tmp_path):
    [fresh] = demo_data.write_batches(landing, [16], n_rows=200)  # just landed
    snap = write_snapshot(with_landing(spec, settle_seconds=600), str(landing), str(tmp_path / "snap"))
    assert [b.name for b in snap.batches if b.part == "eval"] == ["batch_2026-01-16.csv"]
    assert snap.train_rows == 14 * 200 and fresh.name not in {b.name for b in snap.batches}
    [skipped] = snap.skipped
    assert skipped.startswith(f"{fresh.name}: last modified ") and "source.landing.settle_seconds=600" in skipped
    assert read_manifest(str(tmp_path / "snap")).summary()["skipped_batches"] == [fresh.name]


def test_a_success_marker_covers_the_batches_landed_before_it(spec, landing, tmp_path):
    marked = with_landing(spec, protocol="success_marker", on_incomplete="fail")
    with pytest.raises(DataError, match=f"no {SUCCESS_MARKER} marker"):
        write_snapshot(marked, str(landing), str(tmp_path / "none"))
    assert not (tmp_path / "none").exists()

    (landing / SUCCESS_MARKER).touch()
    backdate(landing / SUCCESS_MARKER, 0.5 * HOUR)  # written after day 16 landed, before day 17
    [late] = demo_data.write_batches(landing, [16], n_rows=200)
    with pytest.raises(IncompleteBatch, match=f"{late.name}: modified after the {SUCCESS_MARKER} marker"):
        write_snapshot(marked, str(landing), str(tmp_path / "late"))
    assert not (tmp_path / "late").exists()  # nothing half-written

    skipping = with_landing(spec, protocol="success_marker")
    snap = write_snapshot(skipping, str(landing), str(tmp_path / "snap"))
    assert [b.name for b in snap.batches if b.part == "eval"] == ["batch_2026-01-16.csv"]
    (landing / SUCCESS_MARKER).touch()  # the producer marks the delivery whole
    snap = write_snapshot(skipping, str(landing), str(tmp_path / "snap2"))
    assert [b.name for b in snap.batches if b.part == "eval"] == [late.name] and snap.skipped == []


def test_a_manifest_admits_only_the_batches_it_lists_with_their_rows_and_bytes(spec, landing, tmp_path):
    write_manifest(landing)
    listed = json.loads((landing / MANIFEST_NAME).read_text())["batches"]
    half = newest(landing)
    assert listed[half.name] == {"rows": 200, "sha256": hashlib.sha256(half.read_bytes()).hexdigest()}
    cut(half, 99)  # cut at a row boundary: a valid CSV, half a batch
    [unlisted] = demo_data.write_batches(landing, [16], n_rows=200)
    manifest = with_landing(spec, protocol="manifest")

    snap = write_snapshot(manifest, str(landing), str(tmp_path / "snap"))
    assert [b.name for b in snap.batches if b.part == "eval"] == ["batch_2026-01-15.csv"]
    assert [s.split(":")[0] for s in snap.skipped] == [unlisted.name, half.name]
    assert "not listed in _MANIFEST.json" in snap.skipped[0] and "do not match the SHA-256" in snap.skipped[1]

    with pytest.raises(IncompleteBatch, match=f"{unlisted.name}: not listed in {MANIFEST_NAME}"):
        write_snapshot(with_landing(spec, protocol="manifest", on_incomplete="fail"), str(landing), str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "text",
    ["{not json", '{"files": []}', '{"batches": {"b.csv": {"rows": "10", "sha256": "ab"}}}'],
)
def test_a_manifest_that_cannot_be_read_names_itself_and_the_expected_shape(spec, landing, tmp_path, text):
    (landing / MANIFEST_NAME).write_text(text)
    with pytest.raises(DataError, match=f'{MANIFEST_NAME}: .*expected {{"batches"'):
        write_snapshot(with_landing(spec, protocol="manifest"), str(landing), str(tmp_path / "snap"))
    assert not (tmp_path / "snap").exists()


def test_without_a_protocol_every_visible_file_is_whole_and_temporary_names_are_not_listed(spec, landing, tmp_path):
    (landing / ".batch_2026-01-17.csv.tmp").write_text("age\n1\n")  # write-then-rename: not listed until renamed
    (landing / "_batch_2026-01-18.csv").write_text("age\n1\n")
    snap = write_snapshot(spec, str(landing), str(tmp_path / "snap"))
    assert [b.name for b in snap.batches if b.part == "eval"] == ["batch_2026-01-16.csv"] and snap.skipped == []


# Reading: one read, hashed, unambiguous column names.


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_column_named_twice_is_refused_naming_the_file_and_the_column(spec, landing, tmp_path, fmt):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = newest(landing)
    header, rows = path.read_text().split("\n", 1)
    if fmt == "csv":
        path.write_text(header.replace("region", "age") + "\n" + rows)
    else:
        table = pa.table({"age": [30, 40], "region": ["north", "south"]}).rename_columns(["age", "age"])
        path.unlink()
        path = path.with_suffix(".parquet")
        pq.write_table(table, path)
    zone = LandingZone.of(spec, str(landing))
    with pytest.raises(RefusedFile) as caught:
        zone.read(zone.files()[-1])
    assert (caught.value.rule, caught.value.column) == ("unique_column_names", "age")
    assert f"{path}: column 'age' appears 2 times in the header" in str(caught.value)

    summary = validate_snapshot(spec, write_snapshot(spec, str(landing), str(tmp_path / "snap")))
    [failed] = summary.failed
    assert (failed.file, failed.column, failed.expectation) == (path.name, "age", "unique_column_names")


def test_an_infinite_value_fails_validation_and_a_passing_verdict_is_still_reused(spec, landing, tmp_path):
    cache = tmp_path / "verdicts"
    first = validate_snapshot(spec, write_snapshot(spec, str(landing), str(tmp_path / "a")), cache=cache)
    assert first.success and first.reused == 0
    again = validate_snapshot(spec, write_snapshot(spec, str(landing), str(tmp_path / "b")), cache=cache)
    assert again.success and again.reused == 15  # the verdict cache keyed by file hash still works

    path = newest(landing)
    lines = path.read_text().splitlines(keepends=True)
    column = lines[0].split(",").index("income")  # a lower bound only: a range check lets inf through
    for index, text in ((1, "inf"), (2, "Infinity")):
        cells = lines[index].split(",")
        cells[column] = text
        lines[index] = ",".join(cells)
    path.write_text("".join(lines))
    summary = validate_snapshot(spec, write_snapshot(spec, str(landing), str(tmp_path / "c")), cache=cache)
    assert summary.reused == 14
    finite = [f for f in summary.failed if f.expectation == "expect_column_values_to_be_finite"]
    assert [(f.file, f.column, f.unexpected_count) for f in finite] == [(path.name, "income", 2)]
    assert f"{path.name}: column 'income': expect_column_values_to_be_finite" in summary.message()


def test_read_batch_goes_through_the_same_door(landing, monkeypatch):
    from mlops_airflow.core.data import read_batch

    assert len(read_batch(newest(landing), "csv")) == 200
    monkeypatch.setenv("MLOPS_MAX_FILE_BYTES", "100")
    with pytest.raises(RefusedFile, match="over the cap of 100 bytes"):
        read_batch(newest(landing), "csv")


# Object stores: no symlinks; listing, size cap, protocol and hashing work as on disk.


def test_an_s3_landing_zone_is_listed_capped_and_checked_whole(spec, s3_endpoint, tmp_path):  # noqa: F811
    url = f"s3://{BUCKET}/landing/credit_default"
    demo_data.main([url, "--days", "16", "--rows", "200"])
    write_manifest(url)
    s3_endpoint.put_object(Bucket=BUCKET, Key="landing/credit_default/batch_2026-01-17.csv", Body=b"age\n1\n")
    snap = write_snapshot(with_landing(spec, protocol="manifest"), url, str(tmp_path / "snap"))
    assert [b.name for b in snap.batches if b.part == "eval"] == ["batch_2026-01-16.csv"]
    assert snap.skipped == ["batch_2026-01-17.csv: not listed in _MANIFEST.json (landing protocol 'manifest')"]
    body = s3_endpoint.get_object(Bucket=BUCKET, Key="landing/credit_default/batch_2026-01-16.csv")["Body"].read()
    assert snap.batches[-1].sha256 == hashlib.sha256(body).hexdigest()

    capped = spec.model_copy(update={"source": spec.source.model_copy(update={"max_file_bytes": len(body) - 1})})
    zone = LandingZone.of(capped, url)
    with pytest.raises(RefusedFile, match=f"{len(body)} bytes, over the cap of {len(body) - 1} bytes"):
        zone.read(next(f for f in zone.files() if f.name == "batch_2026-01-16.csv"))
