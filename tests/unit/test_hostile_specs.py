"""A model YAML written by a hostile or careless author, and the ``mlops`` command line given hostile arguments.

The promises: a spec is data, never code; it is read at DAG-parse time, so no YAML may make parsing slow,
huge or fail for the other models of the folder; a run's cost stays bounded; a command never reaches a path
outside its roots. Each case is refused with a message naming the file, the key (or line) and the rule.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops_airflow import cli
from mlops_airflow.core.config import (
    MAX_SPEC_BYTES,
    MAX_SPEC_DEPTH,
    MAX_SPEC_NODES,
    candidate_grid,
    get_spec,
    load_model_spec,
    load_specs_tolerant,
    models_dir,
)
from mlops_airflow.core.spec import ModelSpecError

GOOD = models_dir() / "credit_default.yaml"


def good_data() -> dict[str, Any]:
    return yaml.safe_load(GOOD.read_text())


def write(folder: Path, data: dict[str, Any], name: str = "credit_default", suffix: str = ".yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = {**data, "name": name}
    path = folder / f"{name}{suffix}"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def refused(path: Path) -> str:
    with pytest.raises(ModelSpecError) as err:
        load_model_spec(path)
    message = str(err.value)
    assert str(path) in message, message
    return message


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def laughs(levels: int) -> str:
    """A flow list of ``10**levels`` copies of ``balanced`` written in a few hundred bytes with nested aliases."""

    def level(i: int) -> str:
        if i == 0:
            return "&a0 [balanced]"
        return f"&a{i} [{level(i - 1)}, " + ", ".join([f"*a{i - 1}"] * 9) + "]"

    return level(levels)


# ------------------------------------------------------------------------------------------------ YAML itself


def test_nested_aliases_are_counted_expanded_and_refused_before_anything_is_built(tmp_path):
    """A 2 KB spec whose aliases expand to 10**8 values: its search_space grid went whole into the CT DAG's
    mapped-task input (10**6 values already made a 28 MB serialized DAG). Refused before it is built."""
    text = GOOD.read_text().replace("    max_leaf_nodes: [15, 31]\n", f"    class_weight: [{laughs(8)}]\n")
    path = tmp_path / "credit_default.yaml"
    path.write_text(text)
    assert len(text) < 4000
    message = refused(path)
    assert f"more than {MAX_SPEC_NODES} values once its aliases (*name) are expanded" in message


def test_aliases_and_merge_keys_within_the_limits_still_read():
    """Anchors, aliases and merge keys are YAML a person may use: a merged mapping's keys may be overridden."""
    text = (
        GOOD.read_text()
        .replace(
            "smoke_test:\n  max_latency_ms_per_row: 5.0\n",
            "smoke_test:\n  <<: &smoke {max_latency_ms_per_row: 9.0, rows: 50}\n  max_latency_ms_per_row: 5.0\n",
        )
        .replace("  rows: 200\n", "")
    )
    from mlops_airflow.core.config import parse_model_spec, read_yaml

    spec = parse_model_spec(read_yaml(text))
    assert (spec.smoke_test.max_latency_ms_per_row, spec.smoke_test.rows) == (5.0, 50)


def test_deep_nesting_is_a_spec_error_and_the_other_models_still_load(tmp_path):
    """20000 nested lists made the YAML reader recurse past Python's limit: the RecursionError escaped the
    loader, and the DAG file lost every model of the folder, not only this one."""
    good = write(tmp_path, good_data(), name="good_model")
    bad = tmp_path / "deep_model.yaml"
    bad.write_text(GOOD.read_text().replace("tags: [demo, credit-risk]", "tags: " + "[" * 20000 + "]" * 20000))
    specs, errors = load_specs_tolerant(tmp_path)
    assert [s.name for s in specs] == ["good_model"] and good not in errors
    assert f"nested deeper than {MAX_SPEC_DEPTH} levels" in str(errors[bad])
    # mlops lint says the same, with no traceback
    code, out, _ = run("lint", "--no-dags", str(bad))
    assert code == 1 and f"{bad}:1: not a usable model spec: line " in out


def test_a_key_written_twice_is_refused_naming_both_lines(tmp_path):
    """A second ``gate:`` at the end of the file replaced the first one silently: the thresholds were gone."""
    path = tmp_path / "credit_default.yaml"
    text = GOOD.read_text()
    path.write_text(text + "gate:\n  require_approval: false\n")
    first = text.splitlines().index("gate:") + 1
    again = len(text.splitlines()) + 1
    message = refused(path)
    assert f"found the key 'gate' twice (first {first}, again {again}" in message
    # in a nested mapping too
    path.write_text(text.replace("  max_regression: 0.01\n", "  max_regression: 0.01\n  max_regression: 0.5\n"))
    assert "found the key 'max_regression' twice" in refused(path)


