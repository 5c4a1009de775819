"""What the model page reads of the model's history besides its ledger: the label-free estimate of the primary
metric batch by batch beside the realised metric (the monitor runs' ``estimate/batches.json``), and the newest
replay reports (the runs of the experiment ``<model>/replay``).

Reads MLflow through the client it is given and writes nothing. A monitor run's list of batches never changes
once the run has finished, so finished runs' lists are kept in the ``cache`` the caller passes.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import statistics
from dataclasses import dataclass
from typing import Any

#: The monitor run's artifact with every batch's estimate and reason (written by the monitor task).
ESTIMATE_BATCHES = "estimate/batches.json"
#: The newest monitor runs read for the estimate's history (a page build stays cheap).
MONITOR_RUNS = 30
#: Finished monitor runs whose batch lists a cache keeps at most.
CACHE_RUNS = 5_000
#: The newest replay reports listed.
REPLAY_RUNS = 5
_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})")
log = logging.getLogger(__name__)


def number(value: Any) -> float | None:
    """A finite float, or None for anything else (missing, NaN, infinite, not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        out = float(value)
    except ValueError:
        return None
    return out if math.isfinite(out) else None


@dataclass(frozen=True)
class EstimatePoint:
    """One batch's estimate of the primary metric, as the newest monitor run that saw the batch logged it."""

    source: str
    batch: str
    value: float | None
    low: float | None
    high: float | None
    realised: float | None
    labelled: int
    reason: str
    mlflow_run_id: str
    date: dt.date

    @property
    def error(self) -> float | None:
        """Estimated minus realised (None until both exist)."""
        if self.value is None or self.realised is None:
            return None
        return self.value - self.realised


@dataclass(frozen=True)
class EstimateHistory:
    """The batches of the newest monitor runs, oldest first, or why there is nothing to show (``why``)."""

    points: list[EstimatePoint]
    runs: int
    why: str | None = None

    @property
    def median_error(self) -> float | None:
        """Median of |estimated - realised| over the batches that have both."""
        errors = [abs(p.error) for p in self.points if p.error is not None]
        return statistics.median(errors) if errors else None

    @property
    def compared(self) -> int:
        return sum(p.error is not None for p in self.points)


def _batch_date(name: str, fallback: dt.date) -> dt.date:
    match = _DATE.search(name)
    if match:
        try:
            return dt.date.fromisoformat(match[1])
        except ValueError:
            pass
    return fallback


def _read_json(client: Any, run: Any, path: str) -> Any:
    """An artifact of a searched run as JSON, None when it has none, it is larger than
    :data:`~mlops_airflow.core.tracking.MAX_ARTIFACT_BYTES`, not UTF-8 or not JSON (logged). Read through the run's
    artifact URI, which the search answered: no call for the run itself; one listing of the artifact's folder
    (its size, checked before any download) and the download."""
    from mlops_airflow.core.errors import ArtifactError
    from mlops_airflow.core.tracking import read_artifact_json

    try:
        return read_artifact_json(client, str(run.info.run_id), path, artifact_uri=str(run.info.artifact_uri))
    except ArtifactError as err:
        log.warning("%s; not shown", err)
        return None


def _start(run: Any) -> dt.datetime | None:
    """The run's start time (None when it has none the calendar holds: its creator sets it)."""
    try:
        return dt.datetime.fromtimestamp(run.info.start_time / 1000, dt.UTC) if run.info.start_time else None
    except (ValueError, OverflowError, OSError):
        return None


def _batches(client: Any, run: Any, cache: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The run's list of batch estimates (read once per finished run)."""
    run_id = str(run.info.run_id)
    if run_id in cache:
        return cache[run_id]
    found = _read_json(client, run, ESTIMATE_BATCHES)
    batches = found.get("batches") if isinstance(found, dict) else None
    rows = [b for b in batches if isinstance(b, dict)] if isinstance(batches, list) else []
    if str(run.info.status) == "FINISHED":
        if len(cache) >= CACHE_RUNS:  # runs long past the newest ones of any model: read again if ever asked
            cache.clear()
        cache[run_id] = rows
    return rows


def estimate_history(
    client: Any,
    experiment_id: str | None,
    metric: str,
    *,
    classifier: bool = True,
    limit: int = MONITOR_RUNS,
    cache: dict[str, list[dict[str, Any]]] | None = None,
) -> EstimateHistory:
    """Every batch the newest ``limit`` monitor runs estimated ``metric`` on, once each (a batch seen by several
    runs is taken from the newest: it has the most labels), ordered by the date in the batch's name (else the
    day of the run that first saw it)."""
    from mlops_airflow.core.estimate import NO_REGRESSION
    from mlops_airflow.core.tracking import TAG_KIND

    if not classifier:
        return EstimateHistory([], 0, NO_REGRESSION)
    if experiment_id is None:
        return EstimateHistory([], 0, "no monitor run yet: the model has no MLflow experiment")
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_KIND}` = 'monitor'",
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    if not runs:
        return EstimateHistory([], 0, "no monitor run yet")
    cache = {} if cache is None else cache
    seen: dict[tuple[str, str], tuple[EstimatePoint, tuple[dt.date, int, int]]] = {}
    for age, run in enumerate(runs):  # newest first: the first run to name a batch wins
        day = (_start(run) or dt.datetime.fromtimestamp(0, dt.UTC)).date()
        for index, row in enumerate(_batches(client, run, cache)):
            if row.get("metric") not in (None, metric):
                continue
            key = (str(row.get("source") or ""), str(row.get("batch") or ""))
            point = EstimatePoint(
                source=key[0],
                batch=key[1],
                value=number(row.get("value")),
                low=number(row.get("low")),
                high=number(row.get("high")),
                realised=number(row.get("realised")),
                labelled=int(number(row.get("labelled")) or 0),
                reason=str(row.get("reason") or ""),
                mlflow_run_id=str(run.info.run_id),
                date=_batch_date(key[1], day),
            )
            order = (point.date, -age, index)  # the run that first saw the batch orders batches of one date
            if key not in seen:
                seen[key] = (point, order)
            else:
                seen[key] = (seen[key][0], min(seen[key][1], order))
    points = [p for p, _ in sorted(seen.values(), key=lambda item: item[1])]
    if not any(p.value is not None or p.realised is not None for p in points):
        newest = runs[0].data.tags.get("mlops.estimate_reason") or "the monitor made no estimate"
        why = f"no label-free estimate in the newest {len(runs)} monitor run(s): {newest}"
        return EstimateHistory(points, len(runs), why)
    return EstimateHistory(points, len(runs))


@dataclass(frozen=True)
class ReplayReport:
    """One replay report: when it ran, the days replayed, each policy's mean deployed metric and the best."""

    mlflow_run_id: str
    experiment_id: str
    started_at: dt.datetime | None
    status: str
    first_day: str
    last_day: str
    means: dict[str, float | None]
    dag_id: str
    run_id: str

    def winner(self, metric: str) -> str | None:
        """The policy with the best mean deployed ``metric`` (None when no policy has one)."""
        from mlops_airflow.core.metrics import higher_is_better

        scored = [(v, n) for n, v in self.means.items() if v is not None]
        if not scored:
            return None
        best = max(v for v, _ in scored) if higher_is_better(metric) else min(v for v, _ in scored)
        return next(n for v, n in scored if v == best)


def replay_reports(client: Any, model: str, limit: int = REPLAY_RUNS) -> list[ReplayReport]:
    """The newest ``limit`` replay reports of ``model`` (the runs of its experiment ``<model>/replay``)."""
    from mlops_airflow.core.replay import EXPERIMENT_SUFFIX
    from mlops_airflow.core.tracking import TAG_DAG_ID, TAG_RUN_ID

    found = client.get_experiment_by_name(f"{model}{EXPERIMENT_SUFFIX}")
    if found is None:
        return []
    exp = str(found.experiment_id)
    runs = client.search_runs([exp], order_by=["attributes.start_time DESC"], max_results=limit)
    out = []
    for run in runs:
        params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
        names = [n for n in str(params.get("policies") or "").split(",") if n]
        out.append(
            ReplayReport(
                mlflow_run_id=str(run.info.run_id),
                experiment_id=exp,
                started_at=_start(run),
                status=str(run.info.status),
                first_day=str(params.get("from") or ""),
                last_day=str(params.get("to") or ""),
                means={n: number(metrics.get(f"{n}.mean")) for n in names},
                dag_id=str(tags.get(TAG_DAG_ID) or ""),
                run_id=str(tags.get(TAG_RUN_ID) or ""),
            )
        )
    return out
