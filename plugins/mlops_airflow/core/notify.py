"""What the messages of a model's ``notify`` section say, and the outbox they wait in until delivered (no
Airflow here: sending is in :mod:`mlops_airflow.operators.notify`, through the SMTP and Slack providers'
notifiers).

Every message names the model and the event, says what happened and why, and links to the model page
inside Airflow and to the Airflow DAG run (whose task instances link on to MLflow).

User text (a rollback reason, a file or column name from landed data, a gate check's detail) is kept apart
from the fixed wording in :class:`Text` and escaped only when the message is rendered for its medium:
:func:`~mlops_airflow.core.encoding.slack_text` for Slack mrkdwn, :func:`~mlops_airflow.core.encoding.html_text`
for the mail body, one line of clean text for the mail subject.

Outbox, under the package storage::

    <MLOPS_STORAGE_BASE>/<model>/outbox/<id>.json        waiting (never delivered yet, or delivery failed)
    <MLOPS_STORAGE_BASE>/<model>/outbox/sent/<id>.json   delivered on every channel

A message is written (whole or not at all) before it is sent; its id comes from the DAG run and the event,
so a retried or re-run task finds it queued or sent and adds nothing. A failed delivery leaves it waiting
with its attempt count, last error and next attempt time (exponential backoff); any later flush of the
model's outbox sends what is due, oldest first, and only on the channels that have not taken it yet.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from mlops_airflow.core.encoding import clean_text, dumps, html_text, slack_text
from mlops_airflow.core.gate import breach_text

if TYPE_CHECKING:
    from mlops_airflow.core.spec import NotifySpec

MODEL_PAGE_PATH = "mlops/models"  # the plugin app's prefix (mlops_airflow.ui.app.URL_PREFIX) + its page

TITLES = {
    "promotion": "promoted",
    "rollback": "rolled back",
    "gate_rejected": "candidate rejected by the gate",
    "validation_failed": "data validation failed",
    "retrain_requested": "retrain requested",
    "approval_waiting": "promotion waiting for approval",
}

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


def plain_text(text: Any) -> str:
    """User text as one line of clean text (a mail subject: a line break there would end the header)."""
    return _CONTROL.sub(" ", clean_text(str(text)))


@dataclass(frozen=True)
class Text:
    """Fixed wording with user text in its ``{}`` slots; each slot is escaped for the medium when rendered.

    :param template: the package's own wording (``str.format`` slots, no other braces).
    :param values: what goes into the slots: text people or data chose.
    """

    template: str
    values: tuple[Any, ...] = ()

    def render(self, escape: Callable[[Any], str], *, template: Callable[[str], str] = str) -> str:
        """The text with every value passed through ``escape`` (and the wording through ``template``)."""
        return template(self.template).format(*(escape(v) for v in self.values))


def say(template: str, *values: Any) -> Text:
    return Text(template, values)


@dataclass(frozen=True)
class Notification:
    """One message: ``event`` (a key of :data:`TITLES`), a headline, detail lines and named links."""

    event: str
    model: str
    headline: Text
    lines: list[Text] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        return f"[mlops] {self.model}: {TITLES[self.event]}: {self.headline.render(plain_text)}"[:250]

    def text(self) -> str:
        """Slack mrkdwn: the package's bold title and links, user text escaped (never a ping or a link)."""
        links = " | ".join(f"<{url}|{label}>" for label, url in self.links.items())
        body = "\n".join(f"• {line.render(slack_text)}" for line in self.lines)
        head = self.headline.render(slack_text)
        return f"*{self.model}: {TITLES[self.event]}*: {head}\n{body}\n{links}".strip()

    def html(self) -> str:
        """The mail body: every piece of text HTML-escaped, user text included."""
        items = "".join(f"<li>{line.render(html_text, template=html_text)}</li>" for line in self.lines)
        links = " &middot; ".join(
            f"<a href='{html_text(url)}'>{html_text(label)}</a>" for label, url in self.links.items()
        )
        return (
            f"<h3>{html_text(self.model)}: {html_text(TITLES[self.event])}</h3>"
            f"<p>{self.headline.render(html_text, template=html_text)}</p><ul>{items}</ul><p>{links}</p>"
        )


