"""A request body -> the model's input rows, checked against the model spec.

Accepted bodies (a superset of ``mlflow models serve``): a JSON list of records; ``{"dataframe_split":
{"columns": [...], "data": [[...], ...]}}``; ``{"dataframe_records": [...]}``; ``{"instances": [...]}``
(records); ``{"inputs": [...]}`` (records) or ``{"inputs": {"column": [values]}}``.

Limits, the same for every format: the body's bytes (``MLOPS_SERVING_MAX_BODY_BYTES``, checked while it is
read), its rows (``serving.max_rows`` of the spec) and its distinct column names
(``MLOPS_SERVING_MAX_COLUMNS``, model features included), each refused with 413 before any row is checked;
a body with more JSON objects and arrays than rows, column lists and wrappers is refused before it is parsed.
Only the model's features are read: features the spec drops and other extra columns are ignored (but count
towards the column limit). Parsing and checking cost time linear in the body.

Rules per feature type of the spec:

* every model feature is present (a record without the key counts as null); a key appears once per JSON
  object (``{"age": 30, "age": 900}`` is refused: parsers disagree on which one counts);
* ``numeric``: a finite JSON number within the range of a 64-bit float (not ``NaN``, ``Infinity`` nor a
  400-digit integer) or null; ``categorical``: a string, number or boolean (compared as text) or null;
  ``boolean``: ``true``/``false``, ``0``/``1`` or the text ``true``/``false``/``yes``/``no``/``t``/``f``/
  ``y``/``n``, or null; ``datetime``: an ISO-8601 string (``2024-01-02``, ``2024-01-02T03:04:05.5+01:00``,
  ``20240102``; not ``now``, ``Jan 5 2024`` nor padded text) within pandas' range (years 1678 to 2261), or
  null;
* null only where the spec says ``nullable: true``;
* the spec's domain (:mod:`mlops_airflow.core.domain`, the rule batch scoring marks its rows by): a categorical
  value among the feature's ``categories``, a numeric value within its ``min``/``max`` (inclusive). A feature
  that declares neither is not checked. Outside the domain, per
  ``serving.out_of_domain``: ``reject`` (the default) refuses the request, ``flag`` answers it and returns,
  per row, what is outside (:attr:`Checked.out_of_domain`).

Text is cleaned of lone surrogates (:func:`mlops_airflow.core.encoding.clean_text`) so that every row the
server accepts can be answered and logged. A broken rule raises :class:`InputError` (status 400, 413 or
422) whose message names the column, the row, the value and the rule; nothing in a body can make the server
answer 500.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlops_airflow.core.domain import Domain, mark, shown
from mlops_airflow.core.encoding import clean_text
from mlops_airflow.core.errors import MlopsError
from mlops_airflow.core.spec import FeatureSpec, ModelSpec

TRUE_TEXT = {"true", "t", "yes", "y", "1"}
FALSE_TEXT = {"false", "f", "no", "n", "0"}
FORMATS = "a JSON list of records, or an object with dataframe_split, dataframe_records, instances or inputs"
MAX_PROBLEMS = 20


class InputError(MlopsError, ValueError):
    """A request the server refuses; ``status`` is the HTTP status, ``problems`` one entry per broken rule."""

    def __init__(self, status: int, message: str, problems: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problems = problems or []


@dataclass(frozen=True)
class Limits:
    """What one request may carry besides its bytes.

    :param max_rows: rows (``serving.max_rows``).
    :param max_columns: distinct column names, model features included (``MLOPS_SERVING_MAX_COLUMNS``).
    """

    max_rows: int
    max_columns: int


@dataclass
class Checked:
    """A request's rows, checked: the model's input frame and, under ``serving.out_of_domain: flag``, per
    row the list of what lies outside the spec's domain (empty for a row inside it); None when no row is."""

    rows: pd.DataFrame
    out_of_domain: list[list[str]] | None = None


