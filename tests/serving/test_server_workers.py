"""The model server with two worker processes (``--workers 2``) against a real MLflow server: both processes
answer; a promotion and a rollback, made as the ``promote`` and ``rollback`` tasks make them (the champion
resolver's alias moves, then the tasks' notification, which reaches one worker), reach every worker, and no
worker answers the old version once it has answered the new one; the request log both processes write at
once holds every request exactly once, readable by the monitor's reader.

Which process answered: a keep-alive HTTP connection is served by the one worker process that accepted it,
and the model page (``GET /v1/models/<model>``) names that process (``pid``). Each client thread asks it once
on its own connection and checks that every later request went over that same connection. The server's log
names the process of each of its lines, and says when each worker swapped."""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from serving_support import MODEL, SIGNING_KEY, TOKEN, ct_version, log_pipeline, rows, wait_until

from mlops_airflow.core import demo_data, request_log
from mlops_airflow.core.registry import Actor
from mlops_airflow.core.serving_client import notify_model_server

pytestmark = pytest.mark.e2e

HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def blessed(reg: Any, *, seed: int, judged_against: str | None) -> str:
    """A version as ``ct_<model>`` leaves it after its gate blessed it against ``judged_against``."""
    from mlops_airflow.core.training import fit_final

    train = pd.concat([demo_data.generate_batch(d, n_rows=150, seed=seed + d) for d in range(3)], ignore_index=True)
    pipeline = fit_final(reg.spec, {}, train)
    return ct_version(reg.client, reg.spec, lambda: log_pipeline(reg.spec, pipeline, train),
                      signing_key=SIGNING_KEY.encode(), judged_against=judged_against)  # fmt: skip


class WorkerConnection:
    """One keep-alive connection to the server, and the pid of the worker process that serves it."""

    def __init__(self, port: int) -> None:
        self.http = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.sock: Any = None
        status, page = self.call("GET", f"/v1/models/{MODEL}")
        assert status == 200, page
        self.pid = int(page["pid"])
        self.version = page["version"]  # what this worker serves when the connection opens
        self.sock = self.http.sock

    def call(self, method: str, path: str, body: str | None = None, **headers: str) -> tuple[int, dict[str, Any]]:
        self.http.request(method, path, body=body, headers={**HEADERS, **headers})
        response = self.http.getresponse()
        data = json.loads(response.read())
        if self.sock is not None:  # the same TCP connection, hence the same worker process, answered
            assert self.http.sock is self.sock, "the server closed a keep-alive connection"
        return response.status, data


@dataclass
class Answer:
    connection: int
    pid: int
    request_id: str
    body: int  # index into the connection's bodies
    sent: float  # time.monotonic() just before the request was sent
    received: float
    status: int
    version: str | None
    error: str | None


class Traffic:
    """One thread per connection, each sending 1-row and 3-row requests back to back until stopped."""

    def __init__(self, connections: list[WorkerConnection], bodies: list[list[list[dict[str, Any]]]]) -> None:
        self.connections = connections
        self.bodies = bodies[: len(connections)]
        self.answers: list[Answer] = []
        self.broken: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(len(connections))]

    def _run(self, i: int) -> None:
        connection = self.connections[i]
        encoded = [json.dumps(body) for body in self.bodies[i]]
        k = 0
        while not self._stop.is_set():
            request_id = f"c{i}-r{k}"
            sent = time.monotonic()
            try:
                status, data = connection.call("POST", f"/v1/models/{MODEL}/predict", encoded[k % 2],
                                               **{"X-Request-Id": request_id})  # fmt: skip
            except Exception as err:
                self.broken.append(f"connection {i}: {type(err).__name__}: {err}")
                return
            self.answers.append(Answer(i, connection.pid, request_id, k % 2, sent, time.monotonic(), status,
                                       data.get("model_version"), None if status == 200 else str(data)))  # fmt: skip
            k += 1

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def last_versions(self) -> list[str | None]:
        """Each connection's latest answer's version (None before its first)."""
        last: list[str | None] = [None] * len(self.connections)
        for answer in list(self.answers):
            last[answer.connection] = answer.version
        return last

    def count_since(self, mark: float) -> dict[int, int]:
        counts = dict.fromkeys((c.pid for c in self.connections), 0)
        for answer in list(self.answers):
            if answer.sent > mark:
                counts[answer.pid] += 1
        return counts


def connect_to_every_worker(
    port: int, workers: int, at_least: int, per_worker: int = 20, seconds: float = 180
) -> list[WorkerConnection]:
    """Keep-alive connections until every worker process holds some (the kernel picks who accepts each).

    Connections open in parallel bursts: opened one after another, each finds the same worker idle and first in
    line (the kernel wakes the newest waiter), and on a busy host a worker may take a while to start accepting.
    A worker keeps at most ``per_worker`` of them; surplus ones are closed.
    """
    from concurrent.futures import ThreadPoolExecutor

    connections: list[WorkerConnection] = []
    deadline = time.monotonic() + seconds
    while len({c.pid for c in connections}) < workers or len(connections) < at_least:
        accepted_by = sorted({c.pid for c in connections})
        assert time.monotonic() < deadline, f"after {seconds} s every connection was accepted by {accepted_by}"
        with ThreadPoolExecutor(8) as pool:
            burst = list(pool.map(lambda _: WorkerConnection(port), range(8)))
        for connection in burst:
            if sum(c.pid == connection.pid for c in connections) < per_worker:
                connections.append(connection)
            else:
                connection.http.close()
    return connections