def model_page_url(base_url: str, model: str) -> str:
    return f"{base_url.rstrip('/')}/{MODEL_PAGE_PATH}/{quote(model, safe='')}"


def dag_run_url(base_url: str, dag_id: str, run_id: str) -> str:
    return f"{base_url.rstrip('/')}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def _links(base_url: str, model: str, dag_id: str, run_id: str) -> dict[str, str]:
    return {"model page": model_page_url(base_url, model), "Airflow run": dag_run_url(base_url, dag_id, run_id)}


def promotion(model: str, move: dict[str, Any], *, base_url: str, dag_id: str, run_id: str) -> Notification:
    was = move.get("from_version")
    headline = say("v{} is champion (was v{})", move["to_version"], was) if was else None
    return Notification(
        "promotion",
        model,
        headline or say("v{} is champion (first champion)", move["to_version"]),
        [say("at {}", move.get("at", "")), say("outcome: {}", move.get("outcome", ""))],
        _links(base_url, model, dag_id, run_id),
    )


def rollback(model: str, move: dict[str, Any], reason: str, *, base_url: str, dag_id: str, run_id: str) -> Notification:
    to, was = move["to_version"], move.get("from_version")
    headline = say("champion moved from v{} back to v{} and pinned there", was, to) if was != to else None
    return Notification(
        "rollback",
        model,
        headline or say("champion v{} pinned", to),
        [say("reason: {}", reason), say("at {}", move.get("at", "")), say("outcome: {}", move.get("outcome", ""))],
        _links(base_url, model, dag_id, run_id),
    )


def gate_rejected(model: str, decision: dict[str, Any], *, base_url: str, dag_id: str, run_id: str) -> Notification:
    against = decision.get("champion_version")
    first = say("compared against: champion v{}", against) if against else None
    lines = [first or say("compared against: no champion (first run)")]
    for check in decision.get("checks", []):
        if check.get("verdict") == "fail":
            lines.append(say("failed {}: {}", check.get("name"), check.get("detail", "")))
    if decision.get("champion_fairness_breaches"):
        lines.append(say("{}; it keeps serving", breach_text(decision["champion_fairness_breaches"], against)))
    return Notification(
        "gate_rejected",
        model,
        say("NOT BLESSED: {}; champion stays where it is", decision.get("reason", "")),
        lines,
        _links(base_url, model, dag_id, run_id),
    )


def _broken_expectation(failure: dict[str, Any]) -> Text:
    """One line of the validation message (file, column, rule, counts, offending values), its slots escaped."""
    from mlops_airflow.core.validation import failure_text

    template, slots = failure_text(failure)
    return say(template, *slots)


def _headline(summary: dict[str, Any], broken: Any) -> Text:
    """How many expectations broke, in how many of the files checked, and which files."""
    bad, files = summary.get("failed_files"), summary.get("files")
    if not bad or files is None:
        return say("{} expectation(s) broken; nothing was trained", broken)
    count = summary.get("failed_file_count", len(bad))
    names = ", ".join(str(name) for name in bad[:5]) + (", ..." if count > 5 else "")
    return say("{} expectation(s) broken in {} of {} file(s): {}; nothing was trained", broken, count, files, names)


def validation_failed(
    model: str, summary: dict[str, Any] | None, error: str, *, base_url: str, dag_id: str, run_id: str
) -> Notification:
    failed = [f for f in (summary or {}).get("failed", [])[:20] if isinstance(f, dict)]
    lines = [_broken_expectation(f) for f in failed]
    if not lines and error:
        lines = [say("{}", line) for line in error.splitlines()[:20]]
    broken = (summary or {}).get("failed_count", len(lines))
    return Notification(
        "validation_failed", model, _headline(summary or {}, broken), lines, _links(base_url, model, dag_id, run_id)
    )


