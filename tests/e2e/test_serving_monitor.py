"""``monitor_credit_default`` measures drift on what production scored: the model server's request log.

The landing zone's newest batch looks like the training data; the traffic the server answered is drifted.
Only the request log shows it, and the monitor requests a retrain because of it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from e2e_support import free_port

from mlops_airflow.core import demo_data, request_log, settings

pytestmark = pytest.mark.e2e
MODEL = "credit_default"
TOKEN = "monitor-test-token-0123456789"
FEATURES = ["age", "income", "debt_ratio", "credit_lines", "late_payments", "utilization", "employment_type",
            "region", "home_ownership"]  # fmt: skip


def serve_drifted_traffic(tmp_path: Path, requests_count: int) -> None:
    """Start the model server on the embedded store, send drifted rows, stop it cleanly (log written)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.default_tracking_uri(), "MLOPS_SERVING_TOKEN": TOKEN,
           "MLOPS_STORAGE_BASE": settings.storage_base()}  # fmt: skip
    log = tmp_path / "model-server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlops_airflow.serving", "--port", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180  # a startup bound, not an assertion on speed
        while True:
            try:
                if requests.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        for i in range(requests_count):
            frame = demo_data.generate_batch(30 + i, n_rows=100, seed=100 + i, feature_shift=2.0)[FEATURES]
            body = {"dataframe_split": {"columns": FEATURES, "data": frame.astype(object).where(frame.notna(), None)
                                        .values.tolist()}}  # fmt: skip
            response = requests.post(f"{url}/v1/models/{MODEL}/predict", json=body,
                                     headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)  # fmt: skip
            assert response.status_code == 200, response.text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
    assert "Application shutdown complete." in log.read_text()


@pytest.mark.demo_champion
def test_monitor_requests_a_retrain_for_drifted_served_traffic(demo_champion, run_dag, tmp_path) -> None:
    assert demo_champion.state == "success"

    quiet = run_dag(f"monitor_{MODEL}")  # no request log yet: the landing zone alone, which has not drifted
    assert quiet.state == "success", quiet.tasks
    assert quiet.xcom("monitor")["request"] is False and quiet.xcom("monitor")["serving_drift_share"] is None

    serve_drifted_traffic(tmp_path, requests_count=5)
    served = request_log.read_log(settings.storage_base(), MODEL)
    assert len(served) == 500 and set(served["role"]) == {request_log.CHAMPION_ROLE}

    monitored = run_dag(f"monitor_{MODEL}")
    assert monitored.state == "success", monitored.tasks
    report = monitored.xcom("monitor")
    assert report["drift_share"] < 0.3  # the landing zone still looks like the training data
    assert report["drift_source"] == "serving log" and report["serving_drift_share"] >= 0.3
    assert report["serving_out_of_domain_rows"] == 0  # out_of_domain: reject; nothing answered was outside
    assert report["request"] is True and "feature drift" in report["reason"]
    assert monitored.state_of("request_retrain") == "success"
