"""GX validation of snapshot batches: each corruption is caught and named (file, column, rule, counts)."""

from __future__ import annotations

import pytest

from mlops_airflow.core import demo_data
from mlops_airflow.core.config import get_spec
from mlops_airflow.core.data import write_snapshot
from mlops_airflow.core.validation import validate_snapshot


@pytest.fixture(scope="module")
def spec():
    return get_spec("credit_default")


def snapshot_with(tmp_path, corrupt=None, fmt="csv"):
    landing = tmp_path / "landing"
    demo_data.write_batches(landing, range(3), n_rows=300, fmt=fmt)
    demo_data.write_batch(landing, 3, n_rows=300, corrupt=corrupt, fmt=fmt)
    return write_snapshot(spec_for_window(), str(landing), str(tmp_path / "snap"))


def spec_for_window():
    return get_spec("credit_default").model_copy(update={"min_rows": 100})


def test_clean_batches_pass(spec, tmp_path):
    summary = validate_snapshot(spec, snapshot_with(tmp_path))
    assert summary.success, summary.message()
    assert summary.files == 4 and summary.rows == 1200 and summary.expectations > 30


@pytest.mark.parametrize(
    ("corrupt", "column", "expectation", "counted"),
    [
        ("missing_column", "utilization", "expect_column_to_exist", False),
        ("wrong_dtype", "income", "expect_column_values_to_be_in_type_list", False),
        ("nulls_in_required", "age", "expect_column_values_to_not_be_null", True),
        ("out_of_range", "utilization", "expect_column_values_to_be_between", True),
        ("unknown_category", "region", "expect_column_values_to_be_in_set", True),
        ("empty", None, "expect_table_row_count_to_be_between", False),
        ("not_tabular", None, "readable_table", False),
    ],
)
def test_each_corruption_is_named(spec, tmp_path, corrupt, column, expectation, counted):
    summary = validate_snapshot(spec, snapshot_with(tmp_path, corrupt))
    assert not summary.success
    hits = [f for f in summary.failed if f.expectation == expectation and f.column == column]
    assert hits, summary.message()
    assert {f.file for f in summary.failed} == {"batch_2026-01-04.csv"}
    if counted:
        assert 0 < hits[0].unexpected_count < hits[0].element_count == 300
    message = summary.message()
    assert "batch_2026-01-04.csv" in message and expectation in message
    if column:
        assert f"column {column!r}" in message


def test_parquet_batches_validate_too(spec, tmp_path):
    summary = validate_snapshot(spec, snapshot_with(tmp_path, "out_of_range", fmt="parquet"))
    assert [f.file for f in summary.failed] == ["batch_2026-01-04.parquet"]


def test_a_file_too_sparse_on_its_own_fails_though_all_files_together_pass(spec, tmp_path):
    """A ``mostly`` rule holds per file (not over the whole window), and the failure names the file."""
    landing = tmp_path / "landing"
    demo_data.write_batches(landing, range(3), n_rows=300)
    sparse = demo_data.generate_batch(3, n_rows=300)
    sparse.loc[sparse.index[:90], "income"] = None  # 30% missing here (max 20%), under 15% over all files
    sparse.to_csv(landing / demo_data.batch_file_name(3), index=False)
    summary = validate_snapshot(spec, write_snapshot(spec_for_window(), str(landing), str(tmp_path / "snap")))
    assert [(f.file, f.column, f.expectation) for f in summary.failed] == [
        ("batch_2026-01-04.csv", "income", "expect_column_values_to_not_be_null")
    ]


def test_a_file_with_extra_columns_is_judged_on_the_columns_the_suite_names(spec, tmp_path):
    """Only the suite's columns are read: an extra column (any content) neither fails nor hides a failure."""
    landing = tmp_path / "landing"
    landing.mkdir()
    for day in range(4):
        frame = demo_data.generate_batch(day, n_rows=300)
        frame["free_text"] = ["x" * 50] * len(frame)
        if day == 2:
            frame.loc[frame.index[:7], "region"] = "atlantis"
        frame.to_csv(landing / demo_data.batch_file_name(day), index=False)
    summary = validate_snapshot(spec, write_snapshot(spec_for_window(), str(landing), str(tmp_path / "snap")))
    assert [(f.file, f.column, f.unexpected_count, f.element_count) for f in summary.failed] == [
        ("batch_2026-01-03.csv", "region", 7, 300)
    ]


def test_a_passing_file_is_validated_once_and_a_changed_or_failing_one_again(spec, tmp_path):
    cache = tmp_path / "storage" / "credit_default" / "validation"
    first = validate_snapshot(spec, snapshot_with(tmp_path), cache=cache)
    assert first.success and first.reused == 0 and first.evaluated > 0
    again = validate_snapshot(spec, snapshot_with(tmp_path), cache=cache)
    assert again.success and again.reused == 4 and again.evaluated == 0 and again.rows == 1200
    assert again.expectations == first.expectations  # the summary still says what was checked

    # A verdict file cut short by a kill, or one that is not a verdict at all, is validated again.
    verdict_files = sorted(cache.rglob("*.json"))
    verdict_files[0].write_text('{"success": tr')
    verdict_files[1].write_text("[true]")
    mended = validate_snapshot(spec, snapshot_with(tmp_path), cache=cache)
    assert mended.success and mended.reused == 2 and mended.evaluated > 0

    landing = tmp_path / "landing"
    demo_data.write_batch(landing, 3, n_rows=300, corrupt="out_of_range")  # same name, new bytes
    snapshot = write_snapshot(spec_for_window(), str(landing), str(tmp_path / "snap2"))
    for _ in range(2):  # a failing verdict is never reused
        summary = validate_snapshot(spec, snapshot, cache=cache)
        assert summary.reused == 3 and [f.file for f in summary.failed] == ["batch_2026-01-04.csv"]


def test_a_row_without_its_time_is_named(spec, tmp_path):
    """The timestamp column decides the training window's newest day: a row missing it fails validation,
    naming the file, the column and how many rows."""
    landing = tmp_path / "landing"
    demo_data.write_batches(landing, range(3), n_rows=300)
    frame = demo_data.generate_batch(3, n_rows=300)
    frame.loc[[5, 17, 200], "event_date"] = None
    frame.to_csv(landing / "batch_2026-01-04.csv", index=False)
    summary = validate_snapshot(spec, write_snapshot(spec_for_window(), str(landing), str(tmp_path / "snap")))
    assert not summary.success
    assert [(f.file, f.column, f.expectation, f.unexpected_count) for f in summary.failed] == [
        ("batch_2026-01-04.csv", "event_date", "expect_column_values_to_not_be_null", 3)
    ]
