"""The spec covers any tabular model: label types, task kinds, metrics per kind, per-feature preprocessing,
thresholds and transformer factories under ``include/`` -- and refuses what does not fit, naming file and key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mlops_airflow.core.config import load_model_spec, models_dir
from mlops_airflow.core.spec import ModelSpecError

EXAMPLES = Path(__file__).resolve().parents[2] / "include" / "examples"


def spec_from(tmp_path: Path, base: str, change, folder: Path | None = None):
    source = EXAMPLES / f"{base}.yaml" if base != "credit_default" else models_dir() / "credit_default.yaml"
    data = yaml.safe_load(source.read_text())
    change(data)
    target = folder or tmp_path
    target.mkdir(parents=True, exist_ok=True)
    path = target / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_example_specs_cover_every_kind(monkeypatch):
    monkeypatch.setenv("MLOPS_MODELS_DIR", str(EXAMPLES))
    kinds = {p.stem: load_model_spec(p) for p in EXAMPLES.glob("*.yaml")}
    assert kinds["product_tier"].kind == "multiclass" and kinds["product_tier"].primary == "log_loss"
    assert kinds["tumour_diagnosis"].positive_label == "malignant"
    fraud = kinds["fraud_alert"]
    assert fraud.kind == "binary" and fraud.classes == ["no", "yes"] and fraud.primary == "pr_auc"
    assert "noise" in fraud.feature_names and "noise" not in fraud.model_features


@pytest.mark.parametrize(
    ("base", "change", "key", "why"),
    [
        # a metric of the wrong task
        ("product_tier", lambda d: d.update(primary_metric="roc_auc"), "primary_metric", "does not fit a multiclass"),
        ("credit_default", lambda d: d.update(primary_metric="f1_macro"), "primary_metric", "does not fit a binary"),
        ("product_tier", lambda d: d["gate"]["thresholds"].update(rmse={"max": 1}), "gate.thresholds", "multiclass"),
        # label.positive not among the values (a string "1" is not the int 1)
        ("tumour_diagnosis", lambda d: d["label"].update(positive="cancer"), "label.positive", "not one of"),
        ("credit_default", lambda d: d["label"].update(positive="1"), "label.positive", "not one of"),
        ("product_tier", lambda d: d["label"].update(positive="plus"), "label.positive", "binary models only"),
        ("credit_default", lambda d: d["label"].update(values=[0, "1"]), "label.values", "of one type"),
        ("credit_default", lambda d: d.update(task="multiclass"), "label.values", "3 or more"),
        # a preprocessing option on the wrong feature type
        ("credit_default", lambda d: d["features"][6].update(log=True), "features.6", "not apply to a categorical"),
        ("credit_default", lambda d: d["features"][0].update(encoding="ordinal"), "features.0", "numeric"),
        ("product_tier", lambda d: d["features"][4].update(scale=True), "features.4", "not apply to a datetime"),
        ("product_tier", lambda d: d["features"][2].update(use="passthrough"), "features.2", "numeric or boolean"),
        ("product_tier", lambda d: d.update(threshold=0.3), "threshold", "binary models only"),
        ("credit_default", lambda d: d.update(threshold=1.5), "threshold", "not a probability"),
        (
            "credit_default",
            lambda d: d["estimator"].update({"class": "sklearn.neighbors.KNeighborsClassifier", "params": {},
                                             "search_space": {}, "sample_weight": "balanced"}),
            "estimator.sample_weight",
            "does not take sample weights",
        ),
        # an escape-hatch function outside include/
        ("tumour_diagnosis", lambda d: d["features"][5].update(transformer="os:system"), "transformer", "'os'"),
        ("tumour_diagnosis", lambda d: d["features"][5].update(transformer="../../x:f"), "transformer", "module:"),
        ("tumour_diagnosis", lambda d: d["features"][5].update(transformer="/tmp/x:f"), "transformer", "module:"),
    ],
)  # fmt: skip
def test_spec_that_does_not_fit_its_model_is_refused(tmp_path, monkeypatch, base, change, key, why):
    monkeypatch.setenv("MLOPS_INCLUDE_DIR", str(EXAMPLES.parent))
    path = spec_from(tmp_path, base, change)
    with pytest.raises(ModelSpecError) as err:
        load_model_spec(path)
    message = str(err.value)
    assert str(path) in message and key in message and why in message, message


def test_transformer_symlinked_out_of_include_is_refused(tmp_path, monkeypatch):
    include = tmp_path / "include"
    (include / "transforms").mkdir(parents=True)
    outside = tmp_path / "elsewhere.py"
    outside.write_text("def make():\n    raise SystemExit('imported code from outside include/')\n")
    (include / "transforms" / "sneaky.py").symlink_to(outside)
    monkeypatch.setenv("MLOPS_INCLUDE_DIR", str(include))
    path = spec_from(
        tmp_path, "tumour_diagnosis", lambda d: d["features"][5].update(transformer="transforms.sneaky:make")
    )
    with pytest.raises(ModelSpecError, match=r"no module 'transforms\.sneaky' under"):
        load_model_spec(path)


def test_a_transformer_module_in_the_models_folder_is_refused(tmp_path, monkeypatch):
    """The models folder holds specs, which may be written by whoever may add a model: a Python file beside them
    is not code reviewed with the DAGs, so a spec may not name it (config never becomes code)."""
    include = tmp_path / "include"
    models = include / "models"
    models.mkdir(parents=True)
    (models / "helpers.py").write_text("def make():\n    raise SystemExit('code from the models folder ran')\n")
    monkeypatch.setenv("MLOPS_INCLUDE_DIR", str(include))
    monkeypatch.setenv("MLOPS_MODELS_DIR", str(models))
    path = spec_from(tmp_path, "tumour_diagnosis", lambda d: d["features"][5].update(transformer="models.helpers:make"))
    with pytest.raises(ModelSpecError, match=r"'models\.helpers' lies in the models folder .* where specs live"):
        load_model_spec(path)


def test_transformer_factory_is_imported_at_task_time_from_include(monkeypatch):
    import sys

    from mlops_airflow.core.training import load_transformer

    monkeypatch.setenv("MLOPS_INCLUDE_DIR", str(EXAMPLES.parent))
    transformer = load_transformer("transforms.scaling:quantile_normal")
    loaded = sys.modules["mlops_include_transforms_scaling"]
    assert Path(loaded.__file__).resolve() == (EXAMPLES.parent / "transforms" / "scaling.py").resolve()
    out = transformer.fit_transform(np.arange(200, dtype=float).reshape(-1, 1) ** 3)
    assert out.shape == (200, 1) and abs(float(out.mean())) < 1e-6


def test_label_kind_rules_agree_between_metrics_and_the_served_model():
    """The served model (which may not import this package) matches labels by the same rule as the metrics."""
    from mlops_airflow.core import evaluation, served_model

    values = [True, False, 1, 0, 1.0, 2.5, "1", "yes", np.int64(3), np.bool_(True), np.float32(4.0), None, np.nan]
    for value in values:
        assert served_model.label_key(value) == evaluation._label_key(value), value


def test_prepare_features_types_each_feature_kind():
    from mlops_airflow.core.served_model import prepare_features

    config = {
        "features": [
            {"name": "n", "type": "numeric", "parts": []},
            {"name": "c", "type": "categorical", "parts": []},
            {"name": "b", "type": "boolean", "parts": []},
            {"name": "d", "type": "datetime", "parts": ["year", "month", "dayofweek", "is_weekend"]},
        ]
    }
    raw = pd.DataFrame(
        {
            "n": ["1.5", None],
            "c": [3, None],
            "b": ["True", "no"],
            "d": ["2026-02-07", "garbage"],
            "ignored": [1, 2],
        }
    )
    out = prepare_features(raw, config)
    assert list(out.columns) == ["n", "c", "b", "d__year", "d__month", "d__dayofweek", "d__is_weekend"]
    assert out["n"].iloc[0] == 1.5 and np.isnan(out["n"].iloc[1])
    assert out["c"].tolist() == ["3", None]
    assert out["b"].tolist() == [1.0, 0.0]
    assert out.iloc[0, 3:].tolist() == [2026.0, 2.0, 5.0, 1.0] and out.iloc[1, 3:].isna().all()