def retrain_requested(model: str, request: dict[str, Any], *, base_url: str, dag_id: str, run_id: str) -> Notification:
    return Notification(
        "retrain_requested",
        model,
        say("ct_{} starts on the retrain request", model),
        [say("reason: {}", request.get("reason", "")), say("champion: v{}", request.get("champion_version"))],
        _links(base_url, model, dag_id, run_id),
    )


def approval_waiting(model: str, version: str | None, *, base_url: str, dag_id: str, run_id: str) -> Notification:
    rest = " passed the gate and its smoke test; a person must approve its promotion"
    return Notification(
        "approval_waiting",
        model,
        say("v{}" + rest, version) if version else say("the candidate" + rest),
        [say("approve or reject it on the task 'approve' of the Airflow run")],
        _links(base_url, model, dag_id, run_id),
    )


# ------------------------------------------------------------------------------------------------ outbox

OUTBOX = "outbox"
SENT = "sent"
#: Longest wait between two attempts of one message (the first retry waits ``MLOPS_NOTIFY_RETRY_SECONDS``).
MAX_RETRY_DELAY = dt.timedelta(hours=1)
#: How long a flush owns the messages it is sending: a flush that died frees them after this.
CLAIM_LEASE = dt.timedelta(minutes=10)
#: Records of delivered messages older than this are removed (they only stop a re-run from sending again).
KEEP_SENT = dt.timedelta(days=30)
_URL = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://[^/\s'\"<>]+)[^\s'\"<>]*")

#: ``send(channel, payload)``: delivers one channel's payload or raises.
Sender = Callable[[str, dict[str, Any]], None]


def message_id(dag_id: str, run_id: str, event: str) -> str:
    """The id of the message of ``event`` in one DAG run: the same for every try and re-run of that run."""
    digest = hashlib.sha256("\0".join((dag_id, run_id, event)).encode("utf-8", "surrogatepass")).hexdigest()
    return f"{event}-{digest[:24]}"


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat()


def _now(now: dt.datetime | None) -> dt.datetime:
    return now or dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class OutboxMessage:
    """One message as it waits: what each channel sends (``sent_at`` set once the channel took it)."""

    id: str
    model: str
    event: str
    subject: str
    created_at: str
    channels: dict[str, dict[str, Any]]
    attempts: int = 0
    next_attempt_at: str = ""
    last_attempt_at: str = ""
    last_error: str = ""
    delivered_at: str = ""
    claim: str = ""
    claimed_until: str = ""

    def pending(self) -> list[str]:
        """The channels that have not taken the message yet."""
        return [name for name, payload in self.channels.items() if not payload.get("sent_at")]

    def to_json(self) -> str:
        return dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> OutboxMessage:
        return cls(**json.loads(text))


def new_message(note: Notification, notify: NotifySpec, msg_id: str, now: dt.datetime | None = None) -> OutboxMessage:
    """``note`` rendered for every channel of ``notify``: the mail body and the Slack text as they will be sent."""
    channels: dict[str, dict[str, Any]] = {}
    if notify.email is not None:
        channels["email"] = {
            "conn_id": notify.email.conn_id,
            "to": list(notify.email.to),
            "from_email": notify.email.from_email,
            "subject": note.subject,
            "html": note.html(),
        }
    if notify.slack is not None:
        channels["slack"] = {"conn_id": notify.slack.conn_id, "text": note.text()}
    at = _iso(_now(now))
    return OutboxMessage(msg_id, note.model, note.event, note.subject, at, channels, next_attempt_at=at)


def as_root(storage_root: Any) -> Any:
    """A path object for the storage base (a URI or path string, or a path object passed through)."""
    if isinstance(storage_root, str):
        from upath import UPath

        return UPath(storage_root)
    return storage_root


