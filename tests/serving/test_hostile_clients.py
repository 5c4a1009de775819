"""The model server's app against a hostile client, in-process (the FastAPI app over a :class:`Server` holding a
real model: the demo spec trained with scikit-learn, logged to a local MLflow store and loaded back; requests
go through the ASGI interface as uvicorn would send them): every route's authentication, bodies built to
break the parser, the checks or the request log, a caller that hangs up, and the batching of concurrent
requests when one of them goes away."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from serving_support import MODEL, REPO, TOKEN, rows

from mlops_airflow.core import request_log
from mlops_airflow.core.config import load_model_spec
from mlops_airflow.serving.app import Server, create_app
from mlops_airflow.serving.batching import Batcher
from mlops_airflow.serving.inputs import Limits, check_rows, parse_body
from mlops_airflow.serving.models import LoadedModel
from mlops_airflow.serving.request_log import Entry, RequestLog
from mlops_airflow.serving.settings import ServingSettings

PREDICT = f"/v1/models/{MODEL}/predict"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, mlflow_store_template: Path) -> Iterator[tuple[Any, Any]]:
    """The demo spec and its pyfunc, trained on a little demo data, logged as ``select_candidate`` logs it
    and loaded back (one fit for the module)."""
    import mlflow

    from mlops_airflow.core import demo_data
    from mlops_airflow.core.training import fit_final
    from mlops_airflow.operators.training import log_spec_model

    home = tmp_path_factory.mktemp("hostile")
    store = home / "mlflow.db"
    shutil.copyfile(mlflow_store_template, store)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_HOME", str(home))
        spec = load_model_spec(REPO / "include" / "models" / f"{MODEL}.yaml")
        train = pd.concat([demo_data.generate_batch(d, n_rows=200, seed=d) for d in range(2)], ignore_index=True)
        pipeline = fit_final(spec, {"max_iter": 20}, train)
        mlflow.set_tracking_uri(f"sqlite:///{store}")
        experiment = mlflow.set_experiment("hostile-clients")
        with mlflow.start_run(experiment_id=experiment.experiment_id):
            uri = log_spec_model(spec, pipeline, train, 0.5)
        yield spec, mlflow.pyfunc.load_model(uri)
        mlflow.set_tracking_uri(None)


class Served:
    """A :class:`Server` holding the trained model as its champion (its batcher and request log running; no
    registry is followed) and its app."""

    def __init__(
        self, trained: tuple[Any, Any], storage: Path, *, out_of_domain: str = "reject", scoring: bool = True,
        **settings: Any,
    ) -> None:  # fmt: skip
        spec, pyfunc = trained
        spec = spec.model_copy(update={"serving": spec.serving.model_copy(update={"out_of_domain": out_of_domain})})
        self.spec = spec
        self.storage = storage.as_uri()
        self.server = Server(ServingSettings(token=TOKEN, **settings), [spec], None, self.storage)
        model = LoadedModel(MODEL, "1", "champion", pyfunc, 0.5, {}, "now")
        model.use_direct_path(check_rows(spec, _columns(spec, rows(3, day=1)), 10).rows)
        self.server.slots[MODEL].current = model
        self.server.request_log.start()
        self.batcher = self.server.batchers[MODEL]
        self.scoring, self.stopped = scoring, False
        if scoring:
            self.batcher.start()
        self.app = create_app(self.server)

    def client(self) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        return httpx.AsyncClient(transport=transport, base_url="http://model-server", timeout=120)

    def start_scoring(self) -> None:
        self.scoring = True
        self.batcher.start()

    def stop(self) -> None:
        if self.stopped:
            return
        if not self.scoring:
            self.start_scoring()  # what waits is answered before the stop
        self.server.stop()
        self.stopped = True

    def log(self) -> pd.DataFrame:
        return request_log.read_log(self.storage, MODEL)


@pytest.fixture
def served(trained: tuple[Any, Any], tmp_path: Path) -> Iterator[Any]:
    started: list[Served] = []

    def _start(**kwargs: Any) -> Served:
        server = Served(trained, tmp_path / f"storage-{len(started)}", **kwargs)
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()


def _columns(spec: Any, body: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return parse_body(json.dumps(body).encode(), spec.model_features, Limits(10_000, 1000))


def strict_json(response: httpx.Response) -> Any:
    """The body as strict JSON: valid UTF-8, no ``NaN``/``Infinity``."""

    def refuse(token: str) -> None:
        raise AssertionError(f"{token} in a response body: {response.text[:300]}")

    return json.loads(response.content.decode("utf-8"), parse_constant=refuse)


def with_value(body: Any, token: str) -> str:
    """``body`` as JSON text with the placeholder string replaced by the raw JSON ``token``."""
    return json.dumps(body).replace(json.dumps("__value__"), token)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_every_route_but_the_probes_needs_the_exact_token_and_nothing_else_is_exposed(served) -> None:
    server = served()
    guarded = [("POST", PREDICT), ("POST", "/invocations"), ("GET", "/v1/models"), ("GET", f"/v1/models/{MODEL}"),
               ("POST", f"/v1/models/{MODEL}/reload"), ("GET", "/v1/models/unknown"),
               ("POST", "/v1/models/unknown/predict")]  # fmt: skip
    wrong = [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN},
             {"Authorization": f"Bearer {TOKEN[:-1]}"}, {"Authorization": f"Bearer {TOKEN}x"},
             {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN.upper()}"},
             {"Authorization": "Bearer"}, {"Authorization": "Bearer \u00e9\u00ff".encode("latin-1")}]  # fmt: skip

    async def probe() -> None:
        async with server.client() as client:
            for method, path in guarded:
                for headers in wrong:
                    answer = await client.request(method, path, headers=headers, json=rows(1))
                    assert answer.status_code == 401, (method, path, headers, answer.text[:200])
                    assert answer.headers["www-authenticate"] == "Bearer"
                    assert TOKEN not in answer.text and strict_json(answer)["error_code"] == "UNAUTHENTICATED"
                answer = await client.request(method, path, headers={"Authorization": f"bearer   {TOKEN} "},
                                              json=rows(1))  # fmt: skip
                assert answer.status_code in (200, 202, 404), (method, path, answer.text[:200])
            # no docs, schema, metrics or admin pages, with the token or without
            for path in ("/docs", "/redoc", "/openapi.json", "/metrics", "/admin", "/docs/oauth2-redirect"):
                for headers in ({}, AUTH):
                    assert (await client.get(path, headers=headers)).status_code == 404, path
            for path in ("/health", "/ping", "/ready"):  # the probes answer without a token
                assert (await client.get(path)).status_code == 200, path

    run(probe())


def test_no_body_a_client_can_send_gets_a_server_error_or_unencodable_text(served, caplog) -> None:
    server = served()
    base = rows(2)
    one_row = base[:1]

    def valued(column: str, token: str) -> str:
        return with_value([{**one_row[0], column: "__value__"}], token)

    bodies: dict[str, str | bytes] = {
        "nested 100k deep": "[" * 100_000 + "]" * 100_000,
        "nested in an ignored column": with_value([{**one_row[0], "x": "__value__"}], "[" * 5000 + "]" * 5000),
        "NaN": valued("age", "NaN"), "Infinity": valued("income", "Infinity"), "-Infinity": valued("age", "-Infinity"),
        "1e400": valued("utilization", "1e400"), "2**70": valued("age", str(2**70)), "-0": valued("age", "-0"),
        "4301 digits": valued("age", "1" * 4301), "NaN as category": valued("region", "NaN"),
        "NUL": valued("region", '"north\\u0000"'), "lone surrogate": valued("region", '"\\ud800"'),
        "1 MB string": valued("region", json.dumps("a" * 1_000_000)), "list as number": valued("age", "[30]"),
        "object as category": valued("region", '{"a": 1}'), "text as number": valued("age", '"30"'),
        "non-object rows": "[1, 2]", "null row": "[null]", "a string": '"rows"', "a number": "1e400",
        "empty list": "[]", "empty object": "{}", "no rows in inputs": '{"inputs": []}',
        "missing columns": json.dumps([{"age": 30}]), "invalid UTF-8": b'[{"region": "\xff"}]',
        "two formats": json.dumps({"inputs": one_row, "instances": one_row}),
        "long keys": json.dumps({"k" * 100_000: 1}), "duplicate keys": '[{"age": 30, "age": 900}]',
        "100k rows": json.dumps([{}] * 100_000),
    }  # fmt: skip

    async def probe() -> dict[str, httpx.Response]:
        async with server.client() as client:
            answers = {name: await client.post(PREDICT, content=body, headers=AUTH) for name, body in bodies.items()}
            answers["after"] = await client.post(PREDICT, json=base, headers={**AUTH, "X-Request-Id": "after"})
            return answers

    with caplog.at_level(logging.ERROR):
        answers = run(probe())
    for name, answer in answers.items():
        body = strict_json(answer)  # every answer is strict JSON, errors included
        if name == "after":
            assert answer.status_code == 200 and len(body["predictions"]) == 2
            continue
        assert answer.status_code in (400, 413, 422), (name, answer.status_code, answer.text[:300])
        assert "Traceback" not in answer.text and len(answer.content) < 5000, name
        assert body["error_code"] in ("INVALID_INPUT", "REQUEST_TOO_LARGE"), name
    assert not [r for r in caplog.records if r.name.startswith("mlops_airflow")], "a client's body logged an error"
    assert answers["lone surrogate"].json()["problems"][0]["value"] == "\ufffd"
    assert answers["1 MB string"].json()["problems"][0]["value"].endswith("...")
    assert "appears twice" in answers["duplicate keys"].json()["message"]
    server.stop()
    assert server.log()["request_id"].tolist() == ["after", "after"]  # refused requests are not logged


def test_duplicate_keys_are_refused_whichever_format_and_depth() -> None:
    """``{"age": 30, "age": 900}``: JSON parsers keep either value (Python's the last), a gateway that checked
    the first would let 900 through: the server refuses the body, naming the key."""
    from mlops_airflow.serving.inputs import InputError

    limits = Limits(10, 100)
    for body in ('[{"age": 30, "age": 900}]', '{"dataframe_records": [{"age": 1}], "dataframe_records": []}',
                 '{"inputs": {"age": [1], "age": [900]}}', '[{"age": 30, "x": {"y": 1, "y": 2}}]'):  # fmt: skip
        with pytest.raises(InputError, match=r"key '(age|dataframe_records|y)' appears twice") as refused:
            parse_body(body.encode(), ["age"], limits)
        assert refused.value.status == 400
    assert parse_body(b'[{"age": 30, "Age": 900, " age": 1}]', ["age"], limits) == {"age": [30]}


def test_a_flood_of_empty_objects_is_refused_before_it_is_parsed() -> None:
    """``[{},{},...]``: 5 MB are 1.7 million objects, some 100 MB once parsed, for a body the row limit refuses
    anyway. The server counts the objects and arrays outside strings first; braces inside text count for nothing."""
    from mlops_airflow.serving.inputs import InputError

    limits = Limits(10_000, 1000)
    objects = 5 * 1024 * 1024 // 3
    flood = b"[" + b"{}," * (objects - 1) + b"{}]"
    with pytest.raises(InputError, match=rf"{objects + 1} JSON objects or arrays;.* at most 11004; refused before"):
        parse_body(flood, ["age"], limits)
    nested = json.dumps([{"age": 1, "region": [[{}]] * 3}] * 4000).encode()  # 4,000 rows, 1 + 4,000 x 8 containers
    with pytest.raises(InputError, match=r"32001 JSON objects or arrays") as refused:
        parse_body(nested, ["age", "region"], limits)
    assert refused.value.status == 413
    braces = "{[" * 200_000  # text, not structure
    body = json.dumps([{"age": 41, "region": braces}, {"age": 42, "region": "north"}]).encode()
    assert parse_body(body, ["age", "region"], limits) == {"age": [41, 42], "region": [braces, "north"]}
    columns = json.dumps({"inputs": {"age": [41, 42], "region": ["{", "]"]}}).encode()
    assert parse_body(columns, ["age", "region"], limits) == {"age": [41, 42], "region": ["{", "]"]}


def test_a_caller_that_goes_away_never_fails_the_other_requests_of_its_batch(trained) -> None:
    """A request's future is cancelled when its caller goes away (the request task is cancelled, e.g. when the
    ASGI server drops the connection): the requests merged with it must still get their own answers."""
    spec, pyfunc = trained
    model = LoadedModel(MODEL, "1", "champion", pyfunc, 0.5, {}, "now")
    bodies = [rows(n, day=40 + i) for i, n in enumerate([2, 3, 1, 4])]
    frames = [check_rows(spec, _columns(spec, body), 10).rows for body in bodies]
    alone = [model.predict(frame) for frame in frames]
    batcher = Batcher(MODEL, 1024, 0.05)
    futures = [batcher.submit(model, frame) for frame in frames]  # queued before the thread runs: one batch
    assert futures[1].cancel()
    batcher.start()
    try:
        for i in (0, 2, 3):
            pd.testing.assert_frame_equal(futures[i].result(timeout=60), alone[i])
        assert futures[1].cancelled()
        # and the batcher keeps serving
        pd.testing.assert_frame_equal(batcher.submit(model, frames[0]).result(timeout=60), alone[0])
    finally:
        batcher.stop()


def test_a_cancelled_request_through_the_app_leaves_the_concurrent_ones_answered(served) -> None:
    server = served(scoring=False)  # the scoring thread starts once every request waits in its queue
    bodies = [rows(n, day=50 + i) for i, n in enumerate([2, 3, 1, 4, 2])]

    async def probe() -> list[Any]:
        async with server.client() as client:
            tasks = [asyncio.create_task(client.post(PREDICT, json=body, headers={**AUTH, "X-Request-Id": f"c{i}"}))
                     for i, body in enumerate(bodies)]  # fmt: skip
            while server.batcher.describe()["waiting"] < len(bodies):
                await asyncio.sleep(0.01)
            tasks[1].cancel()  # its caller goes away
            await asyncio.sleep(0)
            server.start_scoring()
            return await asyncio.gather(*tasks, return_exceptions=True)

    answers = run(probe())
    assert isinstance(answers[1], asyncio.CancelledError)
    for i in (0, 2, 3, 4):
        assert answers[i].status_code == 200, (i, answers[i].text[:300])
        assert len(answers[i].json()["predictions"]) == len(bodies[i])
    server.stop()
    assert sorted(set(server.log()["request_id"])) == ["c0", "c2", "c3", "c4"]


def test_a_caller_that_hangs_up_mid_body_is_no_server_error(served, caplog) -> None:
    """The ASGI server reports a connection closed before the body's end as ``http.disconnect``."""
    server = served()
    body = json.dumps(rows(2)).encode()
    sent: list[dict[str, Any]] = []
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": PREDICT, "raw_path": PREDICT.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"model-server"), (b"authorization", AUTH["Authorization"].encode()),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}  # fmt: skip
    messages = iter([{"type": "http.request", "body": body[:10], "more_body": True}, {"type": "http.disconnect"}])

    async def receive() -> dict[str, Any]:
        return next(messages, {"type": "http.disconnect"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with caplog.at_level(logging.ERROR):
        run(server.app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 400
    answer = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    assert answer["error_code"] == "CLIENT_DISCONNECTED"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert server.server.batchers[MODEL].calls == 0  # nothing scored


def test_a_request_id_is_echoed_only_when_it_is_a_plain_token_whole(served) -> None:
    """``X-Request-Id`` comes back in a header and keys the request log: ``abc\\n`` (a pattern's ``$`` matches
    before a final newline) must not be taken as given. HTTP parsers refuse such a header; an ASGI caller
    can send it."""
    server = served()
    body = json.dumps(rows(1)).encode()

    def call(request_id: bytes) -> tuple[int, dict[bytes, bytes]]:
        sent: list[dict[str, Any]] = []
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": PREDICT, "raw_path": PREDICT.encode(), "query_string": b"",
                 "root_path": "", "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
                 "headers": [(b"host", b"model-server"), (b"authorization", AUTH["Authorization"].encode()),
                             (b"content-length", str(len(body)).encode()), (b"x-request-id", request_id)]}  # fmt: skip
        messages = iter([{"type": "http.request", "body": body, "more_body": False}])

        async def receive() -> dict[str, Any]:
            return next(messages, {"type": "http.disconnect"})

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        run(server.app(scope, receive, send))
        start = next(m for m in sent if m["type"] == "http.response.start")
        return start["status"], dict(start["headers"])

    status, headers = call(b"plain-id.1:2")
    assert status == 200 and headers[b"x-request-id"] == b"plain-id.1:2"
    for odd in (b"abc\n", b"abc\r\nSet-Cookie: x=1", b"a" * 129, b"\xe9t\xe9"):
        status, headers = call(odd)
        assert status == 200 and re.fullmatch(rb"[0-9a-f]{32}", headers[b"x-request-id"]), (odd, headers)
    server.stop()
    assert all(re.fullmatch(r"plain-id\.1:2|[0-9a-f]{32}", i) for i in server.log()["request_id"])


def test_a_content_length_of_non_ascii_digits_is_no_server_error(served) -> None:
    """``"\\xb2"`` (superscript two, a latin-1 header byte) passes ``str.isdigit`` but not ``int``."""
    server = served()

    async def probe() -> httpx.Response:
        async with server.client() as client:
            headers = [(b"authorization", AUTH["Authorization"].encode()), (b"content-length", b"\xb2")]
            return await client.post(PREDICT, content=json.dumps(rows(1)).encode(), headers=headers)

    answer = run(probe())
    assert answer.status_code != 500, answer.text[:300]


def test_flagged_hostile_text_is_answered_logged_and_read_back(served) -> None:
    """Under ``out_of_domain: flag`` the text is answered and logged: NUL, lone surrogates (cleaned), 1 MB,
    numbers and booleans as categories; every record is read back."""
    server = served(out_of_domain="flag")
    values = ['"north\\u0000"', '"\\ud800"', '"\\udfff\\ud800x"', json.dumps("a" * 1_000_000), "1e300", str(2**70),
              "true", "-0.0", '"\\u2028"']  # fmt: skip

    async def probe() -> list[httpx.Response]:
        async with server.client() as client:
            answers = []
            for i, value in enumerate(values):
                body = with_value([{**rows(1)[0], "region": "__value__"}], value)
                answers.append(await client.post(PREDICT, content=body, headers={**AUTH, "X-Request-Id": f"v{i}"}))
            return answers

    answers = run(probe())
    for answer in answers:
        assert answer.status_code == 200, answer.text[:300]
        assert strict_json(answer)["predictions"][0]["out_of_domain"][0].startswith("region: ")
    server.stop()
    log = server.log().set_index("request_id")
    assert sorted(log.index) == sorted(f"v{i}" for i in range(len(values)))
    assert log.loc["v0", "region"] == "north\x00" and log.loc["v1", "region"] == "\ufffd"
    assert log.loc["v2", "region"] == "\ufffd\ufffdx" and len(log.loc["v3", "region"]) == 1_000_000
    assert log.loc["v4", "region"].startswith("1000000000000000052504760255204420248704")
    assert list(log.loc[[f"v{i}" for i in (5, 6, 7)], "region"]) == [str(2**70), "True", "0"]
    assert log["out_of_domain"].notna().all()
    assert server.server.request_log.describe()["unloggable_rows"] == 0


def test_the_request_log_is_bounded_in_bytes_not_only_in_rows(served) -> None:
    """A few rows of megabyte-long text (accepted under ``flag``) must not pile up in memory until
    ``log_flush_rows`` rows arrive: a request that finds ``log_max_bytes`` waiting writes them first."""
    server = served(out_of_domain="flag", log_flush_rows=5000, log_flush_seconds=600.0, log_max_bytes=3_000_000)
    long_text = json.dumps("x" * 1_000_000)

    async def probe() -> None:
        async with server.client() as client:
            for i in range(5):
                body = with_value([{**rows(1)[0], "region": "__value__"}], long_text)
                answer = await client.post(PREDICT, content=body, headers={**AUTH, "X-Request-Id": f"big{i}"})
                assert answer.status_code == 200, answer.text[:300]

    run(probe())
    state = server.server.request_log.describe()
    assert state["written_rows"] >= 3 and state["pending_bytes"] < 3_000_000, state
    assert {f"big{i}" for i in range(3)} <= set(server.log()["request_id"])


def test_the_writer_drops_the_oldest_entries_beyond_twice_its_byte_bound_while_storage_fails(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("storage that refuses every write")
    writer = RequestLog(blocked.as_uri(), flush_rows=1000, flush_seconds=60, max_rows=1000, max_bytes=1000)
    frame = pd.DataFrame({"age": [41.0], "region": ["north"]})
    answer = pd.DataFrame({"prediction": [0], "proba_0": [0.8], "proba_1": [0.2]})
    for i in range(10):
        writer.append(Entry(MODEL, f"r{i}", dt.datetime.now(dt.UTC), "3", request_log.CHAMPION_ROLE, 0.5, frame,
                            answer, 600))  # fmt: skip
    state = writer.describe()
    assert state["pending_bytes"] <= 2000 and state["dropped_rows"] >= 7 and state["last_error"], state


def test_registry_credentials_in_the_tracking_uri_never_reach_a_response(trained, tmp_path, monkeypatch) -> None:
    """MLflow's errors quote the URI they called: with ``MLFLOW_TRACKING_URI=http://user:password@host`` an
    unreachable registry must not show the password on the model page nor in predict's 503 (a real refused
    connection: nothing listens on the port)."""
    import socket

    from mlflow.tracking import MlflowClient

    from mlops_airflow.serving.models import redacted

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: connections are refused
    uri = f"http://serving:pa55-w0rd-secret@127.0.0.1:{port}"
    spec, _ = trained
    server = Server(ServingSettings(token=TOKEN), [spec], MlflowClient(uri, uri), tmp_path.as_uri())
    server.follower.refresh(server.slots[MODEL])
    assert server.slots[MODEL].registry_error and "127.0.0.1" in server.slots[MODEL].registry_error
    app = create_app(server)

    async def probe() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://model-server") as client:
            return [await client.get(f"/v1/models/{MODEL}", headers=AUTH), await client.get("/v1/models", headers=AUTH),
                    await client.post(PREDICT, json=rows(1), headers=AUTH)]  # fmt: skip

    page, models, refused = run(probe())
    assert refused.status_code == 503 and "***@127.0.0.1" in refused.json()["message"], refused.text[:500]
    for answer in (page, models, refused):
        assert "pa55-w0rd-secret" not in answer.text, answer.text[:500]
    assert redacted("to https://a:b@h/x and s3://k@b/p, not a@b") == "to https://***@h/x and s3://***@b/p, not a@b"


def _exchange(url: str, head: str, body: bytes = b"", *, hang_up: bool = False) -> bytes:
    """Send a request's bytes as written (lengths that lie included) on a fresh connection; the raw answer
    (empty when ``hang_up``: the client closes without waiting)."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(url)
    with socket.create_connection((where.hostname, where.port), timeout=60) as sock:
        sock.sendall(head.encode("latin-1") + body)
        if hang_up:
            return b""
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 4 + _length(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@pytest.mark.e2e
def test_lying_lengths_chunked_bodies_and_hang_ups_over_real_http(registrar, model_server) -> None:
    """Through uvicorn's HTTP parser: a chunked body (no length) past the limit is refused while it streams, a
    declared length past it before the body is read, a length shorter than the body is a bad request, and a
    caller that hangs up before its declared length leaves no error in the server's log."""
    from serving_support import wait_until

    registrar().register()
    server = model_server(MLOPS_SERVING_MAX_BODY_BYTES="65536")
    body = json.dumps(rows(2)).encode()
    head = f"POST {PREDICT} HTTP/1.1\r\nHost: model-server\r\nAuthorization: Bearer {TOKEN}\r\n"

    chunk = b" " * 16384
    chunked = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 8 + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    answer = _exchange(server.url, head + "Transfer-Encoding: chunked\r\n\r\n", chunked)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"MLOPS_SERVING_MAX_BODY_BYTES (65536 bytes)" in answer, answer
    answer = _exchange(server.url, head + "Transfer-Encoding: chunked\r\n\r\n", b"%x\r\n" % len(body) + body +
                       b"\r\n0\r\n\r\n")  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    answer = _exchange(server.url, head + f"Content-Length: {10**12}\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413 ") and b"1000000000000 bytes" in answer, answer
    # the first 5 bytes are a body that is no JSON, the rest no HTTP request: 400 whichever is answered first
    answer = _exchange(server.url, head + "Content-Length: 5\r\n\r\n", body)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
    for _ in range(3):  # declares more than it sends, then goes away
        _exchange(server.url, head + f"Content-Length: {len(body) + 100}\r\n\r\n", body, hang_up=True)
    assert server.predict(rows(3)).status_code == 200
    wait_until("the server to notice the hang-ups", lambda: server.page()["batching"]["calls"] >= 2, 60)
    assert server.stop()
    text = server.log.read_text()
    assert "unexpected error" not in text and "Traceback" not in text, text[-3000:]