class DuplicateKeyError(MlopsError, ValueError):
    """A JSON object that names one key twice."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict, refusing a key met twice (``json`` would keep the last one silently, while a
    gateway or a client-side check may have read the first)."""
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKeyError(key)
            seen.add(key)
    return record


#: A JSON string, escapes included (the unrolled form: linear time, no backtracking).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def _too_many_containers(raw: bytes, wanted: list[str], limits: Limits) -> None:
    """Refuse, before parsing, a body holding more JSON objects and arrays than any acceptable request: one per
    row, one per column list, a few wrappers (a cell is never one). Parsed, each costs some 60 bytes of memory
    per 3 bytes of body (``[{},{},...]``)."""
    bound = limits.max_rows + max(limits.max_columns, len(wanted)) + 4
    if raw.count(b"{") + raw.count(b"[") <= bound:  # the common case: no need to look closer
        return
    structure = _JSON_STRING.sub(b'""', raw)  # braces inside text are not structure
    count = structure.count(b"{") + structure.count(b"[")
    if count > bound:
        raise InputError(413, f"body holds {count} JSON objects or arrays; a request within serving.max_rows "
                              f"({limits.max_rows}) and MLOPS_SERVING_MAX_COLUMNS ({limits.max_columns}) holds at "
                              f"most {bound}; refused before parsing")  # fmt: skip


def parse_body(raw: bytes, wanted: list[str], limits: Limits) -> dict[str, list[Any]]:
    """The body's ``wanted`` columns (name -> values, one per row) that it carries, whichever accepted format
    it came in; the other columns are counted against ``limits.max_columns`` and not read."""
    if not raw.strip():
        raise InputError(400, f"empty body: send {FORMATS}")
    _too_many_containers(raw, wanted, limits)
    try:
        body = json.loads(raw, object_pairs_hook=_unique_keys)
    except DuplicateKeyError as err:
        raise InputError(400, f"body: key {shown(err.args[0])!r} appears twice in one JSON object; send each "
                              "column once per record") from None  # fmt: skip
    except (ValueError, RecursionError) as err:
        raise InputError(400, f"body is not valid JSON ({err}); send {FORMATS}") from None
    if not isinstance(body, dict):
        return _records(body, "body", wanted, limits)
    keys = [k for k in ("dataframe_split", "dataframe_records", "instances", "inputs") if k in body]
    if len(keys) != 1:
        got = [shown(k) for k in list(body)[:10]]
        raise InputError(400, f"body: expected exactly one of dataframe_split, dataframe_records, instances, "
                              f"inputs; got keys {got}")  # fmt: skip
    key = keys[0]
    payload = body[key]
    if key == "dataframe_split":
        return _split(payload, wanted, limits)
    if key == "inputs" and isinstance(payload, dict):
        return _column_lists(payload, wanted, limits)
    return _records(payload, key, wanted, limits)


def _too_many_rows(n: int, limits: Limits) -> None:
    if n > limits.max_rows:
        raise InputError(413, f"{n} rows in one request; at most {limits.max_rows} (serving.max_rows)")


def _too_many_columns(count: int, wanted: list[str], limits: Limits, exact: bool = True) -> None:
    bound = max(limits.max_columns, len(wanted))  # the model's own features always fit
    if count > bound:
        seen = f"{count}" if exact else f"more than {bound}"
        raise InputError(413, f"{seen} distinct columns in one request; at most {bound} (MLOPS_SERVING_MAX_COLUMNS); "
                              f"the model reads {len(wanted)}: {wanted}")  # fmt: skip


