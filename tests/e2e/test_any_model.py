"""Any tabular model from one YAML: the example models of ``include/examples`` end to end.

Multiclass with string labels (``product_tier``), binary with string labels and a chosen positive class
(``tumour_diagnosis``, scikit-learn's bundled breast cancer data), and an imbalanced binary model ranked by
``pr_auc`` with balanced sample weights and an F1-optimal threshold (``fraud_alert``). Each runs ``ct_``,
``predict_`` and ``monitor_`` with real Airflow (``dag.test()``), MLflow and Great Expectations.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from mlops_airflow.core import example_data

pytestmark = pytest.mark.e2e
EXAMPLES = Path(__file__).resolve().parents[2] / "include" / "examples"
TIER_PROBA = ["proba_basic", "proba_plus", "proba_premium"]


@pytest.fixture(autouse=True)
def example_models(monkeypatch):
    monkeypatch.setenv("MLOPS_MODELS_DIR", str(EXAMPLES))


def landing(mlops_home: Path, model: str) -> Path:
    return mlops_home / "data" / "landing" / model


def scoring_zone(mlops_home: Path, model: str) -> Path:
    return mlops_home / "data" / "scoring" / model


def ct_run(run_dag, model: str):
    result = run_dag(f"ct_{model}")
    assert result.state_of("validate_data") == "success", result.tasks
    assert result.state_of("gate") == "success", result.tasks
    return result


def champion_version(client, model: str) -> str | None:
    aliases = client.get_registered_model(model).aliases
    return None if "champion" not in aliases else str(aliases["champion"])


def predictions(mlops_home: Path, model: str) -> pd.DataFrame:
    files = sorted((mlops_home / "storage" / model / "predictions").glob("*.parquet"))
    assert files, "predict wrote no file"
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def test_multiclass_gate_blocks_a_worse_candidate_and_promotes_a_better_one(run_dag, mlops_home, mlflow_client):
    example_data.write_product_tier_batches(landing(mlops_home, "product_tier"), range(7))
    first = ct_run(run_dag, "product_tier")
    assert first.state == "success", first.tasks
    evaluation = first.xcom("evaluate_vs_champion")
    assert set(evaluation["candidate"]) == {"roc_auc_ovr", "log_loss", "f1_macro", "accuracy", "balanced_accuracy"}
    assert champion_version(mlflow_client, "product_tier") == "1"
    exp = mlflow_client.get_experiment_by_name("product_tier")
    parent = mlflow_client.search_runs([exp.experiment_id], "tags.`mlops.kind` = 'ct'")[0]
    plots = {a.path for a in mlflow_client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/confusion_matrix.png", "plots/roc_curve_per_class.png"}

    # Today's rows are as before, but the six training days carry heavy label noise: the candidate
    # is worse than the champion on today's rows, and the gate keeps the champion.
    example_data.write_product_tier_batches(landing(mlops_home, "product_tier"), range(7, 13), noise=4.0)
    example_data.write_product_tier_batches(landing(mlops_home, "product_tier"), range(13, 14))
    worse = ct_run(run_dag, "product_tier")
    decision = worse.xcom("gate", key="gate_decision")
    assert decision["blessed"] is False, decision
    assert decision["champion_version"] == "1"
    assert worse.state_of("promote") == "skipped"
    assert champion_version(mlflow_client, "product_tier") == "1"
    judged = worse.xcom("evaluate_vs_champion")
    assert judged["candidate"]["log_loss"] > judged["champion"]["log_loss"]

    # The world moved (tiers are cut at other spend levels) and the candidate learnt it: promoted.
    example_data.write_product_tier_batches(landing(mlops_home, "product_tier"), range(14, 21), shift=0.8)
    better = ct_run(run_dag, "product_tier")
    assert better.state == "success", better.tasks
    decision = better.xcom("gate", key="gate_decision")
    assert decision["blessed"] is True and decision["champion_version"] == "1"
    judged = better.xcom("evaluate_vs_champion")
    assert judged["candidate"]["log_loss"] < judged["champion"]["log_loss"]
    assert champion_version(mlflow_client, "product_tier") == str(better.xcom("register_challenger")["version"])

    # Batch scoring answers labels and one probability per class, with the version that scored them.
    scoring = scoring_zone(mlops_home, "product_tier")
    example_data.write_product_tier_batches(scoring, range(21, 22), shift=0.8)
    scored = run_dag("predict_product_tier")
    assert scored.state == "success", scored.tasks
    out = predictions(mlops_home, "product_tier")
    assert {"prediction", *TIER_PROBA, "model_version"} <= set(out.columns)
    assert set(out["prediction"]) <= {"basic", "plus", "premium"}
    assert (out[TIER_PROBA].sum(axis=1) - 1).abs().max() < 1e-9
    assert set(out["model_version"]) == {champion_version(mlflow_client, "product_tier")}
    chosen = out[TIER_PROBA].to_numpy().argmax(axis=1)
    assert (out["prediction"].to_numpy() == pd.Series(["basic", "plus", "premium"]).to_numpy()[chosen]).all()

    # The monitor scores what landed with the same model and reports the label distributions per class.
    example_data.write_product_tier_batches(landing(mlops_home, "product_tier"), range(21, 22), shift=0.8)
    monitored = run_dag("monitor_product_tier")
    assert monitored.state == "success", monitored.tasks
    report = monitored.xcom("monitor")
    assert report["live_metric"] is not None and report["champion_version"] == champion_version(
        mlflow_client, "product_tier"
    )
    plots = {a.path for a in mlflow_client.list_artifacts(report["mlflow_run_id"], "drift/plots")}
    assert {"drift/plots/labels_predicted.png", "drift/plots/labels_observed.png"} <= plots
    drift = mlflow_client.download_artifacts(report["mlflow_run_id"], "drift/report.json", str(mlops_home))
    compared = {f["name"]: f["kind"] for f in json.loads(Path(drift).read_text())["features"]}
    assert compared.get("is_member") == "categorical", compared  # a boolean feature is compared too


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_mlflow_models_serve_answers_labels_and_named_class_probabilities(run_dag, mlops_home, mlflow_client):
    from mlops_airflow.core import settings

    example_data.write_product_tier_batches(landing(mlops_home, "product_tier"), range(7))
    assert ct_run(run_dag, "product_tier").state == "success"
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.default_tracking_uri()}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/product_tier@champion",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).read()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read().decode()[-3000:]
                time.sleep(0.5)
        rows = example_data.product_tier_batch(5, seed=99).drop(columns=["tier"])
        body = {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert len(answer) == 5
    for row in answer:
        assert set(row) == {"prediction", *TIER_PROBA}
        assert row["prediction"] in {"basic", "plus", "premium"}
        assert abs(sum(row[c] for c in TIER_PROBA) - 1) < 1e-6


def test_binary_model_with_string_labels_and_a_chosen_positive_class(run_dag, mlops_home, mlflow_client):
    import mlflow

    example_data.write_tumour_batches(landing(mlops_home, "tumour_diagnosis"), days=7)
    result = ct_run(run_dag, "tumour_diagnosis")
    assert result.state == "success", result.tasks
    evaluation = result.xcom("evaluate_vs_champion")
    assert evaluation["candidate"]["roc_auc"] > 0.9  # about malignant tumours, the positive class
    selected = result.xcom("select_candidate")
    model = mlflow.pyfunc.load_model("models:/tumour_diagnosis@champion")
    assert model.model_config["positive_index"] == 1 and model.model_config["classes"] == ["benign", "malignant"]
    assert model.model_config["threshold"] == pytest.approx(selected["threshold"])  # chosen by Youden's J

    scoring = scoring_zone(mlops_home, "tumour_diagnosis")
    example_data.write_tumour_batches(scoring, days=7)
    for path in sorted(scoring.iterdir())[:-1]:
        path.unlink()  # one batch to score
    assert run_dag("predict_tumour_diagnosis").state == "success"
    out = predictions(mlops_home, "tumour_diagnosis")
    assert set(out["prediction"]) <= {"benign", "malignant"}
    threshold = model.model_config["threshold"]
    assert ((out["proba_malignant"] >= threshold) == (out["prediction"] == "malignant")).all()
    # labels came with the scored rows: most predictions are right
    assert (out["prediction"] == out["diagnosis"]).mean() > 0.85

    monitored = run_dag("monitor_tumour_diagnosis")
    assert monitored.state == "success", monitored.tasks
    assert monitored.xcom("monitor")["live_metric"] > 0.85


def test_imbalanced_binary_model_ranked_by_pr_auc(run_dag, mlops_home, mlflow_client):
    import mlflow

    example_data.write_fraud_batches(landing(mlops_home, "fraud_alert"), range(7))
    result = ct_run(run_dag, "fraud_alert")
    assert result.state == "success", result.tasks
    assert [result.state_of(f"train[{i}]") for i in range(2)] == ["success", "success"]
    decision = result.xcom("gate", key="gate_decision")
    assert decision["primary_metric"] == "pr_auc" and decision["blessed"] is True
    candidates = [result.xcom("train", map_index=i) for i in range(2)]
    selected = result.xcom("select_candidate")
    best = max(candidates, key=lambda c: c["metrics"]["pr_auc"])
    assert selected["candidate_index"] == best["index"]
    # an F1-optimal alert threshold for 6 % positives lies well away from 0.5, and the model keeps it
    assert abs(selected["threshold"] - 0.5) > 0.05
    model = mlflow.pyfunc.load_model(selected["model_uri"])
    assert model.model_config["threshold"] == pytest.approx(selected["threshold"])

    example_data.write_fraud_batches(scoring_zone(mlops_home, "fraud_alert"), range(7, 8))
    assert run_dag("predict_fraud_alert").state == "success"
    out = predictions(mlops_home, "fraud_alert")
    assert {"prediction", "proba_no", "proba_yes"} <= set(out.columns)
    assert set(out["prediction"]) == {"no", "yes"}
    assert "noise" in out.columns  # a dropped feature is not a model input, the row keeps it
