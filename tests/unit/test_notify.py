"""Messages and the outbox they wait in (core/notify.py): user text cannot forge a ping, a link or markup in
any medium; a message is written whole, once per DAG run and event, and retried with a growing wait."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from mlops_airflow.core import notify
from mlops_airflow.core.spec import NotifySpec

WHERE = {"base_url": "http://airflow.example.test:8080", "dag_id": "rollback_credit_default", "run_id": "manual__1"}
FORGED = "<!channel> <https://evil.example|click>"
NOTIFY = NotifySpec.model_validate(
    {"email": {"conn_id": "smtp_ops", "to": ["ml-team@example.test"]}, "slack": {"conn_id": "slack_ops"}}
)
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def rolled_back(reason: str = FORGED) -> notify.Notification:
    move = {"to_version": "1", "from_version": "2", "at": "2026-03-01T12:00:00+00:00", "outcome": "moved"}
    return notify.rollback("credit_default", move, reason, **WHERE)


def test_a_forged_rollback_reason_is_plain_text_in_the_slack_payload_and_escaped_in_the_mail() -> None:
    note = rolled_back()
    slack, mail = note.text(), note.html()

    assert "reason: &lt;!channel&gt; &lt;https://evil.example|click&gt;" in slack, slack
    assert "<!channel>" not in slack and "<https://evil.example" not in slack
    # the package's own links and bold title still work
    assert "<http://airflow.example.test:8080/mlops/models/credit_default|model page>" in slack
    assert slack.startswith("*credit_default: rolled back*: champion moved from v2 back to v1")

    assert "reason: &lt;!channel&gt; &lt;https://evil.example|click&gt;" in mail, mail
    assert "<https://evil" not in mail and "<!channel>" not in mail
    assert "<a href='http://airflow.example.test:8080/mlops/models/credit_default'>model page</a>" in mail

    # what the outbox keeps is what goes out
    channels = notify.new_message(note, NOTIFY, "rollback-x", T0).channels
    assert channels["slack"]["text"] == slack and channels["email"]["html"] == mail


def test_landed_column_names_and_rules_cannot_inject_markup_or_break_the_subject() -> None:
    summary = {
        "failed_count": 1,
        "failed": [
            {
                "file": "batch_<b>1</b>.csv",
                "column": "<!here> *age*",
                "rule": "<script>alert(1)</script>",
                "unexpected_count": 3,
                "element_count": 10,
            }
        ],
    }
    note = notify.validation_failed("credit_default", summary, "", **WHERE)
    text, html = note.text(), note.html()
    assert "<!here>" not in text and "&lt;!here&gt;" in text and "*age*" not in text
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "column &#x27;&lt;!here&gt; *age*&#x27;" in html and "(3 of 10 rows)" in html

    broken = notify.rollback("credit_default", {"to_version": "1"}, "a\r\nBcc: x@evil.example", **WHERE)
    assert "\n" not in broken.subject and "\r" not in broken.subject


def test_one_message_per_dag_run_and_event(tmp_path: Path) -> None:
    same = notify.message_id("rollback_credit_default", "manual__1", "rollback")
    assert same == notify.message_id("rollback_credit_default", "manual__1", "rollback")
    assert same != notify.message_id("rollback_credit_default", "manual__2", "rollback")
    assert same != notify.message_id("rollback_credit_default", "manual__1", "promotion")

    first = notify.new_message(rolled_back("audit"), NOTIFY, same, T0)
    assert notify.enqueue(tmp_path, first)
    retried = notify.new_message(rolled_back("audit"), NOTIFY, same, T0 + dt.timedelta(minutes=5))
    assert not notify.enqueue(tmp_path, retried)
    box = tmp_path / "credit_default" / "outbox"
    assert [p.name for p in box.iterdir()] == [f"{same}.json"]  # no temporary file left behind
    stored = json.loads((box / f"{same}.json").read_text())
    assert stored["created_at"] == first.created_at and stored["attempts"] == 0
    assert stored["channels"]["slack"]["conn_id"] == "slack_ops"
    assert [m.id for m in notify.waiting(tmp_path, "credit_default")] == [same]


def test_the_wait_between_attempts_doubles_up_to_an_hour() -> None:
    first = dt.timedelta(seconds=60)
    waits = [notify.retry_delay(n, first).total_seconds() for n in range(1, 9)]
    assert waits == [60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert notify.retry_delay(500, first) == notify.MAX_RETRY_DELAY


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (OSError("POST https://hooks.slack.com/services/T0/B0/secret failed"), "https://hooks.slack.com/..."),
        (ConnectionRefusedError(111, "Connection refused"), "Connection refused"),
    ],
)
def test_a_delivery_error_is_kept_without_the_webhook_secret(error: Exception, shown: str) -> None:
    text = notify.describe_error(error)
    assert shown in text and "secret" not in text and "\n" not in text


def test_the_delivery_dag_runs_every_15_minutes_one_run_at_a_time() -> None:
    from mlops_airflow.dag_factory import build_dags

    dag = build_dags()["notify_outbox"]
    assert dag.timetable.expression == "*/15 * * * *"
    assert dag.catchup is False and dag.max_active_runs == 1
    assert [t.task_id for t in dag.tasks] == ["deliver"] and dag.params["force"] is False


def test_offending_values_reach_the_message_escaped_with_the_bad_files_counted_out_of_all() -> None:
    """The values a file broke a rule with are data: shown with their counts, never a ping, a link or markup."""
    from mlops_airflow.core.validation import FailedExpectation, ValidationSummary, shown_value

    broken = FailedExpectation(
        "batch_2026-01-17.csv",
        "expect_column_values_to_be_in_set",
        "plan_code",
        "expect_column_values_to_be_in_set(value_set=['3', '4'])",
        5,
        390,
        words="not in the declared categories ['3', '4']",
        values=((shown_value(FORGED + " *now*"), 3), (shown_value(7), 2)),
    )
    summary = ValidationSummary(success=False, files=17, rows=6630, expectations=23, failed=[broken])
    note = notify.validation_failed("ticket_outcome", summary.to_dict(), "", **WHERE)
    slack, mail = note.text(), note.html()

    assert note.subject.endswith(
        "1 expectation(s) broken in 1 of 17 file(s): batch_2026-01-17.csv; nothing was trained"
    )
    line = "5 of 390 rows not in the declared categories [{q}3{q}, {q}4{q}]: {q}{v}{q} (3), 7 (2)"
    escaped = "&lt;!channel&gt; &lt;https://evil.example|click&gt; {}now{}"
    assert line.format(q="'", v=escaped.format("\u2217", "\u2217")) in slack, slack
    assert line.format(q="&#x27;", v=escaped.format("*", "*")) in mail, mail
    assert "<!channel>" not in slack + mail and "<https://evil" not in slack + mail
