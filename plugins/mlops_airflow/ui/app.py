"""The model page inside Airflow: which version of each model serves, since when and why, the promotion
ledger, the last CT verdict, drift; read-only, over :mod:`mlops_airflow.core.ledger` (MLflow only). The models
overview is the fleet view of :mod:`mlops_airflow.ui.fleet`: a health colour per model by a rule stated on the
page, sortable by column (``?sort=health&order=asc``), read from MLflow in a few calls for all models.

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
import base64
import datetime as dt
import hashlib
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from mlops_airflow.core.encoding import html_text, jsonable
from mlops_airflow.ui.text import figure, reason, run_label, version, when

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

    from mlops_airflow.core.spec import schedule_cron

    now = now or dt.datetime.now(dt.UTC)
    moment = croniter(schedule_cron(schedule), now).get_next(dt.datetime)
    return f"{when(moment, now)}, cron {schedule}, or on a retrain request"


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
border-radius:.6rem;background:#e8f1fd;font-weight:600;white-space:nowrap}
.warn{background:#fff4e5;border:1px solid #f5c277;padding:.4rem .6rem}
img{max-width:420px;border:1px solid #dde3ea;margin:.3rem} .report{max-width:1100px}
.history{color:#667085;font-weight:600} .tag{display:inline-block;padding:0 .4rem;border-radius:.5rem;
background:#eef0f3;color:#475467;font-size:12px;font-weight:600;margin-right:.3rem}
details>summary{cursor:pointer;font-weight:600;margin:.4rem 0} .legend{font-size:12px;color:#667085;max-width:640px}
.health{display:inline-block;padding:0 .45rem;border-radius:.6rem;font-weight:600;color:#fff}
.health-red{background:#b42318} .health-amber{background:#b54708} .health-green{background:#11702f}
.health-why{display:block;font-size:12px;color:#667085;max-width:320px} a.sort{color:inherit}
#health-rule{max-width:900px}
"""

#: Inside Airflow the page is framed with a sandbox (fixed by Airflow 3.3's UI; a plugin cannot add tokens to
#: it) that stops a link from opening a tab or leaving the frame. The frame is same-origin with Airflow
#: (``allow-same-origin``), so a click on a link marked ``data-out`` is replayed by a twin anchor in
#: Airflow's own document, which no sandbox restricts: Airflow's pages open in Airflow's window, MLflow in
#: a new tab. Opened on its own, the page's links work as written and this does nothing.
LINKS_SCRIPT = """
document.addEventListener('click', function (event) {
  var link = event.target.closest ? event.target.closest('a[data-out]') : null;
  if (!link || window.top === window || event.defaultPrevented || event.button !== 0) return;
  var host;
  try { host = window.top.document; } catch (err) { return; }
  event.preventDefault();
  var twin = host.createElement('a');
  twin.href = link.href;
  twin.target = (event.ctrlKey || event.metaKey || event.shiftKey) ? '_blank' : link.target;
  if (link.rel) twin.rel = link.rel;
  host.body.appendChild(twin);
  twin.click();
  twin.remove();
});
"""


def _source_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


#: What a page may load and run: its own style and script (by hash), images of its own origin (the plots),
#: its form sent to itself, framed only by its own origin (Airflow). Markup that ever slipped through the
#: escaping could run no script, load nothing from elsewhere and send nothing out.
CONTENT_POLICY = (
    f"default-src 'none'; script-src {_source_hash(LINKS_SCRIPT)}; style-src {_source_hash(STYLE)}; "
    "img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'self'"
)
#: Headers of every answer: the policy above, the declared type taken as is (no sniffing), no referrer sent
#: to MLflow or elsewhere.
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
#: An image answer: nothing in it runs, whatever the bytes hold.
IMAGE_HEADERS = PAGE_HEADERS | {"Content-Security-Policy": "default-src 'none'; sandbox"}


