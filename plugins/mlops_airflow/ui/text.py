"""How the model page words what MLflow and Airflow record: times in UTC with their age, DAG runs by trigger
and time instead of run ids, versions always as ``vN``, reasons without the actor the page shows beside them.

Pure functions over strings: no Airflow, no MLflow.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

#: Run id prefixes Airflow gives DAG runs (``<type>__<logical date or run after>``), as a person says them.
RUN_KINDS = {
    "manual": "manual run",
    "scheduled": "scheduled run",
    "asset_triggered": "asset-triggered run",
    "dataset_triggered": "asset-triggered run",
    "backfill": "backfill run",
}
_ACTOR_SUFFIX = re.compile(r"\s*\((?:rollback|promotion) by [^()]*\)\s*$")
_GATE_REASON = re.compile(r"^blessed by the gate in \S+ run \S+$")


def parse_time(value: str | None) -> dt.datetime | None:
    """An ISO date-time (UTC when it names no zone), or None when ``value`` is empty or not one."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
        # in UTC here: a time at the edge of the calendar (year 1 at +05:00) has no UTC time and is not one
        return parsed.astimezone(dt.UTC) if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    except (ValueError, OverflowError):
        return None


def age(then: dt.datetime, now: dt.datetime) -> str:
    """``3 h ago``, ``in 20 min``: the distance from ``now`` in the largest unit that keeps it short."""
    seconds = (now - then).total_seconds()
    span = abs(seconds)
    if span < 60:
        return "just now"
    for unit, size, limit in (("min", 60, 90 * 60), ("h", 3600, 48 * 3600), ("days", 86400, float("inf"))):
        if span < limit:
            amount = f"{int(span // size)} {unit}"
            break
    return f"{amount} ago" if seconds > 0 else f"in {amount}"


def when(value: str | dt.datetime | None, now: dt.datetime | None = None) -> str:
    """``2026-12-07 04:10 UTC (3 h ago)``; the text as given when it is not a date-time, empty for none."""
    moment = value if isinstance(value, dt.datetime) else parse_time(value)
    if moment is None:
        return "" if value is None else str(value)
    now = now or dt.datetime.now(dt.UTC)
    try:
        moment = moment.astimezone(dt.UTC)
    except OverflowError:
        return str(value)
    return f"{moment:%Y-%m-%d %H:%M} UTC ({age(moment, now)})"


def run_label(run_id: str) -> str:
    """A DAG run as a person names it: ``manual run, 2026-12-07 04:10 UTC`` for
    ``manual__2026-12-07T04:10:17.557587+00:00``; the run id itself when it follows no Airflow pattern."""
    kind, sep, stamp = run_id.partition("__")
    moment = parse_time(stamp) if sep else None
    if kind not in RUN_KINDS or moment is None:
        return run_id
    return f"{RUN_KINDS[kind]}, {moment.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"


def version(value: str | int | None) -> str:
    """``v2`` for ``2`` or ``v2``; empty for none."""
    if value is None or str(value) == "":
        return ""
    text = str(value)
    return text if text.startswith("v") else f"v{text}"


def reason(text: Any) -> str:
    """A move's reason without what the page already shows beside it: the ``(rollback by <dag> run <id> by
    <user>)`` a rollback appends, and a promotion's generated "blessed by the gate in <dag> run <id>"; any other
    value of a JSON tag (a number, a list) as its text."""
    text = ("" if text is None else str(text)).strip()
    if _GATE_REASON.match(text):
        return "blessed by the gate"
    return _ACTOR_SUFFIX.sub("", text)


def figure(value: float | None, digits: int = 4) -> str:
    """A metric as the page prints it: ``0.8123``; ``n/a`` when it is missing, NaN or infinite."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}" if abs(value) < 1e15 else f"{value:.{digits}g}"  # 1e308: not 309 digits
