"""What the messages of a model's ``notify`` section say (no Airflow here: delivery is in
:mod:`mlops_airflow.operators.notify`, through the SMTP and Slack providers' notifiers).

Every message names the model and the event, says what happened and why, and links to the model page
inside Airflow and to the Airflow DAG run (whose task instances link on to MLflow).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

MODEL_PAGE_PATH = "mlops/models"  # the plugin app's prefix (mlops_airflow.ui.app.URL_PREFIX) + its page

TITLES = {
    "promotion": "promoted",
    "rollback": "rolled back",
    "gate_rejected": "candidate rejected by the gate",
    "validation_failed": "data validation failed",
    "retrain_requested": "retrain requested",
    "approval_waiting": "promotion waiting for approval",
}


@dataclass(frozen=True)
class Notification:
    """One message: ``event`` (a key of :data:`TITLES`), a headline, detail lines and named links."""

    event: str
    model: str
    headline: str
    lines: list[str] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        return f"[mlops] {self.model}: {TITLES[self.event]}: {self.headline}"[:250]

    def text(self) -> str:
        """Plain text (Slack mrkdwn links)."""
        links = " | ".join(f"<{url}|{label}>" for label, url in self.links.items())
        body = "\n".join(f"• {line}" for line in self.lines)
        return f"*{self.model}: {TITLES[self.event]}*: {self.headline}\n{body}\n{links}".strip()

    def html(self) -> str:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in self.lines)
        links = " &middot; ".join(
            f"<a href='{html.escape(url, quote=True)}'>{html.escape(label)}</a>" for label, url in self.links.items()
        )
        return (
            f"<h3>{html.escape(self.model)}: {html.escape(TITLES[self.event])}</h3>"
            f"<p>{html.escape(self.headline)}</p><ul>{items}</ul><p>{links}</p>"
        )


def model_page_url(base_url: str, model: str) -> str:
    return f"{base_url.rstrip('/')}/{MODEL_PAGE_PATH}/{quote(model, safe='')}"


def dag_run_url(base_url: str, dag_id: str, run_id: str) -> str:
    return f"{base_url.rstrip('/')}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def _links(base_url: str, model: str, dag_id: str, run_id: str) -> dict[str, str]:
    return {"model page": model_page_url(base_url, model), "Airflow run": dag_run_url(base_url, dag_id, run_id)}


def promotion(model: str, move: dict[str, Any], *, base_url: str, dag_id: str, run_id: str) -> Notification:
    was = move.get("from_version")
    return Notification(
        "promotion",
        model,
        f"v{move['to_version']} is champion" + (f" (was v{was})" if was else " (first champion)"),
        [f"at {move.get('at', '')}", f"outcome: {move.get('outcome', '')}"],
        _links(base_url, model, dag_id, run_id),
    )


def rollback(model: str, move: dict[str, Any], reason: str, *, base_url: str, dag_id: str, run_id: str) -> Notification:
    to, was = move["to_version"], move.get("from_version")
    headline = f"champion moved from v{was} back to v{to} and pinned there" if was != to else f"champion v{to} pinned"
    return Notification(
        "rollback",
        model,
        headline,
        [f"reason: {reason}", f"at {move.get('at', '')}", f"outcome: {move.get('outcome', '')}"],
        _links(base_url, model, dag_id, run_id),
    )


def gate_rejected(model: str, decision: dict[str, Any], *, base_url: str, dag_id: str, run_id: str) -> Notification:
    against = decision.get("champion_version")
    lines = [f"compared against: {'champion v' + str(against) if against else 'no champion (first run)'}"]
    for check in decision.get("checks", []):
        if check.get("verdict") == "fail":
            lines.append(f"failed {check.get('name')}: {check.get('detail', '')}")
    return Notification(
        "gate_rejected",
        model,
        f"NOT BLESSED: {decision.get('reason', '')}; champion stays where it is",
        lines,
        _links(base_url, model, dag_id, run_id),
    )


def validation_failed(
    model: str, summary: dict[str, Any] | None, error: str, *, base_url: str, dag_id: str, run_id: str
) -> Notification:
    lines = []
    for f in (summary or {}).get("failed", [])[:20]:
        where = f"column {f.get('column')!r}" if f.get("column") else "table"
        counts = ""
        if f.get("unexpected_count") is not None:
            counts = f" ({f['unexpected_count']} of {f.get('element_count')} rows)"
        lines.append(f"{f.get('file')}: {where}: {f.get('rule')}{counts}")
    if not lines and error:
        lines = error.splitlines()[:20]
    broken = (summary or {}).get("failed_count", len(lines))
    return Notification(
        "validation_failed",
        model,
        f"{broken} expectation(s) broken; nothing was trained",
        lines,
        _links(base_url, model, dag_id, run_id),
    )


def retrain_requested(model: str, request: dict[str, Any], *, base_url: str, dag_id: str, run_id: str) -> Notification:
    return Notification(
        "retrain_requested",
        model,
        f"ct_{model} starts on the retrain request",
        [f"reason: {request.get('reason', '')}", f"champion: v{request.get('champion_version')}"],
        _links(base_url, model, dag_id, run_id),
    )


def approval_waiting(model: str, version: str | None, *, base_url: str, dag_id: str, run_id: str) -> Notification:
    what = f"v{version}" if version else "the candidate"
    return Notification(
        "approval_waiting",
        model,
        f"{what} passed the gate and its smoke test; a person must approve its promotion",
        ["approve or reject it on the task 'approve' of the Airflow run"],
        _links(base_url, model, dag_id, run_id),
    )
