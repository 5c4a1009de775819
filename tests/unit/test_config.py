"""Model spec loading: a wrong spec names the file, the key and why."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlops_airflow.core.config import load_model_spec, models_dir
from mlops_airflow.core.spec import ModelSpecError

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
        (
            lambda d: d.update(window={"train_days": 365, "eval_batches": 1}),
            "window",
            "eval_batches, train_days measure the window in batches and time; a window is measured one way",
        ),
        (
            lambda d: d.update(window={"train_rows": 5000, "eval_days": 7}),
            "window",
            "eval_days, train_rows measure the window in time and rows",
        ),
        (lambda d: d.update(window={"eval_days": 7}), "window", "train_days or train_weeks is missing"),
        (
            lambda d: d.update(window={"train_days": 7, "train_weeks": 1, "eval_days": 1}),
            "window",
            "train_days and train_weeks both give the training window",
        ),
        (lambda d: d["label"].update(nullable=True), "label.nullable", "max_unlabelled_fraction (0.0..1.0)"),
        (lambda d: d["label"].update(max_unlabelled_fraction=1.5), "label.max_unlabelled_fraction", "less than"),
        (
            lambda d: d["features"][6].update(impute="most_frequent"),
            "features.6",
            "missing: own_category (default) or missing: most_frequent",
        ),
        (lambda d: d["features"][7].update(categories=[1, 2.5]), "features.7.categories", "2.5 is a fraction"),
        (
            lambda d: d["features"][7].update(categories=[3, "3"]),
            "features.7.categories",
            "['3'] listed more than once",
        ),
        (lambda d: d["features"][0].update(missing="most_frequent"), "features.0", "missing do(es) not apply"),
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


def test_windows_by_time_rows_or_batches(tmp_path):
    by_days = load_model_spec(write_variant(tmp_path, lambda d: d.update(window={"train_days": 365, "eval_days": 21})))
    assert by_days.window.kind == "time" and (by_days.window.train_size, by_days.window.eval_size) == (365, 21)
    assert by_days.window.train_batches is None  # not a window of 14 + 1 files
    by_weeks = load_model_spec(write_variant(tmp_path, lambda d: d.update(window={"train_weeks": 52, "eval_days": 10})))
    assert (by_weeks.window.train_size, by_weeks.window.eval_size) == (364, 10)
    by_rows = load_model_spec(
        write_variant(tmp_path, lambda d: d.update(window={"train_rows": 9000, "eval_rows": 900}))
    )
    assert by_rows.window.kind == "rows" and by_rows.window.describe().startswith("the newest 900 labelled row(s)")
    default = load_model_spec(write_variant(tmp_path, lambda d: d.pop("window")))
    assert (default.window.kind, default.window.train_batches, default.window.eval_batches) == ("batches", 14, 1)
    only_eval = load_model_spec(write_variant(tmp_path, lambda d: d.update(window={"eval_batches": 3})))
    assert (only_eval.window.train_batches, only_eval.window.eval_batches) == (14, 3)


def test_integer_and_boolean_category_codes_are_matched_by_value_as_the_model_reads_them(tmp_path):
    import numpy as np

    from mlops_airflow.core.served_model import category_text
    from mlops_airflow.core.spec import category_code

    def codes(d):
        d["features"][7].update(categories=[3, 4, 5, 6, 8], missing="most_frequent")
        d["features"][8].update(categories=[True, False])

    spec = load_model_spec(write_variant(tmp_path, codes))
    assert spec.feature("region").categories == ["3", "4", "5", "6", "8"]
    assert spec.feature("region").missing == "most_frequent"
    assert spec.feature("home_ownership").categories == ["True", "False"]
    # a declared code is the text a landed or served value is compared by, whatever type it lands as
    for value in (3, 3.0, "3", True, False, "north", 0, -2, 8.0):
        assert category_code(value) == category_text(value), value
    for landed in (np.int64(3), np.float64(3.0), np.bool_(True)):
        assert category_text(landed) in {"3", "True"}


def test_late_labels_are_declared_on_the_label(tmp_path):
    spec = load_model_spec(
        write_variant(tmp_path, lambda d: d["label"].update(delay_days=3, max_unlabelled_fraction=0.1))
    )
    assert (spec.label.delay_days, spec.label.max_unlabelled_fraction) == (3, 0.1)
    assert (load_model_spec(GOOD).label.delay_days, load_model_spec(GOOD).label.max_unlabelled_fraction) == (0, 0.0)


def test_yes_no_on_off_in_a_spec_are_text_and_true_false_stay_booleans(tmp_path):
    # YAML 1.1 read `values: [no, yes]` as [False, True]: landed "no"/"yes" labels matched no class
    text = GOOD.read_text().replace("values: [0, 1]", "values: [no, yes]\n  positive: yes")
    text = text.replace("categories: [rent, own, mortgage]", "categories: [on, off, mortgage]")
    text = text.replace("{name: age, type: numeric, nullable: false,", "{name: age, type: numeric, nullable: off,")
    text = text.replace("{name: income, type: numeric, nullable: true,", "{name: income, type: numeric, nullable: yes,")
    path = tmp_path / "credit_default.yaml"
    path.write_text(text)
    spec = load_model_spec(path)
    assert spec.label.values == ["no", "yes"] and spec.positive_label == "yes"
    assert spec.feature("home_ownership").categories == ["on", "off", "mortgage"]
    assert spec.feature("age").nullable is False and spec.feature("income").nullable is True  # options: booleans
    path.write_text(GOOD.read_text().replace("values: [0, 1]", "values: [FALSE, True]"))
    assert load_model_spec(path).label.values == [False, True]


@pytest.mark.parametrize("name", ["request_id", "row", "prediction", "predicted_at", "model_version", "proba_1"])
def test_a_feature_named_as_a_column_the_package_writes_beside_the_inputs_is_refused(tmp_path, name):
    # a feature `row` made the model server's request log unwritable; `prediction` was overwritten in
    # prediction files by the model's answer
    path = write_variant(tmp_path, lambda d: d["features"].append({"name": name, "type": "numeric"}))
    with pytest.raises(ModelSpecError, match=rf"features: \['{name}'\] is a column the package writes"):
        load_model_spec(path)


def test_the_reserved_columns_cover_what_the_request_log_and_the_answer_add():
    from mlops_airflow.core.request_log import META_COLUMNS, OUT_OF_DOMAIN_COLUMN
    from mlops_airflow.core.served_model import proba_column
    from mlops_airflow.core.spec import PROBA_PREFIX, RESERVED_COLUMNS

    assert {*META_COLUMNS, OUT_OF_DOMAIN_COLUMN, "prediction", "predicted_at"} <= set(RESERVED_COLUMNS)
    assert proba_column("x").startswith(PROBA_PREFIX)