def e(value: Any) -> str:
    return html_text("" if value is None else value)


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
        f"<style>{STYLE}</style></head><body>{body}<script>{LINKS_SCRIPT}</script></body></html>",
        headers=PAGE_HEADERS,
    )


def _json(data: Any) -> JSONResponse:
    """JSON of values read from MLflow (a tag or artifact may hold NaN or infinity: ``null`` here)."""
    return JSONResponse(jsonable(data), headers=PAGE_HEADERS)


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
        f"{e(when(found.oldest))}; last error ({e(when(found.last_attempt_at))}): {e(found.last_error)}. They wait "
        f"in <code>{e(model)}/outbox/</code> and are retried from {e(when(found.next_attempt_at))} by the model's "
        "next notification and DAG notify_outbox.</p>"
    )


def _airflow_run(dag_id: str, run_id: str, depth: int) -> str:
    """A link to the Airflow UI's page of a DAG run, labelled by trigger and time (``depth``: folders below
    the prefix; relative, so it works behind a reverse proxy)."""
    if not dag_id or not run_id or {dag_id, run_id} & {".", ".."}:  # a tag's "..": a link elsewhere in Airflow
        return ""
    href = f"{'../' * depth}dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"
    return (
        f"<a class='airflow-run' data-out target='_top' href='{href}' title='{e(dag_id)} run {e(run_id)}'>"
        f"{e(run_label(run_id))}</a>"
    )


def _mlflow_run(experiment_id: str | None, run_id: str | None, label: str = "MLflow run") -> str:
    from mlops_airflow.core import settings

    if not experiment_id or not run_id:
        return ""
    url = f"{settings.mlflow_ui_url()}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"<a class='mlflow-run' data-out target='_blank' rel='noopener' href='{e(url)}'>{e(label)}</a>"


def _verdict(ct: Any, history: bool = False) -> str:
    """The last CT run's verdict; in grey, marked history, when the champion has moved since."""
    if ct is None:
        return "<span class='muted'>no CT run yet</span>"
    if history:
        return f"<span class='tag'>history</span><span class='history'>{e(ct.verdict)}</span>"
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


def _move_text(move: Any) -> str:
    """``rollback from v2`` / ``promotion from v1`` / ``promotion`` (the first champion)."""
    name = {"promote": "promotion", "rollback": "rollback"}.get(move.op, move.op)
    return f"{name} from {version(move.from_version)}" if move.from_version else name


def _champion_move(st: Any) -> Any:
    """The ledger's move that put the current champion in place (None when it was never recorded)."""
    return next((x for x in reversed(st.ledger) if x.to_version == st.champion), None) if st.champion else None


def _fleet_drift(row: Any) -> str:
    """The last monitor run's drift share against the model's threshold, how many features drifted, the live
    metric and whether it requested a retrain (the drifted features' names are on the model's page)."""
    mon = row.status.last_monitor
    if mon is None:
        return "<span class='muted'>no monitor run yet</span>"
    limit = row.spec.drift.drift_share
    share = "-" if mon.drift_share is None else f"{mon.drift_share:.0%}"
    over = mon.drift_share is not None and mon.drift_share >= limit
    text = f"<span class='{'bad' if over else 'ok'}'>drift share {e(share)}</span> (threshold {limit:.0%}"
    text += f", {row.drifted_count} feature(s) drifted)" if row.drifted_count is not None else ")"
    if mon.live_metric is not None:
        text += f"; live metric {mon.live_metric:.4g}"
    if mon.retrain_requested:
        text += "; <span class='bad'>retrain requested</span>"
    return text


def _health(health: Any) -> str:
    reasons = "; ".join(health.reasons)
    return (
        f"<span class='health health-{e(health.level)}'>{e(health.level)}</span> "
        f"<span class='health-why'>{e(reasons)}</span>"
    )


