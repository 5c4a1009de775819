"""One encoder for everything the package writes: XCom values, JSON artifacts, HTTP responses, the request
log and notifications.

Whatever a user can send or a metric can become must be writable:

* NaN and infinities become ``null`` (JSON has no such numbers; ``allow_nan`` output is not JSON and
  Airflow's XCom, most parsers and MLflow refuse it). Callers that must say *why* a value is undefined log it
  beside the value; the encoder never invents a number.
* NumPy and pandas scalars, arrays, timestamps and missing markers become their plain JSON counterparts.
* Text is valid UTF-8 after encoding: a lone surrogate (``"\\ud800"``, which a JSON parser accepts) is
  replaced by ``U+FFFD`` instead of making the write fail later.
* User text is escaped for the medium it goes to: :func:`slack_text` (mrkdwn control sequences) and
  :func:`html_text`.

Pure and import-light (no pandas/NumPy import: their types are recognised by duck typing).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import re
from collections.abc import Mapping
from typing import Any

_SURROGATE = re.compile(r"[\ud800-\udfff]")
_REPLACEMENT = "\ufffd"


def clean_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD: always encodable as UTF-8."""
    return _SURROGATE.sub(_REPLACEMENT, text) if _SURROGATE.search(text) else text


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: dicts with text keys, lists, text, finite numbers, bools, ``None``.

    NaN/infinities -> ``None``; NumPy/pandas scalars and arrays -> Python values; dates -> ISO text;
    sets and tuples -> lists; anything else -> its ``str`` (cleaned of lone surrogates).
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, Mapping):
        return {clean_text(str(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if type(value).__name__ in {"NAType", "NaTType"}:  # pandas' missing markers (NaT is a datetime)
        return None
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return clean_text(value.decode("utf-8", "replace"))
    # NumPy / pandas, recognised without importing them
    kind = type(value).__module__.split(".", 1)[0]
    if kind in {"numpy", "pandas"}:
        if type(value).__name__ in {"NAType", "NaTType"}:
            return None
        if hasattr(value, "tolist") and not hasattr(value, "isoformat"):
            return jsonable(value.tolist())  # arrays and NumPy scalars (np.float64 -> float, np.bool_ -> bool)
        if hasattr(value, "isoformat"):
            try:
                return value.isoformat()  # pandas.Timestamp
            except ValueError:
                return None
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return jsonable(value.to_dict())
    return clean_text(str(value))


def dumps(value: Any, **kwargs: Any) -> str:
    """Strict JSON text of :func:`jsonable` ``(value)``: never ``NaN``/``Infinity``, always valid UTF-8."""
    return json.dumps(jsonable(value), allow_nan=False, ensure_ascii=kwargs.pop("ensure_ascii", False), **kwargs)


def undefined_keys(metrics: Mapping[str, Any]) -> list[str]:
    """Names of the values in ``metrics`` that are NaN or infinite (reported beside the ``null`` they become)."""
    out = []
    for key, value in metrics.items():
        try:
            if value is not None and not isinstance(value, bool) and not math.isfinite(float(value)):
                out.append(str(key))
        except (TypeError, ValueError):
            continue
    return out


_SLACK_SPECIAL = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
# Formatting characters that would change how the rest of a message renders; shown as look-alikes.
_SLACK_FORMAT = str.maketrans({"*": "\u2217", "_": "\uff3f", "~": "\u223c", "`": "\u02cb"})


def slack_text(text: Any) -> str:
    """User text safe inside a Slack mrkdwn message: ``&``, ``<`` and ``>`` escaped as Slack documents
    (so ``<!channel>`` or ``<https://evil|click>`` are shown, never a ping or a link) and formatting
    characters neutralised."""
    return clean_text(str(text)).translate(_SLACK_SPECIAL).translate(_SLACK_FORMAT)


def html_text(text: Any) -> str:
    """User text safe inside HTML (element content and quoted attributes)."""
    return html.escape(clean_text(str(text)), quote=True)
