"""``mlops lint`` finds what the DAG factory finds, worded the same, with the line; ``mlops status`` tells who
serves and whether that version is proven blessed; ``model_dags`` reads specs where its DAG file says."""

from __future__ import annotations

import io
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import test_config  # the spec error cases of the spec loader's own tests (same inputs, same expectations)
import yaml

from mlops_airflow import cli
from mlops_airflow.core.config import models_dir

REPO = Path(__file__).resolve().parents[2]
GOOD = models_dir() / "credit_default.yaml"
CONFIG_CASES = next(
    mark for mark in test_config.test_wrong_spec_names_file_key_and_reason.pytestmark if mark.name == "parametrize"
)


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def lint_json(*paths: Path) -> tuple[int, list[dict[str, Any]]]:
    code, out, _ = run("lint", "--format", "json", *map(str, paths))
    return code, json.loads(out)["errors"]


def factory_message(folder: Path, stem: str) -> str:
    """The error the DAG factory shows for ``<stem>.yaml`` in its stand-in DAG (what a person reads in Airflow)."""
    from mlops_airflow import model_dags
    from mlops_airflow.dag_factory import InvalidModelSpecWarning

    with pytest.warns(InvalidModelSpecWarning):
        dags = model_dags(folder)
    return dags[f"ct_{stem}"].get_task("invalid_spec").message