def test_a_number_no_python_int_holds_is_a_spec_error_and_the_other_models_still_load(tmp_path):
    """An integer of 5000 digits made the YAML reader raise ValueError, which escaped the loader: every model
    of the folder lost its DAGs."""
    write(tmp_path, good_data(), name="good_model")
    bad = tmp_path / "credit_default.yaml"
    bad.write_text(GOOD.read_text().replace("max_iter: 150", "max_iter: " + "1" * 5000))
    specs, errors = load_specs_tolerant(tmp_path)
    assert [s.name for s in specs] == ["good_model"]
    assert "not valid YAML: a value cannot be read: Exceeds the limit" in str(errors[bad])


@pytest.mark.parametrize(
    ("value", "key", "why"),
    [
        ("{max_iter: 150, class_weight: {a: .inf}}", "estimator.params.class_weight.a", "inf is not a finite number"),
        ("{max_iter: !!set {a, b}}", "estimator.params.max_iter", "a set is not a plain value"),
        ("{max_iter: !!binary aGVsbG8=}", "estimator.params.max_iter", "a bytes is not a plain value"),
        ("{max_iter: 150, class_weight: [2001-12-14]}", "estimator.params.class_weight.0", "a date is not a plain"),
    ],
)
def test_parameter_values_are_plain_data_however_deep(tmp_path, value, key, why):
    """Only the top of a parameter's value was checked: NaN, infinities, dates, bytes and sets deeper down (or
    turned into text and lists by the schema) reached the estimator and the run's records."""
    path = tmp_path / "credit_default.yaml"
    text = GOOD.read_text()
    path.write_text(text.replace("{max_iter: 150, early_stopping: false, random_state: 0}", value))
    message = refused(path)
    assert f"{key}: {why}" in message, message


def test_a_spec_larger_than_a_page_of_yaml_is_refused_unread(tmp_path):
    """A 2 MB description went into the CT DAG's docs, serialized and stored by every parse."""
    data = good_data()
    data["description"] = "x" * (2 * MAX_SPEC_BYTES)
    message = refused(write(tmp_path, data))
    assert f"larger than {MAX_SPEC_BYTES} bytes" in message


def test_two_files_of_one_model_are_both_refused(tmp_path):
    """``x.yaml`` beside ``x.yml``: the DAGs came from one file and the tasks read the other."""
    data = good_data()
    data["gate"]["thresholds"] = {"roc_auc": {"min": 0.5}}
    yml = write(tmp_path, data, suffix=".yml")
    yaml_file = write(tmp_path, good_data())
    specs, errors = load_specs_tolerant(tmp_path)
    assert specs == [] and set(errors) == {yml, yaml_file}
    assert "model 'credit_default' is also specified by credit_default.yml" in str(errors[yaml_file])
    with pytest.raises(ModelSpecError, match=r"also specified by credit_default\.yml"):
        get_spec("credit_default", tmp_path)
    code, out, _ = run("lint", "--no-dags", str(tmp_path))
    assert code == 1 and out.count("is also specified by") == 2


def test_only_yaml_and_yml_files_are_specs(tmp_path):
    """``*.y*ml`` also matched ``notes.y.html``, whose spec then escaped the name-equals-file-name rule."""
    write(tmp_path, good_data())
    data = {**good_data(), "name": "other_model"}
    (tmp_path / "notes.y.html").write_text(yaml.safe_dump(data))
    specs, errors = load_specs_tolerant(tmp_path)
    assert [s.name for s in specs] == ["credit_default"] and errors == {}


# ------------------------------------------------------------------------------------------------ spec values


def _change(section: str, **fields: Any) -> Any:
    def change(d: dict[str, Any]) -> None:
        d[section] = {**(d.get(section) or {}), **fields}

    return change


def _estimator(**fields: Any) -> Any:
    return _change("estimator", **fields)


RANDOM = {"kind": "random", "n_candidates": 4}


