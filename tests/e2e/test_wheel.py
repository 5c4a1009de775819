"""The distribution as an Airflow user takes it: the wheel ``uv build`` makes, installed with plain
``apache-airflow`` in a clean virtualenv (nothing of this checkout on its path), and a DAG folder that holds
only the three-line DAG file and one model spec. Then the CI template's commands in a repository laid out as
the template says, and one whole CT run in that virtualenv.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.e2e
Done = subprocess.CompletedProcess[str]

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "templates"
DAG_FILE = 'from mlops_airflow import model_dags\n\nglobals().update(model_dags("include/models"))\n'
HEAVY = ("pandas", "sklearn", "mlflow", "great_expectations", "scipy", "matplotlib", "fairlearn")
MODEL_DAGS = {
    "ct_credit_default",
    "monitor_credit_default",
    "predict_credit_default",
    "rollback_credit_default",
    "replay_credit_default",
}


def locked_version(package: str) -> str:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    return next(p["version"] for p in lock["package"] if p["name"] == package)


def json_out(done: Done) -> Any:
    """The JSON an ``-o json`` command printed (Airflow may log warnings to stdout before it)."""
    return json.loads(next(line for line in reversed(done.stdout.splitlines()) if line.startswith(("[", "{"))))


def uv() -> str:
    found = shutil.which("uv") or shutil.which("uv", path=str(Path.home() / ".local" / "bin"))
    assert found, "uv is needed to build and install the wheel"
    return found


@dataclass
class Venv:
    """A clean virtualenv and the environment of an Airflow installation around it (its own home, DAG folder,
    empty plugins folder and MLOps home; nothing inherited from this checkout or the test session)."""

    root: Path
    home: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def env(self, dags: Path) -> dict[str, str]:
        return {
            "PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin",
            "HOME": os.environ.get("HOME", str(self.home)),
            "LANG": "C.UTF-8",
            "AIRFLOW_HOME": str(self.home / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.home / "airflow" / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "MLOPS_HOME": str(self.home / "mlops"),
            "GX_ANALYTICS_ENABLED": "false",
        }

    def run(self, *cmd: str, dags: Path, cwd: Path | None = None, check: bool = True) -> Done:
        """``cmd`` in the virtualenv; with ``check``, a non-zero exit fails the test with the command's output."""
        done = subprocess.run(
            list(cmd), cwd=cwd or self.home, env=self.env(dags), capture_output=True, text=True, timeout=900
        )
        if check:
            assert done.returncode == 0, (
                f"{' '.join(cmd)}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    started = time.monotonic()
    subprocess.run([uv(), "build", "--wheel", "--out-dir", str(out)], cwd=REPO, check=True, capture_output=True)
    (path,) = out.glob("mlops_airflow-*.whl")
    print(f"\nwheel: {path.name}, {path.stat().st_size} bytes, built in {time.monotonic() - started:.1f} s")
    return path


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """The wheel, plain ``apache-airflow`` at the locked version and pytest (the CI template installs it)."""
    home = tmp_path_factory.mktemp("user")
    env = Venv(home / "venv", home)
    (home / "airflow" / "plugins").mkdir(parents=True)
    subprocess.run([uv(), "venv", "--python", "3.11", str(env.root)], check=True, capture_output=True, cwd=home)
    install = [uv(), "pip", "install", "--python", str(env.bin / "python"), str(wheel),
               f"apache-airflow=={locked_version('apache-airflow')}", "pytest"]  # fmt: skip
    started = time.monotonic()
    # from uv's cache when it holds everything; the package index otherwise
    if subprocess.run([*install, "--offline"], capture_output=True, cwd=home).returncode != 0:
        subprocess.run(install, check=True, capture_output=True, cwd=home)
    print(f"\ninstall into a clean virtualenv: {time.monotonic() - started:.1f} s")
    return env


@pytest.fixture(scope="module")
def dags(venv: Venv) -> Path:
    """A DAG folder with the three-line DAG file and one spec, and the Airflow DB migrated."""
    folder = venv.home / "dags"
    (folder / "include" / "models").mkdir(parents=True)
    (folder / "mlops_dags.py").write_text(DAG_FILE)
    shutil.copy(REPO / "include" / "models" / "credit_default.yaml", folder / "include" / "models")
    venv.run("airflow", "db", "migrate", dags=folder)
    return folder


def test_the_wheel_holds_the_package_its_entry_points_and_command(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        text = archive.read(entry_points).decode()
    assert {n.split("/")[0] for n in names} == {"mlops_airflow", wheel.name.split("-py3")[0] + ".dist-info"}
    for needed in ("mlops_airflow/provider.py", "mlops_airflow/plugin.py", "mlops_airflow/cli.py",
                   "mlops_airflow/core/_sklearn_catalogue.py", "mlops_airflow/dag_factory.py"):  # fmt: skip
        assert needed in names
    assert "provider_info = mlops_airflow.provider:get_provider_info" in text
    assert "mlops_airflow = mlops_airflow.plugin:MlopsPlugin" in text
    assert "mlops = mlops_airflow.cli:main" in text


def test_airflow_lists_the_provider_its_connection_type_and_plugin(venv, dags):
    listed = json_out(venv.run("airflow", "providers", "list", "-o", "json", dags=dags))
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert {"package_name": "mlops-airflow", "version": version} in [
        {k: p[k] for k in ("package_name", "version")} for p in listed
    ]
    probe = (
        f"HEAVY = {HEAVY!r}\n"
        + """
import json, sys
from airflow import plugins_manager
from airflow.providers_manager import ProvidersManager
from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime
manager = ProvidersManager()
hook = ProvidersManagerTaskRuntime().hooks["mlflow"]
plugins, errors = plugins_manager._get_plugins()
ours = next(p for p in plugins if p.name == "mlops_airflow")
print(json.dumps({
    "hook": [hook.hook_class_name, hook.package_name], "form": manager.field_behaviours.get("mlflow"),
    "notifications": sorted(map(str, manager.notification)), "links": sorted(manager.extra_links_class_names),
    "module": __import__("mlops_airflow").__file__, "plugin_errors": errors,
    "views": [v["name"] for v in ours.external_views], "apps": [a["url_prefix"] for a in ours.fastapi_apps],
    "heavy": sorted(m for m in HEAVY if m in sys.modules),
}))
"""
    )
    seen = json_out(venv.run("python", "-c", probe, dags=dags))
    assert Path(seen["module"]).is_relative_to(venv.root)  # the wheel's files, nothing of this checkout
    assert seen["hook"] == ["mlops_airflow.hooks.mlflow_hook.MlflowHook", "mlops-airflow"]
    assert seen["form"]["relabeling"]["host"] == "Tracking URI or host"
    assert "mlops_airflow.operators.notify.ModelEventNotifier" in seen["notifications"]
    assert "mlops_airflow.operators.base.MlflowRunLink" in seen["links"]
    assert seen["plugin_errors"] == {}
    assert (seen["views"], seen["apps"]) == (["Models"], ["/mlops"])
    assert seen["heavy"] == []  # every component loads the plugin: no training library at start-up


def test_provider_form_fields_are_the_hooks_own():
    """The connection form comes from the provider info (no hook import); it says what the hook says."""
    from mlops_airflow.hooks.mlflow_hook import MlflowHook
    from mlops_airflow.provider import get_provider_info

    (conn,) = get_provider_info()["connection-types"]
    declared = {k.replace("-", "_"): v for k, v in conn["ui-field-behaviour"].items()}
    assert declared == MlflowHook.get_ui_field_behaviour()
    assert (conn["connection-type"], conn["hook-name"]) == (MlflowHook.conn_type, MlflowHook.hook_name)


def test_a_three_line_dag_file_gives_the_models_dags_without_import_errors(venv, dags):
    listed = json_out(venv.run("airflow", "dags", "list", "--local", "-o", "json", dags=dags))
    assert {d["dag_id"] for d in listed} == MODEL_DAGS | {"notify_outbox"}
    assert {d["fileloc"] for d in listed} == {str(dags / "mlops_dags.py")}
    assert json_out(venv.run("airflow", "dags", "list-import-errors", "--local", "-o", "json", dags=dags)) == []


# ------------------------------------------------------------------------------------------------ CI template


def template_commands(repo: Path) -> list[str]:
    """The checks the GitHub workflow runs after its install step, and the pre-commit hooks' commands (with the
    files each hook would be handed)."""
    workflow = yaml.safe_load((repo / ".github" / "workflows" / "mlops.yml").read_text())
    steps = [s for job in workflow["jobs"].values() for s in job["steps"] if "run" in s]
    install, *checks = steps
    assert f"apache-airflow=={locked_version('apache-airflow')}" in install["run"]
    commands = [s["run"] for s in checks]
    files = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
    for hook in yaml.safe_load((repo / ".pre-commit-config.yaml").read_text())["repos"][0]["hooks"]:
        matched = [f for f in files if re.search(hook["files"], f)]
        assert matched, f"hook {hook['id']} would never run"
        commands.append(" ".join([hook["entry"], *(matched if hook.get("pass_filenames", True) else [])]))
    return commands


@pytest.fixture(scope="module")
def user_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository set up from ``templates/`` with this project's ``include/`` (specs and transformers)."""
    repo = tmp_path_factory.mktemp("repo") / "models-repo"
    shutil.copytree(TEMPLATES, repo)
    shutil.copytree(REPO / "include", repo / "include")
    return repo


def test_ci_template_checks_pass_on_the_reference_specs_and_stop_a_bad_one(venv, user_repo):
    commands = template_commands(user_repo)
    assert len(commands) == 4
    for command in commands:
        venv.run("bash", "-c", command, dags=user_repo / "dags", cwd=user_repo)
    spec = user_repo / "include" / "models" / "credit_default.yaml"
    spec.write_text(spec.read_text().replace("primary_metric: roc_auc", "primary_metric: r2"))
    lint = venv.run("bash", "-c", commands[0], dags=user_repo / "dags", cwd=user_repo, check=False)
    assert lint.returncode == 1
    line = 1 + spec.read_text().splitlines().index("primary_metric: r2")
    assert f"include/models/credit_default.yaml:{line}: primary_metric: " in lint.stdout
    tests = venv.run("bash", "-c", commands[1], dags=user_repo / "dags", cwd=user_repo, check=False)
    assert tests.returncode == 1 and "test_no_model_spec_is_invalid" in tests.stdout


# ------------------------------------------------------------------------------------------------ a CT run


def test_ct_runs_in_the_clean_install_and_status_shows_its_champion(venv, dags):
    """The tasks find the spec where the DAG file said (no ``MLOPS_MODELS_DIR``), train, gate and promote."""
    landing = venv.home / "mlops" / "data" / "landing" / "credit_default"
    venv.run("python", "-m", "mlops_airflow.core.demo_data", str(landing), "--days", "15", dags=dags)
    store = venv.home / "mlops" / "mlflow" / "mlflow.db"
    store.parent.mkdir(parents=True, exist_ok=True)
    venv.run("mlflow", "db", "upgrade", f"sqlite:///{store}", dags=dags)
    venv.run("airflow", "pools", "set", "mlflow_registry", "1", "promotion and rollback", dags=dags)
    started = time.monotonic()
    run = venv.run("airflow", "dags", "test", "ct_credit_default", dags=dags)
    print(f"\nct_credit_default in the clean install: {time.monotonic() - started:.0f} s")
    assert re.search(r"DagRun Finished: dag_id=ct_credit_default, .*state=success", run.stdout + run.stderr)
    status = venv.run("mlops", "status", "credit_default", "--models-dir", str(dags / "include" / "models"), dags=dags)
    lines = dict(line.split(":", 1) for line in status.stdout.splitlines())
    assert lines["champion"].strip() == "v1, proven blessed by its signature"
    assert lines["last CT"].split("): ", 1)[1].startswith("BLESSED")
