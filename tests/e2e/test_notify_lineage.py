"""Notifications and lineage through real DAG runs (one set of runs for the module).

* A real SMTP server (aiosmtpd) and a local HTTP endpoint standing in for Slack's webhook receive one message
  per event kind: promotion, gate rejection (with the failed checks), rollback, validation failure (file,
  column, rule), retrain requested by drift, approval waiting. Each links to the model page and the run.
* OpenLineage events, written by the provider's file transport, carry the landed files -> snapshot (content
  hash facet) -> model version -> predictions.
"""

from __future__ import annotations

import datetime as dt
import email
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from mlops_airflow.core import demo_data

pytestmark = pytest.mark.e2e
MODEL = "credit_default"
REPO = Path(__file__).resolve().parents[2]
BASE_URL = "http://airflow.example.test:8080"
PAGE = f"{BASE_URL}/mlops/models/{MODEL}"
FORGED = "<!channel> <https://evil.example|click>"  # a ping and a disguised link, typed into a reason


class Inbox:
    """aiosmtpd handler: keeps every message it is handed."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.original_content or envelope.content))
        return "250 OK"


def body_of(message: Message) -> str:
    parts = [p for p in message.walk() if p.get_content_type() == "text/html"]
    payload = parts[0].get_payload(decode=True) if parts else b""
    return payload.decode() if isinstance(payload, bytes) else str(payload)


@dataclass
class Channels:
    inbox: Inbox
    slack: list[dict[str, Any]]
    lineage_file: Path
    runs: dict[str, Any] = field(default_factory=dict)
    xcoms: dict[str, Any] = field(default_factory=dict)

    def emails(self, event_title: str) -> list[Message]:
        return [m for m in self.inbox.messages if f"{MODEL}: {event_title}:" in str(m["Subject"])]

    def slacks(self, event_title: str) -> list[str]:
        return [p["text"] for p in self.slack if f"*{MODEL}: {event_title}*" in p.get("text", "")]

    def lineage(self, job_suffix: str) -> list[dict[str, Any]]:
        events = [json.loads(line) for line in self.lineage_file.read_text().splitlines() if line.strip()]
        return [e for e in events if e["eventType"] == "COMPLETE" and e["job"]["name"].endswith(job_suffix)]


def slack_endpoint(received: list[dict[str, Any]], port: int = 0) -> ThreadingHTTPServer:
    """A local HTTP endpoint standing in for Slack's incoming webhook: keeps every JSON payload posted."""

    class Webhook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _enable_openlineage(path: Path) -> None:
    """Turn the OpenLineage provider on with the file transport, also where an earlier test of this session
    loaded the plugins while it was off (its settings and listener are set up once per process)."""
    from airflow.providers.openlineage import conf as ol_conf

    for value in vars(ol_conf).values():
        if callable(getattr(value, "cache_clear", None)):
            value.cache_clear()
    assert not ol_conf.is_disabled()
    from airflow.providers.openlineage.plugins.listener import get_openlineage_listener
    from airflow.sdk.listener import get_listener_manager

    manager = get_listener_manager()
    listener = get_openlineage_listener()
    if listener not in manager.pm.get_plugins():
        manager.add_listener(listener)


def _disable_openlineage() -> None:
    """The provider off again for the modules that run after this one in the same process."""
    from airflow.providers.openlineage import conf as ol_conf
    from airflow.providers.openlineage.plugins.listener import get_openlineage_listener
    from airflow.sdk.listener import get_listener_manager

    manager = get_listener_manager()
    listener = get_openlineage_listener()
    if listener in manager.pm.get_plugins():
        manager.pm.unregister(listener)
    for value in vars(ol_conf).values():
        if callable(getattr(value, "cache_clear", None)):
            value.cache_clear()


def _run(dag_id: str, conf: dict[str, Any] | None = None) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    from mlops_airflow.dag_factory import build_dags

    run_after = dt.datetime.now(dt.UTC).replace(microsecond=0)
    dag_run = build_dags()[dag_id].test(run_conf=conf, run_after=run_after, logical_date=run_after)
    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.dag_id == dag_id, XComModel.run_id == dag_run.run_id).all()
        xcom = {(r.task_id, r.key): XComModel.deserialize_value(r) for r in rows}
    return dag_run, xcom


