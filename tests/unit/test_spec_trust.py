"""Config is data: a model YAML names a scikit-learn estimator of its task, never a callable (docs/design.md 7).

Each case is a spec an attacker or a careless user could write; each must fail when the spec is parsed,
naming the file, the key and the rule, before any task runs.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from mlops_airflow.core.config import candidate_grid, load_model_spec, models_dir
from mlops_airflow.core.spec import ModelSpecError

GOOD = models_dir() / "credit_default.yaml"


def variant(tmp_path: Path, change, name: str = "credit_default") -> Path:
    data = yaml.safe_load(GOOD.read_text())
    change(data)
    data["name"] = name
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def assert_refused(tmp_path: Path, change, key: str, why: str) -> None:
    """The changed spec is refused with a message naming its file, the key and the rule."""
    path = variant(tmp_path, change)
    with pytest.raises(ModelSpecError) as err:
        load_model_spec(path)
    message = str(err.value)
    assert str(path) in message and key in message and why in message, message


def set_estimator(**fields):
    def change(d):
        d["estimator"] = {**d["estimator"], **fields}

    return change


@pytest.mark.parametrize(
    ("change", "key", "why"),
    [
        # A callable under sklearn.* that would run a shell command with `params` at training time.
        (
            set_estimator(**{"class": "sklearn.utils._testing.check_output", "params": {"args": ["sh", "-c", "id"]}}),
            "estimator.class",
            "is not a scikit-learn classifier",
        ),
        (set_estimator(**{"class": "sklearn.base.clone", "params": {}}), "estimator.class", "not a scikit-learn"),
        (set_estimator(**{"class": "subprocess.Popen", "params": {}}), "estimator.class", "not a scikit-learn"),
        (set_estimator(**{"class": "sklearn.pipeline.Pipeline"}), "estimator.class", "not a scikit-learn"),
        # A regressor for a classification model.
        (
            set_estimator(**{"class": "sklearn.linear_model.LinearRegression", "params": {}, "search_space": {}}),
            "estimator.class",
            "is a regressor, but the model's task is classification",
        ),
        # Private module path of an allowed class: only the documented import path is accepted.
        (
            set_estimator(
                **{"class": "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier"}
            ),
            "estimator.class",
            "did you mean sklearn.ensemble.HistGradientBoostingClassifier",
        ),
        # No predict_proba: the gate and the served model need probabilities.
        (
            set_estimator(**{"class": "sklearn.svm.LinearSVC", "params": {}, "search_space": {}}),
            "estimator.class",
            "has no predict_proba",
        ),
        # A meta-estimator whose estimator defaults to None: no YAML value makes it fit (it passed the parse and
        # failed at task time with "'NoneType' object has no attribute '__sklearn_tags__'").
        (
            set_estimator(
                **{"class": "sklearn.semi_supervised.SelfTrainingClassifier", "params": {}, "search_space": {}}
            ),
            "estimator.class",
            "is not a scikit-learn classifier that can be built from YAML values",
        ),
        # A multi-task regressor never fits one label column ("For mono-task outputs, use ElasticNet").
        (
            set_estimator(**{"class": "sklearn.linear_model.MultiTaskLasso", "params": {}, "search_space": {}}),
            "estimator.class",
            "is not a scikit-learn classifier that can be built from YAML values",
        ),
        (set_estimator(params={"max_iter": 10, "evil": 1}), "estimator.params", "['evil'] are not parameters"),
        (set_estimator(search_space={"learning_rat": [0.1]}), "estimator.search_space", "['learning_rat']"),
        (set_estimator(search_space={"learning_rate": []}), "estimator.search_space.learning_rate", "empty list"),
    ],
)
def test_estimator_that_is_not_data_is_refused(tmp_path, change, key, why):
    assert_refused(tmp_path, change, key, why)


def test_python_tags_in_yaml_are_not_constructed(tmp_path):
    path = tmp_path / "credit_default.yaml"
    path.write_text(GOOD.read_text().replace("max_iter: 150", "max_iter: !!python/object/apply:os.system [id]"))
    with pytest.raises(ModelSpecError, match="not valid YAML"):
        load_model_spec(path)


def test_an_allowed_estimator_with_its_own_params_parses(tmp_path):
    path = variant(
        tmp_path,
        set_estimator(
            **{
                "class": "sklearn.linear_model.LogisticRegression",
                "params": {"max_iter": 200, "class_weight": "balanced"},
                "search_space": {"C": [0.1, 1.0]},
            }
        ),
    )
    spec = load_model_spec(path)
    assert candidate_grid(spec) == [{"C": 0.1}, {"C": 1.0}]


def test_estimator_class_is_checked_again_with_sklearn_at_task_time():
    from mlops_airflow.core.estimators import EstimatorNotAllowed, load_estimator_class

    cls = load_estimator_class("sklearn.ensemble.RandomForestRegressor", "regression")
    assert cls.__name__ == "RandomForestRegressor"
    with pytest.raises(EstimatorNotAllowed, match="is a regressor"):
        load_estimator_class("sklearn.ensemble.RandomForestRegressor", "classification")
    with pytest.raises(EstimatorNotAllowed):
        load_estimator_class("sklearn.utils._testing.check_output", "classification")


def test_catalogue_matches_the_installed_scikit_learn():
    """The parse-time allow-list is generated from scikit-learn; upgrading it without regenerating fails here."""
    import sklearn

    from mlops_airflow.core._sklearn_catalogue import CATALOGUE, SKLEARN_VERSION
    from mlops_airflow.core.estimators import build_catalogue

    assert sklearn.__version__ == SKLEARN_VERSION, "run: python -m mlops_airflow.core.estimators --write"
    assert build_catalogue() == CATALOGUE
    assert all(path.startswith("sklearn.") and "._" not in path for path in CATALOGUE)


def test_huge_grid_is_a_spec_error_counted_without_materialising(tmp_path):
    """12 keys x 15 values = 1.3e14 combinations: refused at parse time, naming the count.

    Building that product could never finish (6 keys x 15 values took 39 s and 3.1 GB), so reaching the
    assertion at all shows the grid was counted, not built.
    """
    keys = ["learning_rate", "l2_regularization", "max_features", "min_samples_leaf", "max_leaf_nodes", "max_bins",
            "max_depth", "max_iter", "tol", "validation_fraction", "n_iter_no_change", "random_state"]  # fmt: skip
    path = variant(tmp_path, set_estimator(search_space={k: list(range(1, 16)) for k in keys}))
    with pytest.raises(ModelSpecError) as err:
        load_model_spec(path)
    assert f"{15**12} combinations, more than max_candidates (8)" in str(err.value)
    assert "estimator.search_space" in str(err.value) and str(path) in str(err.value)


def test_random_search_samples_deterministically_without_a_product(tmp_path):
    space = {
        "learning_rate": {"distribution": "loguniform", "low": 0.001, "high": 0.5},
        "max_leaf_nodes": {"distribution": "randint", "low": 8, "high": 64},
        "l2_regularization": {"distribution": "uniform", "low": 0.0, "high": 1.0},
        "max_bins": [63, 127, 255],
        "min_samples_leaf": {"distribution": "choice", "values": [5, 20, 50]},
        "max_features": [0.5, 0.8, 1.0],
    }
    change = set_estimator(search_space=space, search={"kind": "random", "n_candidates": 12, "seed": 7})
    first = candidate_grid(load_model_spec(variant(tmp_path, change)))
    again = candidate_grid(
        load_model_spec(variant(tmp_path / "again", change) if (tmp_path / "again").mkdir() is None else None)
    )
    assert first == again and len(first) == 12
    assert len({repr(sorted(c.items())) for c in first}) == 12
    for c in first:
        assert 0.001 <= c["learning_rate"] <= 0.5 and 8 <= c["max_leaf_nodes"] <= 64
        assert c["max_bins"] in (63, 127, 255) and c["min_samples_leaf"] in (5, 20, 50)
    logs = [math.log(c["learning_rate"]) for c in first]
    assert max(logs) - min(logs) > 1.0  # spread over the log scale, not one point
    other = candidate_grid(
        load_model_spec(
            variant(
                tmp_path, set_estimator(search_space=space, search={"kind": "random", "n_candidates": 12, "seed": 8})
            )
        )
    )
    assert other != first


def test_distribution_needs_random_search(tmp_path):
    change = set_estimator(search_space={"learning_rate": {"distribution": "uniform", "low": 0.01, "high": 0.2}})
    with pytest.raises(ModelSpecError, match=r"needs search\.kind: random"):
        load_model_spec(variant(tmp_path, change))


def _set(section: str, **fields):
    def change(d):
        d[section] = {**(d.get(section) or {}), **fields}

    return change


def _canary(**fields):
    def change(d):
        d["serving"] = {**(d.get("serving") or {}), "canary": fields}

    return change


@pytest.mark.parametrize(
    ("change", "key", "why"),
    [
        # a limit of NaN or infinity would switch a rule off without saying so
        (_set("retrain", max_estimated_drop=math.inf), "retrain.max_estimated_drop", "finite number"),
        (_set("retrain", max_observed_drop=math.nan), "retrain.max_observed_drop", "finite number"),
        (_set("retrain", min_interval_hours=math.inf), "retrain.min_interval_hours", "finite number"),
        (_set("retrain", max_runs_per_week=0), "retrain.max_runs_per_week", "greater than or equal to 1"),
        # a delay no timestamp arithmetic survives (the window's end minus 10**12 days overflows)
        (_set("label", delay_days=10**12), "label.delay_days", "less than or equal to 3650"),
        (_set("drift", max_metric_drop=math.inf), "drift.max_metric_drop", "finite number"),
        (_set("gate", max_regression=math.inf), "gate.max_regression", "finite number"),
        (_set("gate", min_improvement=math.nan), "gate.min_improvement", "finite number"),
        (_canary(percent=1e400), "serving.canary.percent", "finite number"),
        (_canary(percent=10, max_error_rate=math.nan), "serving.canary.max_error_rate", "finite number"),
        # a schedule is a cron expression or a preset, checked when the spec is read, not when a run is due
        (_set("retrain", schedule="not a cron"), "retrain.schedule", "is not a cron expression"),
        (_set("retrain", schedule="61 * * * *"), "retrain.schedule", "is not a cron expression"),
        (_set("retrain", schedule="@yearly"), "retrain.schedule", "presets"),
        (lambda d: d.update(schedule="0 2 * *"), "schedule", "is not a cron expression of 5 fields"),
    ],
)
def test_hostile_policy_limits_and_schedules_are_refused_by_key(tmp_path, change, key, why):
    assert_refused(tmp_path, change, key, why)


@pytest.mark.parametrize("schedule", ["@daily", "@midnight", "@hourly", "@weekly", "15 3 * * 1-5"])
def test_the_dag_the_retrain_policy_and_the_page_read_a_schedule_alike(tmp_path, schedule):
    import datetime as dt

    from croniter import croniter

    from mlops_airflow.core.retrain_policy import schedule_due
    from mlops_airflow.dag_factory import ct_cron
    from mlops_airflow.ui.app import next_run

    spec = load_model_spec(variant(tmp_path, _set("retrain", schedule=schedule)))
    cron = ct_cron(spec)  # what the CT DAG's timetable runs on
    since = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
    fire = croniter(cron, since).get_next(dt.datetime)
    assert schedule_due(spec.ct_schedule, since, fire) and not schedule_due(
        spec.ct_schedule, since, fire - dt.timedelta(seconds=1)
    )
    assert f"cron {schedule}" in next_run(spec.ct_schedule, since)
