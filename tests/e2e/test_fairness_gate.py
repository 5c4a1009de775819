"""Fairness in the gate, explanations and the model card, through ``ct_<model>`` with real Airflow and MLflow.

The test model is the demo credit model with two extra columns: ``age_band`` (a sensitive attribute with
``use: drop``: in the data, validated, never a model input) and ``noise`` (a pure-noise model input).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from mlops_airflow.core import demo_data

pytestmark = pytest.mark.e2e
DEMO_SPEC = Path(__file__).resolve().parents[2] / "include" / "models" / "credit_default.yaml"
MODEL = "fair_credit"
#: Features the demo generator's label depends on most (its logit), all strong enough to show.
INFORMATIVE = ["utilization", "income", "late_payments", "debt_ratio", "employment_type"]
FAIRNESS = {"attribute": "age_band", "metric": "demographic_parity_difference"}
CARD = {"intended_use": "Ranking loan applications for manual review.", "limitations": ["Synthetic data only."]}


def write_spec(models: Path, fairness: list[dict[str, Any]]) -> None:
    spec = yaml.safe_load(DEMO_SPEC.read_text())
    spec.update(
        name=MODEL,
        source={"uri": f"landing/{MODEL}", "format": "csv", "timestamp_column": "event_date"},
        window={"train_batches": 6, "eval_batches": 1},
        estimator={
            "class": "sklearn.ensemble.HistGradientBoostingClassifier",
            "params": {"max_iter": 60, "early_stopping": False, "random_state": 0},
        },
        slices=[],
        gate={"thresholds": {"roc_auc": {"min": 0.7}}, "max_regression": 0.05, "n_bootstrap": 200},
        fairness=fairness,
        model_card=CARD,
        schedule=None,
    )
    spec["features"] += [
        {"name": "age_band", "type": "categorical", "nullable": False, "use": "drop"},
        {"name": "noise", "type": "numeric", "nullable": False},
    ]
    path = models / f"{MODEL}.yaml"
    path.write_text(yaml.safe_dump(spec))
    stamp = path.stat().st_mtime + 1  # a new mtime even within one clock tick: the spec cache reloads
    os.utime(path, (stamp, stamp))


def write_days(landing: Path, days: range) -> None:
    landing.mkdir(parents=True, exist_ok=True)
    for day in days:
        frame = demo_data.generate_batch(day)
        frame["age_band"] = np.select([frame["age"] < 30, frame["age"] < 55], ["young", "middle"], "senior")
        frame["noise"] = np.random.default_rng([7, day]).normal(0, 1, len(frame))
        date = demo_data.DEFAULT_START + dt.timedelta(days=day)
        frame.to_csv(landing / f"batch_{date.isoformat()}.csv", index=False)


def champion(client) -> str | None:
    aliases = client.get_registered_model(MODEL).aliases
    return None if "champion" not in aliases else str(aliases["champion"])


def artifact_text(client, run_id: str, path: str, tmp_path: Path) -> str:
    return Path(client.download_artifacts(run_id, path, str(tmp_path))).read_text()


def card_of(client, version: str, tmp_path: Path) -> str:
    uri = client.get_model_version(MODEL, version).tags["mlops.model_card"]
    run_id, path = uri.removeprefix("runs:/").split("/", 1)
    return artifact_text(client, run_id, path, tmp_path)


def test_fairness_criterion_blocks_a_candidate_that_passes_every_metric(
    run_dag, mlops_home, mlflow_client, monkeypatch, tmp_path
):
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("MLOPS_MODELS_DIR", str(models))
    landing = mlops_home / "data" / "landing" / MODEL
    write_days(landing, range(7))

    # First run, a lenient criterion: promoted; the card of the promoted version has every section.
    write_spec(models, [{**FAIRNESS, "max": 1.0}])
    first = run_dag(f"ct_{MODEL}")
    assert first.state == "success", first.tasks
    assert champion(mlflow_client) == "1"
    evaluation = first.xcom("evaluate_vs_champion")
    ranks = {row["feature"]: row["candidate_rank"] for row in evaluation["importance"]}
    assert "age_band" not in ranks  # a sensitive attribute with use: drop is no model input
    assert all(ranks[name] < ranks["noise"] for name in INFORMATIVE), ranks
    gap = evaluation["fairness"][0]["value"]
    assert gap is not None and gap > 0.02, evaluation["fairness"]
    card = card_of(mlflow_client, "1", tmp_path / "card1")
    for heading in (
        "## Intended use",
        "## Training data",
        "## Metrics",
        "## Feature importance",
        "## Fairness",
        "## Gate decision",
        "## Known limitations",
    ):
        assert heading in card, heading
    snapshot = first.xcom("snapshot")
    assert CARD["intended_use"] in card and CARD["limitations"][0] in card
    assert snapshot["content_hash"] in card and f"{snapshot['train_rows']} training" in card
    assert "Validation: passed" in card and "no champion (first run)" in card
    assert "`age_band`:" in card  # per-group table of the attribute
    assert all(f"| {band} |" in card for band in ("young", "middle", "senior"))
    assert "| 1 | utilization |" in card or "| 1 | income |" in card
    assert "model card: runs:/" in mlflow_client.get_model_version(MODEL, "1").description

    # A new day and a strict criterion: every metric check passes, the fairness check does not.
    write_days(landing, range(7, 8))
    write_spec(models, [{**FAIRNESS, "max": 0.02}])
    blocked = run_dag(f"ct_{MODEL}")
    decision = blocked.xcom("gate", key="gate_decision")
    assert decision["blessed"] is False and decision["champion_version"] == "1"
    failed = [c for c in decision["checks"] if c["verdict"] == "fail"]
    assert [c["name"] for c in failed] == ["fairness demographic_parity_difference(age_band) <= 0.02"]
    assert {c["name"] for c in decision["checks"]} >= {"roc_auc >= 0.7", "non_inferiority"}
    check = failed[0]
    judged = blocked.xcom("evaluate_vs_champion")["fairness"][0]
    assert check["value"] == pytest.approx(judged["value"]) and check["value"] > 0.02
    rates = {g: v["candidate"]["selection_rate"] for g, v in judged["groups"].items()}
    high, low = max(rates, key=rates.get), min(rates, key=rates.get)
    assert judged["value"] == pytest.approx(rates[high] - rates[low])
    # The report names the two groups furthest apart and the gap, and shows every group and the champion.
    assert (
        f"{high}={rates[high]:.4g} vs {low}={rates[low]:.4g} (gap {judged['value']:.4g}, max 0.02)" in check["detail"]
    )
    assert "champion on the same rows" in check["detail"]
    exp = mlflow_client.get_experiment_by_name(MODEL)
    run = mlflow_client.search_runs(
        [exp.experiment_id], f"tags.`airflow.run_id` = '{blocked.run_id}' and tags.`mlops.kind` = 'ct'"
    )[0]
    report = artifact_text(mlflow_client, run.info.run_id, "gate/report.md", tmp_path / "report")
    assert "### Fairness per group" in report and "### Permutation importance" in report
    assert all(f"| {band} |" in report for band in ("young", "middle", "senior"))
    champion_importance = json.loads(
        artifact_text(mlflow_client, run.info.run_id, "explain/importance_champion.json", tmp_path / "imp")
    )
    assert {f["feature"] for f in champion_importance["features"]} == set(ranks)  # every model input
    assert blocked.state_of("register_challenger") == "skipped" and blocked.state_of("promote") == "skipped"
    assert champion(mlflow_client) == "1"
    # The champion breaks the limit on the same rows too, and is no less unfair than the refused candidate:
    # it keeps serving, flagged in the decision, the run's tags, the report and the model page.
    assert 0.02 < judged["champion_value"] <= judged["value"]
    (breach,) = decision["champion_fairness_breaches"]
    assert (breach["champion"], breach["candidate"]) == (judged["champion_value"], judged["value"])
    flag = run.data.tags["mlops.champion_fairness_breach"]
    assert flag.startswith("champion v1 breaks fairness limit(s)") and "demographic_parity_difference(age_band)" in flag
    assert "**Champion fairness breach**: champion v1" in report
    from mlops_airflow.core.config import get_spec
    from mlops_airflow.ui.app import _fairness_breach, _status, render_model

    status = _status(get_spec(MODEL))
    page = render_model(get_spec(MODEL), status, None, None, None, None, _fairness_breach(status))
    assert "id='champion-fairness'" in page and "champion v1 breaks fairness limit(s)" in page
    # The champion's importance is read as its own run recorded it at registration, beside today's.
    recorded = {row["feature"]: row["candidate"] for row in evaluation["importance"]}
    rows = blocked.xcom("evaluate_vs_champion")["importance"]
    assert {row["basis"] for row in rows} == {"at registration"}
    assert {row["feature"]: row["champion_registered"] for row in rows} == recorded
    assert all(row["champion_today"] is not None for row in rows)
    assert "Champion importance at registration: read from champion v1's run" in report

    # The same rows without the criterion: promoted.
    write_spec(models, [])
    promoted = run_dag(f"ct_{MODEL}")
    assert promoted.state == "success", promoted.tasks
    decision = promoted.xcom("gate", key="gate_decision")
    assert decision["blessed"] is True and decision["champion_version"] == "1"
    version = str(promoted.xcom("register_challenger")["version"])
    assert champion(mlflow_client) == version
    card = card_of(mlflow_client, version, tmp_path / "card2")
    assert "Judged against: champion version 1" in card
    assert "No fairness criteria in the spec" in card