def outbox_dir(storage_root: Any, model: str) -> Any:
    """``<storage_root>/<model>/outbox``."""
    return as_root(storage_root) / model / OUTBOX


def _write(path: Any, text: str) -> None:
    """Write ``text`` whole or not at all: local files under a hidden name, then renamed over ``path``;
    an object store writes an object at once."""
    if getattr(path, "protocol", "") in ("", "file", "local"):
        hidden = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        hidden.write_text(text)
        hidden.rename(path)
    else:
        path.write_text(text)


def enqueue(storage_root: Any, message: OutboxMessage) -> bool:
    """Persist ``message`` in its model's outbox; False (nothing written) when its id is already waiting or sent."""
    box = outbox_dir(storage_root, message.model)
    name = f"{message.id}.json"
    if (box / name).exists() or (box / SENT / name).exists():
        return False
    box.mkdir(parents=True, exist_ok=True)
    _write(box / name, message.to_json())
    return True


def waiting(storage_root: Any, model: str) -> list[OutboxMessage]:
    """The model's waiting messages, oldest first."""
    box = outbox_dir(storage_root, model)
    if not box.exists():
        return []
    found = []
    for path in box.iterdir():
        if path.name.startswith(".") or not path.name.endswith(".json"):
            continue
        try:
            found.append(OutboxMessage.from_json(path.read_text()))
        except FileNotFoundError:  # delivered by another flush since the listing
            continue
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: not an outbox message ({err}); move it away to unblock the outbox") from err
    return sorted(found, key=lambda m: (m.created_at, m.id))


def retry_delay(attempts: int, first: dt.timedelta) -> dt.timedelta:
    """Wait after the ``attempts``-th failed attempt: ``first``, doubled each time, at most :data:`MAX_RETRY_DELAY`."""
    return min(first * 2 ** min(max(attempts - 1, 0), 20), MAX_RETRY_DELAY)


def _is_due(message: OutboxMessage, now: dt.datetime, force: bool) -> bool:
    if message.claim and dt.datetime.fromisoformat(message.claimed_until) > now:
        return False  # another flush is sending it
    return force or not message.next_attempt_at or dt.datetime.fromisoformat(message.next_attempt_at) <= now


def _claim(box: Any, message: OutboxMessage, now: dt.datetime) -> OutboxMessage | None:
    """Mark ``message`` as being sent by this flush; None when another flush got it (or has delivered it)."""
    token = secrets.token_hex(8)
    claimed = _replace(message, claim=token, claimed_until=_iso(now + CLAIM_LEASE))
    path = box / f"{message.id}.json"
    if (box / SENT / path.name).exists():
        return None
    _write(path, claimed.to_json())
    # two flushes may write at once: the one whose token is read back sends
    if OutboxMessage.from_json(path.read_text()).claim != token:
        return None
    if (box / SENT / path.name).exists():  # delivered by a flush that listed it before this one
        path.unlink()
        return None
    return claimed


def _replace(message: OutboxMessage, **changes: Any) -> OutboxMessage:
    return OutboxMessage(**(asdict(message) | changes))


def describe_error(err: BaseException) -> str:
    """An error as one line for the outbox and the model page: URLs cut to scheme and host (a webhook URL's
    path is its secret)."""
    return plain_text(_URL.sub(r"\1/...", f"{type(err).__name__}: {err}"))[:500]


def _record(box: Any, message: OutboxMessage, errors: dict[str, str], now: dt.datetime, first: dt.timedelta) -> None:
    """Store the outcome of one attempt: delivered -> ``sent/``; else attempts, error and next attempt time."""
    at = _iso(now)
    channels = {
        name: payload if name in errors or payload.get("sent_at") else payload | {"sent_at": at}
        for name, payload in message.channels.items()
    }
    done = _replace(message, channels=channels, claim="", claimed_until="", last_attempt_at=at)
    path = box / f"{message.id}.json"
    if not errors:
        (box / SENT).mkdir(parents=True, exist_ok=True)
        _write(box / SENT / path.name, _replace(done, delivered_at=at).to_json())
        path.unlink()
        return
    attempts = message.attempts + 1
    error = "; ".join(f"{name}: {text}" for name, text in errors.items())
    _write(
        path,
        _replace(
            done, attempts=attempts, last_error=error, next_attempt_at=_iso(now + retry_delay(attempts, first))
        ).to_json(),
    )


