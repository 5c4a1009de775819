"""The model server as a process against a real MLflow server (basic auth; the server reads as the READ-only
``serving`` user): predict, bad input, auth, hot swap under load, a broken version kept out, a version no gate
blessed refused, shadow scoring and the request log read back (with labels joined later)."""

from __future__ import annotations

import json
import threading

import pandas as pd
import pytest
import requests
from serving_support import FEATURES, MODEL, REPO, TOKEN, rows, wait_until

from mlops_airflow.core import request_log
from mlops_airflow.core.serving_client import notify_model_server

pytestmark = pytest.mark.e2e


def test_predict_answers_and_refuses_bad_input_and_missing_tokens(registrar, model_server) -> None:
    reg = registrar()
    version = reg.register()
    server = model_server()

    # JSON records
    answer = server.predict(rows(3), headers={"X-Request-Id": "req-1"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == MODEL and body["model_version"] == version and body["request_id"] == "req-1"
    assert len(body["predictions"]) == 3
    for row in body["predictions"]:
        assert set(row) == {"prediction", "proba_0", "proba_1"} and row["prediction"] in (0, 1)
        assert abs(row["proba_0"] + row["proba_1"] - 1) < 1e-9
    # MLflow's dataframe_split, on /invocations too (the default model: the only one)
    frame = pd.DataFrame(rows(2))
    split = {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}
    assert server.predict(split).json()["model_version"] == version
    mlflow_style = requests.post(f"{server.url}/invocations", json=split, headers=server.headers, timeout=30)
    assert mlflow_style.status_code == 200 and len(mlflow_style.json()["predictions"]) == 2
    assert mlflow_style.headers["X-Model-Version"] == version

    # bad input: a 4xx naming the column and the rule, never a 500
    wrong_column = [{**{k: v for k, v in r.items() if k != "age"}, "agee": 40} for r in rows(2)]
    refused = server.predict(wrong_column)
    assert refused.status_code == 422 and "'age'" in refused.json()["message"], refused.text
    assert refused.json()["problems"][0]["column"] == "age"
    wrong_type = rows(2)
    wrong_type[1]["debt_ratio"] = "high"
    refused = server.predict(wrong_type)
    assert refused.status_code == 422, refused.text
    problem = refused.json()["problems"][0]
    assert (problem["column"], problem["row"]) == ("debt_ratio", 1) and "number" in problem["rule"]
    null_refused = rows(1)
    null_refused[0]["region"] = None  # region is nullable: false
    assert "nullable" in server.predict(null_refused).json()["message"]
    empty = requests.post(f"{server.url}/v1/models/{MODEL}/predict", data=b"", headers=server.headers, timeout=30)
    assert empty.status_code == 400 and "empty body" in empty.json()["message"]
    huge = requests.post(f"{server.url}/v1/models/{MODEL}/predict", data=b"[" + b" " * 10_000_000 + b"]",
                         headers={**server.headers, "Content-Type": "application/json"}, timeout=60)  # fmt: skip
    assert huge.status_code == 413
    not_json = requests.post(f"{server.url}/v1/models/{MODEL}/predict", data=b"{nope", headers=server.headers)
    assert not_json.status_code == 400
    assert server.predict({"dataframe_split": {"columns": ["age"], "data": [[1, 2]]}}).status_code == 400
    assert server.predict([1, 2]).status_code == 400
    assert (
        requests.post(f"{server.url}/v1/models/nope/predict", json=rows(1), headers=server.headers).status_code == 404
    )

    # authentication: predict, the model page and the reload notification need the token
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN}):
        assert (
            requests.post(f"{server.url}/v1/models/{MODEL}/predict", json=rows(1), headers=headers).status_code == 401
        )
        assert requests.post(f"{server.url}/invocations", json=rows(1), headers=headers).status_code == 401
        assert requests.get(f"{server.url}/v1/models/{MODEL}", headers=headers).status_code == 401
        assert requests.post(f"{server.url}/v1/models/{MODEL}/reload", headers=headers).status_code == 401
    assert requests.get(f"{server.url}/health").status_code == 200  # probes need no token

    page = server.page()
    assert page["version"] == version and page["data_hash"].startswith("hash-")
    assert page["gate"]["blessed"] is True and page["gate"]["signed"] is True and page["last_load_error"] is None
    assert server.stop()


