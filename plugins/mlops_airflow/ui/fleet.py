"""The models overview (fleet view): every model's champion, its age, the last CT verdict, drift, and a health
colour by :func:`fleet_health`, read from MLflow in a few calls for the whole fleet.

:func:`read_fleet` reads, for all models at once: the registered models (tags, aliases), their versions
(``search_model_versions`` with ``name IN (...)``), the experiments, and the newest ``ct`` and ``monitor`` runs
(one ``search_runs`` each over every model's experiment: :func:`_newest_runs`). The champion is proven by the
resolver's own check on the version just read (:meth:`~mlops_airflow.core.trust.ModelRegistry.verify_signed`,
what :func:`~mlops_airflow.core.champion.resolve` does after reading the alias); a process without the signing
key asks :func:`~mlops_airflow.core.champion.resolve` per champion (the full provenance, several reads each).
The statuses it builds leave out what only the model's page shows: the trigger of each ledger move and the
names of the drifted features (their count is kept).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from mlops_airflow.core.ledger import CtRunSummary, ModelStatus, MonitorSummary
from mlops_airflow.ui.text import parse_time, version

#: A champion serving longer than this is stale (amber): the CT runs have not replaced it for that long.
STALE_AFTER_DAYS = 30
#: Runs of one kind read per model in one query for the whole fleet (:func:`_newest_runs`), at most
#: ``RUNS_PAGE`` a query, in at most ``ROUNDS`` queries; the cost of a query grows with the runs it reads.
RUNS_PER_MODEL = 2
RUNS_PAGE = 1000
ROUNDS = 3
#: Model names per ``search_model_versions`` filter.
NAMES_PER_QUERY = 100

RED, AMBER, GREEN = "red", "amber", "green"
#: Worst first: the order of the health column sorted ascending.
RANK = {RED: 0, AMBER: 1, GREEN: 2}

HEALTH_RULE = (
    f"<b>red</b>: the champion is refused by the champion resolver (not proven blessed), or the last CT run failed "
    "data validation, or the last monitor run's drift share is at or over the model's <code>drift.drift_share</code> "
    "or it requested a retrain (drift or a drop of the live metric). "
    f"<b>amber</b>: no champion yet, a stale champion (serving for more than {STALE_AFTER_DAYS} days), a champion "
    "moved outside Airflow, the last CT run failed before its gate decided, or no monitor run yet. "
    "<b>green</b>: none of these."
)


@dataclass(frozen=True)
class Health:
    """A model's health colour and every reason that set it (the worst colour wins)."""

    level: str
    reasons: tuple[str, ...]

    @property
    def rank(self) -> int:
        return RANK[self.level]

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "reasons": list(self.reasons)}


def fleet_health(
    st: ModelStatus,
    drift_threshold: float,
    now: dt.datetime | None = None,
    stale_after_days: float = STALE_AFTER_DAYS,
) -> Health:
    """The health of one model by the rule in :data:`HEALTH_RULE`; ``drift_threshold``: its spec's
    ``drift.drift_share``."""
    now = now or dt.datetime.now(dt.UTC)
    red: list[str] = []
    amber: list[str] = []
    ct, mon = st.last_ct, st.last_monitor
    if st.champion is None:
        amber.append("no champion yet")
    elif st.champion_refused:
        red.append(f"champion {version(st.champion)} refused by the resolver: {st.champion_refused}")
    if ct is not None and ct.validation == "failed":
        red.append("last CT run failed data validation")
    elif ct is not None and ct.blessed is None and ct.status == "FAILED":
        amber.append("last CT run failed before its gate decided")
    if mon is None:
        amber.append("no monitor run yet")
    else:
        over = mon.drift_share is not None and mon.drift_share >= drift_threshold
        if over:
            red.append(f"drift share {mon.drift_share:.0%} >= threshold {drift_threshold:.0%}")
        if mon.retrain_requested and not over:  # requested for another cause than the drift share
            red.append(f"last monitor run requested a retrain: {mon.retrain_reason or 'no reason recorded'}")
    if st.champion is not None:
        since = parse_time(st.champion_since)
        if since is not None and now - since > dt.timedelta(days=stale_after_days):
            days = (now - since).days
            amber.append(f"champion {version(st.champion)} serves for {days} days (stale after {stale_after_days:g})")
        if st.unrecorded_move:
            amber.append(f"champion {version(st.champion)} was moved outside Airflow")
    if red:
        return Health(RED, tuple(red + amber))
    if amber:
        return Health(AMBER, tuple(amber))
    return Health(GREEN, ("champion proven, CT and drift within their rules",))