#: The overview's columns: (sort key or None, header).
COLUMNS = (
    ("model", "model"),
    ("health", "health"),
    ("champion", "champion"),
    ("since", "serving since"),
    (None, "why"),
    ("last_ct", "last CT run"),
    (None, "verdict"),
    ("drift", "drift (last monitor)"),
    (None, "next scheduled run"),
)


def _header(sort: str, descending: bool) -> str:
    cells = []
    for key, label in COLUMNS:
        if key is None:
            cells.append(f"<th>{e(label)}</th>")
            continue
        current = key == sort
        order = "asc" if not current or descending else "desc"
        mark = (" &#9660;" if descending else " &#9650;") if current else ""
        state = ("descending" if descending else "ascending") if current else "none"
        cells.append(
            f"<th aria-sort='{state}' data-sort='{key}'><a class='sort' href='?sort={key}&amp;order={order}'>"
            f"{e(label)}</a>{mark}</th>"
        )
    return f"<tr>{''.join(cells)}</tr>"


def render_overview(rows: list[Any], errors: dict[str, str], sort: str = "model", descending: bool = False) -> str:
    """The fleet: one row per model (:class:`mlops_airflow.ui.fleet.FleetRow`), sorted by ``sort``, the health
    rule stated under the table."""
    from mlops_airflow.ui.fleet import HEALTH_RULE, sort_rows

    body = []
    for row in sort_rows(rows, sort, descending):
        spec, st = row.spec, row.status
        ct, move = st.last_ct, _champion_move(st)
        champion = "<span class='muted'>none</span>"
        if st.champion:
            pin = ""
            if st.pinned:
                pin = (
                    " <span class='pill'>pinned</span>"
                    if st.pinned == st.champion
                    else f" (pinned: {version(st.pinned)})"
                )
            refused = " <span class='bad'>not proven blessed</span>" if st.champion_refused else ""
            champion = f"<span class='pill'>{e(version(st.champion))}</span>{pin}{refused}"
        why = f"{e(_move_text(move))}: {e(reason(move.reason))}" if move else ""
        body.append(
            f"<tr data-model='{e(spec.name)}' data-health='{e(row.health.level)}'>"
            f"<td><a href='{quote(spec.name)}'>{e(spec.name)}</a></td><td>{_health(row.health)}</td>"
            f"<td>{champion}</td><td>{e(when(move.at) if move else '')}</td><td>{why}</td>"
            f"<td>{_airflow_run(ct.dag_id, ct.run_id, 2) if ct else ''}</td>"
            f"<td>{_verdict(ct, st.moved_since_last_ct is not None)}</td>"
            f"<td>{_fleet_drift(row)}</td><td>{e(next_run(spec.ct_schedule))}</td></tr>"
        )
    bad = "".join(f"<li><b>{e(path)}</b>: {e(msg)}</li>" for path, msg in sorted(errors.items()))
    invalid = f"<h2>Invalid model specs</h2><ul>{bad}</ul>" if bad else ""
    rule = f"<p class='legend' id='health-rule'>Health: {HEALTH_RULE}</p>"
    return f"<h1>Models</h1><table id='fleet'>{_header(sort, descending)}{''.join(body)}</table>{rule}{invalid}"


