"""Model spec loading: a wrong spec names the file, the key and why."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlops_airflow.core.config import ModelSpecError, load_model_spec, models_dir

GOOD = models_dir() / "credit_default.yaml"


def write_variant(tmp_path: Path, change) -> Path:
    data = yaml.safe_load(GOOD.read_text())
    change(data)
    path = tmp_path / "credit_default.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_demo_spec_loads():
    spec = load_model_spec(GOOD)
    assert spec.task == "classification" and spec.primary == "roc_auc"
    assert "region" in spec.categorical_features and "income" in spec.numeric_features
    assert spec.retrain_asset_uri == "mlops://credit_default/retrain-request"


@pytest.mark.parametrize(
    ("change", "key", "why"),
    [
        (lambda d: d.update(task="ranking"), "task", "classification"),
        (lambda d: d["features"][0].update(type="text"), "features.0.type", "numeric"),
        (
            lambda d: d["gate"]["thresholds"].update(rmse={"max": 1}),
            "gate.thresholds",
            "metric 'rmse' does not fit a binary model",
        ),
        (lambda d: d.update(primary_metric="r2"), "primary_metric", "does not fit a binary model"),
        (lambda d: d["estimator"].update({"class": "xgboost.XGBClassifier"}), "estimator.class", "sklearn"),
        (lambda d: d.update(slices=["age"]), "slices", "is not a categorical or boolean feature"),
        (lambda d: d.pop("label"), "label", "Field required"),
        (lambda d: d["gate"].update(confidence=1.5), "gate.confidence", "less than 1"),
        (lambda d: d.update(surprise=True), "surprise", "Extra inputs"),
        (lambda d: d["features"][1].update(min=10, max=1), "features.1", "greater than max"),
    ],
)
def test_wrong_spec_names_file_key_and_reason(tmp_path, change, key, why):
    path = write_variant(tmp_path, change)
    with pytest.raises(ModelSpecError) as err:
        load_model_spec(path)
    message = str(err.value)
    assert str(path) in message and key in message and why in message


def test_name_must_match_file(tmp_path):
    path = write_variant(tmp_path, lambda d: d.update(name="other_model"))
    with pytest.raises(ModelSpecError, match="must match the file name"):
        load_model_spec(path)


def test_not_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed")
    with pytest.raises(ModelSpecError, match="not valid YAML"):
        load_model_spec(path)
