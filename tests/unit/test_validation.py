"""GX validation of snapshot batches: each corruption is caught and named (file, column, rule, counts)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from test_data import day_file, land_tickets, ticket_spec

from mlops_airflow.core import demo_data, encoding, notify
from mlops_airflow.core.config import get_spec
from mlops_airflow.core.data import write_snapshot
from mlops_airflow.core.validation import DataValidationError, validate_snapshot


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
    # what was not checked is said once, in one line of the report
    assert summary.ignored_columns == ["application_id", "free_text"]
    assert summary.message().count("columns not in the spec, ignored: application_id, free_text") == 1


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


def test_a_missing_column_is_named_first_then_the_expectations_it_breaks(spec, tmp_path):
    summary = validate_snapshot(spec, snapshot_with(tmp_path, "missing_column"))
    lines = summary.message().splitlines()
    assert lines[0].startswith("data validation failed: column `utilization` is missing (batch_2026-01-04.csv)")
    assert lines[1] == "  batch_2026-01-04.csv: column `utilization` is missing (expect_column_to_exist)"
    assert all("column 'utilization'" in line and "column is missing" in line for line in lines[2:5]), lines
    assert summary.failed[0].expectation == "expect_column_to_exist"


def test_integer_category_codes_match_by_value_as_landed_or_served(tmp_path):
    """Declared ``[3, 4, 5, 6, 8]``: a day of integers, one with gaps (floats) and one of text pass; a code not
    declared and a fraction fail, naming file and column; the server refuses what validation refuses."""
    import pandas as pd

    from mlops_airflow.serving.inputs import InputError, check_rows

    spec = ticket_spec(window={"train_batches": 5, "eval_batches": 1})
    landing = tmp_path / "landing"
    land_tickets(landing, 0, 3)  # integer codes
    land_tickets(landing, 4, 4, plan_codes=[3, None, 4, 5, 6, 8, 3, 4, 5, 6])  # a gap: read back as floats
    text = pd.read_csv(land_tickets(landing, 5, 5)[0]).astype({"plan_code": str})
    text.to_parquet(landing / day_file(5).replace(".csv", ".parquet"))  # text codes, "3"
    (landing / day_file(5)).unlink()
    land_tickets(landing, 6, 6, plan_codes=[3, 7, 4, 5, 6, 8, 3, 4, 5, 6])
    land_tickets(landing, 7, 7, plan_codes=[3, 3.5, 4, 5, 6, 8, 3, 4, 5, 6])

    summary = validate_snapshot(spec, write_snapshot(spec, str(landing), str(tmp_path / "snap")))

    assert {(f.file, f.column, f.expectation, f.unexpected_count) for f in summary.failed} == {
        (day_file(6), "plan_code", "expect_column_values_to_be_in_set", 1),
        (day_file(7), "plan_code", "expect_column_values_to_be_in_set", 1),
        (day_file(7), "plan_code", "expect_column_values_to_be_in_type_list", 1),
    }
    assert "not in the declared categories ['3', '4', '5', '6', '8']: '7' (1)" in summary.message()
    rows = {"wait_minutes": [1.0] * 4, "first_contact": [True, False, True, False], "channel": ["email"] * 4}
    checked = check_rows(spec, {**rows, "plan_code": [3, "3", 3.0, 8]}, 10)
    assert list(checked.rows["plan_code"]) == ["3", "3", "3", "8"]
    with pytest.raises(InputError) as refused:
        check_rows(spec, {**rows, "plan_code": [3, 7, 4, 5]}, 10)
    assert "column 'plan_code', row 1, value '7': not in categories [3, 4, 5, 6, 8]" in str(refused.value)


def test_rows_without_a_label_up_to_the_limit_and_a_batch_awaiting_them_pass(tmp_path):
    """At most 10 % of a day's tickets without an outcome, but the newest day (``delay_days: 1``) may have none;
    once it is no longer the newest, its verdict is not reused: it is judged by the full rule."""
    spec = ticket_spec(
        {"delay_days": 1, "max_unlabelled_fraction": 0.1}, window={"train_batches": 5, "eval_batches": 1}
    )
    landing, cache = tmp_path / "landing", tmp_path / "validation"
    land_tickets(landing, 0, 6, unlabelled={2: 3, 4: 1, 6: 10})

    summary = validate_snapshot(spec, write_snapshot(spec, str(landing), str(tmp_path / "a")), cache=cache)

    assert [(f.file, f.column, f.rule, f.unexpected_count, f.element_count) for f in summary.failed] == [
        (day_file(2), "outcome", "expect_column_values_to_not_be_null(mostly=0.9)", 3, 10)
    ]
    assert (summary.unlabelled_rows, summary.awaiting_labels) == (14, [day_file(6)])
    assert summary.unlabelled_files == {day_file(2): 3, day_file(4): 1, day_file(6): 10}
    assert "14 row(s) without a label, left out of training and evaluation" in summary.message()

    land_tickets(landing, 7, 7)  # a new day: day 6 no longer awaits its outcomes
    later = validate_snapshot(spec, write_snapshot(spec, str(landing), str(tmp_path / "b")), cache=cache)
    assert [(f.file, f.unexpected_count) for f in later.failed] == [(day_file(2), 3), (day_file(6), 10)]


def test_a_time_that_is_not_iso_8601_fails_where_the_window_is_in_days(tmp_path):
    landing = tmp_path / "landing"
    paths = land_tickets(landing, 0, 9)
    paths[4].write_text(paths[4].read_text().replace("2026-02-05", "05/02/2026"))
    spec = ticket_spec(window={"train_days": 8, "eval_days": 2})
    summary = validate_snapshot(spec, write_snapshot(spec, str(landing), str(tmp_path / "snap")))
    assert [(f.file, f.column, f.expectation, f.unexpected_count) for f in summary.failed] == [
        (day_file(4), "opened_on", "expect_column_values_to_be_iso8601", 10)
    ]


def test_one_bad_file_among_clean_ones_is_named_with_its_rules_and_offending_values(spec, tmp_path):
    """Out-of-set codes, a value over its max and a null where the spec says ``nullable: false``, in one file of
    fifteen: the headline counts bad files out of files checked, each line names file, column, the rule in words
    and the offending values with their counts in the file; the task's error, the summary (XCom and MLflow) and
    the notification carry the same text."""
    landing = tmp_path / "landing"
    demo_data.write_batches(landing, range(16), n_rows=200)
    bad = demo_data.generate_batch(16, n_rows=200)
    bad.loc[bad.index[[0, 1, 2]], "region"] = "Urgent"
    bad.loc[bad.index[[3, 4]], "region"] = 4
    bad.loc[bad.index[5], "age"] = 250
    bad.loc[bad.index[6], "utilization"] = None
    bad.to_csv(landing / "batch_2026-01-17.csv", index=False)

    summary = validate_snapshot(spec, write_snapshot(spec_for_window(), str(landing), str(tmp_path / "snap")))

    assert summary.files == 15 and not summary.success
    message = summary.message()
    lines = message.splitlines()
    assert lines[0] == "data validation failed: 3 expectation(s) broken in 1 of 15 file(s): batch_2026-01-17.csv"
    file = "  batch_2026-01-17.csv: column"
    assert set(lines[1:4]) == {
        f"{file} 'region': expect_column_values_to_be_in_set: 5 of 200 rows not in the declared categories "
        "['north', 'south', 'east', 'west']: 'Urgent' (3), '4' (2)",
        f"{file} 'age': expect_column_values_to_be_between: 1 of 200 rows above max 100: 250 (1)",
        f"{file} 'utilization': expect_column_values_to_not_be_null: 1 of 200 rows null where nullable: false",
    }, message

    error = DataValidationError(summary)
    assert str(error) == message  # the task fails with it (AirflowFailException)
    stored = summary.to_dict()  # XCom and validation/summary.json
    assert stored["message"] == message
    assert (stored["failed_files"], stored["failed_file_count"], stored["files"]) == (["batch_2026-01-17.csv"], 1, 15)
    region = next(f for f in stored["failed"] if f["column"] == "region")
    assert region["values"] == [{"value": "'Urgent'", "count": 3}, {"value": "'4'", "count": 2}]

    where = {"base_url": "http://airflow.example.test", "dag_id": "ct_credit_default", "run_id": "manual__1"}
    note = notify.validation_failed("credit_default", stored, str(error), **where)
    mail = note.html()
    assert "3 expectation(s) broken in 1 of 15 file(s): batch_2026-01-17.csv; nothing was trained" in note.subject
    assert "rows not in the declared categories [&#x27;north&#x27;, " in mail, mail
    assert "&#x27;Urgent&#x27; (3), &#x27;4&#x27; (2)" in mail and "above max 100: 250 (1)" in mail

    # XCom keeps 25 failures; the MLflow artifact (limit None) keeps every one
    from dataclasses import replace

    many = replace(summary, failed=summary.failed * 12)
    assert (len(many.to_dict()["failed"]), len(many.to_dict(limit=None)["failed"])) == (25, 36)
    assert many.to_dict(limit=None)["failed_count"] == 36


def test_offending_values_are_bounded_and_always_writable(spec, tmp_path):
    """Whatever a file holds (long text, a line break, markup, huge numbers, inf, many distinct values), the
    message shows at most five values, each cut short, one line per broken rule, and every write of it is valid
    UTF-8 JSON; a file name with a lone surrogate (undecodable bytes) is shown, not a write error."""
    from mlops_airflow.core.validation import VALUE_CHARS, FailedExpectation, ValidationSummary, shown_value

    landing = tmp_path / "landing"
    demo_data.write_batches(landing, range(3), n_rows=300, fmt="parquet")
    bad = demo_data.generate_batch(3, n_rows=300)
    long_text = "x" * 5000
    bad.loc[bad.index[:4], "region"] = long_text
    bad.loc[bad.index[4:6], "region"] = "a\nb <!channel>"
    bad.loc[bad.index[6:14], "region"] = [f"r{i}" for i in range(8)]
    bad.loc[bad.index[14], "income"] = float("inf")
    bad.loc[bad.index[15], "debt_ratio"] = 1e308
    bad.to_parquet(landing / "batch_2026-01-04.parquet")

    summary = validate_snapshot(spec, write_snapshot(spec_for_window(), str(landing), str(tmp_path / "snap")))

    lines = summary.message().splitlines()
    assert lines[0] == "data validation failed: 3 expectation(s) broken in 1 of 4 file(s): batch_2026-01-04.parquet"
    [region] = [line for line in lines if "'region'" in line]
    shown = region.split("'west']: ", 1)[1]
    assert shown.startswith(f"'{'x' * (VALUE_CHARS - 1)}\u2026' (4), 'a\\nb <!channel>' (2), 'r0' (1), ")
    assert shown.count(" (1)") == 3 and shown.endswith(", ...") and len(region) < 400
    assert any(line.endswith("expect_column_values_to_be_finite: 1 of 300 rows inf or -inf: inf (1)") for line in lines)
    assert any(line.endswith("1 of 300 rows above max 5: 1e+308 (1)") for line in lines), lines
    assert len(lines) == 4 + len(summary.notes())
    text = encoding.dumps(summary.to_dict())
    assert json.loads(text)["failed_count"] == 3 and long_text not in text

    odd = FailedExpectation("batch_\udcff.csv", "expect_column_values_to_be_in_set", "region", "rule", 1, 9)
    odd = dataclasses.replace(odd, words="not in the declared categories", values=((shown_value("\ud800"), 1),))
    message = ValidationSummary(success=False, files=2, rows=9, expectations=1, failed=[odd]).message()
    message.encode("utf-8")
    assert "in 1 of 2 file(s): batch_\ufffd.csv" in message and "categories: '\ufffd' (1)" in message
    assert [shown_value(v) for v in (float("nan"), None, -float("inf"), 10**5000, True)] == [
        "null",
        "null",
        "-inf",
        "<an integer of 16610 bits>",
        "True",
    ]


@pytest.mark.parametrize("case", ["sparse", "bad values", "text ages"])
def test_files_validated_together_get_the_verdict_each_gets_alone(spec, tmp_path, case):
    """Files of one schema are validated in one GX call, yet every file's verdict is the one it gets alone: a
    ``mostly`` rule broken by one file among clean ones (the rows together keep it), values out of range or
    out of the categories in some files, a file of text ages (another schema) among numeric ones; every
    passing file's verdict is kept."""
    landing = tmp_path / "landing"
    demo_data.write_batches(landing, range(8), n_rows=200)
    edited = {day: demo_data.generate_batch(day, n_rows=200) for day in (2, 5)}
    if case == "sparse":
        edited[2].loc[edited[2].index[:50], "income"] = None  # 25 % missing (max 20 %), 3 % over the files
        del edited[5]
    elif case == "bad values":
        edited[2].loc[edited[2].index[3], "region"] = "atlantis"
        edited[5].loc[edited[5].index[9], "age"] = 101
    else:
        edited[2]["age"] = edited[2]["age"].astype(str) + " years"
        edited[5].loc[edited[5].index[9], "age"] = 101
    for day, frame in edited.items():
        frame.to_csv(landing / demo_data.batch_file_name(day), index=False)
    window = spec_for_window().model_copy(update={"min_rows": 1})
    snapshot = write_snapshot(window, str(landing), str(tmp_path / "snap"))

    def found(summary):
        return sorted((f.file, f.column, f.expectation, f.unexpected_count) for f in summary.failed)

    cache = tmp_path / "verdicts"
    together = validate_snapshot(spec, snapshot, cache=cache)
    alone = [
        hit
        for b in snapshot.batches
        for hit in found(validate_snapshot(spec, dataclasses.replace(snapshot, batches=[b])))
    ]
    assert found(together) == sorted(alone)
    assert {hit[0] for hit in alone} == {demo_data.batch_file_name(day) for day in edited}
    assert together.evaluated == 8 * together.expectations and together.rows == 8 * 200
    assert len(list(cache.rglob("*.json"))) == 8 - len(edited)  # the passing files' verdicts, each kept