def render_markdown(text: str) -> str:
    """Markdown to HTML with raw HTML, links and images disabled: a report carries reasons people typed, and
    anyone who may write to MLflow may replace it; its links and images stay the text they were written as
    (no click leads out of Airflow's frame, no image is fetched from elsewhere)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").disable(["link", "image", "autolink"]).render(text)


def _warnings(st: Any, fairness_breach: str | None) -> list[str]:
    parts = []
    if st.champion_refused:
        parts.append(
            f"<p class='warn' id='champion-refused'><b>champion {e(version(st.champion))} is not proven blessed and "
            f"does not serve</b>: {e(st.champion_refused)}</p>"
        )
    if st.unrecorded_move:
        parts.append(
            f"<p class='warn'>champion is {e(version(st.champion)) or 'unset'} but the ledger's last move put "
            f"{e(version(st.ledger[-1].to_version if st.ledger else None)) or 'none'} there: it was moved outside "
            "Airflow.</p>"
        )
    if fairness_breach:
        parts.append(f"<p class='warn' id='champion-fairness'><b>fairness breach</b>: {e(fairness_breach)}</p>")
    return parts


def _pin_text(st: Any, move: Any) -> str:
    """Who pinned the champion; the pin's reason only when another run than the champion's move set it (the
    rollback that pinned it already says why in the row above)."""
    who = st.pinned_by or {}
    rule = f"CT runs do not move champion until a person unpins it (rollback_{e(st.name)} with unpin)"
    if move is not None and (who.get("dag_id"), who.get("run_id")) == (move.dag_id, move.run_id):
        return f"{e(version(st.pinned))}, by the same rollback: {rule}"
    run = _airflow_run(str(who.get("dag_id") or ""), str(who.get("run_id") or ""), 2)
    because = f": {e(reason(who.get('reason')))}" if who.get("reason") else ""
    return f"{e(version(st.pinned))} by {e(who.get('dag_id'))} {run}{because}. {rule}"


def _head(spec: Any, st: Any) -> str:
    """The champion table; rows with nothing to say are left out."""
    move = _champion_move(st)
    rows = [("champion", f"<span class='pill' id='champion'>{e(version(st.champion)) or 'none'}</span>")]
    if st.champion_proof:
        rows[0] = (rows[0][0], rows[0][1] + f" <span class='muted'>proven blessed by its {e(st.champion_proof)}</span>")
    if move is not None:
        by = f" by {e(move.user)}" if move.user else ""
        rows.append(
            (
                "since",
                f"{e(when(move.at))}: {e(_move_text(move))}, {e(move.dag_id)} "
                f"{_airflow_run(move.dag_id, move.run_id, 2)}{by}",
            )
        )
        rows.append(("why", e(reason(move.reason))))
    if st.pinned:
        rows.append(("pinned", _pin_text(st, move)))
    if st.previous_champion:
        rows.append(("previous champion", e(version(st.previous_champion))))
    if st.challenger:
        rows.append(("challenger", e(version(st.challenger))))
    rows.append(("next scheduled run", e(next_run(spec.ct_schedule))))
    cells = "".join(
        f"<tr><th>{name}</th><td id='head-{name.replace(' ', '-')}'>{html}</td></tr>" for name, html in rows
    )
    return f"<table id='head'>{cells}</table>"


def _trigger_note(move: Any) -> str:
    """What started the move's run, when its link's label does not say it already (``manual run, ...``)."""
    if not move.trigger or run_label(move.run_id).startswith(f"{move.trigger} run"):
        return ""
    return f"<br><span class='muted'>{e(move.trigger)}</span>"


def _ledger(st: Any) -> str:
    if not st.ledger:
        return "<h2>Promotion ledger</h2><p class='muted'>champion never moved</p>"
    exp = st.experiment_id
    rows = "".join(
        f"<tr><td>{e(when(x.at))}</td><td>{e(x.op)}</td><td>{e(version(x.from_version)) or '-'}</td>"
        f"<td>{e(version(x.to_version))}</td>"
        f"<td>{e(x.dag_id)} {_airflow_run(x.dag_id, x.run_id, 2)}{' by ' + e(x.user) if x.user else ''}"
        f"{_trigger_note(x)}</td>"
        f"<td>{e(reason(x.reason))}</td><td>{_mlflow_run(exp, x.source_run_id, 'gate report')}</td></tr>"
        for x in reversed(st.ledger)
    )
    return (
        "<h2>Promotion ledger</h2><table id='ledger'><tr><th>when (UTC)</th><th>move</th><th>from</th><th>to</th>"
        f"<th>triggered by</th><th>reason</th><th>MLflow</th></tr>{rows}</table>"
    )


def _served_at(at: str | None, served: Any, error: str | None) -> str:
    answer = ""
    if error:
        answer = f"<p class='bad'>{e(error)}</p>"
    elif at:
        answer = (
            f"<p id='served-at'>At {e(when(at))}: {e(version(served.to_version))} served (since "
            f"{e(when(served.at))}, {e(served.op)})</p>"
            if served
            else f"<p id='served-at'>At {e(when(at))}: no version served yet</p>"
        )
    return (
        "<form method='get'><label>What served at <input name='at' placeholder='2026-05-01T12:00:00+00:00' "
        f"value='{e(at or '')}'></label> <button>look up</button></form>{answer}"
    )


def _trend(spec: Any, st: Any, points: list[Any] | None) -> str:
    from mlops_airflow.ui.trend import trend_svg

    svg = trend_svg(points or [], st.champion, spec.primary)
    if not svg:
        return ""
    legend = (
        f"<p class='legend'>Dot: {e(spec.primary)} of each version on its CT run's evaluation rows. Bar: the gate's "
        "interval for it (the champion of the day on the same rows plus the paired bootstrap interval of the "
        "difference). Ring: the champion.</p>"
    )
    return f"<h2>Metric trend</h2>{svg}{legend}"


def _validation_failures(failures: Any) -> str:
    """What broke in the data of a CT run whose validation failed: file, column, rule, offending values."""
    if failures is None:
        return "<p>The data failed validation; the task log of validate_data lists file, column, rule.</p>"
    items = "".join(f"<li>{e(line)}</li>" for line in failures.lines)
    more = len(failures.lines) < failures.total
    rest = f"<p class='muted'>{failures.total - len(failures.lines)} more in the MLflow run's validation/summary.json" \
        "</p>" if more else ""  # fmt: skip
    return f"<div id='validation-failures'><p>{e(failures.headline)}</p><ul>{items}</ul>{rest}</div>"


def _last_ct(st: Any, report: str | None, failures: Any = None) -> str:
    ct, exp = st.last_ct, st.experiment_id
    if ct is None:
        return "<h2>Last CT run</h2><p class='muted'>none yet</p>"
    moved = st.moved_since_last_ct
    parts = [f"<h2>Last CT run{' (history)' if moved else ''}</h2><div id='last-ct'>"]
    if moved is not None:
        parts.append(
            f"<p class='muted' id='ct-history'>The champion has moved since this run: {e(_move_text(moved))} to "
            f"{e(version(moved.to_version))}, {e(when(moved.at))}. The verdict below is what this run decided then, "
            "not what serves now.</p>"
        )
    trigger = f"{ct.trigger}: {ct.trigger_reason}" if ct.trigger_reason else ct.trigger
    parts.append(
        f"<p id='verdict'>{_verdict(ct, moved is not None)}</p><p>{e(ct.dag_id)} "
        f"{_airflow_run(ct.dag_id, ct.run_id, 2)}, started {e(when(ct.started_at))}"
        f"{', trigger ' + e(trigger) if trigger else ''} &middot; {_mlflow_run(exp, ct.mlflow_run_id)}</p>"
    )
    if report:
        parts.append(
            f"<details id='gate-report-details'><summary>Gate report</summary><div class='report' id='gate-report'>"
            f"{render_markdown(report)}</div></details>"
        )
    elif ct.validation == "failed":
        parts.append(_validation_failures(failures))
    parts.append("</div>")
    return "".join(parts)


def _estimate(metric: str, mon: Any) -> str:
    """The newest batch's label-free estimate of the primary metric (and the realised one once labels came)."""
    if mon.estimated_metric is None:
        why = mon.estimate_reason or "the monitor made no estimate"
        return f"<p id='estimate'>no label-free estimate: {e(why)}</p>"
    interval = ""
    if mon.estimated_low is not None and mon.estimated_high is not None:
        interval = f" (95% interval {figure(mon.estimated_low)} to {figure(mon.estimated_high)})"
    realised = "labels not arrived yet"
    if mon.realised_metric is not None:
        realised = f"realised {figure(mon.realised_metric)} once its labels arrived"
    return (
        f"<p id='estimate'>estimated {e(metric)} on the newest batch, before its labels: "
        f"<b>{figure(mon.estimated_metric)}</b>{e(interval)}; {e(realised)}</p>"
    )