def _records(payload: Any, where: str, wanted: list[str], limits: Limits) -> dict[str, list[Any]]:
    if not isinstance(payload, list):
        raise InputError(400, f"{where}: expected a list of records (JSON objects), got {type(payload).__name__}")
    if not payload:
        raise InputError(400, f"{where}: no rows")
    _too_many_rows(len(payload), limits)
    columns: dict[str, list[Any]] = {name: [] for name in wanted}
    seen: set[str] = set()  # every key met so far: grows to the column limit at most
    for i, record in enumerate(payload):
        if not isinstance(record, dict):
            raise InputError(400, f"{where}[{i}]: expected a record (JSON object), got {type(record).__name__}")
        if not seen.issuperset(record):  # a key not met before: counted, refused past the limit
            seen.update(record)
            _too_many_columns(len(seen), wanted, limits, exact=False)
        for name, values in columns.items():
            values.append(record.get(name))
    return {name: values for name, values in columns.items() if name in seen}


def _split(payload: Any, wanted: list[str], limits: Limits) -> dict[str, list[Any]]:
    if not isinstance(payload, dict) or not isinstance(payload.get("columns"), list):
        raise InputError(400, 'dataframe_split: expected {"columns": [...], "data": [[...], ...]}')
    names, data = payload["columns"], payload.get("data")
    _too_many_columns(len(names), wanted, limits)
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise InputError(400, "dataframe_split.columns: expected distinct column names (strings)")
    if not isinstance(data, list) or not data:
        raise InputError(400, "dataframe_split.data: expected a non-empty list of rows")
    _too_many_rows(len(data), limits)
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(names):
            raise InputError(400, f"dataframe_split.data[{i}]: expected a list of {len(names)} values (one per column)")
    position = {name: j for j, name in enumerate(names)}
    return {name: [row[position[name]] for row in data] for name in wanted if name in position}


def _column_lists(payload: dict[str, Any], wanted: list[str], limits: Limits) -> dict[str, list[Any]]:
    _too_many_columns(len(payload), wanted, limits)
    lengths = {len(v) if isinstance(v, list) else -1 for v in payload.values()}
    if not payload or -1 in lengths or len(lengths) != 1 or 0 in lengths:
        raise InputError(400, 'inputs: expected {"column": [values], ...} with non-empty lists of one length')
    _too_many_rows(lengths.pop(), limits)
    return {name: payload[name] for name in wanted if name in payload}


def _problem(column: str, row: int | None, rule: str, value: Any) -> dict[str, Any]:
    return {"column": column, "row": row, "rule": rule, "value": shown(value)}


def _numeric(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)  # an int beyond a float's range raises: refused like Infinity
    except OverflowError:
        return False


def _category(value: Any) -> str | None:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else str(value)
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


#: ISO-8601 dates and date-times (calendar dates, extended or basic), with an optional fraction and offset
ISO_8601 = re.compile(
    r"\d{4}(-\d{2}(-\d{2}([T ]\d{2}(:\d{2}(:\d{2}([.,]\d{1,9})?)?)?(Z|[+-]\d{2}(:?\d{2})?)?)?)?)?"
    r"|\d{8}(T\d{2}(\d{2}(\d{2}([.,]\d{1,9})?)?)?(Z|[+-]\d{2}(\d{2})?)?)?",
    re.ASCII,
)
MOMENT_FORMAT = "%Y-%m-%dT%H:%M:%S%z"


def _datetime(value: Any) -> str | None:
    """An ISO-8601 string as the model's input text (UTC, :data:`MOMENT_FORMAT`); None for anything else
    (``now``, ``Jan 5 2024``, padded text, a date pandas cannot hold): what is accepted here is exactly what
    the model receives, never a null in its place."""
    if not isinstance(value, str) or ISO_8601.fullmatch(value) is None:
        return None
    moment = pd.to_datetime(value.replace(",", "."), errors="coerce", utc=True, format="ISO8601")
    if pd.isna(moment):
        return None
    return str(moment.strftime(MOMENT_FORMAT))