def write_notified_spec(folder: Path) -> None:
    """The demo model with one candidate and ``notify`` on e-mail (``smtp_ops``) and Slack (``slack_ops``)."""
    spec = yaml.safe_load((REPO / "include" / "models" / f"{MODEL}.yaml").read_text())
    spec["estimator"]["search_space"] = {"learning_rate": [0.1], "max_leaf_nodes": [31]}
    spec["gate"]["n_bootstrap"] = 200
    spec["notify"] = {
        "email": {"conn_id": "smtp_ops", "to": ["ml-team@example.test"], "from_email": "airflow@example.test"},
        "slack": {"conn_id": "slack_ops"},
    }
    folder.mkdir()
    (folder / f"{MODEL}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


@pytest.fixture(scope="module")
def channels(airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Channels]:
    from aiosmtpd.controller import Controller

    home = tmp_path_factory.mktemp("notify")
    inbox, slack_received = Inbox(), []
    with socket.socket() as sock:  # aiosmtpd's readiness check connects to the port it was given
        sock.bind(("127.0.0.1", 0))
        smtp_port = int(sock.getsockname()[1])
    smtp = Controller(inbox, hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    slack = slack_endpoint(slack_received)
    write_notified_spec(home / "models")
    lineage_file = home / "openlineage.jsonl"
    smtp_conn = {
        "conn_type": "smtp",
        "host": "127.0.0.1",
        "port": smtp_port,
        "extra": {"disable_tls": True, "disable_ssl": True, "retry_limit": 0, "timeout": 30},
    }
    slack_conn = {"conn_type": "slackwebhook", "password": f"http://127.0.0.1:{slack.server_port}/services/T0/B0/x"}
    env = {
        "MLOPS_HOME": str(home / "mlops"),
        "MLOPS_MODELS_DIR": str(home / "models"),
        "AIRFLOW__API__BASE_URL": BASE_URL,
        "AIRFLOW_CONN_SMTP_OPS": json.dumps(smtp_conn),
        "AIRFLOW_CONN_SLACK_OPS": json.dumps(slack_conn),
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(lineage_file), "append": True}
        ),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "mlops-test",
        # the listener gives emission 10 s by default; a busy shared 2-core machine can take longer
        "AIRFLOW__OPENLINEAGE__EXECUTION_TIMEOUT": "120",
        # emitted from a thread, not a forked copy of this process: dag.test() runs the tasks here, beside
        # open connections to the SQLite metadata DB, which a forked child must never use
        "AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD": "true",
    }
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            for key in ("MLOPS_DATA_ROOT", "MLOPS_STORAGE_BASE", "MLFLOW_TRACKING_URI"):
                mp.delenv(key, raising=False)
            _enable_openlineage(lineage_file)
            yield _make_runs(Channels(inbox, slack_received, lineage_file), home / "mlops" / "data")
    finally:
        _disable_openlineage()
        smtp.stop()
        slack.shutdown()