def test_two_workers_follow_promotion_and_rollback_and_log_every_request(
    registrar, client, model_server, mlops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlops_airflow.core.trust import ModelRegistry

    reg = registrar()
    registry = ModelRegistry(client, MODEL, signing_key=SIGNING_KEY.encode())
    v1 = blessed(reg, seed=0, judged_against=None)
    assert registry.promote(v1, "first champion", Actor(f"ct_{MODEL}", "manual__v1")).changed
    v2 = blessed(reg, seed=7, judged_against=v1)  # made ahead: registration is not what is tested
    bodies = [[rows(1, day=30 + i), rows(3, day=60 + i)] for i in range(40)]
    storage = (mlops_home / "storage").as_uri()
    server = model_server(workers=2, MLOPS_STORAGE_BASE=storage)  # the request log flushes every 0.5 s
    monkeypatch.setenv("MLOPS_SERVING_URL", server.url)
    monkeypatch.setenv("MLOPS_SERVING_TOKEN", TOKEN)

    connections = connect_to_every_worker(server.port, workers=2, at_least=6)
    pids = sorted({c.pid for c in connections})
    # /ready answered for the server: every worker a client reaches from then on serves the champion
    assert [(c.pid, c.version) for c in connections] == [(c.pid, v1) for c in connections]
    traffic = Traffic(connections, bodies)
    traffic.start()
    try:
        wait_until("answers from both workers", lambda: min(traffic.count_since(0).values()) >= 20)
        promoted_at = time.monotonic()
        move = registry.promote(v2, "blessed against v1", Actor(f"ct_{MODEL}", "manual__v2"))
        assert move.changed and move.to_version == v2
        assert notify_model_server(MODEL, "promote", v2) == {server.url: "ok"}
        wait_until("every worker answering v2", lambda: traffic.last_versions() == [v2] * len(connections))
        mark = time.monotonic()
        wait_until("more answers on v2", lambda: min(traffic.count_since(mark).values()) >= 20)
        rolled_back_at = time.monotonic()
        move = registry.rollback("v2 misbehaves", Actor(f"rollback_{MODEL}", "manual__rollback", "alice"))
        assert move.changed and move.to_version == v1
        assert notify_model_server(MODEL, "rollback", v1) == {server.url: "ok"}
        wait_until("every worker answering v1 again", lambda: traffic.last_versions() == [v1] * len(connections))
        mark = time.monotonic()
        wait_until("more answers on v1", lambda: min(traffic.count_since(mark).values()) >= 20)
    finally:
        traffic.stop()
    answers = traffic.answers
    assert traffic.broken == []
    assert [a.error for a in answers if a.status != 200] == []
    assert {a.pid for a in answers} == set(pids) and len(pids) == 2

    for i in range(len(connections)):  # one connection, one worker: old, new, old again, never back and forth
        versions = [a.version for a in answers if a.connection == i]
        assert [v for j, v in enumerate(versions) if j == 0 or versions[j - 1] != v] == [v1, v2, v1]
    for pid in pids:  # once a worker answered the new version, no request sent to it later gets the old one
        mine = [a for a in answers if a.pid == pid]
        assert {a.version for a in mine if a.received < promoted_at} == {v1}
        first_v2 = min(a.received for a in mine if a.version == v2)
        assert {a.version for a in mine if first_v2 < a.sent < rolled_back_at} == {v2}, pid
        back = min(a.received for a in mine if a.version == v1 and a.sent > rolled_back_at)
        assert {a.version for a in mine if a.sent > back} == {v1}, pid

    assert server.stop()  # a clean stop: each worker writes what its request log still holds
    server_log = server.log.read_text()
    assert server_log.count("Application shutdown complete.") == 2
    for pid in pids:  # the server's own log tells each worker's swaps apart
        for was, now in ((None, v1), (v1, v2), (v2, v1)):
            assert f"[pid {pid}]: {MODEL}: now serving version {now} (was {was})" in server_log, server_log[-3000:]
    log = request_log.read_log(storage, MODEL)
    sent = {a.request_id: a for a in answers}
    assert len(log) == sum(len(traffic.bodies[a.connection][a.body]) for a in answers)
    assert not log.duplicated(["request_id", "row"]).any()
    assert set(log["request_id"]) == set(sent)
    assert set(log["role"]) == {request_log.CHAMPION_ROLE}
    for request_id, rows_logged in log.sort_values("row").groupby("request_id"):
        answer = sent[str(request_id)]
        body = traffic.bodies[answer.connection][answer.body]
        assert rows_logged["row"].tolist() == list(range(len(body)))
        assert set(rows_logged["model_version"]) == {answer.version}
        assert rows_logged["age"].tolist() == [r["age"] for r in body]
        assert rows_logged["region"].tolist() == [r["region"] for r in body]
    folder = request_log.serving_dir(storage, MODEL)
    leftovers = [p.name for day in folder.iterdir() for p in day.iterdir() if not p.name.startswith("part-")]
    assert leftovers == []  # no half-written part file