def _estimate_history(spec: Any, history: Any) -> str:
    """The estimate against the realised metric, batch by batch over the newest monitor runs, with the
    estimate's own error; or, plainly, why there is nothing to plot."""
    from mlops_airflow.ui.trend import estimate_svg

    head = "<h2>Estimated vs realised</h2>"
    metric = e(spec.primary)
    svg = "" if history.why else estimate_svg(history.points, spec.primary)
    if not svg:
        why = history.why or "the monitor runs logged no batch estimate"
        return f"{head}<p class='muted' id='estimate-history'>nothing to plot: {e(why)}</p>"
    labelled = history.compared
    if labelled:
        error = (
            f"Error of the estimate: median |estimated &minus; realised| {metric} <b>{figure(history.median_error)}"
            f"</b> over the {labelled} batch(es) whose labels arrived."
        )
    elif any(p.realised is not None for p in history.points):
        error = "Error of the estimate: not known, no batch whose labels arrived was estimated."
    else:
        error = "Error of the estimate: not known yet, no batch's labels have arrived."
    estimated = sum(p.value is not None for p in history.points)
    summary = (
        f"<p id='estimate-error'>{error} {len(history.points)} batch(es) from the newest {history.runs} monitor "
        f"run(s), {estimated} of them estimated; a batch several runs saw is shown as the newest run logged it.</p>"
    )
    legend = (
        f"<p class='legend'>Blue dot: the label-free estimate of {metric} on each batch, before its labels; band: "
        "its interval. Orange square: the realised metric once the batch's labels arrived. Hover a column for "
        "the batch and the reason.</p>"
    )
    return f"{head}<div id='estimate-history'>{svg}{summary}{legend}</div>"


