"""Data validation with Great Expectations 1.x (ephemeral context, suite built from the model spec).

Each file is validated on its own, so that a failure names the landed file it came from. Landed files are
immutable: a file's passing verdict is reused by the file's SHA-256 and the suite's hash (kept under
``<storage>/<model>/validation/<suite hash>/``), so a daily run validates the newly landed file only.

GX judges the values the model reads: a categorical feature as the text it is encoded by (a landed ``3``,
``3.0`` or ``"3"`` is the category ``"3"``, as a declared ``3`` is), an integer label with gaps as integers.
A batch may hold up to ``label.max_unlabelled_fraction`` rows without a label; one awaiting its labels
(``label.delay_days``) is judged by a suite without that rule. Columns a batch has beyond the spec's are
ignored and listed; a column the spec names and a batch lacks is reported first, as missing.

Besides the GX suite, a numeric feature (or a regression label) holding ``inf`` / ``-inf`` fails
(:func:`infinite_values`), a categorical code that is a fraction fails, a timestamp that is not an ISO-8601
time fails where the window is measured in time (:func:`other_checks`), and a landed file the landing zone
refused (outside the landing roots, over the size cap, a column named twice, not a table) fails with the rule
it broke.

The result is a small summary, fit for XCom and MLflow: counts and, per broken expectation, the file, the
column, the rule in words and the most common offending values with their counts in the file (at most
:data:`SHOWN_VALUES`, each cut to :data:`VALUE_CHARS` characters), never the unexpected rows;
:class:`DataValidationError` carries it and fails the task closed. Its headline counts the files that broke a
rule out of the files checked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from mlops_airflow.core.data import BatchFile, Snapshot, read_snapshot_file, row_times
from mlops_airflow.core.encoding import clean_text, jsonable
from mlops_airflow.core.errors import MlopsError
from mlops_airflow.core.landing import READER_VERSION
from mlops_airflow.core.spec import ModelSpec

log = logging.getLogger(__name__)

NUMERIC_TYPES = ["int8", "int16", "int32", "int64", "Int64", "float32", "float64", "Float64"]
TEXT_TYPES = ["str", "object", "string", "category"]
BOOLEAN_TYPES = ["bool", "boolean", *TEXT_TYPES]  # a CSV column with a gap reads back as text
DATETIME_TYPES = ["datetime64[ns]", "datetime64[us]", "datetime64[ms]", "datetime64[s]", *TEXT_TYPES]
FEATURE_TYPES = {"numeric": NUMERIC_TYPES, "categorical": TEXT_TYPES, "boolean": BOOLEAN_TYPES}


def label_types(values: list[Any] | None) -> list[str] | None:
    """The dtypes a label column may have for its declared values (None: regression, any numeric)."""
    if not values:
        return NUMERIC_TYPES
    first = values[0]
    if isinstance(first, bool):
        return BOOLEAN_TYPES
    if isinstance(first, int):
        return ["int8", "int16", "int32", "int64", "Int64"]
    return TEXT_TYPES


class DataValidationError(MlopsError, ValueError):
    """The data broke the model's expectations; the message lists file, column, rule and counts."""

    def __init__(self, summary: ValidationSummary) -> None:
        self.summary = summary
        super().__init__(summary.message())


#: The expectation a column the spec names and a batch lacks breaks first.
COLUMN_EXISTS = "expect_column_to_exist"
#: The "file" of a failure of the whole window (too few labelled rows) rather than of one landed file.
TRAINING_WINDOW = "<training window>"
#: Offending values a broken expectation shows: the most common few, each cut to ``VALUE_CHARS`` characters.
SHOWN_VALUES = 5
VALUE_CHARS = 60
#: Unexpected values GX returns per broken expectation (its own cap, ``MAX_RESULT_RECORDS``); the values shown
#: are the most common among them, each counted over the whole file.
UNEXPECTED_SAMPLE = 200
#: Declared categories (or label values) a rule in words lists before ``...``.
SHOWN_CATEGORIES = 10

#: What GX is asked for a file that fails: counts and the first offending values of each broken rule.
FAILURE_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": UNEXPECTED_SAMPLE}

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


