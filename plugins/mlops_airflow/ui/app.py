"""The model page inside Airflow: which version of each model serves, since when and why, the promotion
ledger, the last CT verdict, drift; read-only, over :mod:`mlops_airflow.core.ledger` (MLflow only).

The api-server mounts :data:`app` under :data:`URL_PREFIX` (the plugin's ``fastapi_apps``); the nav entry
(``external_views``) frames ``models/``. Plugin apps get no authentication from Airflow by themselves:
every route here depends on :func:`require_user`, which resolves the Airflow user from the api-server's
JWT (cookie ``_token`` or ``Authorization: Bearer``) exactly as Airflow's own API does, and a model is
shown only to users the auth manager lets read its ``ct_<model>`` DAG. The page never reads the
metadata DB: the next run is computed from the spec's cron. Links are relative (the page works behind a
reverse proxy); blocking MLflow calls run in a worker thread.

MLflow is found like the tasks find it without a connection: ``MLFLOW_TRACKING_URI`` (with
``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` for a server with auth), else the embedded default's store.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

URL_PREFIX = "/mlops"
NAV_ROUTE = "mlops-models"

app = FastAPI(title="mlops-airflow models", docs_url=None, redoc_url=None, openapi_url=None)


async def require_user(request: Request) -> Any:
    """The Airflow user of the request, or 401/403 as Airflow's own API answers (no token / a bad one)."""
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

    credentials = await bearer_scheme(request)
    return await get_user(request, None, credentials)


UserDep = Annotated[Any, Depends(require_user)]


def _may_read(user: Any, model: str) -> bool:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    return bool(get_auth_manager().is_authorized_dag(method="GET", user=user, details=DagDetails(id=f"ct_{model}")))


def _client() -> Any:
    from mlops_airflow.core import settings
    from mlops_airflow.core.tracking import client_for

    return client_for(settings.default_tracking_uri())


def _specs() -> tuple[dict[str, Any], dict[str, str]]:
    from mlops_airflow.core.config import load_specs_tolerant

    specs, errors = load_specs_tolerant()
    return {s.name: s for s in specs}, {p.name: str(e).splitlines()[0] for p, e in errors.items()}


def _spec_for(user: Any, name: str) -> Any:
    specs, _ = _specs()
    if name not in specs:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no model spec named {name!r}")
    if not _may_read(user, name):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"you may not read DAG ct_{name}")
    return specs[name]


def next_run(schedule: str | None, now: dt.datetime | None = None) -> str:
    """The next cron time of the spec's schedule (UTC), or how the CT DAG starts without one."""
    if schedule is None:
        return "on a retrain request or by hand"
    from croniter import croniter

    presets = {"@daily": "0 0 * * *", "@hourly": "0 * * * *", "@weekly": "0 0 * * 0"}
    now = now or dt.datetime.now(dt.UTC)
    when = croniter(presets.get(schedule, schedule), now).get_next(dt.datetime)
    return f"{when:%Y-%m-%d %H:%M} UTC (cron {schedule}) or on a retrain request"


def _status(spec: Any) -> Any:
    """The model's status, with its champion checked by the champion resolver (what serves must be proven)."""
    from dataclasses import replace

    from mlops_airflow.core import settings
    from mlops_airflow.core.champion import NoVersionError, UnblessedVersionError, resolve
    from mlops_airflow.core.ledger import model_status
    from mlops_airflow.core.signing import signing_key

    client = _client()
    st = model_status(client, spec.name, spec.primary)
    if st.champion is None:
        return st
    try:
        proof = resolve(client, spec.name, signing_key(settings.default_tracking_uri())).provenance
    except UnblessedVersionError as err:
        return replace(st, champion_refused=str(err))
    except NoVersionError:  # moved away while the page was read
        return st
    return replace(st, champion_proof="signature" if proof.signed else "source run")