def as_message(path: Path, errors: list[dict[str, Any]]) -> str:
    """The lint errors of one file put back into the factory's wording."""
    if len(errors) == 1 and not errors[0]["key"]:
        return f"{path}: {errors[0]['rule']}"
    if len(errors) == 1 and errors[0]["key"] == "name":
        return f"{path}: name: {errors[0]['rule']}"
    return f"{path}: invalid model spec\n" + "\n".join(f"  {e['key']}: {e['rule']}" for e in errors)


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty models folder; ``model_dags`` sets ``MLOPS_MODELS_DIR``, restored after the test."""
    monkeypatch.setenv("MLOPS_MODELS_DIR", str(models_dir()))
    path = tmp_path / "include" / "models"
    path.mkdir(parents=True)
    return path


def write_case(folder: Path, change: Any, stem: str = "credit_default") -> Path:
    data = yaml.safe_load(GOOD.read_text())
    change(data)
    path = folder / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def line_of(path: Path, line: int) -> str:
    return path.read_text().splitlines()[line - 1]


@pytest.mark.parametrize(("change", "key", "why"), CONFIG_CASES.args[1])
def test_lint_reports_each_spec_error_as_the_factory_words_it_with_its_line(folder, change, key, why):
    path = write_case(folder, change)
    code, errors = lint_json(path)
    assert code == 1
    assert as_message(path, errors) == factory_message(folder, "credit_default")
    (error,) = [e for e in errors if key in e["key"] and why in e["rule"]]
    assert error["file"] == str(path)
    assert shown_at(path, error["key"], error["line"])


def shown_at(path: Path, key: str, line: int) -> bool:
    """``line`` holds ``key`` (its last part: ``type:``, or ``- `` for a list item), or is the top of the file
    for a key that is not there (a missing ``label``)."""
    leaf, text = key.split(".")[-1], line_of(path, line)
    if leaf.isdigit():
        return text.lstrip().startswith("- ")
    return text.lstrip().startswith(f"{leaf}:") or (f"\n{leaf}:" not in "\n" + path.read_text() and line == 1)


@pytest.mark.parametrize(
    ("stem", "content", "key", "why", "line"),
    [
        # tests/dags/test_bad_spec.py: a class outside the catalogue, YAML that does not parse
        ("churn", lambda t: t.replace("name: credit_default", "name: churn").replace(
            "sklearn.ensemble.HistGradientBoostingClassifier", "sklearn.utils._testing.check_output"),
         "estimator.class", "is not a scikit-learn classifier", "  class: sklearn.utils._testing.check_output"),
        ("broken", lambda t: "name: [unclosed", "", "not valid YAML", None),
        # tests/unit/test_config.py: the name must match the file, YAML that does not parse
        ("other", lambda t: t, "name", "must match the file name", "name: credit_default"),
        ("list", lambda t: "- name: credit_default\n", "", "must be a YAML mapping", None),
    ],
)  # fmt: skip
def test_lint_reports_file_level_errors_as_the_factory_words_them(folder, stem, content, key, why, line):
    path = folder / f"{stem}.yaml"
    path.write_text(content(GOOD.read_text()))
    code, errors = lint_json(path)
    assert code == 1
    assert as_message(path, errors) == factory_message(folder, stem)
    (error,) = errors
    assert error["key"] == key and why in error["rule"]
    if line is not None:
        assert line_of(path, error["line"]) == line


def test_lint_text_names_file_line_key_and_rule_and_checks_every_file_of_a_folder(folder):
    def overconfident(data: dict[str, Any]) -> None:
        data["name"] = "tiers"
        data["gate"]["confidence"] = 1.5

    shutil.copy(GOOD, folder / "credit_default.yaml")
    write_case(folder, overconfident, stem="tiers")
    code, out, err = run("lint", str(folder))
    assert code == 1
    (line,) = out.splitlines()
    path = folder / "tiers.yaml"
    number = int(line.split(":")[1])
    assert line == f"{path}:{number}: gate.confidence: Input should be less than 1"
    assert line_of(path, number).strip() == "confidence: 1.5"
    assert "2 spec file(s) checked, 1 error(s) in 1 file(s)" in err


def test_lint_passes_the_reference_specs():
    code, out, err = run("lint", str(REPO / "include" / "models"), str(REPO / "include" / "examples"))
    assert (code, out) == (0, "")
    assert "4 spec file(s) checked, no errors" in err


def test_a_schedule_the_ct_dag_cannot_run_on_is_a_spec_error_in_lint_and_in_the_dag_list(folder):
    """A preset the CT DAG has no timetable for is refused by the spec rules, by key: the DAG file shows an
    invalid-spec DAG naming it (it once took the whole DAG file down at build time), and lint says the same
    with and without building DAGs."""
    path = write_case(folder, lambda d: d.update(schedule="@monthly"))
    message = factory_message(folder, "credit_default")
    code, errors = lint_json(path)
    assert code == 1
    assert [e["key"] for e in errors] == ["schedule"] and "'@monthly' is not a cron expression" in errors[0]["rule"]
    assert as_message(path, errors) == message
    assert run("lint", "--no-dags", str(path))[0] == 1


def test_lint_refuses_paths_that_hold_no_spec(tmp_path):
    (tmp_path / "empty").mkdir()
    code, errors = lint_json(tmp_path / "missing.yaml", tmp_path / "empty")
    assert code == 1
    assert [(Path(e["file"]).name, e["rule"]) for e in errors] == [
        ("missing.yaml", "no such file or folder"),
        ("empty", "no model spec (*.yaml, *.yml) in this folder"),
    ]


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    usage = capsys.readouterr().out
    assert "lint" in usage and "status" in usage


# ------------------------------------------------------------------------------------------------ model_dags


def test_model_dags_reads_specs_from_the_dag_files_folder_and_tasks_look_there(folder, monkeypatch):
    """A relative folder is the DAG file's, not the working directory's; after parsing (what a task's process
    does first), the operators' spec lookup finds the same file."""
    from airflow.dag_processing.dagbag import DagBag

    from mlops_airflow.core.config import get_spec

    write_case(folder, lambda d: d.update(owner="credit-team"))
    dag_file = folder.parents[1] / "mlops_dags.py"
    dag_file.write_text('from mlops_airflow import model_dags\n\nglobals().update(model_dags("include/models"))\n')
    monkeypatch.chdir(REPO)  # the repository's own include/models must not be read
    bag = DagBag(dag_folder=str(dag_file))
    assert bag.import_errors == {}
    assert {"ct_credit_default", "monitor_credit_default", "predict_credit_default", "rollback_credit_default"} <= set(
        bag.dags
    )
    assert bag.dags["ct_credit_default"].owner == "credit-team"
    assert get_spec("credit_default").owner == "credit-team"