@dataclass(frozen=True)
class FailedExpectation:
    file: str
    expectation: str
    column: str | None
    #: The rule as configured (``expect_column_values_to_be_in_set(value_set=[...])``) or as the check words it.
    rule: str
    unexpected_count: int | None = None
    element_count: int | None = None
    observed: str | None = None
    #: The rule in words, after the count of rows breaking it: ``not in the declared categories ['a', 'b']``.
    words: str | None = None
    #: The most common offending values as shown (:func:`shown_value`) with their counts in the file.
    values: tuple[tuple[str, int], ...] = ()
    #: Other offending values exist beyond those shown.
    more_values: bool = False
    #: The counts are over the first this many offending rows only (values the file could not be searched for).
    values_sampled: int | None = None

    @property
    def missing_column(self) -> bool:
        return self.expectation == COLUMN_EXISTS

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (valid UTF-8, no NaN): the offending values as ``{"value", "count"}`` pairs."""
        data = asdict(self)
        data["values"] = [{"value": text, "count": count} for text, count in self.values]
        return jsonable(data)

    def text(self) -> str:
        """The failure as one line of the validation message (:func:`failure_line`)."""
        return failure_line(self.to_dict())


def failure_line(failure: Mapping[str, Any]) -> str:
    """One broken expectation (:meth:`FailedExpectation.to_dict`, from XCom or the MLflow summary) as one line
    of plain text: :func:`failure_text` with every slot made one line."""
    template, slots = failure_text(failure)
    return template.format(*(one_line(v) for v in slots))


def one_line(text: Any) -> str:
    """Text from the data as one line of valid UTF-8 (a line break in a file name cannot start a line of its own)."""
    return _CONTROL.sub(" ", clean_text(str(text)))


def shown_value(value: Any) -> str:
    """An offending value as a message shows it: text quoted (``'4'`` is not ``4``, a stray space shows, a line
    break is ``\\n``), a whole number without ``.0``, ``null`` for a missing value, ``inf``/``-inf``, at most
    about :data:`VALUE_CHARS` characters, valid UTF-8 (a lone surrogate shows as U+FFFD)."""
    if type(value).__module__.split(".", 1)[0] == "numpy" and hasattr(value, "item"):
        value = value.item()  # NumPy scalar -> Python
    if value is None or type(value).__name__ in {"NAType", "NaTType"}:
        return "null"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "null"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else _cut(repr(value))
    if isinstance(value, numbers.Integral):
        try:
            return _cut(str(int(value)))
        except ValueError:  # more digits than Python converts to text
            return f"<an integer of {int(value).bit_length()} bits>"
    if isinstance(value, str):
        text = clean_text(value)
        text = text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "\u2026"
        return _cut(repr(text), VALUE_CHARS + 2)
    return _cut(one_line(jsonable(value)))


def _cut(text: str, chars: int = VALUE_CHARS) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "\u2026"


def _number(value: Any) -> str:
    """A bound or a fraction from the spec: ``100``, ``1.5``."""
    return shown_value(value)


def _listed(values: Any) -> str:
    """Declared values as a bounded list: ``['north', 'south', ...] (12 in all)``."""
    values = list(values)
    shown = ", ".join(shown_value(v) for v in values[:SHOWN_CATEGORIES])
    more = f", ...] ({len(values)} in all)" if len(values) > SHOWN_CATEGORIES else "]"
    return f"[{shown}{more}"


def failure_text(failure: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """One broken expectation (:meth:`FailedExpectation.to_dict`, e.g. from the summary's XCom) as fixed wording
    with ``{}`` slots and the text for them: file, column, rule, counts and offending values. Every slot may
    hold text from the data; whoever renders it escapes the slots for the medium (the task log: one line)."""
    file, column, rule = failure.get("file"), failure.get("column"), failure.get("rule")
    if failure.get("expectation") == COLUMN_EXISTS:
        return "{}: {}", (file, rule)
    template, slots = ("{}: column '{}': ", [file, column]) if column else ("{}: table: ", [file])
    count, rows = failure.get("unexpected_count"), failure.get("element_count")
    words = failure.get("words")
    if not words:  # a rule that words itself (a refused file, a check with its reason in brackets)
        template += "{}"
        slots.append(rule)
        if count is not None:
            template += " ({} of {} rows)"
            slots += [count, rows]
        elif failure.get("observed") is not None:
            template += " (observed {})"
            slots.append(failure.get("observed"))
        return template, tuple(slots)
    template += "{}: "
    slots.append(failure.get("expectation"))
    if count is not None:
        template += "{} of {} rows "
        slots += [count, rows]
    template += "{}"
    slots.append(words)
    values = [v for v in failure.get("values") or [] if isinstance(v, Mapping)]
    if values:
        shown = ", ".join(f"{v.get('value')} ({v.get('count')})" for v in values)
        if failure.get("more_values"):
            shown += ", ..."
        if failure.get("values_sampled"):
            shown += f" (counted in the first {failure.get('values_sampled')} offending rows)"
        template += ": {}"
        slots.append(shown)
    return template, tuple(slots)


@dataclass
class ValidationSummary:
    success: bool
    files: int
    rows: int
    expectations: int
    evaluated: int = 0
    failed: list[FailedExpectation] = field(default_factory=list)
    #: Files whose passing verdict was reused (same bytes, same suite) instead of validated again.
    reused: int = 0
    #: Columns landed beyond the spec's (timestamp, features, label): never read, never checked.
    ignored_columns: list[str] = field(default_factory=list)
    #: Rows of the window without a label (left out of training and evaluation), and per file.
    unlabelled_rows: int = 0
    unlabelled_files: dict[str, int] = field(default_factory=dict)
    #: Files of the newest ``label.delay_days`` days: their labels may still be missing.
    awaiting_labels: list[str] = field(default_factory=list)

    def failed_files(self) -> list[str]:
        """The files that broke a rule, in the order of :attr:`failed` (not the window as a whole)."""
        return list(dict.fromkeys(f.file for f in self.failed if f.file != TRAINING_WINDOW))

    def to_dict(self, limit: int | None = 25) -> dict[str, Any]:
        """Plain JSON data (valid UTF-8, no NaN) with the message itself; ``limit`` failures and files at most
        (25 for XCom, which stays small; ``None``, every one, for the MLflow artifact)."""
        data = asdict(self)
        data["failed"] = [f.to_dict() for f in self.failed[:limit]]
        data["failed_count"] = len(self.failed)
        bad = self.failed_files()
        data["failed_files"] = bad[:limit]
        data["failed_file_count"] = len(bad)
        data["message"] = self.message()
        return jsonable(data)

    def headline(self) -> str:
        """How many expectations broke, in how many of the files checked, and which files."""
        bad = self.failed_files()
        broken = f"{len(self.failed)} expectation(s) broken"
        if not bad:
            return broken
        names = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
        return f"{broken} in {len(bad)} of {self.files} file(s): {names}"

    def message(self) -> str:
        if self.success:
            head = f"data valid: {self.files} file(s), {self.rows} rows, {self.expectations} expectations"
            return "\n".join(one_line(line) for line in [head, *self.notes()])
        missing = [f for f in self.failed if f.missing_column]
        first = ""
        if missing:
            names = ", ".join(dict.fromkeys(f"`{f.column}`" for f in missing))
            first = f"column {names} is missing ({missing[0].file}{', ...' if len(missing) > 1 else ''}); "
        lines = [f"data validation failed: {first}{self.headline()}"]
        lines += [f"  {f.text()}" for f in self.failed[:20]]
        if len(self.failed) > 20:
            lines.append(f"  ... and {len(self.failed) - 20} more")
        return "\n".join(one_line(line) for line in [*lines, *self.notes()])

    def notes(self) -> list[str]:
        """One line each for what the data holds that is not used: columns, and rows without a label."""
        lines = []
        if self.ignored_columns:
            lines.append(f"  columns not in the spec, ignored: {', '.join(self.ignored_columns)}")
        if self.unlabelled_rows:
            files = ", ".join(f"{name} ({n})" for name, n in list(self.unlabelled_files.items())[:5])
            more = ", ..." if len(self.unlabelled_files) > 5 else ""
            lines.append(
                f"  {self.unlabelled_rows} row(s) without a label, left out of training and evaluation: {files}{more}"
            )
        if self.awaiting_labels:
            lines.append(f"  awaiting labels (label.delay_days): {', '.join(self.awaiting_labels)}")
        return lines


def build_suite(spec: ModelSpec, gx: Any, awaiting: bool = False) -> Any:
    """The expectation suite of a model spec (features, label and table shape).

    :param awaiting: for a batch awaiting its labels (``label.delay_days``): no rule on missing labels.
    """
    e = gx.expectations
    suite = gx.ExpectationSuite(name=f"{spec.name}_batch{'_awaiting_labels' if awaiting else ''}")
    suite.add_expectation(e.ExpectTableRowCountToBeBetween(min_value=1))
    suite.add_expectation(e.ExpectColumnToExist(column=spec.source.timestamp_column))
    # Every row needs its time: the training window's newest day validates the candidates.
    suite.add_expectation(e.ExpectColumnValuesToNotBeNull(column=spec.source.timestamp_column))
    for feat in spec.features:
        suite.add_expectation(e.ExpectColumnToExist(column=feat.name))
        types = FEATURE_TYPES.get(feat.type, DATETIME_TYPES)
        suite.add_expectation(e.ExpectColumnValuesToBeInTypeList(column=feat.name, type_list=types))
        if not feat.nullable:
            suite.add_expectation(e.ExpectColumnValuesToNotBeNull(column=feat.name))
        else:
            suite.add_expectation(
                e.ExpectColumnValuesToNotBeNull(column=feat.name, mostly=1.0 - feat.max_null_fraction)
            )
        if feat.min is not None or feat.max is not None:
            suite.add_expectation(
                e.ExpectColumnValuesToBeBetween(column=feat.name, min_value=feat.min, max_value=feat.max)
            )
        if feat.categories is not None:
            suite.add_expectation(e.ExpectColumnValuesToBeInSet(column=feat.name, value_set=feat.categories))
    suite.add_expectation(e.ExpectColumnToExist(column=spec.label.name))
    if not awaiting:
        unlabelled = spec.label.max_unlabelled_fraction
        mostly = {"mostly": 1.0 - unlabelled} if unlabelled else {}
        suite.add_expectation(e.ExpectColumnValuesToNotBeNull(column=spec.label.name, **mostly))
    suite.add_expectation(
        e.ExpectColumnValuesToBeInTypeList(column=spec.label.name, type_list=label_types(spec.label.values))
    )
    if spec.label.values is not None:
        suite.add_expectation(e.ExpectColumnValuesToBeInSet(column=spec.label.name, value_set=list(spec.label.values)))
    return suite


def finite_columns(spec: ModelSpec) -> list[str]:
    """Columns whose values must be finite: numeric features, and a regression label."""
    names = [f.name for f in spec.features if f.type == "numeric"]
    return names + ([spec.label.name] if label_types(spec.label.values) is NUMERIC_TYPES else [])


def infinite_values(spec: ModelSpec, file: str, frame: Any) -> list[FailedExpectation]:
    """``inf`` / ``-inf`` in a column of :func:`finite_columns`: no estimator fits or scores them, and a range
    check without both bounds lets them through."""
    import numpy as np
    import pandas as pd

    failed = []
    for name in finite_columns(spec):
        if name not in frame.columns or not pd.api.types.is_float_dtype(frame[name].dtype):
            continue  # absent or not numbers: the suite's own expectations name that
        count = int(np.isinf(frame[name].to_numpy(dtype="float64", na_value=np.nan)).sum())
        if count:
            rule = "expect_column_values_to_be_finite (no inf or -inf)"
            failed.append(FailedExpectation(file, "expect_column_values_to_be_finite", name, rule, count, len(frame)))
    return failed


def judged_frame(spec: ModelSpec, frame: Any) -> Any:
    """The values GX judges, as the model reads them: a categorical feature as the text the model encodes
    (:func:`~mlops_airflow.core.served_model.category_text`: ``3``, ``3.0`` and ``"3"`` are ``"3"``); an integer
    label a gap made float as integers; a column without a single value as ``object`` (it has no type)."""
    import numpy as np
    import pandas as pd

    from mlops_airflow.core.served_model import category_text

    frame = frame.copy(deep=False)
    typed = {f.name: f.type for f in spec.features}
    for name in frame.columns:
        values = frame[name]
        if typed.get(name) == "categorical":
            codes, uniques = pd.factorize(values, use_na_sentinel=True)
            texts = np.array([*(category_text(u) for u in uniques), None], dtype=object)
            frame[name] = pd.Series(texts[codes], index=frame.index, dtype=object)
        elif name == spec.label.name:
            frame[name] = _judged_label(spec, values)
        elif typed.get(name) in {"boolean", "datetime"} and values.isna().all():
            frame[name] = values.astype(object)
    return frame


def _judged_label(spec: ModelSpec, values: Any) -> Any:
    """The label column as its declared values type it (rows without a label leave gaps, not another type)."""
    kinds = label_types(spec.label.values)
    if kinds is NUMERIC_TYPES:  # regression: any number
        return values
    if values.isna().all():
        return values.astype(object)
    integers = kinds is not BOOLEAN_TYPES and kinds is not TEXT_TYPES
    if integers and values.dtype.kind == "f" and bool((values.dropna() % 1 == 0).all()):
        return values.astype("Int64")  # integer labels with gaps read back as float
    return values


def other_checks(spec: ModelSpec, file: str, frame: Any) -> list[FailedExpectation]:
    """What GX does not check: infinities (:func:`infinite_values`), a categorical code that is a fraction (a
    float column's values must be whole numbers), and, where the window is measured in time or labels arrive
    late, a timestamp that is not an ISO-8601 time (its row would belong to no window)."""
    failed = infinite_values(spec, file, frame)
    for feature in spec.features:
        values = frame[feature.name] if feature.name in frame.columns else None
        if feature.type != "categorical" or values is None or values.dtype.kind != "f":
            continue
        count = int(((values.dropna() % 1) != 0).sum())
        if count:
            expectation = "expect_column_values_to_be_in_type_list"
            rule = f"{expectation} (text, integer or boolean category codes, not fractions)"
            failed.append(FailedExpectation(file, expectation, feature.name, rule, count, len(frame)))
    column = spec.source.timestamp_column
    if (spec.window.kind == "time" or spec.label.delay_days) and column in frame.columns:
        present = frame[column].notna()
        count = int((row_times(frame[column]).isna() & present).sum())
        if count:
            expectation = "expect_column_values_to_be_iso8601"
            rule = f"{expectation} (the window and the label delay are measured in its days)"
            failed.append(FailedExpectation(file, expectation, column, rule, count, len(frame)))
    return failed


def _rule(config: Any) -> str:
    kwargs = {k: v for k, v in config.kwargs.items() if k not in {"column", "batch_id"} and v is not None}
    args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    return f"{config.type}({args})" if args else config.type


#: What a column holds where its type is wrong, by feature type (the label: by :func:`label_types`).
_TYPE_WORDS = {"numeric": "numbers", "categorical": "category codes", "boolean": "booleans", "datetime": "times"}


def _type_word(spec: ModelSpec, column: str | None) -> str:
    feature = next((f for f in spec.features if f.name == column), None)
    if feature is not None:
        return _TYPE_WORDS.get(feature.type, feature.type)
    kinds = label_types(spec.label.values)
    if kinds is NUMERIC_TYPES:
        return "numbers"
    return "booleans" if kinds is BOOLEAN_TYPES else "text" if kinds is TEXT_TYPES else "integers"


def _words(spec: ModelSpec, config: Any, res: Mapping[str, Any]) -> str | None:
    """A broken GX expectation's rule in words, as the spec declares it (``None``: the configured rule says it)."""
    kind, kwargs = config.type, config.kwargs
    column = kwargs.get("column")
    feature = next((f for f in spec.features if f.name == column), None)
    per_row = {"expect_column_values_to_be_in_set", "expect_column_values_to_be_between"}
    if res.get("unexpected_count") is None and kind in {*per_row, "expect_column_values_to_not_be_null"}:
        return None  # no count to put the words to: the configured rule says it
    if kind == "expect_column_values_to_be_in_set":
        declared = "categories" if feature is not None else "label values"
        return f"not in the declared {declared} {_listed(kwargs.get('value_set') or [])}"
    if kind == "expect_column_values_to_be_between":
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        seen = [v for v in res.get("partial_unexpected_list") or [] if isinstance(v, numbers.Real)]
        if low is None or (high is not None and seen and all(v > high for v in seen)):
            return f"above max {_number(high)}"
        if high is None or (seen and all(v < low for v in seen)):
            return f"below min {_number(low)}"
        return f"below min {_number(low)} or above max {_number(high)}"
    if kind == "expect_column_values_to_not_be_null":
        mostly = kwargs.get("mostly")
        if column == spec.label.name and feature is None:
            if mostly is None:
                return "without a label (label.max_unlabelled_fraction: 0)"
            fraction = _number(spec.label.max_unlabelled_fraction)
            return f"without a label, more than label.max_unlabelled_fraction {fraction} allows"
        if column == spec.source.timestamp_column and mostly is None:
            return "without a time (every row needs one)"
        if feature is not None and mostly is not None:
            return f"null, more than max_null_fraction {_number(feature.max_null_fraction)} allows"
        return "null where nullable: false"
    if kind == "expect_column_values_to_be_in_type_list":
        read_as = res.get("observed_value")  # the column's type; none where GX judged value by value
        if read_as is None:
            read_as = ", ".join(dict.fromkeys(type(v).__name__ for v in res.get("partial_unexpected_list") or []))
        return f"not {_type_word(spec, column)} (read as {one_line(read_as or 'another type')})"
    if kind == "expect_table_row_count_to_be_between" and res.get("observed_value") == 0:
        return "no rows"
    return None


def _ranked(counts: Any, offending: int | None) -> tuple[tuple[tuple[str, int], ...], bool]:
    """``(value, count)`` pairs as the :data:`SHOWN_VALUES` most common shown values, and whether there are
    others (more distinct values, or fewer rows counted than ``offending``)."""
    merged: dict[str, int] = {}
    for value, count in counts:
        text = shown_value(value)
        merged[text] = merged.get(text, 0) + int(count)
    ranked = sorted(merged.items(), key=lambda item: -item[1])  # stable: ties in the order first seen
    more = len(ranked) > SHOWN_VALUES or (offending is not None and sum(merged.values()) < offending)
    return tuple(ranked[:SHOWN_VALUES]), more


def _offending(values: Any, sample: list[Any], offending: int | None) -> dict[str, Any]:
    """The most common offending values of a per-value rule (a set, a range) with their counts in the file.

    :param values: the column as GX judged it.
    :param sample: the first offending values GX returned (:data:`UNEXPECTED_SAMPLE`); as the rule breaks on
        every row holding one of them, each is counted over the whole column. Values that cannot be looked up
        (not hashable) are counted in the sample alone, and the summary says so.
    """
    present = [v for v in sample if shown_value(v) != "null"]
    if not present:
        return {}
    try:
        found = values[values.isin(list(dict.fromkeys(present)))]
        shown, more = _ranked(found.value_counts(sort=False).items(), offending)
        return {"values": shown, "more_values": more}
    except (TypeError, ValueError):
        shown, more = _ranked(((v, 1) for v in present), None)
        sampled = len(sample) < (offending or 0)
        return {"values": shown, "more_values": more or sampled, "values_sampled": len(sample) if sampled else None}


def _non_numbers(sample: list[Any]) -> list[Any]:
    """The values of ``sample`` that are no number at all (not even a number written as text)."""
    import pandas as pd

    values = pd.Series(sample, dtype=object)
    return list(values[values.notna() & pd.to_numeric(values, errors="coerce").isna()])


def _failed_from(
    spec: ModelSpec, file: str, result: Any, absent: list[str], frame: Any = None
) -> list[FailedExpectation]:
    """The broken expectations of one file's result; those on a column it lacks (``absent``) say so.

    :param frame: the values GX judged (:func:`judged_frame`): where a rule breaks on single values, the most
        common offending ones are counted there.
    """
    failed = [
        FailedExpectation(file, COLUMN_EXISTS, column, f"column `{column}` is missing ({COLUMN_EXISTS})")
        for column in absent
    ]
    for r in result.results:
        if r.success:
            continue
        config = r.expectation_config
        column = config.kwargs.get("column")
        if config.type == COLUMN_EXISTS and column in absent:
            continue  # reported first, above
        res = r.result or {}
        observed = res.get("observed_value")
        detail: dict[str, Any] = {}
        if column in absent:
            observed = "column is missing"
        elif (error := _raised(r.exception_info)) is not None:
            observed = error[:200]
        else:
            detail["words"] = _words(spec, config, res)
            values = frame[column] if frame is not None and column in frame.columns else None
            sample = res.get("partial_unexpected_list")
            if values is None:
                pass
            elif config.type in {"expect_column_values_to_be_in_set", "expect_column_values_to_be_between"} and sample:
                detail.update(_offending(values, sample, res.get("unexpected_count")))
            elif config.type == "expect_column_values_to_be_in_type_list" and sample:
                odd = _non_numbers(sample) if _type_word(spec, column) == "numbers" else []
                if odd:  # text where numbers belong: show what is no number at all
                    detail["words"] = f"{detail['words']}; the values that are no number"
                detail.update(_offending(values, odd or sample, res.get("unexpected_count")))
        failed.append(
            FailedExpectation(
                file=file,
                expectation=config.type,
                column=column,
                rule=_rule(config),
                unexpected_count=res.get("unexpected_count"),
                element_count=res.get("element_count"),
                observed=None if observed is None else one_line(observed)[:200],
                **detail,
            )
        )
    return failed


def _raised(info: Any) -> str | None:
    """The message of the error GX met evaluating an expectation (``None``: none), as GX reports it for the
    expectation or, for a metric it could not compute, under that metric's id."""
    if not isinstance(info, Mapping):
        return None
    found = [info, *(v for v in info.values() if isinstance(v, Mapping))]
    raised = [f for f in found if f.get("raised_exception")]
    return str(raised[0].get("exception_message") or "error") if raised else None


def _explained(failure: FailedExpectation, frame: Any) -> FailedExpectation:
    """A failure of :func:`other_checks` with its rule in words and its most common offending values."""
    import numpy as np

    values = frame[failure.column] if failure.column in frame.columns else None
    if values is None:
        return failure
    if failure.expectation == "expect_column_values_to_be_finite":
        found = values[np.isinf(values.to_numpy(dtype="float64", na_value=np.nan))]
        words = "inf or -inf"
    elif failure.expectation == "expect_column_values_to_be_in_type_list":
        present = values.dropna()
        found = present[(present % 1) != 0]
        words = "hold fractions: category codes are text, integers or booleans"
    elif failure.expectation == "expect_column_values_to_be_iso8601":
        found = values[row_times(values).isna() & values.notna()]
        words = "not an ISO-8601 time (the window and the label delay are measured in its days)"
    else:
        return failure
    shown, more = _ranked(found.value_counts(sort=False).items(), failure.unexpected_count)
    return replace(failure, words=words, values=shown, more_values=more)


def suite_hash(spec: ModelSpec, awaiting: bool = False) -> str:
    """What a verdict depends on besides the file: the suite (the spec's rules and the code building it), the
    GX version and the file reader. Computed without importing GX.

    :param awaiting: the suite of a batch awaiting its labels.
    """
    import inspect
    from importlib.metadata import version

    from mlops_airflow.core.served_model import category_text

    rules = {
        "features": [f.model_dump(mode="json") for f in spec.features],
        "label": spec.label.model_dump(mode="json"),
        "timestamp": spec.source.timestamp_column,
        "window": spec.window.kind,
        "awaiting": awaiting,
        "code": [
            inspect.getsource(f)
            for f in (
                build_suite,
                label_types,
                finite_columns,
                infinite_values,
                judged_frame,
                _judged_label,
                other_checks,
                category_text,
                row_times,
            )
        ],
        "types": [NUMERIC_TYPES, TEXT_TYPES, BOOLEAN_TYPES, DATETIME_TYPES],
    }
    text = json.dumps([rules, version("great_expectations"), READER_VERSION], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class VerdictCache:
    """Passing verdicts of landed files by SHA-256, one JSON file each, under ``root/<suite hash>/``."""

    def __init__(self, root: Any, key: str) -> None:
        self.folder = root / key

    def _file(self, batch: BatchFile) -> Any:
        return self.folder / f"{batch.sha256}.json"

    def passed(self, batch: BatchFile) -> dict[str, Any] | None:
        """The recorded passing verdict of ``batch`` (``None``: none, unreadable, or not for these rows)."""
        if not batch.sha256:
            return None
        path = self._file(batch)
        try:
            if not path.exists():
                return None
            verdict = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        ok = isinstance(verdict, dict) and verdict.get("success") is True and verdict.get("rows") == batch.rows
        return verdict if ok else None

    def record(self, batch: BatchFile, expectations: int) -> None:
        if not batch.sha256:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            verdict = {
                "file": batch.name,
                "sha256": batch.sha256,
                "rows": batch.rows,
                "success": True,
                "expectations": expectations,
            }
            self._file(batch).write_text(json.dumps(verdict))
        except OSError as err:  # a verdict not kept is validated again next time
            log.warning("validation verdict of %s not kept: %s", batch.name, err)


def validate_snapshot(spec: ModelSpec, snapshot: Snapshot, *, cache: Any = None) -> ValidationSummary:
    """Validate every batch of a snapshot; unreadable files and a too-small training set fail too.

    A batch listed in both parts (a window by time) is validated once. The summary lists the columns landed
    beyond the spec's and counts the rows without a label.

    :param cache: folder of reusable passing verdicts (a path object); ``None`` validates every file.
    """
    batches = list({(b.name, b.sha256, b.snapshot_file): b for b in snapshot.batches}.values())
    verdicts = None
    if cache is not None:
        verdicts = {awaiting: VerdictCache(cache, suite_hash(spec, awaiting)) for awaiting in (False, True)}
    summary = ValidationSummary(success=True, files=len(batches), rows=0, expectations=0)
    _describe(spec, snapshot, batches, summary)
    todo: list[BatchFile] = []
    for batch in batches:
        if batch.snapshot_file is None:  # refused or unreadable when landed: the rule it broke
            rule = batch.read_rule or "readable_table"
            summary.failed.append(FailedExpectation(batch.name, rule, batch.read_column, f"{rule}: {batch.read_error}"))
        elif verdicts is not None and (verdict := verdicts[batch.awaiting_labels].passed(batch)) is not None:
            summary.rows += batch.rows
            summary.reused += 1
            count = verdict.get("expectations")  # absent in verdicts recorded before it was kept
            summary.expectations = count if isinstance(count, int) else summary.expectations
        else:
            todo.append(batch)
    if todo or not summary.expectations:
        _run_suite(spec, snapshot, todo, summary, verdicts)

    if snapshot.train_rows < spec.min_rows and not summary.failed:
        summary.failed.append(
            FailedExpectation(
                TRAINING_WINDOW,
                "min_training_rows",
                None,
                f"training window must hold at least {spec.min_rows} labelled rows",
                observed=str(snapshot.train_rows),
            )
        )
    summary.failed.sort(key=lambda f: not f.missing_column)  # a missing column first: it explains the rest
    summary.success = not summary.failed
    log.info(
        "%s (%d file verdict(s) reused, %d expectation result(s) evaluated)",
        summary.message(),
        summary.reused,
        summary.evaluated,
    )
    return summary


def _describe(spec: ModelSpec, snapshot: Snapshot, batches: list[BatchFile], summary: ValidationSummary) -> None:
    """What the snapshot's manifest tells without reading a file: extra columns, rows without a label."""
    named = set(spec.input_columns)
    extra = (c for b in batches for c in b.columns if c not in named)
    summary.ignored_columns = list(dict.fromkeys(extra))
    for batch in snapshot.batches:
        if batch.unlabelled:
            summary.unlabelled_files[batch.name] = summary.unlabelled_files.get(batch.name, 0) + batch.unlabelled
    summary.unlabelled_rows = sum(summary.unlabelled_files.values())
    summary.awaiting_labels = [b.name for b in batches if b.awaiting_labels]


def _run_suite(
    spec: ModelSpec, snapshot: Snapshot, todo: list[BatchFile], summary: ValidationSummary, verdicts: Any
) -> None:
    """Validate the ``todo`` batches with GX (not imported when every verdict was reused).

    Only the columns the suite names are read (Parquet reads no other). GX is asked whether each file passes
    (``BOOLEAN_ONLY``); only for a file that fails, for counts and its first offending values
    (:data:`FAILURE_FORMAT`), never for the index of every unexpected row: the summary never carries rows.
    Files of one schema are judged together (:func:`_split_suite`): one GX validation of fifteen daily files
    costs about what one file's does, and every verdict stays the one each file gets alone.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    # GX logs ~200 INFO lines about its own API docs registry on import; the task log is for the data.
    logging.getLogger("great_expectations._docs_decorators").setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    # A batch validates against a suite held in memory: nothing reads it back from the context's store, so it
    # is not added there. The suite of batches awaiting labels is built only when one is to be validated.
    suites = {awaiting: build_suite(spec, gx, awaiting) for awaiting in {False, *(b.awaiting_labels for b in todo)}}
    summary.expectations = len(suites[False].expectations) + len(finite_columns(spec))
    asset = context.data_sources.add_pandas("snapshot").add_dataframe_asset("batch")
    batch_definition = asset.add_batch_definition_whole_dataframe("whole")
    named = list(dict.fromkeys([spec.source.timestamp_column, *(f.name for f in spec.features), spec.label.name]))
    split = {awaiting: _split_suite(gx, suite) for awaiting, suite in suites.items()}

    def validate(frame: Any, suite: Any, result_format: Any = "BOOLEAN_ONLY") -> Any:
        return batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(
            suite, result_format=result_format
        )

    def judge(item: _Read, passed: bool) -> None:
        """Record one file's verdict: ``passed`` when GX already found it passing, else validated here alone."""
        suite = suites[item.batch.awaiting_labels]
        result = None if passed else validate(item.judged, suite)
        if result is not None and not result.success:
            result = validate(item.judged, suite, FAILURE_FORMAT)
        failed = [] if result is None else _failed_from(spec, item.batch.name, result, item.absent, item.judged)
        failed += [_explained(f, item.frame) for f in other_checks(spec, item.batch.name, item.frame)]
        summary.evaluated += len(suite.expectations) + len(finite_columns(spec))
        summary.failed.extend(failed)
        if verdicts is not None and not failed:
            verdicts[item.batch.awaiting_labels].record(item.batch, summary.expectations)

    def judge_group(group: list[_Read]) -> None:
        """Files of one schema together: the rules that hold row by row in one GX validation of their rows, the
        others (``mostly``, row counts) file by file; a group that fails is judged again file by file."""
        if len(group) == 1:
            return judge(group[0], passed=False)
        import pandas as pd

        row_wise, per_file = split[group[0].batch.awaiting_labels]
        rows = pd.concat([item.judged for item in group], ignore_index=True)
        same_types = list(rows.dtypes) == list(group[0].judged.dtypes)
        together = same_types and validate(rows, row_wise).success
        del rows
        for item in group:
            judge(item, passed=together and validate(item.judged, per_file).success)

    group: list[_Read] = []
    for batch in todo:
        columns = [c for c in batch.columns if c in named] or None
        frame = read_snapshot_file(snapshot, batch, columns).to_pandas()
        summary.rows += len(frame)
        judged = judged_frame(spec, frame)
        item = _Read(batch, frame, judged, [c for c in named if c not in batch.columns])
        if group and (item.schema != group[0].schema or sum(len(g.frame) for g in group) >= GROUP_ROWS):
            judge_group(group)
            group = []
        group.append(item)
    if group:
        judge_group(group)


#: The expectation types that hold for a table exactly when they hold for each of its parts stacked (each row
#: passes or fails alone; a column exists in all or none of a group). With ``mostly`` below 1 they do not.
ROW_WISE = frozenset(
    {
        COLUMN_EXISTS,
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_in_type_list",
        "expect_column_values_to_be_between",
        "expect_column_values_to_be_in_set",
    }
)
#: Rows of landed files validated together at most (their frames are held at once).
GROUP_ROWS = 200_000


def _split_suite(gx: Any, suite: Any) -> tuple[Any, Any]:
    """``suite`` as two: the expectations that hold row by row (:data:`ROW_WISE` with ``mostly`` unset or 1),
    judged once over a group of files' rows, and the rest (row counts, ``mostly``), judged per file."""
    parts: dict[bool, list[Any]] = {True: [], False: []}
    for expectation in suite.expectations:
        mostly = getattr(expectation, "mostly", None)
        parts[expectation.expectation_type in ROW_WISE and mostly in (None, 1)].append(expectation.copy(deep=True))
    return (
        gx.ExpectationSuite(name=f"{suite.name}_row_wise", expectations=parts[True]),
        gx.ExpectationSuite(name=f"{suite.name}_per_file", expectations=parts[False]),
    )


@dataclass
class _Read:
    """One landed file as read for validation: its rows, the values GX judges, the suite's columns it lacks."""

    batch: BatchFile
    frame: Any
    judged: Any
    absent: list[str]

    @property
    def schema(self) -> tuple[Any, ...]:
        """Files with equal schemas are validated together: same suite, columns and column types."""
        return (self.batch.awaiting_labels, tuple(self.judged.columns), tuple(str(t) for t in self.judged.dtypes))