def _make_runs(ch: Channels, data: Path) -> Channels:
    landing = data / "landing" / MODEL
    demo_data.write_batches(landing, range(15))
    ch.runs["promote"], ch.xcoms["promote"] = _run(f"ct_{MODEL}")

    # the next run trains on shuffled labels: the gate rejects its candidate
    demo_data.write_batches(landing, range(15, 16))
    rng = np.random.default_rng(0)
    for path in sorted(landing.glob("batch_*.csv"))[-15:-1]:
        frame = pd.read_csv(path)
        frame["default"] = rng.permutation(frame["default"].to_numpy())
        frame.to_csv(path, index=False)
    ch.runs["reject"], ch.xcoms["reject"] = _run(f"ct_{MODEL}")

    ch.runs["rollback"], ch.xcoms["rollback"] = _run(
        f"rollback_{MODEL}", {"version": "1", "reason": f"hold v1 while the labels are audited {FORGED}"}
    )

    # a landing zone whose newest batch breaks the spec (age below 18): validation fails
    bad = data / "landing" / f"{MODEL}_bad"
    demo_data.write_batches(bad, range(15))
    newest = sorted(bad.glob("batch_*.csv"))[-1]
    frame = pd.read_csv(newest)
    frame.loc[:9, "age"] = 7
    frame.to_csv(newest, index=False)
    ch.runs["invalid"], ch.xcoms["invalid"] = _run(f"ct_{MODEL}", {"data_uri": str(bad)})

    demo_data.write_batches(landing, range(16, 17), feature_shift=1.0)
    ch.runs["monitor"], ch.xcoms["monitor"] = _run(f"monitor_{MODEL}")

    scoring = data / "scoring" / MODEL
    scoring.mkdir(parents=True)
    demo_data.generate_batch(20, n_rows=300).drop(columns=["default"]).to_csv(scoring / "batch_x.csv", index=False)
    ch.runs["predict"], ch.xcoms["predict"] = _run(f"predict_{MODEL}")
    return ch


def test_one_email_and_one_slack_message_per_event_each_linking_page_and_run(channels) -> None:
    ch = channels
    states = {name: str(run.state) for name, run in ch.runs.items()}
    assert states == {
        "promote": "success",
        "reject": "success",
        "rollback": "success",
        "invalid": "failed",
        "monitor": "success",
        "predict": "success",
    }, states

    expected_runs = {
        "promoted": ch.runs["promote"],
        "candidate rejected by the gate": ch.runs["reject"],
        "rolled back": ch.runs["rollback"],
        "data validation failed": ch.runs["invalid"],
        "retrain requested": ch.runs["monitor"],
    }
    for title, run in expected_runs.items():
        mails, posts = ch.emails(title), ch.slacks(title)
        assert len(mails) == 1, (title, [m["Subject"] for m in ch.inbox.messages])
        assert len(posts) == 1, (title, ch.slack)
        run_link = f"{BASE_URL}/dags/{run.dag_id}/runs/"
        html = body_of(mails[0])
        assert PAGE in html and run_link in html, html
        assert mails[0]["To"] == "ml-team@example.test" and mails[0]["From"] == "airflow@example.test"
        assert f"<{PAGE}|model page>" in posts[0] and run_link in posts[0], posts[0]

    assert "v1 is champion (first champion)" in str(ch.emails("promoted")[0]["Subject"])
    rejected = body_of(ch.emails("candidate rejected by the gate")[0])
    assert "NOT BLESSED" in rejected and "failed non_inferiority" in rejected, rejected
    rolled_back = body_of(ch.emails("rolled back")[0])
    assert "hold v1 while the labels are audited &lt;!channel&gt; &lt;https://evil.example|click&gt;" in rolled_back
    assert "<!channel>" not in rolled_back and "<https://evil" not in rolled_back
    posted = ch.slacks("rolled back")[0]
    assert "audited &lt;!channel&gt; &lt;https://evil.example|click&gt;" in posted, posted
    assert "<!channel>" not in posted and "<https://evil" not in posted
    invalid = body_of(ch.emails("data validation failed")[0])
    assert "column &#x27;age&#x27;" in invalid and "batch_2026-01-15.csv" in invalid, invalid
    assert "reason: drift" in ch.slacks("retrain requested")[0] or "drift" in ch.slacks("retrain requested")[0]
    # nothing for events that did not happen: the blessed gate of the first run, the predict run
    assert len(ch.inbox.messages) == 5 and len(ch.slack) == 5
    # each went through the outbox and left it once delivered
    from mlops_airflow.core import notify, settings

    assert notify.waiting(settings.storage_base(), MODEL) == []