@pytest.mark.parametrize(
    ("change", "key", "why"),
    [
        # a draw that cannot be made: the CT DAG's build raised ValueError at parse time
        (
            _estimator(
                search_space={"max_leaf_nodes": {"distribution": "randint", "low": 10.2, "high": 10.7}}, search=RANDOM
            ),
            "estimator.search_space.max_leaf_nodes: randint needs an integer between low (10.2) and high (10.7)",
            "",
        ),
        # high - low overflows: every candidate got inf
        (
            _estimator(
                search_space={"l2_regularization": {"distribution": "uniform", "low": -1e308, "high": 1e308}},
                search=RANDOM,
            ),
            "estimator.search_space.l2_regularization",
            "uniform needs high - low to be a finite number",
        ),
        # a threshold with no bound counted as a threshold: the first run was blessed with no check at all
        (lambda d: d["gate"].update(thresholds={"roc_auc": {}}), "gate.thresholds.roc_auc", "needs 'min' and/or"),
        (
            lambda d: d["gate"].update(thresholds={"roc_auc": {"min": 0.9, "max": 0.1}}),
            "gate.thresholds.roc_auc",
            "min (0.9) is greater than max (0.1)",
        ),
        # unbounded cost or times no clock can hold
        (_change("gate", n_bootstrap=10**9), "gate.n_bootstrap", "less than or equal to 20000"),
        (lambda d: d.update(window={"train_days": 10**9, "eval_days": 7}), "window.train_days", "36500"),
        (lambda d: d.update(window={"train_weeks": 10**9, "eval_days": 7}), "window.train_weeks", "5214"),
        (_change("drift", cooldown_hours=1e12), "drift.cooldown_hours", "less than or equal to 87600"),
        (_change("retrain", min_interval_hours=1e12), "retrain.min_interval_hours", "less than or equal to 87600"),
        (_change("serving", max_rows=10**12), "serving.max_rows", "less than or equal to 1000000"),
        # every core of whatever machine runs the task, or a number of workers that is not one
        (
            _estimator(
                params={"n_estimators": 50, "n_jobs": -1},
                search_space={},
                **{"class": "sklearn.ensemble.RandomForestClassifier"},
            ),
            "estimator.params.n_jobs",
            "-1 is not null",
        ),
        (
            _estimator(
                params={}, search_space={"n_jobs": [1, -1]}, **{"class": "sklearn.ensemble.RandomForestClassifier"}
            ),
            "estimator.search_space.n_jobs",
            "-1 is not null",
        ),
        (
            _estimator(
                params={"n_jobs": True}, search_space={}, **{"class": "sklearn.ensemble.RandomForestClassifier"}
            ),
            "estimator.params.n_jobs",
            "True is not null",
        ),
        # Airflow refuses a tag over 100 characters: the DAG build raised for every model of the folder
        (lambda d: d.update(tags=["x" * 101]), "tags", "a tag is 1 to 100 characters"),
        (lambda d: d.update(tags=["ok", ""]), "tags", "['']: a tag is 1 to 100"),
        # Airflow's database holds an owner of at most 500 characters (PostgreSQL refuses a longer one)
        (lambda d: d.update(owner="o" * 501), "owner", "at most 500 characters"),
        # a date that never comes: the timetable cannot find a next run
        (lambda d: d.update(schedule="0 0 30 2 *"), "schedule", "names a date that never comes"),
        (_change("retrain", schedule="0 0 31 4 *"), "retrain.schedule", "names a date that never comes"),
    ],
)
def test_values_that_switch_a_rule_off_or_cost_without_bound_are_refused_by_key(tmp_path, change, key, why):
    data = good_data()
    change(data)
    message = refused(write(tmp_path, data))
    assert key in message and why in message, message


def test_an_allowed_worker_count_and_a_leap_day_schedule_still_read(tmp_path):
    data = good_data()
    data["estimator"] = {"class": "sklearn.ensemble.RandomForestClassifier", "params": {"n_jobs": 2},
                         "search_space": {"n_jobs": [1, None]}}  # fmt: skip
    data["schedule"] = "0 0 29 2 *"
    spec = load_model_spec(write(tmp_path, data))
    assert candidate_grid(spec) == [{"n_jobs": 1}, {"n_jobs": None}]