RULES = {
    "numeric": "a finite JSON number within a 64-bit float's range (numeric feature)",
    "categorical": "a string (categorical feature)",
    "boolean": "true/false, 0/1 or yes/no (boolean feature)",
    "datetime": "an ISO-8601 date-time string (datetime feature)",
}
CONVERTERS = {
    "numeric": lambda v: v if _numeric(v) else None,
    "categorical": _category,
    "boolean": _boolean,
    "datetime": _datetime,
}


def check_rows(spec: ModelSpec, columns: dict[str, list[Any]], max_rows: int) -> Checked:
    """The model's input rows (typed as :func:`mlops_airflow.core.scoring.model_input` types them), or
    :class:`InputError` listing every broken rule (up to :data:`MAX_PROBLEMS`)."""
    n = len(next(iter(columns.values()))) if columns else 0
    if n > max_rows:
        raise InputError(413, f"{n} rows in one request; at most {max_rows} (serving.max_rows of {spec.name})")
    missing = [name for name in spec.model_features if name not in columns]
    if missing:
        absent = [_problem(c, None, "missing: a model feature must be sent", None) for c in missing]
        raise InputError(422, f"{spec.name}: missing feature column(s) {missing}", absent)
    flag = spec.serving.out_of_domain == "flag"
    problems: list[dict[str, Any]] = []
    flags: list[list[str]] = [[] for _ in range(n)]
    out: dict[str, list[Any]] = {}
    for feature in spec.features:
        if feature.use == "drop" or len(problems) >= MAX_PROBLEMS:
            continue
        out[feature.name] = _check_column(feature, columns[feature.name], problems, flags if flag else None)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        value = "null" if first["value"] is None else repr(first["value"])
        raise InputError(422, f"{spec.name}: column {first['column']!r}, row {first['row']}, value {value}: "
                              f"{first['rule']}{more}", problems)  # fmt: skip
    flagged = flags if flag and any(flags) else None
    return Checked(typed_frame(spec, out), flagged)


def _check_column(
    feature: FeatureSpec, values: Iterable[Any], problems: list[dict[str, Any]], flags: list[list[str]] | None
) -> list[Any]:
    """One feature's values typed; broken rules go to ``problems``, out-of-domain values to ``flags`` (or,
    without ``flags``, to ``problems``)."""
    name, convert = feature.name, CONVERTERS[feature.type]
    domain = Domain(feature)
    typed: list[Any] = []
    for row, value in enumerate(values):
        if value is None:
            if not feature.nullable:
                problems.append(_problem(name, row, "null is not allowed (nullable: false)", value))
            typed.append(None)
        elif (converted := convert(value)) is None:
            problems.append(_problem(name, row, f"expected {RULES[feature.type]}", value))
            typed.append(None)
        else:
            typed.append(converted)
            why = domain.outside(converted) if domain.declared else None
            if why is not None and flags is not None:
                flags[row].append(mark(name, converted, why))
            elif why is not None:
                problems.append(_problem(name, row, f"{why} (outside the spec's domain; serving.out_of_domain: "
                                                    "reject)", converted))  # fmt: skip
        if len(problems) >= MAX_PROBLEMS:
            break
    return typed


def typed_frame(spec: ModelSpec, columns: dict[str, list[Any]]) -> pd.DataFrame:
    """Checked values -> the model's input frame, built once from typed arrays (numeric float64 with NaN for
    null, datetime as the ISO text :func:`_datetime` made, the rest object): a per-column pandas conversion
    after the frame exists cost more than the 1-row model call itself (benchmarks/serving_profile.py)."""
    arrays: dict[str, Any] = {}
    for feature in spec.features:
        if feature.use == "drop":
            continue
        values = columns[feature.name]
        if feature.type == "numeric":
            arrays[feature.name] = np.array([np.nan if v is None else v for v in values], dtype="float64")
        else:
            objects = np.empty(len(values), dtype="object")
            objects[:] = values
            arrays[feature.name] = objects
    return pd.DataFrame({name: arrays[name] for name in spec.model_features}, copy=False)