def _replays(spec: Any, reports: list[Any]) -> str:
    """The newest replay reports of the model: days replayed, policies compared, the best by mean deployed
    metric, a link to each report's MLflow run; and that a replay never touched the live registry."""
    from mlops_airflow.core.replay import EXPERIMENT_SUFFIX, ISOLATION

    head = "<h2>Replay reports</h2>"
    if not reports:
        return (
            f"{head}<p class='muted' id='replays'>no replay report yet: the manual DAG replay_{e(spec.name)} "
            f"replays retrain policies over the model's landed history and logs its report here.</p>"
        )
    metric = spec.primary
    rows = []
    for r in reports:
        means = ", ".join(f"{e(name)} {figure(value)}" for name, value in r.means.items()) or "n/a"
        best = r.winner(metric)
        winner = "n/a" if best is None else f"<b>{e(best)}</b> ({figure(r.means[best])})"
        state = "" if r.status == "FINISHED" else f" <span class='tag'>{e(r.status.lower())}</span>"
        run = _airflow_run(r.dag_id, r.run_id, 2)
        rows.append(
            f"<tr class='replay' data-run='{e(r.mlflow_run_id)}'><td>{e(when(r.started_at))}{state}"
            f"{'<br>' + run if run else ''}</td><td>{e(r.first_day)} to {e(r.last_day)}</td><td>{means}</td>"
            f"<td>{winner}</td><td>{_mlflow_run(r.experiment_id, r.mlflow_run_id, 'replay report')}</td></tr>"
        )
    return (
        f"{head}<div id='replays'><table id='replay-reports'><tr><th>when (UTC)</th><th>days replayed</th>"
        f"<th>policies (mean deployed {e(metric)})</th><th>best policy</th><th>MLflow</th></tr>{''.join(rows)}"
        f"</table><p class='legend' id='replay-isolation'>A replay never touched the live registry: "
        f"{e(ISOLATION)}. Its reports are logged to the experiment {e(spec.name + EXPERIMENT_SUFFIX)}, not the "
        "model's own.</p></div>"
    )


