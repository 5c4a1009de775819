"""A request body -> the model's input rows, checked against the model spec.

Accepted bodies (a superset of ``mlflow models serve``): a JSON list of records; ``{"dataframe_split":
{"columns": [...], "data": [[...], ...]}}``; ``{"dataframe_records": [...]}``; ``{"instances": [...]}``
(records); ``{"inputs": [...]}`` (records) or ``{"inputs": {"column": [values]}}``.

Rules per feature type of the spec (features the spec drops are not read; other extra columns are ignored):

* every model feature is present (a record without the key counts as null);
* ``numeric``: a JSON number or null; ``categorical``: a string, number or boolean (compared as text) or null;
  ``boolean``: ``true``/``false``, ``0``/``1`` or the text ``true``/``false``/``yes``/``no``/``t``/``f``/
  ``y``/``n``, or null; ``datetime``: an ISO-8601 string, or null;
* null only where the spec says ``nullable: true``.

A broken rule raises :class:`InputError` (status 400, 413 or 422) whose message names the column, the row
and the rule; nothing in a body can make the server answer 500.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from mlops_airflow.core.config import ModelSpec

TRUE_TEXT = {"true", "t", "yes", "y", "1"}
FALSE_TEXT = {"false", "f", "no", "n", "0"}
FORMATS = "a JSON list of records, or an object with dataframe_split, dataframe_records, instances or inputs"
MAX_PROBLEMS = 20


class InputError(ValueError):
    """A request the server refuses; ``status`` is the HTTP status, ``problems`` one entry per broken rule."""

    def __init__(self, status: int, message: str, problems: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problems = problems or []

    def to_dict(self) -> dict[str, Any]:
        return {"error_code": "BAD_REQUEST" if self.status < 413 else "INVALID_INPUT", "message": str(self),
                "problems": self.problems}  # fmt: skip


def parse_body(raw: bytes) -> dict[str, list[Any]]:
    """The body's columns (name -> values, one per row), in whichever accepted format it came."""
    if not raw.strip():
        raise InputError(400, f"empty body: send {FORMATS}")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise InputError(400, f"body is not valid JSON ({err}); send {FORMATS}") from None
    if isinstance(body, dict):
        keys = [k for k in ("dataframe_split", "dataframe_records", "instances", "inputs") if k in body]
        if len(keys) != 1:
            raise InputError(400, f"body: expected exactly one of dataframe_split, dataframe_records, instances, "
                                  f"inputs; got keys {sorted(body)[:10]}")  # fmt: skip
        key = keys[0]
        payload = body[key]
        if key == "dataframe_split":
            return _split(payload)
        if key == "inputs" and isinstance(payload, dict):
            return _column_lists(payload)
        return _records(payload, key)
    return _records(body, "body")


def _records(payload: Any, where: str) -> dict[str, list[Any]]:
    if not isinstance(payload, list):
        raise InputError(400, f"{where}: expected a list of records (JSON objects), got {type(payload).__name__}")
    columns: dict[str, list[Any]] = {}
    for i, record in enumerate(payload):
        if not isinstance(record, dict):
            raise InputError(400, f"{where}[{i}]: expected a record (JSON object), got {type(record).__name__}")
        for name in record:
            if name not in columns:
                columns[name] = [None] * i
        for name, values in columns.items():
            values.append(record.get(name))
    if not payload:
        raise InputError(400, f"{where}: no rows")
    return columns


def _split(payload: Any) -> dict[str, list[Any]]:
    if not isinstance(payload, dict) or not isinstance(payload.get("columns"), list):
        raise InputError(400, 'dataframe_split: expected {"columns": [...], "data": [[...], ...]}')
    names, data = payload["columns"], payload.get("data")
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise InputError(400, "dataframe_split.columns: expected distinct column names (strings)")
    if not isinstance(data, list) or not data:
        raise InputError(400, "dataframe_split.data: expected a non-empty list of rows")
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(names):
            raise InputError(400, f"dataframe_split.data[{i}]: expected a list of {len(names)} values (one per column)")
    return {name: [row[j] for row in data] for j, name in enumerate(names)}


