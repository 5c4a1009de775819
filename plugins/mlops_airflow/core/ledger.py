"""Read model of a registered model for people: who serves now and why, the promotion ledger, the last runs.

Everything here reads MLflow (through the client it is given) and writes nothing. The ledger is rebuilt from
what :mod:`mlops_airflow.core.registry` records on every move of ``champion``:

* a promotion tags the version it promoted (``mlops.promoted_at``, ``mlops.promotion_reason``) beside the
  provenance its CT run tagged at registration (``airflow.dag_id``, ``airflow.run_id``,
  ``mlops.gate.champion_version``: the champion it was judged against, which compare-and-set guarantees is
  the version it replaced);
* a rollback leaves one registered-model tag per rollback DAG run (``mlops.rollback.done.<digest>``) holding
  the whole move: from, to, when, which run, who, why;
* the registry's ledger tag (``mlops.champion.ledger``, the newest moves) adds any move not found above.

A move made outside Airflow (the MLflow UI or API) leaves no record; :attr:`ModelStatus.unrecorded_move`
says when the champion is not where the ledger's last row put it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from mlops_airflow.core.errors import ArtifactError
from mlops_airflow.core.metrics import higher_is_better
from mlops_airflow.core.registry import CHALLENGER, CHAMPION, PREVIOUS_CHAMPION, TAG_DAG_ID, TAG_LEDGER, TAG_RUN_ID
from mlops_airflow.core.tracking import (
    MAX_ARTIFACT_BYTES,
    MAX_IMAGE_BYTES,
    MAX_REPORT_BYTES,
    read_artifact_bytes,
    read_artifact_json,
    read_artifact_text,
)
from mlops_airflow.core.trust import DECISION_ARTIFACT, DONE_PREFIX, TAG_PIN_INFO, TAG_PINNED

log = logging.getLogger(__name__)

GATE_REPORT = "gate/report.md"
#: The validation summary a CT run logs (every broken expectation, with file, column, rule and values).
VALIDATION_SUMMARY = "validation/summary.json"
#: Broken expectations the model page lists at most (the artifact keeps every one).
MAX_VALIDATION_LINES = 10
COMPARISON = "evaluation/comparison.json"
DRIFT_REPORT = "drift/report.json"
DRIFT_PLOTS = "drift/plots"
EVALUATION_PLOTS = "evaluation"
#: Artifact folders the model page may show as images (nothing else of a run is served).
IMAGE_FOLDERS = (DRIFT_PLOTS, EVALUATION_PLOTS)
#: Plots of a folder the model page shows at most (a run's folder holds whatever was logged to it).
MAX_PLOTS = 40
#: The first bytes of every PNG file.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class LedgerEntry:
    """One move of ``champion``: ``op`` is ``promote`` or ``rollback``; ``source_run_id`` is the MLflow CT run
    of the version moved to (its gate report)."""

    at: str
    op: str
    from_version: str | None
    to_version: str
    dag_id: str
    run_id: str
    user: str | None
    reason: str
    trigger: str | None = None
    source_run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CtRunSummary:
    """The newest ``ct_<model>`` MLflow run and what it decided."""

    mlflow_run_id: str
    dag_id: str
    run_id: str
    started_at: str
    status: str
    trigger: str | None
    trigger_reason: str | None
    validation: str | None
    blessed: bool | None
    gate_reason: str | None
    promotion: str | None
    registered_version: str | None

    @property
    def verdict(self) -> str:
        """What the run decided, as a person reads it."""
        if self.validation == "failed":
            return "REJECTED: data validation failed"
        reason = (self.gate_reason or "").removeprefix("blessed: ").removeprefix("not blessed: ")
        if self.blessed is True:
            outcome = f"; promotion: {self.promotion}" if self.promotion else ""
            return f"BLESSED: {reason}{outcome}".strip()
        if self.blessed is False:
            return f"NOT BLESSED: {reason}".strip()
        if self.status == "RUNNING":
            return "running: no gate decision yet"
        return f"no gate decision (run {self.status.lower()})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"verdict": self.verdict}


@dataclass(frozen=True)
class MonitorSummary:
    """The newest ``monitor_<model>`` MLflow run: drift and the live metric."""

    mlflow_run_id: str
    run_id: str
    started_at: str
    champion_version: str | None
    drift_share: float | None
    drifted_features: list[str]
    live_metric: float | None
    retrain_requested: bool
    retrain_reason: str | None
    plots: list[str] = field(default_factory=list)
    #: The label-free estimate of the primary metric on the newest batch, its interval, the realised metric
    #: once that batch's labels arrived, and why (or why no estimate was made).
    estimated_metric: float | None = None
    estimated_low: float | None = None
    estimated_high: float | None = None
    realised_metric: float | None = None
    estimate_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelStatus:
    """One row of the models overview (and the head of a model's page)."""

    name: str
    champion: str | None
    champion_since: str | None
    champion_why: str | None
    pinned: str | None
    pinned_by: dict[str, Any] | None
    previous_champion: str | None
    challenger: str | None
    ledger: list[LedgerEntry]
    last_ct: CtRunSummary | None
    last_monitor: MonitorSummary | None
    experiment_id: str | None
    #: Why ``champion`` may not serve (the champion resolver's refusal), None when it is proven blessed.
    champion_refused: str | None = None
    #: How the champion's blessing was proven: ``signature`` or ``source run`` (no key in this process).
    champion_proof: str | None = None

    @property
    def unrecorded_move(self) -> bool:
        """``champion`` is not where the ledger's last move put it: someone moved it outside Airflow."""
        last = self.ledger[-1].to_version if self.ledger else None
        return self.champion != last

    @property
    def moved_since_last_ct(self) -> LedgerEntry | None:
        """The newest move of ``champion`` made after the last CT run started by another DAG run (a rollback,
        a later promotion): the last CT run's verdict is history then, not what serves now."""
        ct = self.last_ct
        if ct is None or not ct.started_at:
            return None
        started = _parse_at(ct.started_at)
        later = [
            e
            for e in self.ledger
            if e.at and _parse_at(e.at) >= started and (e.dag_id, e.run_id) != (ct.dag_id, ct.run_id)
        ]
        return later[-1] if later else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ledger"] = [e.to_dict() for e in self.ledger]
        data["last_ct"] = self.last_ct.to_dict() if self.last_ct else None
        data["unrecorded_move"] = self.unrecorded_move
        moved = self.moved_since_last_ct
        data["moved_since_last_ct"] = moved.to_dict() if moved else None
        return data


@dataclass(frozen=True)
class TrendPoint:
    """One version on the metric trend: the primary metric its CT run measured on that run's evaluation rows,
    and the gate's interval for it: the champion's value on the same rows plus the paired bootstrap interval
    of the difference (None for a version judged against no champion)."""

    version: str
    value: float | None
    lower: float | None
    upper: float | None
    judged_against: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ms_to_iso(ms: int | None) -> str:
    if not ms:
        return ""
    try:  # a run's start time is whatever its creator sent
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")
    except (ValueError, OverflowError, OSError):
        return ""


#: Where a move whose time is missing or unreadable (a tag anyone may edit) sorts: before every other.
_NO_TIME = dt.datetime.min.replace(tzinfo=dt.UTC)


def _parse_at(value: str) -> dt.datetime:
    """An ISO time of a tag (UTC when it names no zone); :data:`_NO_TIME` when it is not one."""
    try:
        parsed = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return _NO_TIME
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def finite_number(value: Any) -> float | None:
    """A finite number of an artifact, tag or metric (anyone may write them), None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        out = float(value)
    except (ValueError, OverflowError):
        return None
    # an infinity logged as a metric is kept by MLflow's SQL store as the largest float
    return out if math.isfinite(out) and abs(out) < sys.float_info.max else None


def _object(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def _not_found(err: Exception) -> bool:
    return getattr(err, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def _versions(client: Any, name: str) -> list[Any]:
    from mlflow.exceptions import MlflowException

    try:
        return list(client.search_model_versions(f"name = '{name}'"))
    except MlflowException as err:
        if _not_found(err):
            return []
        raise


def _run_tags(client: Any, run_id: str | None, cache: dict[str, dict[str, str]]) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    if not run_id:
        return {}
    if run_id not in cache:
        try:
            cache[run_id] = dict(client.get_run(run_id).data.tags)
        except MlflowException as err:
            if not _not_found(err):
                raise
            cache[run_id] = {}
    return cache[run_id]


def ledger(
    client: Any, name: str, model_tags: dict[str, str] | None = None, versions: list[Any] | None = None
) -> list[LedgerEntry]:
    """Every recorded move of ``champion`` of model ``name``, oldest first. ``versions``: the model's versions
    already read (the models overview reads them for every model at once); the moves then carry no trigger
    (that is one read of the source run per promotion)."""
    from mlflow.exceptions import MlflowException

    if model_tags is None:
        try:
            model_tags = dict(client.get_registered_model(name).tags or {})
        except MlflowException as err:
            if not _not_found(err):
                raise
            model_tags = {}
    entries: list[LedgerEntry] = []
    runs: dict[str, dict[str, str]] = {}
    sources: dict[str, str | None] = {}
    for mv in _versions(client, name) if versions is None else versions:
        tags = dict(mv.tags or {})
        sources[str(mv.version)] = mv.run_id
        if not tags.get("mlops.promoted_at"):
            continue
        run_tags = _run_tags(client, mv.run_id, runs) if versions is None else {}
        entries.append(
            LedgerEntry(
                at=tags["mlops.promoted_at"],
                op="promote",
                from_version=tags.get("mlops.gate.champion_version") or None,
                to_version=str(mv.version),
                dag_id=tags.get(TAG_DAG_ID, ""),
                run_id=tags.get(TAG_RUN_ID, ""),
                user=None,
                reason=tags.get("mlops.promotion_reason", ""),
                trigger=_trigger_text(run_tags),
                source_run_id=mv.run_id,
            )
        )
    for key, raw in model_tags.items():
        if not key.startswith(DONE_PREFIX):
            continue
        try:
            move = json.loads(raw)
        except (ValueError, RecursionError):
            continue
        if not isinstance(move, dict):
            continue
        to = str(move.get("to"))
        entries.append(
            LedgerEntry(
                at=str(move.get("at", "")),
                op="rollback",
                from_version=None if move.get("from") is None else str(move["from"]),
                to_version=to,
                dag_id=str(move.get("dag_id", "")),
                run_id=str(move.get("run_id", "")),
                user=move.get("user") or None,
                reason=str(move.get("reason", "")),
                trigger="manual",
                source_run_id=sources.get(to),
            )
        )
    # The registry's own ledger tag (bounded, the newest moves) adds any move the tags above do not hold.
    seen = {(x.op, x.to_version, x.dag_id, x.run_id) for x in entries}
    for move in _tag_ledger(model_tags):
        move_key = (str(move.get("op")), str(move.get("to")), str(move.get("dag_id", "")), str(move.get("run_id", "")))
        if move_key in seen:
            continue
        seen.add(move_key)
        entries.append(
            LedgerEntry(
                at=str(move.get("at", "")),
                op=move_key[0],
                from_version=None if move.get("from") is None else str(move["from"]),
                to_version=move_key[1],
                dag_id=move_key[2],
                run_id=move_key[3],
                user=None,
                reason="",
                source_run_id=sources.get(move_key[1]),
            )
        )
    # Moves are serialised by the registry pool; equal timestamps (one second) keep promote before rollback.
    return sorted(entries, key=lambda e: (_parse_at(e.at) if e.at else _NO_TIME, e.op))


def _tag_ledger(model_tags: dict[str, str]) -> list[dict[str, Any]]:
    try:
        moves = json.loads(model_tags.get(TAG_LEDGER) or "[]")
    except (ValueError, RecursionError):
        return []
    return [m for m in moves if isinstance(m, dict) and m.get("to")] if isinstance(moves, list) else []


def served_at(entries: list[LedgerEntry], at: dt.datetime) -> LedgerEntry | None:
    """The move that put the version serving at ``at`` in place (None: nothing served yet)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    current = None
    for entry in entries:
        if entry.at and _NO_TIME < _parse_at(entry.at) <= at:
            current = entry
    return current


def _trigger_text(tags: dict[str, str]) -> str | None:
    trigger = tags.get("mlops.trigger")
    reason = tags.get("mlops.trigger.reason")
    if trigger and reason:
        return f"{trigger}: {reason}"
    return trigger or reason or None


def _experiment_id(client: Any, name: str) -> str | None:
    found = client.get_experiment_by_name(name)
    return None if found is None else str(found.experiment_id)


def _newest_run(client: Any, experiment_id: str, kind: str) -> Any | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`mlops.kind` = '{kind}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def last_ct_run(client: Any, experiment_id: str) -> CtRunSummary | None:
    run = _newest_run(client, experiment_id, "ct")
    return None if run is None else ct_summary(run)


def ct_summary(run: Any) -> CtRunSummary:
    """What a ``ct_<model>`` MLflow run decided, from its tags."""
    tags = run.data.tags
    blessed = tags.get("mlops.gate.blessed")
    return CtRunSummary(
        mlflow_run_id=run.info.run_id,
        dag_id=tags.get(TAG_DAG_ID, ""),
        run_id=tags.get(TAG_RUN_ID, ""),
        started_at=_ms_to_iso(run.info.start_time),
        status=str(run.info.status),
        trigger=tags.get("mlops.trigger"),
        trigger_reason=tags.get("mlops.trigger.reason"),
        validation=tags.get("mlops.validation"),
        blessed=None if blessed is None else blessed == "true",
        gate_reason=tags.get("mlops.gate.reason"),
        promotion=tags.get("mlops.promotion"),
        registered_version=tags.get("mlops.registered_version"),
    )


def last_monitor_run(client: Any, experiment_id: str, primary_metric: str) -> MonitorSummary | None:
    run = _newest_run(client, experiment_id, "monitor")
    if run is None:
        return None
    tags, metrics = run.data.tags, run.data.metrics
    report = read_json_artifact(client, run.info.run_id, DRIFT_REPORT) or {}
    drifted = report.get("drifted_features")
    return MonitorSummary(
        mlflow_run_id=run.info.run_id,
        run_id=tags.get(TAG_RUN_ID, ""),
        started_at=_ms_to_iso(run.info.start_time),
        champion_version=tags.get("mlops.champion_version"),
        drift_share=finite_number(metrics.get("drift_share")),
        drifted_features=[str(f) for f in drifted] if isinstance(drifted, list) else [],
        live_metric=finite_number(metrics.get(f"live_{primary_metric}")),
        retrain_requested=tags.get("mlops.retrain_requested") == "true",
        retrain_reason=tags.get("mlops.retrain_reason"),
        plots=image_artifacts(client, run.info.run_id, DRIFT_PLOTS),
        estimated_metric=finite_number(metrics.get(f"estimated_{primary_metric}")),
        estimated_low=finite_number(metrics.get(f"estimated_low_{primary_metric}")),
        estimated_high=finite_number(metrics.get(f"estimated_high_{primary_metric}")),
        realised_metric=finite_number(metrics.get(f"realised_{primary_metric}")),
        estimate_reason=tags.get("mlops.estimate_reason"),
    )


def model_status(client: Any, name: str, primary_metric: str) -> ModelStatus:
    """Everything the models overview and the head of the model's page show."""
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(name)
        model_tags, aliases = dict(registered.tags or {}), dict(registered.aliases or {})
    except MlflowException as err:
        if not _not_found(err):
            raise
        model_tags, aliases = {}, {}
    entries = ledger(client, name, model_tags)
    champion = None if aliases.get(CHAMPION) is None else str(aliases[CHAMPION])
    last_move = next((e for e in reversed(entries) if e.to_version == champion), None)
    pin_info = None
    if model_tags.get(TAG_PIN_INFO):
        try:
            pin_info = json.loads(model_tags[TAG_PIN_INFO])
        except (ValueError, RecursionError):
            pin_info = None
        pin_info = pin_info if isinstance(pin_info, dict) else None
    experiment_id = _experiment_id(client, name)
    return ModelStatus(
        name=name,
        champion=champion,
        champion_since=last_move.at if last_move else None,
        champion_why=(f"{last_move.op}: {last_move.reason}" if last_move else None),
        pinned=model_tags.get(TAG_PINNED) or None,
        pinned_by=pin_info,
        previous_champion=None if aliases.get(PREVIOUS_CHAMPION) is None else str(aliases[PREVIOUS_CHAMPION]),
        challenger=None if aliases.get(CHALLENGER) is None else str(aliases[CHALLENGER]),
        ledger=entries,
        last_ct=last_ct_run(client, experiment_id) if experiment_id else None,
        last_monitor=last_monitor_run(client, experiment_id, primary_metric) if experiment_id else None,
        experiment_id=experiment_id,
    )


def gate_interval(comparison: dict[str, Any], metric: str) -> tuple[float | None, float | None]:
    """The candidate's ``metric`` interval the gate saw: the champion's value plus the bootstrap interval of
    the oriented difference (candidate better = positive), on the metric's own scale; (None, None) without a
    champion."""
    boot = _object(comparison.get("bootstrap"))
    champion = finite_number(_object(comparison.get("champion")).get(metric))
    low, high = finite_number(boot.get("lower")), finite_number(boot.get("upper"))
    if champion is None or low is None or high is None:
        return None, None
    if higher_is_better(metric):
        return finite_number(champion + low), finite_number(champion + high)
    return finite_number(champion - high), finite_number(champion - low)


def metric_trend(
    client: Any, name: str, metric: str, limit: int = 20, cache: dict[str, dict[str, Any]] | None = None
) -> list[TrendPoint]:
    """The newest ``limit`` versions of model ``name``, oldest first, with ``metric`` as their CT runs measured
    it and the gate's interval (:func:`gate_interval`). ``cache``: comparisons already read, by run id (a
    run's comparison never changes once written)."""
    cache = {} if cache is None else cache
    versions = sorted(_versions(client, name), key=lambda mv: int(mv.version))[-limit:]
    points = []
    for mv in versions:
        run_id = str(mv.run_id or "")
        if run_id and run_id not in cache:
            found = read_json_artifact(client, run_id, COMPARISON)
            if found is None:
                points.append(TrendPoint(str(mv.version), None, None, None, None))
                continue
            cache[run_id] = found
        comparison = cache.get(run_id, {})
        value = finite_number(_object(comparison.get("candidate")).get(metric))
        lower, upper = gate_interval(comparison, metric)
        judged = comparison.get("champion_version")
        points.append(TrendPoint(str(mv.version), value, lower, upper, None if judged is None else str(judged)))
    return points


def run_in_experiment(client: Any, run_id: str, experiment_id: str | None) -> bool:
    """Whether ``run_id`` is a run of the model's experiment (the page serves no other run's artifacts)."""
    from mlflow.exceptions import MlflowException

    if not experiment_id:
        return False
    try:
        return str(client.get_run(run_id).info.experiment_id) == experiment_id
    except MlflowException as err:
        if _not_found(err) or getattr(err, "error_code", "") == "INVALID_PARAMETER_VALUE":
            return False
        raise


def _download(client: Any, run_id: str, path: str, max_bytes: int = MAX_ARTIFACT_BYTES) -> bytes | None:
    """The artifact's bytes through :func:`~mlops_airflow.core.tracking.read_artifact_bytes`; None when absent
    or when it breaks a rule (over ``max_bytes``, a path outside the run), which is logged."""
    try:
        return read_artifact_bytes(client, run_id, path, max_bytes)
    except ArtifactError as err:
        log.warning("%s; not shown", err)
        return None


def read_text_artifact(client: Any, run_id: str, path: str, max_bytes: int = MAX_ARTIFACT_BYTES) -> str | None:
    """A UTF-8 text artifact of the run; None when absent, over ``max_bytes`` or not UTF-8 (logged)."""
    try:
        return read_artifact_text(client, run_id, path, max_bytes)
    except ArtifactError as err:
        log.warning("%s; not shown", err)
        return None


def read_json_artifact(client: Any, run_id: str, path: str) -> dict[str, Any] | None:
    """A JSON object artifact of the run; None when absent, over :data:`MAX_ARTIFACT_BYTES`, not UTF-8, not
    JSON (logged) or not an object."""
    try:
        data = read_artifact_json(client, run_id, path)
    except ArtifactError as err:
        log.warning("%s; not shown", err)
        return None
    return data if isinstance(data, dict) else None


def gate_report(client: Any, run_id: str) -> str | None:
    """The gate's Markdown report of a CT run (None when the run never reached the gate)."""
    return read_text_artifact(client, run_id, GATE_REPORT, MAX_REPORT_BYTES)


@dataclass(frozen=True)
class ValidationFailures:
    """Why a CT run's data failed validation: the headline and one line per broken expectation (file, column,
    rule, counts, offending values), the first :data:`MAX_VALIDATION_LINES`; plain text, for the page to escape."""

    headline: str
    lines: list[str]
    total: int


def validation_failures(client: Any, run_id: str) -> ValidationFailures | None:
    """The broken expectations of a CT run, from its ``validation/summary.json`` (None when it has none)."""
    from mlops_airflow.core.validation import failure_line, one_line

    summary = read_json_artifact(client, run_id, VALIDATION_SUMMARY)
    if summary is None:
        return None
    failed = [f for f in summary.get("failed") or [] if isinstance(f, dict)]
    lines = [failure_line(failure) for failure in failed[:MAX_VALIDATION_LINES]]
    total = summary.get("failed_count")
    total = total if isinstance(total, int) and not isinstance(total, bool) and total >= len(failed) else len(failed)
    message = summary.get("message")
    headline = one_line(message.splitlines()[0]) if isinstance(message, str) and message.strip() else ""
    return ValidationFailures(headline or f"data validation failed: {total} expectation(s) broken", lines, total)


def gate_decision(client: Any, run_id: str) -> dict[str, Any] | None:
    return read_json_artifact(client, run_id, DECISION_ARTIFACT)


def image_artifacts(client: Any, run_id: str, folder: str) -> list[str]:
    """PNG artifacts directly under ``folder`` of a run, the first :data:`MAX_PLOTS` by name."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.list_artifacts(run_id, folder)
    except MlflowException:
        return []
    return sorted(f.path for f in found if not f.is_dir and f.path.endswith(".png"))[:MAX_PLOTS]


def image_artifact(client: Any, run_id: str, path: str) -> bytes | None:
    """A PNG of the run, only from :data:`IMAGE_FOLDERS` (no other artifact, no path outside them), at most
    :data:`~mlops_airflow.core.tracking.MAX_IMAGE_BYTES`, and only when it is one (its bytes start with the PNG
    signature: a file named ``.png`` holding HTML or SVG is not served)."""
    parts = path.split("/")
    if ".." in parts or not path.endswith(".png") or "/".join(parts[:-1]) not in IMAGE_FOLDERS:
        return None
    data = _download(client, run_id, path, MAX_IMAGE_BYTES)
    return data if data is not None and data.startswith(PNG_SIGNATURE) else None