# ------------------------------------------------------------------------------------------------ HTML

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.2rem;color:#1d2733;font-size:14px}
h1{font-size:1.4rem;margin:0 0 .8rem} h2{font-size:1.1rem;margin:1.4rem 0 .5rem;border-bottom:1px solid #dde3ea}
table{border-collapse:collapse;margin:.3rem 0} th,td{border:1px solid #dde3ea;padding:.3rem .55rem;text-align:left;
vertical-align:top} th{background:#f3f6f9} a{color:#0b63c5} .ok{color:#11702f;font-weight:600}
.bad{color:#b42318;font-weight:600} .muted{color:#667085} .pill{display:inline-block;padding:0 .45rem;
border-radius:.6rem;background:#e8f1fd;font-weight:600} .warn{background:#fff4e5;border:1px solid #f5c277;
padding:.4rem .6rem} img{max-width:420px;border:1px solid #dde3ea;margin:.3rem} .report{max-width:1100px}
"""


def e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
        f"<style>{STYLE}</style></head><body>{body}</body></html>"
    )


def stuck_notifications(model: str) -> str:
    """A warning when messages of ``model`` wait in its notification outbox after a failed delivery (count,
    oldest, last error); empty when none does."""
    from mlops_airflow.core import notify, settings

    root: Any = settings.storage_base()
    try:
        if settings.storage_conn_id():
            from airflow.sdk import ObjectStoragePath

            root = ObjectStoragePath(root, conn_id=settings.storage_conn_id())
        found = notify.stuck(root, model)
    except Exception as err:
        unreadable = e(notify.describe_error(err))
        return f"<p class='warn' id='stuck-notifications'>notification outbox unreadable: {unreadable}</p>"
    if found is None:
        return ""
    return (
        f"<p class='warn' id='stuck-notifications'><b>{found.count} notification(s) not delivered</b>, oldest queued "
        f"{e(found.oldest)}; last error ({e(found.last_attempt_at)}): {e(found.last_error)}. They wait in "
        f"<code>{e(model)}/outbox/</code> and are retried from {e(found.next_attempt_at)} by the model's next "
        "notification and DAG notify_outbox.</p>"
    )


def _airflow_run(dag_id: str, run_id: str, depth: int) -> str:
    """A relative link to the Airflow UI's page of a DAG run (``depth``: folders below the prefix)."""
    if not dag_id or not run_id:
        return ""
    up = "../" * depth
    return f"<a target='_top' href='{up}dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}'>{e(run_id)}</a>"


def _mlflow_run(experiment_id: str | None, run_id: str | None, label: str = "MLflow run") -> str:
    from mlops_airflow.core import settings

    if not experiment_id or not run_id:
        return ""
    url = f"{settings.mlflow_ui_url()}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"<a target='_blank' rel='noopener' href='{e(url)}'>{e(label)}</a>"


def _verdict(ct: Any) -> str:
    if ct is None:
        return "<span class='muted'>no CT run yet</span>"
    css = "bad" if ct.validation == "failed" or ct.blessed is False else "ok" if ct.blessed else "muted"
    return f"<span class='{css}'>{e(ct.verdict)}</span>"


def _drift(mon: Any) -> str:
    if mon is None:
        return "<span class='muted'>no monitor run yet</span>"
    share = "-" if mon.drift_share is None else f"{mon.drift_share:.0%}"
    live = "" if mon.live_metric is None else f"; live metric {mon.live_metric:.4g}"
    feats = ", ".join(mon.drifted_features) or "none"
    req = "; <span class='bad'>retrain requested</span>" if mon.retrain_requested else ""
    return f"drift share {e(share)} (drifted: {e(feats)}){e(live)}{req}"


def render_overview(rows: list[tuple[Any, Any]], errors: dict[str, str]) -> str:
    head = (
        "<tr><th>model</th><th>champion</th><th>since</th><th>why</th><th>last CT run</th>"
        "<th>verdict</th><th>last monitor</th><th>next scheduled run</th></tr>"
    )
    body = []
    for spec, st in rows:
        ct = st.last_ct
        pin = ""
        if st.pinned:
            pin = " <span class='pill'>pinned</span>" if st.pinned == st.champion else f" (pinned: v{e(st.pinned)})"
        champion = "<span class='muted'>none</span>"
        if st.champion:
            refused = " <span class='bad'>not proven blessed</span>" if st.champion_refused else ""
            champion = f"<span class='pill'>v{e(st.champion)}</span>{pin}{refused}"
        body.append(
            f"<tr><td><a href='{quote(spec.name)}'>{e(spec.name)}</a></td><td>{champion}</td>"
            f"<td>{e(st.champion_since or '')}</td><td>{e(st.champion_why or '')}</td>"
            f"<td>{_airflow_run(ct.dag_id, ct.run_id, 2) if ct else ''}</td><td>{_verdict(ct)}</td>"
            f"<td>{_drift(st.last_monitor)}</td><td>{e(next_run(spec.schedule))}</td></tr>"
        )
    bad = "".join(f"<li><b>{e(path)}</b>: {e(msg)}</li>" for path, msg in sorted(errors.items()))
    invalid = f"<h2>Invalid model specs</h2><ul>{bad}</ul>" if bad else ""
    return f"<h1>Models</h1><table>{head}{''.join(body)}</table>{invalid}"


def render_markdown(text: str) -> str:
    """Markdown to HTML with raw HTML disabled (reports carry reasons people typed)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def render_model(
    spec: Any,
    st: Any,
    report: str | None,
    at: str | None,
    served: Any,
    error: str | None,
    fairness_breach: str | None = None,
) -> str:
    """The model's page; ``fairness_breach``: the fairness limits the champion breaks (:func:`_fairness_breach`)."""
    ct, mon, exp = st.last_ct, st.last_monitor, st.experiment_id
    parts = [f"<p><a href='./'>&larr; all models</a></p><h1>{e(spec.name)}</h1>"]
    if spec.description:
        parts.append(f"<p class='muted'>{e(spec.description)}</p>")
    if st.champion_refused:
        parts.append(
            f"<p class='warn' id='champion-refused'><b>champion v{e(st.champion)} is not proven blessed and does "
            f"not serve</b>: {e(st.champion_refused)}</p>"
        )
    if st.unrecorded_move:
        parts.append(
            f"<p class='warn'>champion is v{e(st.champion)} but the ledger's last move put "
            f"v{e(st.ledger[-1].to_version if st.ledger else None)} there: it was moved outside Airflow.</p>"
        )
    if fairness_breach:
        parts.append(f"<p class='warn' id='champion-fairness'><b>fairness breach</b>: {e(fairness_breach)}</p>")
    pin = ""
    if st.pinned:
        who = st.pinned_by or {}
        pin = f"<tr><th>pinned</th><td>v{e(st.pinned)} by {e(who.get('dag_id'))} ({e(who.get('reason'))})</td></tr>"
    parts.append(
        "<table>"
        f"<tr><th>champion</th><td id='champion'><span class='pill'>v{e(st.champion)}</span></td></tr>"
        f"<tr><th>since</th><td>{e(st.champion_since)}</td></tr><tr><th>why</th><td>{e(st.champion_why)}</td></tr>"
        f"{pin}<tr><th>previous champion</th><td>{e(st.previous_champion)}</td></tr>"
        f"<tr><th>challenger</th><td>{e(st.challenger)}</td></tr>"
        f"<tr><th>next scheduled run</th><td>{e(next_run(spec.schedule))}</td></tr></table>"
    )
    parts.append("<h2>Last CT run</h2>")
    if ct is None:
        parts.append("<p class='muted'>none yet</p>")
    else:
        parts.append(
            f"<p id='verdict'>{_verdict(ct)}</p><p>Airflow run {_airflow_run(ct.dag_id, ct.run_id, 2)} "
            f"({e(ct.started_at)}, trigger {e(ct.trigger)}{': ' + e(ct.trigger_reason) if ct.trigger_reason else ''}) "
            f"&middot; {_mlflow_run(exp, ct.mlflow_run_id)}</p>"
        )
        if report:
            parts.append(f"<div class='report' id='gate-report'>{render_markdown(report)}</div>")
        elif ct.validation == "failed":
            parts.append("<p>The data failed validation; the task log of validate_data lists file, column, rule.</p>")
    parts.append("<h2>Promotion ledger</h2>")
    if st.ledger:
        rows = "".join(
            f"<tr><td>{e(x.at)}</td><td>{e(x.op)}</td><td>{e(x.from_version or '-')}</td><td>v{e(x.to_version)}</td>"
            f"<td>{e(x.dag_id)} {_airflow_run(x.dag_id, x.run_id, 2)}{' by ' + e(x.user) if x.user else ''}"
            f"{'<br><span class=muted>' + e(x.trigger) + '</span>' if x.trigger else ''}</td>"
            f"<td>{e(x.reason)}</td><td>{_mlflow_run(exp, x.source_run_id, 'gate report')}</td></tr>"
            for x in reversed(st.ledger)
        )
        parts.append(
            "<table id='ledger'><tr><th>when (UTC)</th><th>move</th><th>from</th><th>to</th>"
            f"<th>triggered by</th><th>reason</th><th>MLflow</th></tr>{rows}</table>"
        )
    else:
        parts.append("<p class='muted'>champion never moved</p>")
    answer = ""
    if error:
        answer = f"<p class='bad'>{e(error)}</p>"
    elif at:
        answer = (
            f"<p id='served-at'>At {e(at)}: v{e(served.to_version)} served (since {e(served.at)}, {e(served.op)})</p>"
            if served
            else f"<p id='served-at'>At {e(at)}: no version served yet</p>"
        )
    parts.append(
        "<form method='get'><label>What served at <input name='at' placeholder='2026-05-01T12:00:00+00:00' "
        f"value='{e(at or '')}'></label> <button>look up</button></form>{answer}"
    )
    parts.append("<h2>Drift</h2>")
    parts.append(f"<p>{_drift(mon)}</p>")
    if mon is not None:
        parts.append(
            f"<p>{_airflow_run(f'monitor_{spec.name}', mon.run_id, 2)} ({e(mon.started_at)}, champion "
            f"v{e(mon.champion_version)}) &middot; {_mlflow_run(exp, mon.mlflow_run_id)}</p>"
        )
        if mon.retrain_reason:
            parts.append(f"<p>{e(mon.retrain_reason)}</p>")
        for path in mon.plots:
            src = f"{quote(spec.name)}/image?run={quote(mon.mlflow_run_id)}&amp;path={quote(path)}"
            parts.append(f"<img alt='{e(path)}' src='{src}'>")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------- routes


@app.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("models/")


async def _overview(user: Any) -> tuple[list[tuple[Any, Any]], dict[str, str]]:
    specs, errors = await asyncio.to_thread(_specs)
    readable = [s for name, s in sorted(specs.items()) if _may_read(user, name)]
    statuses = await asyncio.to_thread(lambda: [_status(s) for s in readable])
    return list(zip(readable, statuses, strict=True)), errors


@app.get("/models/", response_class=HTMLResponse)
async def models_page(user: UserDep) -> HTMLResponse:
    rows, errors = await _overview(user)
    return _page("Models", render_overview(rows, errors))


@app.get("/api/models")
async def models_json(user: UserDep) -> JSONResponse:
    rows, errors = await _overview(user)
    return JSONResponse(
        {
            "models": [st.to_dict() | {"next_run": next_run(spec.schedule)} for spec, st in rows],
            "invalid_specs": errors,
        }
    )


def _parse_at(at: str | None) -> tuple[dt.datetime | None, str | None]:
    if not at:
        return None, None
    try:
        when = dt.datetime.fromisoformat(at.strip())
    except ValueError:
        return None, f"'at' {at!r} is not an ISO date-time (e.g. 2026-05-01T12:00:00+00:00)"
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)), None


@app.get("/models/{name}", response_class=HTMLResponse)
async def model_page(name: str, user: UserDep, at: str | None = None) -> HTMLResponse:
    from mlops_airflow.core.ledger import gate_report, served_at

    spec = await asyncio.to_thread(_spec_for, user, name)
    st = await asyncio.to_thread(_status, spec)
    report = None
    if st.last_ct is not None:
        report = await asyncio.to_thread(gate_report, _client(), st.last_ct.mlflow_run_id)
    when, error = _parse_at(at)
    served = served_at(st.ledger, when) if when else None
    breach = await asyncio.to_thread(_fairness_breach, st)
    stuck = await asyncio.to_thread(stuck_notifications, spec.name)
    return _page(f"{name}: model", stuck + render_model(spec, st, report, at if when else None, served, error, breach))


def _fairness_breach(st: Any) -> str | None:
    """The fairness limits the champion broke on the rows of the newest CT run that evaluated it (its run tag)."""
    from mlops_airflow.core.gate import CHAMPION_BREACH_TAG

    if st.champion is None or st.experiment_id is None:
        return None
    runs = _client().search_runs(
        [st.experiment_id],
        filter_string=f"tags.`mlops.kind` = 'ct' and tags.`mlops.champion_version` = '{st.champion}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].data.tags.get(CHAMPION_BREACH_TAG) if runs else None


@app.get("/api/models/{name}")
async def model_json(name: str, user: UserDep) -> JSONResponse:
    spec = await asyncio.to_thread(_spec_for, user, name)
    st = await asyncio.to_thread(_status, spec)
    return JSONResponse(st.to_dict() | {"next_run": next_run(spec.schedule)})


@app.get("/models/{name}/image")
async def model_image(name: str, run: str, path: str, user: UserDep) -> Response:
    from mlops_airflow.core.ledger import image_artifact, run_in_experiment

    spec = await asyncio.to_thread(_spec_for, user, name)

    def load() -> bytes | None:
        client = _client()
        found = client.get_experiment_by_name(spec.name)
        if found is None or not run_in_experiment(client, run, str(found.experiment_id)):
            return None
        return image_artifact(client, run, path)

    data = await asyncio.to_thread(load)
    if data is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no plot {path!r} in a run of {name}")
    return Response(data, media_type="image/png")