@dataclass
class FlushResult:
    """What one flush of a model's outbox did."""

    #: message id -> the channels that took it in this flush
    delivered: dict[str, list[str]] = field(default_factory=dict)
    #: ids of the messages still waiting after the flush (failed now, not due yet, or sent by another flush)
    waiting: list[str] = field(default_factory=list)


def flush(
    storage_root: Any,
    model: str,
    send: Sender,
    *,
    first_retry: dt.timedelta,
    now: dt.datetime | None = None,
    force: bool = False,
) -> FlushResult:
    """Send the model's due messages, oldest first, each only on the channels that have not taken it yet.

    A connection that fails is not tried again in the same flush: the messages behind it count a failed
    attempt with the same error instead of waiting for the same timeout each.

    :param send: delivers one channel's payload or raises.
    :param first_retry: the wait after a first failed attempt (doubled after each further one).
    :param force: send waiting messages before their next attempt time (a message another flush is
        sending is left alone all the same).
    """
    now = _now(now)
    box = outbox_dir(storage_root, model)
    result = FlushResult()
    down: dict[tuple[str, str], str] = {}
    for message in waiting(storage_root, model):
        claimed = _claim(box, message, now) if _is_due(message, now, force) else None
        if claimed is None:
            result.waiting.append(message.id)
            continue
        errors, took = _send_pending(claimed, send, down)
        _record(box, claimed, errors, now, first_retry)
        if took:
            result.delivered[message.id] = took
        if errors:
            result.waiting.append(message.id)
    return result


def _send_pending(
    message: OutboxMessage, send: Sender, down: dict[tuple[str, str], str]
) -> tuple[dict[str, str], list[str]]:
    errors: dict[str, str] = {}
    took = []
    for name in message.pending():
        payload = message.channels[name]
        conn = (name, str(payload.get("conn_id")))
        if conn in down:
            errors[name] = down[conn]
            continue
        try:
            send(name, payload)
        except Exception as err:  # whatever the provider raises: the message waits, the error is kept
            errors[name] = down[conn] = describe_error(err)
        else:
            took.append(name)
    return errors, took


@dataclass(frozen=True)
class Stuck:
    """Messages of a model whose delivery failed at least once and that still wait."""

    count: int
    oldest: str
    last_error: str
    last_attempt_at: str
    next_attempt_at: str


def stuck(storage_root: Any, model: str) -> Stuck | None:
    """What the model page shows about undelivered messages; None when no delivery has failed."""
    failed = [m for m in waiting(storage_root, model) if m.attempts > 0]
    if not failed:
        return None
    latest = max(failed, key=lambda m: m.last_attempt_at)
    return Stuck(
        len(failed),
        failed[0].created_at,
        latest.last_error,
        latest.last_attempt_at,
        min(m.next_attempt_at for m in failed),
    )


def prune_sent(storage_root: Any, model: str, now: dt.datetime | None = None, keep: dt.timedelta = KEEP_SENT) -> int:
    """Remove records of messages delivered more than ``keep`` ago; how many were removed."""
    sent = outbox_dir(storage_root, model) / SENT
    if not sent.exists():
        return 0
    horizon = _iso(_now(now) - keep)
    removed = 0
    for path in list(sent.iterdir()):
        if path.name.startswith(".") or not path.name.endswith(".json"):
            continue
        try:
            if OutboxMessage.from_json(path.read_text()).delivered_at < horizon:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed
