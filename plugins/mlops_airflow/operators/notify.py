"""Delivery of a model's ``notify`` messages through Airflow's notifiers (SMTP and Slack webhook providers),
by way of the model's outbox (:mod:`mlops_airflow.core.notify`).

:class:`ModelEventNotifier` is a task callback (``on_success_callback`` / ``on_failure_callback``) or a
HITL notifier: it reads what the task decided (its XCom), composes the message, writes it to the model's
outbox under ``MLOPS_STORAGE_BASE`` and then flushes that outbox: older messages still due first, then this
one, each through ``SmtpNotifier`` and/or ``SlackWebhookNotifier`` by connection id. A delivery that fails
never fails the task (the decision is already made and recorded in MLflow): the message waits in the outbox
with its error and is retried by the next notification of the model and by :class:`DeliverNotificationsOperator`
(DAG ``notify_outbox``). ``dag_factory`` attaches the notifier only to models that have a ``notify`` section.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseNotifier, BaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from mlops_airflow.core.notify import FlushResult, Notification, Sender
    from mlops_airflow.core.spec import NotifySpec

log = logging.getLogger(__name__)


def airflow_base_url() -> str:
    """Where people open Airflow (``[api] base_url``), for links in messages."""
    from airflow.sdk.configuration import conf

    return str(conf.get("api", "base_url", fallback="") or "http://localhost:8080").rstrip("/")


def storage_root() -> Any:
    """The package storage, where the outboxes are (``MLOPS_STORAGE_BASE`` with ``MLOPS_STORAGE_CONN_ID``)."""
    from mlops_airflow.operators.base import MlopsBaseOperator

    return MlopsBaseOperator.storage_root()


def sender(context: Context | dict[str, Any]) -> Sender:
    """Sends one channel's payload of an outbox message through the provider's notifier; raises on failure."""

    def send(channel: str, payload: dict[str, Any]) -> None:
        notifier: BaseNotifier
        if channel == "email":
            from airflow.providers.smtp.notifications.smtp import SmtpNotifier

            notifier = SmtpNotifier(
                to=payload["to"],
                from_email=payload.get("from_email"),
                subject=payload["subject"],
                html_content=payload["html"],
                smtp_conn_id=payload["conn_id"],
            )
        elif channel == "slack":
            from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

            # no unfurling: a URL someone typed into a reason gets no preview card
            notifier = SlackWebhookNotifier(
                slack_webhook_conn_id=payload["conn_id"], text=payload["text"], unfurl_links=False, unfurl_media=False
            )
        else:
            raise ValueError(f"unknown notification channel {channel!r}")
        # notify(), not __call__: the text carries reasons people typed, which must not be rendered as Jinja
        notifier.notify(context)  # type: ignore[arg-type]

    return send


def flush_outbox(model: str, context: Context | dict[str, Any], *, force: bool = False) -> FlushResult:
    """Send the due messages of ``model``'s outbox (see :func:`mlops_airflow.core.notify.flush`) and log the outcome."""
    from mlops_airflow.core import notify, settings

    result = notify.flush(
        storage_root(),
        model,
        sender(context),
        first_retry=dt.timedelta(seconds=settings.notify_retry_seconds()),
        force=force,
    )
    for msg_id, channels in result.delivered.items():
        log.info("%s: notification %s sent by %s", model, msg_id, ", ".join(channels))
    if result.waiting:
        log.warning("%s: %d notification(s) wait in the outbox: %s", model, len(result.waiting), result.waiting)
    return result


def deliver(notify: NotifySpec, note: Notification, context: Context | dict[str, Any], msg_id: str) -> list[str]:
    """Queue ``note`` under ``msg_id`` in the model's outbox, then flush the outbox; the channels that took
    ``note`` now (it waits in the outbox for the others). Never raises."""
    from mlops_airflow.core import notify as outbox

    message = outbox.new_message(note, notify, msg_id)
    try:
        if not outbox.enqueue(storage_root(), message):
            log.info("%s: notification %s is already queued or sent; not queued again", note.model, msg_id)
        return flush_outbox(note.model, context).delivered.get(msg_id, [])
    except Exception:
        log.exception("%s: the notification outbox failed; %r waits or was not queued", note.model, note.subject)
        return []


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
        from mlops_airflow.core.notify import message_id

        spec = get_spec(self.model_name)
        if spec.notify is None or self.event not in spec.notify.events:
            return
        try:
            note = self.compose(context)
        except Exception:
            log.exception("%s: could not compose the %s notification", self.model_name, self.event)
            return
        if note is not None:
            deliver(spec.notify, note, context, message_id(context["dag"].dag_id, context["run_id"], self.event))

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


class DeliverNotificationsOperator(BaseOperator):
    """Flushes the outbox of every model (DAG ``notify_outbox``): what an outage held back goes out once the
    SMTP server or Slack answers again. Delivered records older than 30 days are removed.

    :param force: ``"True"`` sends every waiting message now, before its next attempt time.
    """

    template_fields = ("force",)

    def __init__(self, *, force: str | bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.force = force

    def execute(self, context: Context) -> dict[str, Any]:
        from mlops_airflow.core import notify
        from mlops_airflow.core.config import load_specs_tolerant

        force = str(self.force).strip().lower() in {"true", "1", "yes"}
        specs, _ = load_specs_tolerant()
        summary: dict[str, Any] = {}
        broken: dict[str, str] = {}
        for spec in specs:
            try:  # one unreadable outbox must not hold back the other models' messages
                result = flush_outbox(spec.name, context, force=force)
                pruned = notify.prune_sent(storage_root(), spec.name)
            except Exception as err:
                log.exception("%s: the notification outbox could not be flushed", spec.name)
                broken[spec.name] = notify.describe_error(err)
                continue
            if result.delivered or result.waiting or pruned:
                summary[spec.name] = {"delivered": result.delivered, "waiting": result.waiting, "pruned": pruned}
        if broken:
            raise RuntimeError(f"notification outboxes that could not be flushed: {broken}")
        return summary
