"""An outage of the SMTP server and of Slack delays notifications, never loses them: through real DAG runs.

The connections point at localhost ports nothing listens on; a real SMTP server (aiosmtpd) and a local
webhook endpoint come up on those ports later. ``MLOPS_NOTIFY_RETRY_SECONDS=0`` makes a failed message due
again at once, so that the next flush retries it without the test waiting out a backoff.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from e2e_support import free_port
from test_notify_lineage import FORGED, Inbox, body_of, slack_endpoint, write_notified_spec

from mlops_airflow.core import notify, settings

pytestmark = pytest.mark.e2e
MODEL = "credit_default"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Receivers:
    """The SMTP server and the Slack endpoint of the connections, started only when the test says so."""

    smtp_port: int
    slack_port: int
    inbox: Inbox = field(default_factory=Inbox)
    posts: list[dict[str, Any]] = field(default_factory=list)
    running: list[Any] = field(default_factory=list)

    def start_smtp(self) -> None:
        from aiosmtpd.controller import Controller

        smtp = Controller(self.inbox, hostname="127.0.0.1", port=self.smtp_port)
        smtp.start()
        self.running.append(smtp.stop)

    def start_slack(self) -> None:
        self.running.append(slack_endpoint(self.posts, self.slack_port).shutdown)

    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for m in self.inbox.messages]


@pytest.fixture
def receivers(mlops_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Receivers]:
    """The demo model with one candidate and ``notify`` on e-mail and Slack; both connections down."""
    write_notified_spec(tmp_path / "models")
    ports = Receivers(free_port(), free_port())
    smtp_conn = {
        "conn_type": "smtp",
        "host": "127.0.0.1",
        "port": ports.smtp_port,
        "extra": {"disable_tls": True, "disable_ssl": True, "retry_limit": 0, "timeout": 30},
    }
    webhook = f"http://127.0.0.1:{ports.slack_port}/services/T0/B0/secret-part"
    monkeypatch.setenv("MLOPS_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_OPS", json.dumps(smtp_conn))
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_OPS", json.dumps({"conn_type": "slackwebhook", "password": webhook}))
    monkeypatch.setenv("MLOPS_NOTIFY_RETRY_SECONDS", "0")
    try:
        yield ports
    finally:
        for stop in ports.running:
            stop()


def waiting() -> list[notify.OutboxMessage]:
    return notify.waiting(settings.storage_base(), MODEL)


def test_an_outage_delays_notifications_and_the_next_flush_delivers_each_once(
    receivers: Receivers, run_dag, demo_batches
) -> None:
    from mlops_airflow.ui.app import stuck_notifications

    # 1. SMTP and Slack down: the promotion succeeds, its message waits with the error
    demo_batches(range(15))
    ct = run_dag(f"ct_{MODEL}")
    assert ct.state == "success" and ct.state_of("promote") == "success", ct.tasks
    (held,) = waiting()
    assert held.event == "promotion" and held.attempts == 1 and held.pending() == ["email", "slack"]
    assert "email: ConnectionRefusedError" in held.last_error and "slack: " in held.last_error, held.last_error
    assert "secret-part" not in held.last_error
    page = stuck_notifications(MODEL)
    assert "1 notification(s) not delivered" in page and "ConnectionRefusedError" in page, page

    # 2. the delivery DAG while both are still down: one more attempt, nothing lost
    assert run_dag("notify_outbox").state == "success"
    (held,) = waiting()
    assert held.attempts == 2 and held.pending() == ["email", "slack"]

    # 3. the mail server is back: the next flush sends the e-mail; Slack's part keeps waiting
    receivers.start_smtp()
    assert run_dag("notify_outbox").state == "success"
    assert receivers.subjects() == [f"[mlops] {MODEL}: promoted: v1 is champion (first champion)"]
    (held,) = waiting()
    assert held.pending() == ["slack"] and held.attempts == 3

    # 4. Slack is back: the next notification of any run sends what waits first, then its own
    receivers.start_slack()
    reason = f"audit of the labels {FORGED}"
    back = run_dag(f"rollback_{MODEL}", {"version": "1", "reason": reason})
    assert back.state == "success", back.tasks
    assert [p["text"].split("*")[1] for p in receivers.posts] == [f"{MODEL}: promoted", f"{MODEL}: rolled back"]
    assert len(receivers.inbox.messages) == 2 and "rolled back" in receivers.subjects()[1]  # the e-mail once
    assert waiting() == [] and stuck_notifications(MODEL) == ""
    sent = notify.outbox_dir(settings.storage_base(), MODEL) / notify.SENT
    assert len(list(sent.iterdir())) == 2

    # the reason someone typed is shown, never a ping or a link
    posted, mailed = receivers.posts[1]["text"], body_of(receivers.inbox.messages[1])
    assert "audit of the labels &lt;!channel&gt; &lt;https://evil.example|click&gt;" in posted, posted
    assert "<!channel>" not in posted and "<https://evil" not in posted
    assert "&lt;!channel&gt; &lt;https://evil.example|click&gt;" in mailed and "<https://evil" not in mailed

    # 5. the rollback run cleared and run again: the same run and event, no second message
    again = run_dag(f"rollback_{MODEL}", {"version": "1", "reason": reason}, same_as=back)
    assert again.state == "success", again.tasks
    assert len(receivers.posts) == 2 and len(receivers.inbox.messages) == 2
    assert waiting() == []
