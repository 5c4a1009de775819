"""Data validation with Great Expectations 1.x (ephemeral context, suite built from the model spec).

Each snapshot batch is validated on its own so that a failure names the landed file it came from. The
result is a small summary (counts and failed expectations, never the unexpected rows), fit for XCom and
MLflow; :class:`DataValidationError` carries it and fails the task closed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from mlops_airflow.core.config import ModelSpec
from mlops_airflow.core.data import Snapshot, load_batch

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


class DataValidationError(ValueError):
    """The data broke the model's expectations; the message lists file, column, rule and counts."""

    def __init__(self, summary: ValidationSummary) -> None:
        self.summary = summary
        super().__init__(summary.message())


@dataclass(frozen=True)
class FailedExpectation:
    file: str
    expectation: str
    column: str | None
    rule: str
    unexpected_count: int | None = None
    element_count: int | None = None
    observed: str | None = None


@dataclass
class ValidationSummary:
    success: bool
    files: int
    rows: int
    expectations: int
    evaluated: int = 0
    failed: list[FailedExpectation] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["failed"] = data["failed"][:25]  # keep XCom small; MLflow gets the full artifact
        data["failed_count"] = len(self.failed)
        return data

    def message(self) -> str:
        if self.success:
            return f"data valid: {self.files} file(s), {self.rows} rows, {self.expectations} expectations"
        lines = [f"data validation failed: {len(self.failed)} expectation(s) broken in {self.files} file(s)"]
        for f in self.failed[:20]:
            where = f"column {f.column!r}" if f.column else "table"
            counts = ""
            if f.unexpected_count is not None:
                counts = f" ({f.unexpected_count} of {f.element_count} rows)"
            elif f.observed is not None:
                counts = f" (observed {f.observed})"
            lines.append(f"  {f.file}: {where}: {f.rule}{counts}")
        if len(self.failed) > 20:
            lines.append(f"  ... and {len(self.failed) - 20} more")
        return "\n".join(lines)


def build_suite(spec: ModelSpec, gx: Any) -> Any:
    """The expectation suite of a model spec (features, label and table shape)."""
    e = gx.expectations
    suite = gx.ExpectationSuite(name=f"{spec.name}_batch")
    suite.add_expectation(e.ExpectTableRowCountToBeBetween(min_value=1))
    suite.add_expectation(e.ExpectColumnToExist(column=spec.source.timestamp_column))
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
    suite.add_expectation(e.ExpectColumnValuesToNotBeNull(column=spec.label.name))
    suite.add_expectation(
        e.ExpectColumnValuesToBeInTypeList(column=spec.label.name, type_list=label_types(spec.label.values))
    )
    if spec.label.values is not None:
        suite.add_expectation(e.ExpectColumnValuesToBeInSet(column=spec.label.name, value_set=list(spec.label.values)))
    return suite


def _rule(config: Any) -> str:
    kwargs = {k: v for k, v in config.kwargs.items() if k not in {"column", "batch_id"} and v is not None}
    args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    return f"{config.type}({args})" if args else config.type


def _failed_from(file: str, result: Any) -> list[FailedExpectation]:
    failed = []
    for r in result.results:
        if r.success:
            continue
        config = r.expectation_config
        res = r.result or {}
        observed = res.get("observed_value")
        if r.exception_info and r.exception_info.get("raised_exception"):
            observed = str(r.exception_info.get("exception_message", "error"))[:200]
        failed.append(
            FailedExpectation(
                file=file,
                expectation=config.type,
                column=config.kwargs.get("column"),
                rule=_rule(config),
                unexpected_count=res.get("unexpected_count"),
                element_count=res.get("element_count"),
                observed=None if observed is None else str(observed)[:200],
            )
        )
    return failed


def validate_snapshot(spec: ModelSpec, snapshot: Snapshot) -> ValidationSummary:
    """Validate every batch of a snapshot; unreadable files and a too-small training set fail too."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    # GX logs ~200 INFO lines about its own API docs registry on import; the task log is for the data.
    logging.getLogger("great_expectations._docs_decorators").setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    suite = context.suites.add(build_suite(spec, gx))
    asset = context.data_sources.add_pandas("snapshot").add_dataframe_asset("batch")
    batch_definition = asset.add_batch_definition_whole_dataframe("whole")

    summary = ValidationSummary(success=True, files=len(snapshot.batches), rows=0, expectations=0)
    summary.expectations = len(suite.expectations)
    for batch in snapshot.batches:
        if batch.snapshot_file is None:
            summary.failed.append(
                FailedExpectation(batch.name, "readable_table", None, f"readable_table: {batch.read_error}")
            )
            continue
        frame = load_batch(snapshot, batch)
        summary.rows += len(frame)
        result = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(suite)
        summary.evaluated += len(result.results)
        summary.failed.extend(_failed_from(batch.name, result))
    if snapshot.train_rows < spec.min_rows and not summary.failed:
        summary.failed.append(
            FailedExpectation(
                "<training window>",
                "min_training_rows",
                None,
                f"training window must hold at least {spec.min_rows} rows",
                observed=str(snapshot.train_rows),
            )
        )
    summary.success = not summary.failed
    log.info(summary.message())
    return summary