def _drift_section(spec: Any, st: Any) -> str:
    mon, exp = st.last_monitor, st.experiment_id
    parts = [f"<h2>Drift</h2><div id='drift'><p>{_drift(mon)}</p>"]
    if mon is not None:
        parts.append(
            f"<p>monitor_{e(spec.name)} {_airflow_run(f'monitor_{spec.name}', mon.run_id, 2)}, started "
            f"{e(when(mon.started_at))}, champion {e(version(mon.champion_version))} &middot; "
            f"{_mlflow_run(exp, mon.mlflow_run_id)}</p>"
        )
        if mon.retrain_reason:
            parts.append(f"<p>{e(mon.retrain_reason)}</p>")
        parts.append(_estimate(spec.primary, mon))
        for path in mon.plots:
            src = f"{quote(spec.name)}/image?run={quote(mon.mlflow_run_id)}&amp;path={quote(path)}"
            parts.append(f"<img alt='{e(path)}' src='{src}'>")
    parts.append("</div>")
    return "".join(parts)


def render_model(
    spec: Any,
    st: Any,
    report: str | None,
    at: str | None,
    served: Any,
    error: str | None,
    fairness_breach: str | None = None,
    *,
    trend: list[Any] | None = None,
    estimates: Any = None,
    replays: list[Any] | None = None,
    validation: Any = None,
) -> str:
    """The model's page: the champion, the promotion ledger, what served when, the metric trend, the last CT
    run (its gate report folded), drift, the estimate against the realised metric, the replay reports.
    ``fairness_breach``: the fairness limits the champion breaks (:func:`_fairness_breach`); ``trend``:
    :func:`mlops_airflow.core.ledger.metric_trend`'s points; ``estimates``:
    :func:`mlops_airflow.ui.history.estimate_history`; ``replays``: :func:`mlops_airflow.ui.history.replay_reports`
    (a section given None is left out)."""
    parts = [f"<p><a href='./'>&larr; all models</a></p><h1>{e(spec.name)}</h1>"]
    if spec.description:
        parts.append(f"<p class='muted'>{e(spec.description)}</p>")
    parts += _warnings(st, fairness_breach)
    parts.append(_head(spec, st))
    parts.append(_ledger(st))
    parts.append(_served_at(at, served, error))
    parts.append(_trend(spec, st, trend))
    parts.append(_last_ct(st, report, validation))
    parts.append(_drift_section(spec, st))
    if estimates is not None:
        parts.append(_estimate_history(spec, estimates))
    if replays is not None:
        parts.append(_replays(spec, replays))
    return "".join(parts)


# ---------------------------------------------------------------------------------------------- routes


@app.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("models/")


async def _overview(user: Any) -> tuple[list[Any], dict[str, str]]:
    """The fleet's rows the user may read (:func:`mlops_airflow.ui.fleet.read_fleet`), and the invalid specs."""
    from mlops_airflow.core import settings
    from mlops_airflow.core.signing import signing_key
    from mlops_airflow.ui.fleet import read_fleet

    specs, errors = await asyncio.to_thread(_specs)
    readable = [s for name, s in sorted(specs.items()) if _may_read(user, name)]

    def read() -> list[Any]:
        return read_fleet(_client(), readable, signing_key(settings.default_tracking_uri()))

    return await asyncio.to_thread(read), errors