def test_hot_swap_under_load_keeps_every_request_and_refuses_a_broken_version(registrar, model_server, tmp_path,
                                                                              monkeypatch) -> None:  # fmt: skip
    reg = registrar()
    v1 = reg.register(seed=0)
    server = model_server()
    monkeypatch.setenv("MLOPS_SERVING_URL", server.url)
    monkeypatch.setenv("MLOPS_SERVING_TOKEN", TOKEN)
    seen: list[list[str]] = [[] for _ in range(3)]
    failures: list[str] = []
    stop = threading.Event()

    def client(i: int) -> None:
        body = rows(1 if i == 0 else 100, day=30 + i)
        session = requests.Session()
        while not stop.is_set():
            response = session.post(f"{server.url}/v1/models/{MODEL}/predict", json=body, headers=server.headers)
            if response.status_code != 200:
                failures.append(f"{response.status_code} {response.text[:200]}")
            else:
                seen[i].append(response.json()["model_version"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_until("traffic on v1", lambda: all(len(s) >= 3 for s in seen))
        v2 = reg.register(seed=7)  # champion moves: the promote task's notification tells the server
        assert notify_model_server(MODEL, "promote", v2) == {server.url: "ok"}
        wait_until("every client answered by v2", lambda: all(s and s[-1] == v2 for s in seen))
        marks = [len(s) for s in seen]
        broken = reg.register_broken(tmp_path)
        assert notify_model_server(MODEL, "promote", broken) == {server.url: "ok"}
        wait_until("the broken version's load error", lambda: (server.page()["last_load_error"] or {}).get("version")
                   == broken)  # fmt: skip
        wait_until("more traffic", lambda: all(len(s) >= m + 3 for s, m in zip(seen, marks, strict=True)))
        reg.set_alias("champion", v1)  # a rollback to the first version (files released at the first swap)
        requests.post(f"{server.url}/v1/models/{MODEL}/reload", headers=server.headers).raise_for_status()
        wait_until("every client answered by v1 again", lambda: all(s[-1] == v1 for s in seen))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    for versions in seen:  # old, then new, then (rollback) old again: never back and forth
        changes = [v for j, v in enumerate(versions) if j == 0 or versions[j - 1] != v]
        assert changes == [v1, v2, v1], changes
        assert broken not in versions
    page = server.page()
    assert page["version"] == v1 and "this version cannot score" in page["last_load_error"]["error"]
    assert page["swaps"] == 3
    assert server.stop()


def test_champion_moved_to_a_version_no_gate_blessed_is_refused(registrar, model_server, tmp_path) -> None:
    """Someone with MLflow write access moves ``champion`` by hand; the server proves every version blessed
    (the champion resolver: the gate's HMAC signature on the version) before it downloads or runs any of it."""
    reg = registrar()
    marker = tmp_path / "forged-model-ran"
    forged = reg.register_by_hand(tmp_path)  # champion from the start: a cold start on it

    server = model_server(ready=False, FORGED_MODEL_MARKER=str(marker))
    wait_until("the refusal", lambda: server.page()["last_load_error"] is not None)
    page = server.page()
    assert page["ready"] is False and page["version"] is None and page["registry_champion"] == forged
    refusal = page["last_load_error"]
    assert (refusal["version"], refusal["alias"], refusal["stage"]) == (forged, "champion", "verify")
    assert (
        "not proven blessed" in refusal["error"]
        and f"version {forged} may not serve: its gate signature" in (refusal["error"])
    )
    ready = requests.get(f"{server.url}/ready", timeout=30)  # a probe: no token, no model names
    assert ready.status_code == 503 and ready.json() == {"ready": False, "waiting": 1}
    ready = requests.get(f"{server.url}/ready", headers=server.headers, timeout=30)
    assert ready.status_code == 503 and ready.json()["waiting_for"] == [MODEL]
    refused = server.predict(rows(1))
    assert refused.status_code == 503 and refused.json()["error_code"] == "NOT_READY"
    assert f"version {forged} (champion)" in refused.json()["message"] and "not proven blessed" in refused.text

    blessed = reg.register()  # ct_'s own version becomes champion: the server swaps it in
    requests.post(f"{server.url}/v1/models/{MODEL}/reload", headers=server.headers).raise_for_status()
    wait_until("the blessed version", lambda: server.page()["version"] == blessed)
    assert requests.get(f"{server.url}/ready", timeout=30).status_code == 200

    # champion moved by hand again, to the forged version: refused, the blessed one keeps answering
    reg.set_alias("champion", forged)
    requests.post(f"{server.url}/v1/models/{MODEL}/reload", headers=server.headers).raise_for_status()
    wait_until("the second refusal", lambda: server.page()["last_load_error"]["at"] != refusal["at"])
    assert server.predict(rows(2)).json()["model_version"] == blessed

    # a whole ct_-looking run faked by someone who can write MLflow, but without the signing key
    unsigned = reg.register(seed=5, sign=False)
    requests.post(f"{server.url}/v1/models/{MODEL}/reload", headers=server.headers).raise_for_status()
    wait_until("the unsigned version's refusal", lambda: server.page()["last_load_error"]["version"] == unsigned)
    page = server.page()
    assert "(tag mlops.gate.signature) is missing" in page["last_load_error"]["error"]
    assert page["version"] == blessed and page["registry_champion"] == unsigned and page["swaps"] == 1
    answer = server.predict(rows(2))
    assert answer.status_code == 200 and answer.json()["model_version"] == blessed
    assert not marker.exists()  # the forged version's code never ran in the server
    assert server.stop()


def test_shadow_challenger_and_the_request_log_read_back_with_labels(registrar, model_server, mlops_home) -> None:
    reg = registrar(shadow=True)
    champion = reg.register(seed=0)
    challenger = reg.register(seed=3, alias="challenger")
    storage = (mlops_home / "storage").as_uri()
    server = model_server(MLOPS_STORAGE_BASE=storage, MLOPS_SERVING_LOG_FLUSH_SECONDS="600")
    wait_until("the shadow challenger", lambda: server.page()["shadow"]["version"] == challenger)
    sent = {}
    for i in range(5):
        body = rows(4, day=40 + i)
        response = server.predict(body, headers={"X-Request-Id": f"r{i}"})
        assert response.status_code == 200 and response.json()["model_version"] == champion
        sent[f"r{i}"] = (body, response.json()["predictions"])
    assert server.page()["request_log"]["written_rows"] == 0  # nothing written yet: the flush interval is long
    assert server.stop()  # a clean stop writes what is waiting

    from mlops_airflow.core.config import get_spec

    spec = get_spec(MODEL)
    log = request_log.read_log(storage, MODEL)
    assert len(log) == 2 * 5 * 4  # every row, answered by both versions
    for role, version in ((request_log.CHAMPION_ROLE, champion), (request_log.CHALLENGER_ROLE, challenger)):
        part = log[log["role"] == role]
        assert set(part["model_version"]) == {version} and set(part["request_id"]) == set(sent)
    served = request_log.served_rows(spec, log).sort_values(["request_id", "row"])
    for request_id, (body, predictions) in sent.items():
        mine = served[served["request_id"] == request_id]
        assert mine["age"].tolist() == [r["age"] for r in body]
        assert mine["region"].tolist() == [r["region"] for r in body]
        assert mine["proba_1"].tolist() == pytest.approx([p["proba_1"] for p in predictions])
        assert mine["prediction"].tolist() == [p["prediction"] for p in predictions]

    labels = pd.DataFrame(
        [
            {"request_id": rid, "row": j, "default": int(p["prediction"]) if rid != "r0" else 1 - int(p["prediction"])}
            for rid, (_, preds) in sent.items()
            for j, p in enumerate(preds)
        ]
    )
    live = request_log.live_metrics(spec, log, labels)
    assert live["labelled"] == 20
    by_role = {entry["role"]: entry for entry in live["by_version"]}
    assert by_role["champion"]["model_version"] == champion and by_role["champion"]["rows"] == 20
    assert by_role["champion"]["metrics"]["accuracy"] == pytest.approx(16 / 20)  # r0's labels are the opposite
    assert by_role["challenger"]["model_version"] == challenger
    assert 0.0 <= live["agreement"] <= 1.0


def test_the_server_refuses_to_start_without_a_token(registrar, model_server) -> None:
    registrar().register()
    with pytest.raises(RuntimeError, match="MLOPS_SERVING_TOKEN must be set"):
        model_server(MLOPS_SERVING_TOKEN="")


def test_notification_is_best_effort(monkeypatch) -> None:
    monkeypatch.delenv("MLOPS_SERVING_URL", raising=False)
    assert notify_model_server(MODEL, "promote", "3") == {}
    monkeypatch.setenv("MLOPS_SERVING_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("MLOPS_SERVING_TOKEN", TOKEN)
    outcome = notify_model_server(MODEL, "promote", "3")
    assert outcome["http://127.0.0.1:9"] != "ok"


def test_features_constant_matches_the_demo_spec() -> None:
    from mlops_airflow.core.config import load_model_spec

    assert load_model_spec(REPO / "include" / "models" / f"{MODEL}.yaml").model_features == FEATURES
