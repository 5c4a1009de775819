"""Labels of every type a spec allows, and feature columns of awkward shapes, through the functions the training
and evaluation tasks call: real scikit-learn fits on small frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlops_airflow.core import training
from mlops_airflow.core.config import parse_model_spec
from mlops_airflow.core.errors import RowsError
from mlops_airflow.core.evaluation import Target, compute_metrics
from mlops_airflow.core.scoring import encode_labels, model_config, model_input, output_scores
from mlops_airflow.core.served_model import model_output
from mlops_airflow.core.spec import ModelSpecError

LOGISTIC = {"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 200}}
NUMERIC = {"name": "a", "type": "numeric"}


def make_spec(*, values=None, positive=None, task="classification", features=None, estimator=None):
    label = {"name": "y", **({"values": values} if values is not None else {})}
    if positive is not None:
        label["positive"] = positive
    return parse_model_spec(
        {
            "name": "probe",
            "task": task,
            "source": {"uri": "landing/probe", "format": "csv", "timestamp_column": "ts"},
            "features": features or [NUMERIC],
            "label": label,
            "window": {"train_batches": 3, "eval_batches": 1, "min_selection_rows": 10, "min_eval_rows": 10},
            "estimator": estimator or (LOGISTIC if task != "regression" else {"class": "sklearn.linear_model.Ridge"}),
        }
    )


def rows(n: int = 240, seed: int = 0, batches: int = 4) -> pd.DataFrame:
    """``n`` rows in ``batches`` daily batches; ``y`` is 1 where ``a`` (plus noise) is positive."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    return pd.DataFrame(
        {
            "ts": np.repeat([f"2026-01-0{d + 1}" for d in range(batches)], n // batches),
            "a": a,
            "y": (a + rng.normal(scale=0.5, size=n) > 0).astype(int),
        }
    )