def _sort_params(sort: str, order: str) -> tuple[str, bool]:
    from mlops_airflow.ui.fleet import SORT_KEYS

    if sort not in SORT_KEYS:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"sort: {sort!r} is not one of {', '.join(SORT_KEYS)}")
    if order not in ("asc", "desc"):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"order: {order!r} is not asc or desc")
    return sort, order == "desc"


@app.get("/models/", response_class=HTMLResponse)
async def models_page(user: UserDep, sort: str = "model", order: str = "asc") -> HTMLResponse:
    """The models overview, sorted by column ``sort`` (``order`` asc or desc; health asc is worst first)."""
    key, descending = _sort_params(sort, order)
    rows, errors = await _overview(user)
    return _page("Models", render_overview(rows, errors, key, descending))


@app.get("/api/models")
async def models_json(user: UserDep) -> JSONResponse:
    """The overview's rows as JSON: each model's status as the overview reads it (its ledger moves without
    their trigger, its last monitor run without the drifted features' names: the model's own JSON has them),
    its health and the number of drifted features."""
    rows, errors = await _overview(user)
    return _json(
        {
            "models": [
                row.status.to_dict()
                | {
                    "next_run": next_run(row.spec.schedule),
                    "health": row.health.to_dict(),
                    "drifted_features_count": row.drifted_count,
                }
                for row in rows
            ],
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


def _validation_of(st: Any) -> Any:
    """The broken expectations of the last CT run, when its data failed validation."""
    from mlops_airflow.core.ledger import validation_failures

    if st.last_ct is None or st.last_ct.validation != "failed":
        return None
    return validation_failures(_client(), st.last_ct.mlflow_run_id)


@app.get("/models/{name}", response_class=HTMLResponse)
async def model_page(name: str, user: UserDep, at: str | None = None) -> HTMLResponse:
    from mlops_airflow.core.ledger import gate_report, served_at

    spec = await asyncio.to_thread(_spec_for, user, name)
    st = await asyncio.to_thread(_status, spec)
    report = None
    if st.last_ct is not None:
        report = await asyncio.to_thread(gate_report, _client(), st.last_ct.mlflow_run_id)
    validation = await asyncio.to_thread(_validation_of, st)
    moment, error = _parse_at(at)
    served = served_at(st.ledger, moment) if moment else None
    breach = await asyncio.to_thread(_fairness_breach, st)
    stuck = await asyncio.to_thread(stuck_notifications, spec.name)
    trend = await asyncio.to_thread(_trend_points, spec)
    estimates = await asyncio.to_thread(_estimate_history_of, spec, st)
    replays = await asyncio.to_thread(_replay_reports_of, spec)
    page = render_model(
        spec,
        st,
        report,
        at if moment else None,
        served,
        error,
        breach,
        trend=trend,
        estimates=estimates,
        replays=replays,
        validation=validation,
    )
    return _page(f"{name}: model", stuck + page)


#: Comparisons already read for the metric trend, by MLflow run id (written once by a CT run, never changed).
_COMPARISONS: dict[str, dict[str, Any]] = {}


#: Finished monitor runs' batch estimates already read, by MLflow run id (never changed once the run finished).
_ESTIMATES: dict[str, list[dict[str, Any]]] = {}


def _estimate_history_of(spec: Any, st: Any) -> Any:
    from mlops_airflow.ui.history import estimate_history

    return estimate_history(_client(), st.experiment_id, spec.primary, classifier=spec.is_classifier, cache=_ESTIMATES)


def _replay_reports_of(spec: Any) -> list[Any]:
    from mlops_airflow.ui.history import replay_reports

    return replay_reports(_client(), spec.name)


def _trend_points(spec: Any) -> list[Any]:
    from mlops_airflow.core.ledger import metric_trend

    return metric_trend(_client(), spec.name, spec.primary, cache=_COMPARISONS)


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
    return _json(st.to_dict() | {"next_run": next_run(spec.ct_schedule)})


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
    return Response(data, media_type="image/png", headers=IMAGE_HEADERS)