def _column_lists(payload: dict[str, Any]) -> dict[str, list[Any]]:
    lengths = {len(v) if isinstance(v, list) else -1 for v in payload.values()}
    if not payload or -1 in lengths or len(lengths) != 1 or 0 in lengths:
        raise InputError(400, 'inputs: expected {"column": [values], ...} with non-empty lists of one length')
    return {str(k): list(v) for k, v in payload.items()}


def _problem(column: str, row: int, rule: str, value: Any) -> dict[str, Any]:
    shown = value if isinstance(value, int | float | str | bool) or value is None else type(value).__name__
    if isinstance(shown, str) and len(shown) > 40:
        shown = shown[:40] + "..."
    return {"column": column, "row": row, "rule": rule, "value": shown}


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _category(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return str(int(value)) if float(value).is_integer() else str(value)
    return None


def _boolean(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in TRUE_TEXT:
            return True
        if text in FALSE_TEXT:
            return False
    return None


RULES = {
    "numeric": "a JSON number (numeric feature)",
    "categorical": "a string (categorical feature)",
    "boolean": "true/false, 0/1 or yes/no (boolean feature)",
    "datetime": "an ISO-8601 date-time string (datetime feature)",
}


def check_rows(spec: ModelSpec, columns: dict[str, list[Any]], max_rows: int) -> pd.DataFrame:
    """The model's input rows (typed as :func:`mlops_airflow.core.scoring.model_input` types them), or
    :class:`InputError` listing every broken rule (up to :data:`MAX_PROBLEMS`)."""
    n = len(next(iter(columns.values()))) if columns else 0
    if n > max_rows:
        raise InputError(413, f"{n} rows in one request; at most {max_rows} (serving.max_rows of {spec.name})")
    missing = [name for name in spec.model_features if name not in columns]
    if missing:
        absent = [{"column": c, "row": None, "rule": "missing: a model feature must be sent", "value": None}
                    for c in missing]  # fmt: skip
        raise InputError(422, f"{spec.name}: missing feature column(s) {missing}", absent)
    problems: list[dict[str, Any]] = []
    out: dict[str, list[Any]] = {}
    for feature in spec.features:
        if feature.use == "drop":
            continue
        name, values = feature.name, columns[feature.name]
        typed: list[Any] = []
        for row, value in enumerate(values):
            if value is None:
                if not feature.nullable:
                    problems.append(_problem(name, row, "null is not allowed (nullable: false)", value))
                typed.append(None)
                continue
            if feature.type == "numeric":
                ok, converted = _numeric(value), value
            elif feature.type == "categorical":
                converted = _category(value)
                ok = converted is not None
            elif feature.type == "boolean":
                converted = _boolean(value)
                ok = converted is not None
            else:
                converted = value
                ok = isinstance(value, str) and not pd.isna(pd.to_datetime(value, errors="coerce", utc=True))
            if not ok:
                problems.append(_problem(name, row, f"expected {RULES[feature.type]}", value))
            typed.append(converted if ok else None)
            if len(problems) >= MAX_PROBLEMS:
                break
        out[name] = typed
        if len(problems) >= MAX_PROBLEMS:
            break
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InputError(
            422, f"{spec.name}: column {first['column']!r}, row {first['row']}: {first['rule']}{more}", problems
        )
    return typed_frame(spec, out)


def typed_frame(spec: ModelSpec, columns: dict[str, list[Any]]) -> pd.DataFrame:
    """Checked values -> the model's input frame, built once from typed arrays (numeric float64 with NaN for
    null, datetime as ISO text, the rest object): a per-column pandas conversion after the frame exists
    cost more than the 1-row model call itself (benchmarks/serving_profile.py)."""
    arrays: dict[str, Any] = {}
    for feature in spec.features:
        if feature.use == "drop":
            continue
        values = columns[feature.name]
        if feature.type == "numeric":
            arrays[feature.name] = np.array([np.nan if v is None else v for v in values], dtype="float64")
        elif feature.type == "datetime":
            moments = pd.to_datetime(pd.Series(values, dtype="object"), errors="coerce", utc=True, format="ISO8601")
            text = moments.dt.strftime("%Y-%m-%dT%H:%M:%S%z").astype("object")
            arrays[feature.name] = text.where(moments.notna(), None).to_numpy(dtype="object")
        else:
            objects = np.empty(len(values), dtype="object")
            objects[:] = values
            arrays[feature.name] = objects
    return pd.DataFrame({name: arrays[name] for name in spec.model_features}, copy=False)