def test_model_dags_names_a_missing_folder_and_the_dag_file(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("MLOPS_MODELS_DIR", str(models_dir()))
    dag_file = tmp_path / "mlops_dags.py"
    dag_file.write_text('from mlops_airflow import model_dags\n\nglobals().update(model_dags("include/models"))\n')
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bag = DagBag(dag_folder=str(dag_file))
    (error,) = bag.import_errors.values()
    assert f"{tmp_path / 'include' / 'models'}: no folder of model specs there" in error
    assert str(dag_file) in error


# ------------------------------------------------------------------------------------------------ status


@pytest.fixture
def registered(mlops_home: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The store's client and a maker of versions as ``ct_<model>`` leaves them (:func:`ct_version`)."""
    monkeypatch.syspath_prepend(str(REPO / "tests" / "serving"))
    from serving_support import ct_version

    from mlops_airflow.core import settings
    from mlops_airflow.core.config import get_spec
    from mlops_airflow.core.signing import local_key
    from mlops_airflow.core.tracking import client_for

    client = client_for(settings.default_tracking_uri())
    spec = get_spec("credit_default")

    def make() -> str:
        return ct_version(client, spec, log_dummy_model, signing_key=local_key())

    return client, make


def log_dummy_model() -> str:
    import mlflow
    from sklearn.dummy import DummyClassifier

    info = mlflow.sklearn.log_model(DummyClassifier().fit([[0], [1]], [0, 1]), name="model")
    return str(info.model_uri)


def test_status_shows_the_champion_proven_blessed_since_when_and_why(registered):
    from mlops_airflow.core.registry import Actor
    from mlops_airflow.core.trust import ModelRegistry

    client, make = registered
    version = make()
    # promote runs in the CT run that registered the version
    actor = Actor("ct_credit_default", client.get_model_version("credit_default", version).tags["airflow.run_id"])
    ModelRegistry(client, "credit_default").promote(version, "blessed on first run", actor)
    code, out, _ = run("status", "credit_default")
    assert code == 0
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert lines["champion"].strip() == f"v{version}, proven blessed by its signature"
    assert lines["since"].strip().endswith("(promote: blessed on first run)")
    assert lines["last CT"].strip().split(": ", 1)[1].startswith("BLESSED")
    assert lines["last monitor"].strip() == "none"
    code, out, _ = run("status", "credit_default", "--format", "json")
    data = json.loads(out)
    assert (code, data["champion"], data["champion_proof"], data["champion_refused"]) == (0, version, "signature", None)


def test_status_says_a_champion_set_by_hand_does_not_serve(registered):
    import mlflow

    client, _ = registered
    mlflow.set_experiment("credit_default")
    with mlflow.start_run():
        uri = log_dummy_model()
    version = mlflow.register_model(uri, "credit_default").version
    client.set_registered_model_alias("credit_default", "champion", version)
    code, out, _ = run("status", "credit_default")
    assert code == 1
    (champion,) = [line for line in out.splitlines() if line.startswith("champion:")]
    assert f"v{version}, NOT PROVEN BLESSED, does not serve: " in champion
    assert "credit_default" in champion and f"version {version}" in champion


def test_status_without_a_store_says_where_it_looked_and_creates_nothing(empty_mlops_home):
    code, out, err = run("status", "credit_default")
    store = empty_mlops_home / "mlflow" / "mlflow.db"
    assert (code, out) == (2, "")
    assert f"no MLflow store at {store}" in err
    assert not empty_mlops_home.exists()


def test_status_of_a_model_without_a_spec(mlops_home):
    code, _, err = run("status", "churn")
    assert code == 2 and "no model spec named 'churn'" in err
