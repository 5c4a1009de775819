"""One bad YAML breaks only its own model: the others keep their DAGs, the bad one is visible with the reason."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest

from mlops_airflow.core.config import models_dir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def models_with_a_bad_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(models_dir() / "credit_default.yaml", folder / "credit_default.yaml")
    bad = (models_dir() / "credit_default.yaml").read_text().replace("name: credit_default", "name: churn")
    bad = bad.replace("sklearn.ensemble.HistGradientBoostingClassifier", "sklearn.utils._testing.check_output")
    (folder / "churn.yaml").write_text(bad)
    (folder / "broken.yaml").write_text("name: [unclosed")
    monkeypatch.setenv("MLOPS_MODELS_DIR", str(folder))
    return folder


def test_good_models_keep_their_dags_and_bad_ones_show_why(models_with_a_bad_one):
    from airflow.dag_processing.dagbag import DagBag

    with warnings.catch_warnings():
        # What a dag-processor shows; the suite's worker processes start with PYTHONWARNINGS=ignore.
        warnings.simplefilter("default")
        bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    for prefix in ("ct_", "monitor_", "predict_", "rollback_", "replay_"):
        assert f"{prefix}credit_default" in bag.dags
    for stem, key, reason in (
        ("churn", "estimator.class", "is not a scikit-learn classifier"),
        ("broken", "", "not valid YAML"),
    ):
        dag = bag.dags[f"ct_{stem}"]
        assert "invalid-spec" in dag.tags
        assert dag.schedule is None or str(dag.timetable.summary) in {"None", "Never, external triggers only"}
        shown = f"{dag.description}\n{dag.doc_md}"
        assert str(models_with_a_bad_one / f"{stem}.yaml") in shown and key in shown and reason in shown
        assert not any(f"{p}{stem}" in bag.dags for p in ("monitor_", "predict_", "rollback_", "replay_"))
    warned = " ".join(" ".join(w) for w in bag.captured_warnings.values())
    assert "churn.yaml" in warned and "broken.yaml" in warned


def test_running_the_stand_in_fails_with_the_spec_error(models_with_a_bad_one):
    from airflow.sdk.exceptions import AirflowFailException

    from mlops_airflow.dag_factory import build_dags

    task = build_dags()["ct_churn"].get_task("invalid_spec")
    with pytest.raises(AirflowFailException, match=r"estimator\.class"):
        task.execute({})
