"""The spec's ``retrain:`` section governs ``monitor_<model>``: its weekly cap counts the model's CT runs in MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e
INCLUDED = Path(__file__).resolve().parents[2] / "include" / "models" / "credit_default.yaml"


@pytest.fixture
def capped_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    spec = yaml.safe_load(INCLUDED.read_text())
    spec["retrain"] = {"max_runs_per_week": 1}
    spec.setdefault("drift", {})["cooldown_hours"] = 0  # no spacing between runs: only the cap holds back
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "credit_default.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.setenv("MLOPS_MODELS_DIR", str(folder))
    return folder


def test_drift_after_the_weeks_one_ct_run_is_held_back_by_the_cap(capped_spec, run_dag, demo_batches):
    demo_batches(range(15))
    assert run_dag("ct_credit_default").state == "success"
    demo_batches(range(15, 16), feature_shift=1.0)  # drift that would ask for a retrain without the cap

    monitored = run_dag("monitor_credit_default")
    assert monitored.state == "success", monitored.tasks
    decision = monitored.xcom("monitor")
    assert decision["drifted_features"] and decision["request"] is False
    assert "1 runs this week = max 1" in decision["reason"]
    assert monitored.state_of("request_retrain") == "skipped"