def test_a_bad_value_in_one_spec_leaves_the_other_models_their_dags(tmp_path, monkeypatch):
    """A tag Airflow refuses, or a draw that cannot be made, raised while the DAGs were built: the DAG file
    failed to import and every model of the folder lost its DAGs. Now the spec is refused and shown alone."""
    from mlops_airflow.dag_factory import InvalidModelSpecWarning, build_dags

    monkeypatch.setenv("MLOPS_MODELS_DIR", str(tmp_path))
    write(tmp_path, good_data(), name="good_model")
    data = good_data()
    data["tags"] = ["t" * 150]
    write(tmp_path, data, name="tagged_model")
    data = good_data()
    data["estimator"]["search_space"] = {"max_leaf_nodes": {"distribution": "randint", "low": 3.1, "high": 3.9}}
    data["estimator"]["search"] = RANDOM
    write(tmp_path, data, name="drawn_model")
    with pytest.warns(InvalidModelSpecWarning):
        dags = build_dags(directory=tmp_path)
    assert "ct_good_model" in dags and "predict_good_model" in dags
    assert "a tag is 1 to 100" in dags["ct_tagged_model"].get_task("invalid_spec").message
    assert "randint needs an integer" in dags["ct_drawn_model"].get_task("invalid_spec").message


def test_a_transformer_module_and_its_package_are_not_run_when_the_spec_is_parsed(tmp_path, monkeypatch):
    """Held: the factory is only located at parse time (a file under include/), imported at task time alone."""
    include = tmp_path / "include"
    package = include / "transforms"
    package.mkdir(parents=True)
    marker = tmp_path / "ran"
    for file in (package / "__init__.py", package / "noisy.py"):
        file.write_text(f"open({str(marker)!r}, 'a').write('{file.name}\\n')\ndef make():\n    return None\n")
    monkeypatch.setenv("MLOPS_INCLUDE_DIR", str(include))
    monkeypatch.setenv("MLOPS_MODELS_DIR", str(include / "models"))
    data = good_data()
    data["features"][0]["transformer"] = "transforms.noisy:make"
    path = write(include / "models", data)
    from mlops_airflow.dag_factory import build_dags

    spec = load_model_spec(path)
    assert spec.features[0].transformer == "transforms.noisy:make"
    assert "ct_credit_default" in build_dags(directory=include / "models")
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ command line


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "../../../models/credit_default"],
        ["replay", "../../../models/credit_default", "--from", "2026-01-01", "--to", "2026-01-02", "--policy", "spec"],
        ["reproduce", "credit_default/../../x", "1"],
        ["gc", "../credit_default", "--dry-run"],
        ["status", "x" * 5000],
    ],
)
def test_a_model_name_that_is_a_path_is_refused_before_anything_is_read_or_written(
    argv, tmp_path, monkeypatch, empty_mlops_home
):
    """``status``/``replay`` read ``<models>/../../../models/credit_default.yaml``, a spec outside the models
    folder (and ``replay`` would write its report to ``replay-../../..``); a 5000-character name raised OSError."""
    outside = tmp_path / "models"
    write(outside, good_data())
    inside = tmp_path / "deploy" / "include" / "models"
    inside.mkdir(parents=True)
    monkeypatch.setenv("MLOPS_MODELS_DIR", str(inside))
    monkeypatch.chdir(tmp_path / "deploy")
    before = sorted(p for p in tmp_path.rglob("*"))
    code, out, err = run(*argv)
    assert (code, out) == (2, "")
    assert f"mlops {argv[0]}: {argv[1]!r} is not a model name" in err
    assert sorted(p for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("grace", ["nan", "-1"])
def test_gc_grace_that_is_no_grace_is_refused_and_a_batch_being_written_stays(grace, mlops_home):
    """``--grace-hours nan`` (or below 0) made every batch old enough: one just written by a running snapshot,
    that no snapshot names yet, was removed."""
    import pyarrow as pa

    from mlops_airflow.core import settings
    from mlops_airflow.core.batch_store import STORE, BatchStore
    from mlops_airflow.core.landing import as_path

    store = BatchStore(as_path(settings.storage_base()) / "credit_default" / STORE)
    stored = store.put(pa.table({"age": [30, 40]}))
    code, _, err = run("gc", "credit_default", "--grace-hours", grace)
    assert code == 2 and f"--grace-hours {float(grace)}: must be a number of hours, 0 or more" in err
    assert store.object(stored.digest).exists()
    code, _, _ = run("gc", "credit_default")  # the default grace keeps it too
    assert code == 0 and store.object(stored.digest).exists()


def test_lint_of_a_device_or_fifo_does_not_block(tmp_path):
    """A FIFO named like a spec: reading it waited for a writer forever (the DAG processor would hang on it).
    It is opened without waiting and refused unread."""
    import os

    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    fifo = tmp_path / "credit_default.yaml"
    os.mkfifo(fifo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, out, _ = run("lint", "--no-dags", str(tmp_path))
    assert code == 1 and f"{fifo}:1: cannot be read: {fifo}: not a regular file" in out