@dataclass(frozen=True)
class FleetRow:
    """One row of the models overview: the spec, its status, its health and the number of drifted features
    of the last monitor run (the names are on the model's page)."""

    spec: Any
    status: ModelStatus
    health: Health
    drifted_count: int | None = None


#: The columns the overview sorts by (query parameter ``sort``), each with its key; rows without a value last.
SORT_KEYS = ("model", "health", "champion", "since", "last_ct", "drift")


def _sort_value(row: FleetRow, key: str) -> Any:
    st = row.status
    if key == "model":
        return st.name
    if key == "health":
        return row.health.rank
    if key == "champion":
        return int(st.champion) if st.champion and st.champion.isdigit() else None
    if key == "since":
        since = parse_time(st.champion_since)
        return None if since is None else since.timestamp()
    if key == "last_ct":
        started = parse_time(st.last_ct.started_at) if st.last_ct else None
        return None if started is None else started.timestamp()
    if key == "drift":
        return st.last_monitor.drift_share if st.last_monitor else None
    raise ValueError(f"sort: {key!r} is not a column of the models overview; one of {', '.join(SORT_KEYS)}")


def sort_rows(rows: Iterable[FleetRow], key: str = "model", descending: bool = False) -> list[FleetRow]:
    """Rows ordered by ``key`` (ties by model name); rows without a value for ``key`` come last either way.
    Health ascending is worst first (red, amber, green)."""
    if key not in SORT_KEYS:
        raise ValueError(f"sort: {key!r} is not a column of the models overview; one of {', '.join(SORT_KEYS)}")
    by_name = sorted(rows, key=lambda r: r.status.name)
    present = [r for r in by_name if _sort_value(r, key) is not None]
    missing = [r for r in by_name if _sort_value(r, key) is None]
    return sorted(present, key=lambda r: _sort_value(r, key), reverse=descending) + missing


# ------------------------------------------------------------------------------------------------ MLflow


def _paged(search: Any, **kwargs: Any) -> list[Any]:
    """Every page of an MLflow search (``search(page_token=...)``)."""
    found: list[Any] = []
    token = None
    while True:
        page = search(page_token=token, **kwargs)
        found.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return found


def _quoted(name: str) -> str:
    return "'" + name.replace("'", "''") + "'"


def _newest_runs(client: Any, experiment_ids: list[str], kind: str) -> dict[str, Any]:
    """The newest run of ``kind`` of each experiment, by experiment id. One query over all experiments reads
    the newest ``RUNS_PER_MODEL`` runs per experiment asked; up to ``ROUNDS`` more ask again for the experiments
    not found yet (a model that runs far more often than the others fills a page alone), and any experiment
    still missing then gets its own query."""
    query = f"tags.`mlops.kind` = '{kind}'"
    order = ["attributes.start_time DESC"]
    newest: dict[str, Any] = {}
    missing = list(experiment_ids)
    for _ in range(ROUNDS):
        if not missing:
            return newest
        size = min(RUNS_PAGE, RUNS_PER_MODEL * len(missing))
        page = client.search_runs(missing, filter_string=query, order_by=order, max_results=size)
        for run in page:
            newest.setdefault(str(run.info.experiment_id), run)
        if len(page) < size:  # every run of these experiments was read: the others have none
            return newest
        missing = [eid for eid in missing if eid not in newest]
    for eid in missing:
        found = client.search_runs([eid], filter_string=query, order_by=order, max_results=1)
        if found:
            newest[eid] = found[0]
    return newest


def _monitor_summary(run: Any, primary_metric: str) -> tuple[MonitorSummary, int | None]:
    from mlops_airflow.core.ledger import _ms_to_iso, finite_number
    from mlops_airflow.core.tracking import TAG_RUN_ID

    tags, metrics = run.data.tags, run.data.metrics
    summary = MonitorSummary(
        mlflow_run_id=run.info.run_id,
        run_id=tags.get(TAG_RUN_ID, ""),
        started_at=_ms_to_iso(run.info.start_time),
        champion_version=tags.get("mlops.champion_version"),
        drift_share=finite_number(metrics.get("drift_share")),
        drifted_features=[],
        live_metric=finite_number(metrics.get(f"live_{primary_metric}")),
        retrain_requested=tags.get("mlops.retrain_requested") == "true",
        retrain_reason=tags.get("mlops.retrain_reason"),
    )
    count = finite_number(metrics.get("drifted_features"))  # a metric anyone may log: NaN, 1.8e308
    return summary, None if count is None else int(count)