def test_approval_waiting_is_sent_by_the_approve_task(channels) -> None:
    """A run waiting for approval parks in the HITL state, which dag.test() cannot leave; so the DAG's
    approve task is checked to carry the notifier, and that notifier's message is delivered for real."""
    from mlops_airflow.core import notify
    from mlops_airflow.core.config import get_spec, parse_model_spec
    from mlops_airflow.dag_factory import build_ct_dag
    from mlops_airflow.operators.notify import ModelEventNotifier, deliver

    spec = get_spec(MODEL)
    gated = parse_model_spec(
        spec.model_dump(by_alias=True) | {"gate": {**spec.gate.model_dump(), "require_approval": True}}
    )
    approve = build_ct_dag(gated).get_task("approve")
    notifiers = [n for n in approve.notifiers if isinstance(n, ModelEventNotifier)]
    assert [(n.event, n.model_name) for n in notifiers] == [("approval_waiting", MODEL)]

    note = notify.approval_waiting(MODEL, "3", base_url=BASE_URL, dag_id=f"ct_{MODEL}", run_id="manual__x")
    msg_id = notify.message_id(f"ct_{MODEL}", "manual__x", "approval_waiting")
    assert deliver(spec.notify, note, {}, msg_id) == ["email", "slack"]
    mail = channels.emails("promotion waiting for approval")
    assert (
        len(mail) == 1 and PAGE in body_of(mail[0]) and f"{BASE_URL}/dags/ct_{MODEL}/runs/manual__x" in body_of(mail[0])
    )
    assert len(channels.slacks("promotion waiting for approval")) == 1


def test_lineage_runs_from_landed_files_to_snapshot_to_model_version_to_predictions(channels) -> None:
    ch = channels
    snapshot_xcom = ch.xcoms["promote"][("snapshot", "return_value")]
    snapshots = [e for e in ch.lineage(".snapshot") if e["run"]["facets"]]
    first = next(
        e
        for e in snapshots
        if e["outputs"] and e["outputs"][0]["facets"]["content_hash"]["hash"] == snapshot_xcom["content_hash"]
    )
    assert len(first["inputs"]) == 15
    assert all(i["namespace"] == "file" and i["name"].endswith(".csv") for i in first["inputs"])
    out = first["outputs"][0]
    assert out["namespace"] == "file" and snapshot_xcom["snapshot_uri"].endswith(out["name"])
    assert out["facets"]["content_hash"]["algorithm"] == "sha256"

    (promotion,) = ch.lineage(".promote")
    (model_version,) = promotion["outputs"]
    assert model_version["name"] == f"{MODEL}/versions/1"
    assert model_version["facets"]["mlflow_model_version"]["alias"] == "champion"
    assert model_version["facets"]["mlflow_model_version"]["dataHash"] == snapshot_xcom["content_hash"]
    assert promotion["inputs"][0]["facets"]["content_hash"]["hash"] == snapshot_xcom["content_hash"]

    (prediction,) = ch.lineage(".predict")
    inputs = {(i["namespace"], i["name"]) for i in prediction["inputs"]}
    assert (model_version["namespace"], f"{MODEL}/versions/1") in inputs
    assert any(name.endswith("scoring/credit_default/batch_x.csv") for _, name in inputs), inputs
    assert [o["name"].rsplit("/", 1)[-1] for o in prediction["outputs"]] == ["batch_x.parquet"]


@pytest.mark.parametrize(
    ("notify", "error"),
    [
        ({"slack": {"conn_id": "https://hooks.slack.com/services/T0/B0/secret"}}, "notify.slack.conn_id"),
        ({"email": {"conn_id": "smtp://user:pw@mail", "to": ["a@b.c"]}}, "notify.email.conn_id"),
        ({"email": {"to": []}}, "notify.email.to"),
        ({"events": ["promotion"]}, "needs a channel"),
        ({"slack": {}, "events": ["promoted"]}, "notify.events.0"),
    ],
)
def test_notify_section_names_connections_only(notify: dict[str, Any], error: str) -> None:
    from mlops_airflow.core.config import parse_model_spec
    from mlops_airflow.core.spec import ModelSpecError

    spec = yaml.safe_load((REPO / "include" / "models" / f"{MODEL}.yaml").read_text())
    with pytest.raises(ModelSpecError, match=error):
        parse_model_spec(spec | {"notify": notify})
    assert parse_model_spec(spec | {"notify": {"slack": {"conn_id": "slack_ops"}}}).notify.slack.conn_id == "slack_ops"
