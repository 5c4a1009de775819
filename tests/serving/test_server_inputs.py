"""What the model server does with hostile or unusual input, through its HTTP API: numbers JSON cannot
answer with, bodies at the row and column limits in every format, values outside the spec's domain
(refused, or answered and flagged), and text the request log must still be able to write."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from serving_support import FEATURES, MODEL, rows

from mlops_airflow.core import request_log

pytestmark = pytest.mark.e2e
PLACEHOLDER = "__value__"


def post_text(server: Any, text: str, path: str = f"/v1/models/{MODEL}/predict") -> requests.Response:
    """POST ``text`` as is (a body no JSON encoder would write: ``NaN``, a 400-digit number)."""
    headers = {**server.headers, "Content-Type": "application/json"}
    return requests.post(f"{server.url}{path}", data=text.encode(), headers=headers, timeout=120)


def strict_json(response: requests.Response) -> Any:
    """The body as strict JSON: valid UTF-8, no ``NaN``/``Infinity``."""

    def refuse(token: str) -> None:
        raise AssertionError(f"{token} in a response body: {response.text[:300]}")

    return json.loads(response.content.decode("utf-8"), parse_constant=refuse)


def with_value(body: Any, token: str) -> str:
    """``body`` as JSON text with the placeholder string replaced by the raw JSON ``token``."""
    return json.dumps(body).replace(json.dumps(PLACEHOLDER), token)


def test_non_finite_and_overlong_numbers_get_a_422_naming_column_row_and_rule(registrar, model_server) -> None:
    registrar().register()
    server = model_server()
    four_hundred_digits = "1" + "0" * 399
    cases = [("age", "NaN", "NaN"), ("income", "Infinity", "Infinity"), ("debt_ratio", "-Infinity", "-Infinity"),
             ("utilization", "1e400", "Infinity"), ("credit_lines", four_hundred_digits, None),
             ("region", "NaN", "NaN")]  # fmt: skip
    for column, token, echoed in cases:
        body = rows(3)
        body[1][column] = PLACEHOLDER
        for path in (f"/v1/models/{MODEL}/predict", "/invocations"):
            refused = post_text(server, with_value(body, token), path)
            assert refused.status_code == 422, (column, token, refused.status_code, refused.text[:300])
            answer = strict_json(refused)
            problem = answer["problems"][0]
            assert (problem["column"], problem["row"]) == (column, 1), answer
            assert f"column {column!r}, row 1" in answer["message"]
            if column != "region":
                assert "finite JSON number" in problem["rule"]
            if echoed is not None:
                assert problem["value"] == echoed
            else:
                assert problem["value"].startswith("1000") and "(400 digits)" in problem["value"]

    # every bad value of a body at once, in MLflow's dataframe_split
    body = rows(2)
    for column, *_ in cases:
        body[0][column] = PLACEHOLDER
    split = {"dataframe_split": {"columns": FEATURES, "data": [[r[c] for c in FEATURES] for r in body]}}
    tokens = iter(token for _, token, _ in cases)
    text = json.dumps(split)
    while json.dumps(PLACEHOLDER) in text:
        text = text.replace(json.dumps(PLACEHOLDER), next(tokens), 1)
    refused = post_text(server, text)
    assert refused.status_code == 422
    assert {(p["column"], p["row"]) for p in strict_json(refused)["problems"]} == {(c, 0) for c, *_ in cases}
    assert server.predict(rows(2)).status_code == 200  # the server is unharmed
    assert server.stop()


def test_row_and_column_limits_are_the_same_for_every_format(registrar, model_server) -> None:
    """Extra columns are ignored, but counted: past ``MLOPS_SERVING_MAX_COLUMNS`` (1000, model features
    included) distinct names a request is refused, whichever format carries them."""
    registrar().register()
    server = model_server()
    base = rows(1)[0]
    one_new_key_each = [{**base, f"extra_{i}": i} for i in range(8000)]
    split_wide = {"columns": FEATURES + [f"extra_{i}" for i in range(992)],
                  "data": [[base[c] for c in FEATURES] + [0] * 992]}  # fmt: skip
    too_wide = {
        "records": one_new_key_each,
        "dataframe_records": {"dataframe_records": one_new_key_each},
        "instances": {"instances": one_new_key_each},
        "inputs records": {"inputs": one_new_key_each},
        "dataframe_split": {"dataframe_split": split_wide},
        "inputs columns": {"inputs": {**{c: [base[c]] for c in FEATURES}, **{f"x{i}": [0] for i in range(992)}}},
    }
    for name, body in too_wide.items():
        refused = server.predict(body)
        assert refused.status_code == 413, (name, refused.status_code, refused.text[:300])
        message = strict_json(refused)["message"]
        assert "distinct columns" in message and "at most 1000 (MLOPS_SERVING_MAX_COLUMNS)" in message, name

    at_the_bound = one_new_key_each[:991]  # 9 features + 991 extra names = 1000
    answered = server.predict(at_the_bound)
    assert answered.status_code == 200, answered.text[:300]
    assert len(answered.json()["predictions"]) == 991

    many = [base] * 10_001  # serving.max_rows is 10,000
    too_long = {
        "records": many,
        "dataframe_records": {"dataframe_records": many},
        "instances": {"instances": many},
        "inputs records": {"inputs": many},
        "dataframe_split": {"dataframe_split": {"columns": FEATURES, "data": [[base[c] for c in FEATURES]] * 10_001}},
        "inputs columns": {"inputs": {c: [base[c]] * 10_001 for c in FEATURES}},
    }
    for name, body in too_long.items():
        refused = server.predict(body)
        assert refused.status_code == 413, (name, refused.status_code, refused.text[:300])
        assert "10001 rows in one request; at most 10000 (serving.max_rows)" in refused.json()["message"], name
    assert server.stop()


def test_values_outside_the_spec_domain_are_refused_by_default(registrar, model_server) -> None:
    registrar().register()
    server = model_server()
    refusals = [("region", "atlantis", "not in categories [north, south, east, west]"),
                ("age", 900, "above max 100"), ("age", 17, "below min 18"),
                ("debt_ratio", -0.5, "below min 0")]  # fmt: skip
    for column, value, rule in refusals:
        body = rows(3)
        body[2][column] = value
        refused = server.predict(body)
        assert refused.status_code == 422, (column, value, refused.text[:300])
        problem = strict_json(refused)["problems"][0]
        assert (problem["column"], problem["row"], problem["value"]) == (column, 2, value)
        assert problem["rule"].startswith(rule) and "serving.out_of_domain: reject" in problem["rule"]
        assert f"column {column!r}, row 2, value {value!r}: {rule}" in refused.json()["message"]
    # the bounds are inclusive; a feature without a declared max (income) is not bounded above
    inside = rows(3)
    inside[0]["age"], inside[1]["age"], inside[2]["income"] = 18, 100, 10**9
    assert server.predict(inside).status_code == 200
    assert server.stop()


def test_flagged_out_of_domain_rows_are_answered_marked_logged_and_counted(registrar, model_server,
                                                                           mlops_home) -> None:  # fmt: skip
    registrar(out_of_domain="flag").register()
    storage = (mlops_home / "storage").as_uri()
    server = model_server(MLOPS_STORAGE_BASE=storage)
    body = rows(3)
    body[0]["region"], body[2]["age"] = "atlantis", 900
    answered = server.predict(body, headers={"X-Request-Id": "odd-1"})
    assert answered.status_code == 200, answered.text[:300]
    predictions = strict_json(answered)["predictions"]
    assert predictions[0]["out_of_domain"] == ["region: 'atlantis' not in categories [north, south, east, west]"]
    assert "out_of_domain" not in predictions[1]
    assert predictions[2]["out_of_domain"] == ["age: 900 above max 100"]
    assert server.predict(rows(2), headers={"X-Request-Id": "plain-1"}).status_code == 200
    page = server.page()
    assert (page["out_of_domain"], page["out_of_domain_rows"]) == ("flag", 2)
    assert server.stop()

    log = request_log.read_log(storage, MODEL)
    marks = log.set_index(["request_id", "row"])[request_log.OUT_OF_DOMAIN_COLUMN].to_dict()
    assert marks[("odd-1", 0)] == "region: 'atlantis' not in categories [north, south, east, west]"
    assert marks[("odd-1", 2)] == "age: 900 above max 100"
    assert {key for key, mark in marks.items() if isinstance(mark, str)} == {("odd-1", 0), ("odd-1", 2)}
    assert request_log.out_of_domain_rows(log) == 2


@pytest.mark.parametrize("policy", ["reject", "flag"])
def test_a_lone_surrogate_never_blocks_the_request_log(registrar, model_server, mlops_home, policy) -> None:
    registrar(**({"out_of_domain": "flag"} if policy == "flag" else {})).register()  # reject: the default
    storage = (mlops_home / "storage").as_uri()
    server = model_server(MLOPS_STORAGE_BASE=storage, MLOPS_SERVING_LOG_FLUSH_SECONDS="600")
    poisoned = rows(2)
    poisoned[0]["region"] = "\ud800"  # valid JSON ("\\ud800" on the wire), not valid UTF-8 text
    answer = server.predict(poisoned, headers={"X-Request-Id": "surrogate"})
    for i in range(20):
        assert server.predict(rows(3, day=60 + i), headers={"X-Request-Id": f"normal-{i}"}).status_code == 200
    assert server.stop()  # a clean stop writes every waiting row

    log = request_log.read_log(storage, MODEL)
    normal = log[log["request_id"].str.startswith("normal-")]
    assert len(normal) == 20 * 3 and set(normal["request_id"]) == {f"normal-{i}" for i in range(20)}
    body = strict_json(answer)  # whatever the answer, it is writable
    logged = log[log["request_id"] == "surrogate"]
    if policy == "reject":
        assert answer.status_code == 422 and body["problems"][0]["value"] == "\ufffd"
        assert logged.empty
    else:  # accepted, so answered and logged, its text cleaned
        assert answer.status_code == 200 and body["predictions"][0]["out_of_domain"][0].startswith("region: '\ufffd'")
        assert logged["region"].tolist() == ["\ufffd", poisoned[1]["region"]]
