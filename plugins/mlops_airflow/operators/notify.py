"""Delivery of a model's ``notify`` messages through Airflow's notifiers (SMTP and Slack webhook providers).

:class:`ModelEventNotifier` is a task callback (``on_success_callback`` / ``on_failure_callback``) or a
HITL notifier: it reads what the task decided (its XCom), composes the message with
:mod:`mlops_airflow.core.notify`, and hands it to ``SmtpNotifier`` and/or ``SlackWebhookNotifier`` by
connection id. A delivery that fails is logged and never fails the task: the decision is already made and
recorded in MLflow. ``dag_factory`` attaches it only to models that have a ``notify`` section.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from airflow.sdk import BaseNotifier

if TYPE_CHECKING:
    from airflow.sdk import Context

    from mlops_airflow.core.config import NotifySpec
    from mlops_airflow.core.notify import Notification

log = logging.getLogger(__name__)


def airflow_base_url() -> str:
    """Where people open Airflow (``[api] base_url``), for links in messages."""
    from airflow.sdk.configuration import conf

    return str(conf.get("api", "base_url", fallback="") or "http://localhost:8080").rstrip("/")


def deliver(notify: NotifySpec, note: Notification, context: Context) -> list[str]:
    """Send ``note`` on every channel of ``notify``; the channels that took it (failures are logged)."""
    sent = []
    if notify.email is not None:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        email = SmtpNotifier(
            to=notify.email.to,
            from_email=notify.email.from_email,
            subject=note.subject,
            html_content=note.html(),
            smtp_conn_id=notify.email.conn_id,
        )
        sent += _send("email", email, note, context)
    if notify.slack is not None:
        from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

        slack = SlackWebhookNotifier(slack_webhook_conn_id=notify.slack.conn_id, text=note.text())
        sent += _send("slack", slack, note, context)
    return sent


def _send(channel: str, notifier: BaseNotifier, note: Notification, context: Context) -> list[str]:
    # notify(), not __call__: the text carries reasons people typed, which must not be rendered as Jinja
    try:
        notifier.notify(context)
    except Exception:
        log.exception("%s: %s notification %r not delivered", note.model, channel, note.subject)
        return []
    log.info("%s: %s notification sent: %s", note.model, channel, note.subject)
    return [channel]


class ModelEventNotifier(BaseNotifier):
    """Sends the ``event`` of model ``model_name`` (a key of ``core.notify.TITLES``) if its spec asks for it.

    :param event: ``promotion`` | ``rollback`` | ``gate_rejected`` | ``validation_failed`` |
        ``retrain_requested`` | ``approval_waiting``.
    :param model_name: the model spec's name.
    """

    template_fields = ()

    def __init__(self, *, event: str, model_name: str) -> None:
        super().__init__()
        self.event = event
        self.model_name = model_name

    def notify(self, context: Context) -> None:
        from mlops_airflow.core.config import get_spec

        spec = get_spec(self.model_name)
        if spec.notify is None or self.event not in spec.notify.events:
            return
        try:
            note = self.compose(context)
        except Exception:
            log.exception("%s: could not compose the %s notification", self.model_name, self.event)
            return
        if note is not None:
            deliver(spec.notify, note, context)

    def compose(self, context: Context) -> Notification | None:
        """The message for this task's outcome, or None when there is nothing to tell (e.g. a blessed gate)."""
        from mlops_airflow.core import notify

        ti = context["ti"]
        where = {"base_url": airflow_base_url(), "dag_id": context["dag"].dag_id, "run_id": context["run_id"]}
        name = self.model_name
        if self.event == "promotion":
            move = ti.xcom_pull(task_ids=ti.task_id)
            if not move or not move.get("changed"):
                return None
            return notify.promotion(name, move, **where)
        if self.event == "rollback":
            move = ti.xcom_pull(task_ids=ti.task_id)
            if not move or "to_version" not in move:  # an unpin moves nothing
                return None
            reason = str((context.get("params") or {}).get("reason") or "")
            return notify.rollback(name, move, reason, **where)
        if self.event == "gate_rejected":
            decision = ti.xcom_pull(task_ids=ti.task_id, key="gate_decision")
            if not decision or decision.get("blessed"):
                return None
            return notify.gate_rejected(name, decision, **where)
        if self.event == "validation_failed":
            summary = ti.xcom_pull(task_ids=ti.task_id, key="validation_summary")
            error = str(context.get("exception") or "")
            return notify.validation_failed(name, summary, error, **where)
        if self.event == "retrain_requested":
            request = ti.xcom_pull(task_ids=ti.task_id)
            return notify.retrain_requested(name, request, **where) if request else None
        if self.event == "approval_waiting":
            registered = ti.xcom_pull(task_ids="register_challenger") or {}
            return notify.approval_waiting(name, registered.get("version"), **where)
        raise ValueError(f"{name}: unknown notification event {self.event!r}")
