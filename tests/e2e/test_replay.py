"""``mlops replay`` and ``replay_<model>``: two policies over 8 days of the demo feed with a concept change and a
corrupt batch; the same decisions from the command line and the DAG; the live model untouched."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops_airflow import cli
from mlops_airflow.core import demo_data
from mlops_airflow.core.replay import decisions

REPO = Path(__file__).resolve().parents[2]
WARMUP = 4  # demo days 0-3 train the first champion
DAYS = 8  # demo days 4-11 are replayed
CONCEPT_DAY = 8
CORRUPT_DAY = 6
FIRST = (demo_data.DEFAULT_START + dt.timedelta(days=WARMUP)).isoformat()
LAST = (demo_data.DEFAULT_START + dt.timedelta(days=WARMUP + DAYS - 1)).isoformat()


@pytest.fixture
def small_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``credit_default`` with a 4-batch window, one candidate and a short bootstrap (the replay's cost)."""
    raw = yaml.safe_load((REPO / "include" / "models" / "credit_default.yaml").read_text())
    raw["window"] = {"train_batches": WARMUP - 1, "eval_batches": 1}
    raw["estimator"]["search_space"] = {"learning_rate": [0.1], "max_leaf_nodes": [15]}
    raw["estimator"]["params"]["max_iter"] = 60
    raw["gate"]["n_bootstrap"] = 200
    raw["gate"]["min_slice_size"] = 50
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "credit_default.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("MLOPS_MODELS_DIR", str(folder))
    return folder


def _feed(landing: Path) -> dict[str, str]:
    for day in range(WARMUP + DAYS):
        corrupt = "out_of_range" if day == CORRUPT_DAY else None
        shift = 1.5 if day >= CONCEPT_DAY else 0.0
        demo_data.write_batch(landing, day, n_rows=300, concept_shift=shift, corrupt=corrupt)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(landing.iterdir())}


def test_replay_from_cli_and_dag_agree_and_leave_the_model_alone(
    small_spec: Path,
    landing: Path,
    mlops_home: Path,
    mlflow_client: Any,
    run_dag: Callable[..., Any],
    tmp_path: Path,
) -> None:
    landed = _feed(landing)
    out = tmp_path / "cli-report"
    args = ["replay", "credit_default", "--from", FIRST, "--to", LAST, "--policy", "never,nightly", "--out", str(out)]
    assert cli.main([*args, "--format", "json", "--log"]) == 0  # --log: the report also goes to MLflow
    report = json.loads((out / "replay.json").read_text())
    assert (out / "replay.md").read_text().startswith("# Replay of `credit_default`")
    assert (out / "replay.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "work").exists()

    never, nightly = report["policies"]["never"], report["policies"]["nightly"]
    assert [r["date"] for r in nightly["days"]] == [
        (dt.date.fromisoformat(FIRST) + dt.timedelta(days=i)).isoformat() for i in range(DAYS)
    ]
    assert {r["version"] for r in never["days"]} == {1} and never["ct_runs"] == 0
    assert nightly["ct_runs"] == DAYS and nightly["models_trained"] >= 1
    assert {r["trigger"] for r in nightly["days"]} <= {"schedule", "drift", "observed_drop"}
    assert all(r["decision"] and r["ct"] for r in nightly["days"])  # each night: a reason with figures, a CT run
    after_change = [r for r in nightly["days"] if r["date"] >= demo_data.batch_file_name(CONCEPT_DAY)[6:16]]
    assert any(r["decision"].startswith("observed roc_auc drop") for r in after_change)
    # the corrupt batch is rejected by validation and never reaches a served model
    corrupt = demo_data.batch_file_name(CORRUPT_DAY)
    assert nightly["rejected_by_validation"] >= 1 and corrupt in nightly["quarantined"]
    assert nightly["corrupt_batches_served"] == [] and nightly["days_served_by_corrupt_model"] == 0
    for name in ("mean", "worst", "days_below_gate_threshold", "compute_seconds"):
        assert nightly[name] is not None and never[name] is not None

    # the DAG replays the same history to the same decisions, logged to <model>/replay only
    result = run_dag("replay_credit_default", conf={"from": FIRST, "to": LAST, "policies": ["never", "nightly"]})
    assert result.state_of("replay") == "success"
    run_id = result.xcom("replay")["mlflow_run_id"]
    run = mlflow_client.get_run(run_id)
    assert mlflow_client.get_experiment(run.info.experiment_id).name == "credit_default/replay"
    assert run.data.metrics["nightly.ct_runs"] == DAYS
    local = mlflow_client.download_artifacts(run_id, "replay.json", str(tmp_path / "dl"))
    assert decisions(json.loads(Path(local).read_text())) == decisions(report)
    # the command line's report is in the same experiment, where the model page lists it
    logged = mlflow_client.search_runs([run.info.experiment_id], "tags.`mlops.replay_source` = 'cli'")
    assert len(logged) == 1 and logged[0].data.metrics["nightly.ct_runs"] == DAYS

    # the live model: no registered model, no run in its experiment, no storage, the landing zone as landed
    assert mlflow_client.search_registered_models() == []
    assert mlflow_client.get_experiment_by_name("credit_default") is None
    assert not (mlops_home / "storage" / "credit_default").exists()
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(landing.iterdir())} == landed


def test_replay_reports_the_first_night_late_labels_request_a_retrain(small_spec: Path, tmp_path: Path) -> None:
    """Labels 2 days late, a concept change on replayed day 2: a labels-only policy first asks on day 4."""
    from mlops_airflow.core.config import get_spec
    from mlops_airflow.core.replay import ReplayPolicy, replay
    from mlops_airflow.core.retrain_policy import RetrainPolicy

    feed = tmp_path / "feed"
    for day in range(WARMUP + 6):
        demo_data.write_batch(feed, day, n_rows=300, concept_shift=1.5 if day >= WARMUP + 2 else 0.0)
    spec = get_spec("credit_default", small_spec)
    labels_only = RetrainPolicy.from_spec(spec, "labels_only", schedule=None, on_drift=False, max_observed_drop=0.05)
    first = demo_data.DEFAULT_START + dt.timedelta(days=WARMUP)
    report = replay(
        spec,
        feed,
        first,
        first + dt.timedelta(days=5),
        [ReplayPolicy("labels_only", "observed drop", "gated", labels_only)],
        tmp_path / "out",
        label_delay_days=2,
    )
    policy = report["policies"]["labels_only"]
    asked = [{"day": r["day"], "date": r["date"], "trigger": r["trigger"]} for r in policy["days"] if r["trigger"]]
    assert policy["retrain_requests"] == asked
    assert asked[0] == {"day": 4, "date": (first + dt.timedelta(days=4)).isoformat(), "trigger": "observed_drop"}
    assert all(r["decision"] == "no retrain: no labelled rows; no schedule" for r in policy["days"][:2])
