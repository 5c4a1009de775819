"""The model server as a process (real MLflow server, the READ-only ``serving`` user): concurrent requests
merged and answered each with its own rows, a bad request among them refused alone, version copies removed
(stale ones at start, released ones at a swap, the rest at a clean stop that exits 0), and the canary: a
healthy challenger answers its callers, a failing one is stopped on its error rate with no request failed."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
import requests
from serving_support import FEATURES, MODEL, SIGNING_KEY, TOKEN, ct_version, log_flaky_model, rows, wait_until

from mlops_airflow.core.serving_client import notify_model_server

pytestmark = pytest.mark.e2e


def copies(tmp: Path, version: str | None = None) -> list[str]:
    return sorted(glob.glob(str(tmp / f"mlops-serving-{MODEL}-v{version or '*'}-*")))


def test_concurrent_requests_get_their_own_answers_a_bad_one_fails_alone_and_copies_are_cleaned(
    registrar, model_server, tmp_path, monkeypatch
) -> None:
    import mlflow

    reg = registrar()
    v1 = reg.register(seed=0)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp / f"mlops-serving-{MODEL}-v{v1}-p{int(ended.stdout)}-left0ver"  # a killed server's copy
    stale.mkdir()
    server = model_server(TMPDIR=str(tmp), MLOPS_SERVING_MAX_WAIT_MS="20")
    assert not stale.exists()
    served_copy = copies(tmp, v1)
    assert len(served_copy) == 1 and f"-p{server.proc.pid}-" in served_copy[0]

    bodies = [rows(n, day=50 + i) for i, n in enumerate([1, 1, 3, 1, 100, 2, 1, 7, 1, 1])]
    bad = rows(2, day=70)
    bad[1]["debt_ratio"] = "high"
    sent = [*bodies[:4], bad, *bodies[4:]]
    answers: list[requests.Response | None] = [None] * len(sent)
    barrier = threading.Barrier(len(sent))

    def send(i: int) -> None:
        barrier.wait()
        answers[i] = requests.post(f"{server.url}/v1/models/{MODEL}/predict", json=sent[i], headers=server.headers,
                                   timeout=120)  # fmt: skip

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(sent))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refused = answers[4]
    assert refused is not None and refused.status_code == 422, refused.text if refused else None
    assert refused.json()["problems"][0]["column"] == "debt_ratio" and refused.json()["problems"][0]["row"] == 1
    pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL}/{v1}")  # in-process, as the admin
    for body, answer in zip(sent, answers, strict=True):
        if body is bad:
            continue
        assert answer is not None and answer.status_code == 200, answer.text if answer else None
        assert answer.json()["model_version"] == v1
        expected = pyfunc.predict(pd.DataFrame(body)[FEATURES]).reset_index(drop=True)
        got = pd.DataFrame(answer.json()["predictions"])
        assert len(got) == len(body)
        assert got["prediction"].tolist() == expected["prediction"].tolist()
        assert got["proba_1"].tolist() == pytest.approx(expected["proba_1"].tolist(), rel=1e-12, abs=1e-15)
    batching = server.page()["batching"]
    assert batching["calls"] >= 1 and batching["max_wait_ms"] == 20.0

    # swaps: the previous champion stays loaded (for a rollback), the one before it is released
    monkeypatch.setenv("MLOPS_SERVING_URL", server.url)
    monkeypatch.setenv("MLOPS_SERVING_TOKEN", TOKEN)
    v2 = reg.register(seed=4)
    assert notify_model_server(MODEL, "promote", v2) == {server.url: "ok"}
    wait_until("the swap to v2", lambda: server.page()["version"] == v2)
    assert server.page()["previous"] == v1 and len(copies(tmp, v1)) == 1
    v3 = reg.register(seed=5)
    assert notify_model_server(MODEL, "promote", v3) == {server.url: "ok"}
    wait_until("the swap to v3", lambda: server.page()["version"] == v3)
    wait_until("v1's copy removed", lambda: copies(tmp, v1) == [])  # released just after the swap
    assert len(copies(tmp, v2)) == 1 and len(copies(tmp, v3)) == 1

    # SIGTERM: a clean stop that removes the copies and exits 0
    assert server.proc is not None
    os.killpg(server.proc.pid, signal.SIGTERM)
    assert server.proc.wait(timeout=120) == 0
    assert "Application shutdown complete." in server.log.read_text()
    assert copies(tmp) == []


def test_canary_answers_its_share_then_stops_a_failing_challenger_without_a_failed_request(
    registrar, model_server, tmp_path, monkeypatch
) -> None:
    reg = registrar(canary={"percent": 50, "min_requests": 5, "max_error_rate": 0.2})
    champion = reg.register(seed=0)
    good = reg.register(seed=3, alias="challenger")
    server = model_server()
    wait_until("the challenger loaded", lambda: server.page()["challenger"] == good)

    def ask(key: str) -> str:
        response = server.predict(rows(1, day=60), headers={"X-Caller-Key": key})
        assert response.status_code == 200, response.text
        return str(response.json()["model_version"])

    sides = {f"caller-{i}": ask(f"caller-{i}") for i in range(40)}
    assert set(sides.values()) == {champion, good}  # both sides answer their share
    assert all(ask(key) == version for key, version in list(sides.items())[:10])  # sticky per caller
    page = server.page()["canary"]
    assert page["active"] and page["challenger"]["version"] == good and page["challenger"]["errors"] == 0

    # challenger moves to a blessed version that fails on live rows: its callers get the champion's answers
    example = pd.DataFrame(rows(3, day=1))[FEATURES]
    flaky = ct_version(reg.client, reg.spec, lambda: log_flaky_model(tmp_path, example),
                       signing_key=SIGNING_KEY.encode())  # fmt: skip
    reg.set_alias("challenger", flaky)
    monkeypatch.setenv("MLOPS_SERVING_URL", server.url)
    monkeypatch.setenv("MLOPS_SERVING_TOKEN", TOKEN)
    assert notify_model_server(MODEL, "challenger", flaky) == {server.url: "ok"}
    wait_until("the failing challenger loaded", lambda: server.page()["challenger"] == flaky)
    answered = [ask(f"caller-{i}") for i in range(60)]
    assert set(answered) == {champion}  # every request answered, none by the failing version
    canary = server.page()["canary"]
    stopped = canary["stopped"]
    assert stopped is not None and stopped["version"] == flaky, json.dumps(canary)
    assert "error rate" in stopped["reason"] and "above max_error_rate 0.2" in stopped["reason"]
    assert stopped["challenger"]["errors"] == stopped["challenger"]["requests"] >= 5
    assert canary["active"] is False and canary["challenger"]["requests"] == stopped["challenger"]["requests"]
    assert f"canary of challenger v{flaky} stopped" in server.log.read_text()
    assert server.stop()