def _proven(client: Any, st: ModelStatus, mv: Any, key: bytes | None) -> ModelStatus:
    """``st`` with the champion's proof, or why the champion resolver refuses it."""
    from mlops_airflow.core.champion import NoVersionError, UnblessedVersionError, resolve
    from mlops_airflow.core.trust import ModelRegistry

    if st.champion is None:
        return st
    try:
        if key is not None and mv is not None:
            proof = ModelRegistry(client, st.name, signing_key=key).verify_signed(mv)
        else:
            proof = resolve(client, st.name, key).provenance
    except UnblessedVersionError as err:
        return replace(st, champion_refused=str(err))
    except NoVersionError:  # moved away while the page was read
        return st
    return replace(st, champion_proof="signature" if proof.signed else "source run")


def read_fleet(client: Any, specs: list[Any], key: bytes | None, now: dt.datetime | None = None) -> list[FleetRow]:
    """The overview's rows of ``specs`` (in their order), read from MLflow for all of them at once."""
    import json

    from mlflow.entities import ViewType

    from mlops_airflow.core.ledger import ct_summary, ledger
    from mlops_airflow.core.registry import CHALLENGER, CHAMPION, PREVIOUS_CHAMPION
    from mlops_airflow.core.trust import TAG_PIN_INFO, TAG_PINNED

    names = {s.name for s in specs}
    registered = {m.name: m for m in _paged(client.search_registered_models, max_results=1000) if m.name in names}
    versions: dict[str, list[Any]] = {name: [] for name in names}
    wanted = sorted(registered)
    for start in range(0, len(wanted), NAMES_PER_QUERY):
        chunk = ", ".join(_quoted(n) for n in wanted[start : start + NAMES_PER_QUERY])
        for mv in _paged(client.search_model_versions, filter_string=f"name IN ({chunk})", max_results=10_000):
            versions[mv.name].append(mv)
    experiments = {
        e.name: str(e.experiment_id)
        for e in _paged(client.search_experiments, view_type=ViewType.ALL, max_results=1000)
        if e.name in names
    }
    ids = sorted(experiments.values())
    ct_runs, monitor_runs = _newest_runs(client, ids, "ct"), _newest_runs(client, ids, "monitor")
    rows = []
    for spec in specs:
        model = registered.get(spec.name)
        tags = dict(model.tags or {}) if model else {}
        aliases = {a: str(v) for a, v in (model.aliases or {}).items()} if model else {}
        own = sorted(versions.get(spec.name, []), key=lambda mv: int(mv.version))
        entries = ledger(client, spec.name, tags, versions=own)
        champion = aliases.get(CHAMPION)
        move = next((x for x in reversed(entries) if x.to_version == champion), None)
        try:
            pin_info = json.loads(tags[TAG_PIN_INFO]) if tags.get(TAG_PIN_INFO) else None
        except (ValueError, RecursionError):
            pin_info = None
        pin_info = pin_info if isinstance(pin_info, dict) else None
        eid = experiments.get(spec.name)
        ct_run = ct_runs.get(eid) if eid else None
        monitor_run = monitor_runs.get(eid) if eid else None
        last_ct: CtRunSummary | None = ct_summary(ct_run) if ct_run is not None else None
        last_monitor, drifted = _monitor_summary(monitor_run, spec.primary) if monitor_run is not None else (None, None)
        st = ModelStatus(
            name=spec.name,
            champion=champion,
            champion_since=move.at if move else None,
            champion_why=f"{move.op}: {move.reason}" if move else None,
            pinned=tags.get(TAG_PINNED) or None,
            pinned_by=pin_info,
            previous_champion=aliases.get(PREVIOUS_CHAMPION),
            challenger=aliases.get(CHALLENGER),
            ledger=entries,
            last_ct=last_ct,
            last_monitor=last_monitor,
            experiment_id=eid,
        )
        mv = next((v for v in own if str(v.version) == champion), None)
        st = _proven(client, st, mv, key)
        rows.append(FleetRow(spec, st, fleet_health(st, spec.drift.drift_share, now), drifted))
    return rows