def scores(spec, pipeline, frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    output = model_output(pipeline, model_input(spec, frame), model_config(spec, 0.5, []))
    return output, output_scores(output, spec)


@pytest.mark.parametrize("dtype", ["boolean", "bool[pyarrow]"])
def test_a_boolean_label_read_as_a_pandas_extension_type_trains_a_model_that_scores(dtype):
    # scikit-learn fits such a column as 0.0/1.0, which no spec value false/true matched: every probability was 0.
    spec = make_spec(values=[False, True])
    frame = rows()
    frame["y"] = frame["y"].astype(bool).astype(dtype)
    pipeline = training.fit(spec, {}, frame)
    output, p_true = scores(spec, pipeline, frame)
    assert np.allclose(output["proba_False"] + output["proba_True"], 1.0)
    metrics = compute_metrics(Target.of(spec), encode_labels(spec, frame["y"]), p_true)
    assert metrics["roc_auc"] > 0.85
    assert set(output["prediction"]) == {False, True}


def test_an_evaluation_label_outside_the_values_is_named_not_dropped_from_the_class_count():
    spec = make_spec(values=["No", "Yes"])
    labels = pd.Series(["No"] * 30 + [" Yes"] * 20)
    with pytest.raises(
        training.SplitError, match=r"the evaluation set: label 'y': label value\(s\) ' Yes' \(20"
    ) as err:
        training.check_evaluation_set(spec, labels)
    assert "' Yes' differs from 'Yes' only in spaces, case or type" in str(err.value)
    assert err.value.rule == "label_values" and err.value.column == "y"


def test_string_codes_for_integer_values_are_named_in_the_training_window():
    spec = make_spec(values=[0, 1])
    frame = rows()
    frame["y"] = frame["y"].astype(str)
    with pytest.raises(training.SplitError, match=r"the training window: label 'y': label value\(s\) '0', '1'"):
        training.train_candidate(spec, {}, frame)


def test_rows_without_a_label_are_counted_as_such():
    spec = make_spec(values=[0, 1])
    frame = rows()
    frame["y"] = frame["y"].astype("Int64")
    frame.loc[[3, 7], "y"] = pd.NA
    with pytest.raises(RowsError, match=r"label 'y': 2 row\(s\) without a label"):
        training.fit(spec, {}, frame)


@pytest.mark.parametrize(
    ("bad", "message"), [(np.nan, "1 row\\(s\\) without a label"), (np.inf, "1 row\\(s\\) hold an infinite value")]
)
def test_a_regression_target_that_is_not_a_finite_number_is_named(bad, message):
    spec = make_spec(task="regression")
    frame = rows().assign(y=lambda f: f["a"] * 3.0)
    frame.loc[5, "y"] = bad
    with pytest.raises(RowsError, match=f"label 'y': {message}"):
        training.fit(spec, {}, frame)
    with pytest.raises(RowsError, match=f"label 'y': {message}"):
        encode_labels(spec, frame["y"])


@pytest.mark.parametrize(
    "feature",
    [
        {"name": "n", "type": "numeric"},
        {"name": "n", "type": "categorical", "missing": "most_frequent"},
    ],
)
def test_a_feature_missing_in_every_training_row_still_trains_and_scores_later_values(feature):
    spec = make_spec(values=[0, 1], features=[NUMERIC, feature])
    frame = rows().assign(n=None)
    pipeline = training.fit(spec, {}, frame)
    later = rows(seed=1).assign(n="3" if feature["type"] == "categorical" else 3.0)
    assert np.isfinite(scores(spec, pipeline, later)[1]).all()


def test_a_feature_name_with_a_double_underscore_trains():
    spec = make_spec(values=[0, 1], features=[NUMERIC, {"name": "amount__eur", "type": "numeric"}])
    frame = rows().assign(amount__eur=lambda f: f["a"] * 2)
    assert np.isfinite(scores(spec, training.fit(spec, {}, frame), frame)[1]).all()


def test_a_log_feature_below_minus_one_is_named():
    spec = make_spec(values=[0, 1], features=[NUMERIC, {"name": "n", "type": "numeric", "log": True}])
    frame = rows().assign(n=lambda f: f["a"] * 5)
    with pytest.raises(RowsError, match=r"feature 'n' has log: true, which needs values > -1"):
        training.fit(spec, {}, frame)


def test_a_feature_never_present_with_impute_none_is_named():
    estimator = {"class": "sklearn.ensemble.HistGradientBoostingClassifier", "params": {"max_iter": 5}}
    feature = {"name": "n", "type": "numeric", "impute": "none", "scale": False}
    spec = make_spec(values=[0, 1], features=[NUMERIC, feature], estimator=estimator)
    with pytest.raises(RowsError, match=r"feature 'n' is missing in all 240 training row\(s\) and has impute: none"):
        training.fit(spec, {}, rows().assign(n=np.nan))


def test_text_labels_of_a_spec_whose_values_are_booleans_say_so():
    # `values: [true, false]` while the landed labels are the text "no"/"yes".
    spec = make_spec(values=[False, True])
    with pytest.raises(
        training.SplitError,
        match=r"the classes are booleans \(label.values true/false\) but the labels are yes/no/on/off text",
    ):
        training.check_evaluation_set(spec, pd.Series(["no"] * 30 + ["yes"] * 20))


def test_a_class_without_a_row_in_the_training_window_is_warned_about(caplog):
    spec = make_spec(values=[0, 1, 2])
    with caplog.at_level("WARNING", logger="mlops_airflow.core.training"):
        split = training.selection_split(spec, rows())
    assert split.summary["window_classes"].keys() == {"0", "1"}
    assert "class(es) ['2'] of label.values have no row in the training window" in caplog.text


def test_a_feature_named_as_a_datetime_part_of_another_is_refused_not_merged():
    # Both gave the pipeline's input column `opened__year`: the datetime's year was silently replaced.
    features = [{"name": "opened", "type": "datetime"}, {"name": "opened__year", "type": "numeric"}]
    with pytest.raises(ModelSpecError, match=r"\['opened__year'\] is also the name of a part of datetime feature"):
        make_spec(values=[0, 1], features=features)  # the spec is refused when it is read
    spec = make_spec(values=[0, 1], features=[{"name": "opened", "type": "datetime", "parts": ["month"]}, features[1]])
    frame = rows().assign(opened=pd.Timestamp("2025-01-01"), opened__year=lambda f: f["a"])
    output, _ = scores(spec, training.fit(spec, {}, frame), frame)  # no clash without the year part
    assert set(output["prediction"]) <= {0, 1}
    # a spec made before the check (or by hand) is still refused by training
    clashing = spec.model_copy(
        update={"features": [spec.features[0].model_copy(update={"parts": None}), spec.features[1]]}
    )
    with pytest.raises(ModelSpecError, match=r"'opened' and 'opened__year' both give the model input column"):
        training.fit(clashing, {}, frame)


def test_a_gap_in_a_feature_not_imputed_is_named_for_an_estimator_without_gaps():
    spec = make_spec(values=[0, 1], features=[NUMERIC, {"name": "n", "type": "numeric", "impute": "none"}])
    frame = rows().assign(n=lambda f: f["a"].where(f.index % 7 != 0))
    with pytest.raises(RowsError, match=r"feature 'n' is missing in 35 of 240 training row\(s\) and has impute: none"):
        training.fit(spec, {}, frame)


def test_a_model_fitted_on_classes_the_spec_does_not_name_refuses_to_answer():
    # A pipeline fitted outside the package's training path (floats 0.0/1.0 for values false/true): before,
    # every class probability came out 0 and a smoke test or gate scoring it saw nothing wrong.
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    spec = make_spec(values=[False, True])
    frame = rows()
    pipeline = make_pipeline(LogisticRegression()).fit(frame[["a"]], frame["y"].astype(float))
    with pytest.raises(ValueError, match=r"fitted on class\(es\) 0\.0, 1\.0 that are not among the spec's label"):
        model_output(pipeline, model_input(spec, frame), model_config(spec, 0.5, []))


def test_whole_decimal_label_values_are_the_integer_classes_never_booleans():
    # `values: [0.0, 1.0]` (labels written as the data holds them) read as [False, True]: proba_False, proba_True.
    spec = make_spec(values=[0.0, 1.0], positive=1.0)
    assert spec.classes == [0, 1] and all(type(c) is int for c in spec.classes) and spec.positive_label == 1
    frame = rows().assign(y=lambda f: f["y"].astype("float64"))  # a label column read as 0.0/1.0
    output, positive = scores(spec, training.fit(spec, {}, frame), frame)
    assert list(output.columns) == ["prediction", "proba_0", "proba_1"] and set(output["prediction"]) == {0, 1}
    assert compute_metrics(Target.of(spec), encode_labels(spec, frame["y"]), positive)["roc_auc"] > 0.8
    for values, named in (([0.5, 1.5], r"label value 0\.5 is not a whole number"),
                          ([1.0, 1], "label values are not unique"),
                          ([0, 2**63], r"label value 9223372036854775808 is outside the 64-bit integer range"),
                          ([float("nan"), 1.0], r"label value nan is not a whole number"),
                          ([None, 1], r"label value None is no class"),
                          (["", "x"], r"label value '' is no class: a reader takes an empty")):  # fmt: skip
        with pytest.raises(ModelSpecError, match=named):
            make_spec(values=values)


def test_an_estimator_that_cannot_take_the_rows_is_named_with_the_label_and_its_rule():
    # A Poisson regressor on labels below zero: scikit-learn's "Some value(s) of y are out of the valid range of the
    # loss 'HalfPoissonLoss'" named neither the model, the estimator nor the label column.
    spec = make_spec(task="regression", estimator={"class": "sklearn.linear_model.PoissonRegressor"})
    frame = rows().assign(y=lambda f: f["a"])  # about half of them negative
    with pytest.raises(RowsError, match=r"probe: sklearn\.linear_model\.PoissonRegressor cannot fit the 240 "
                                        r"training row\(s\) \(label 'y'\): .*valid range of the loss"):  # fmt: skip
        training.fit(spec, {}, frame)
    assert set(training.fit(spec, {}, frame.assign(y=lambda f: f["y"].abs())).predict(frame) >= 0) == {True}
