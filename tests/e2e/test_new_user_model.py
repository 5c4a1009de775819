"""A new user's own model, run exactly as ``docs/models.md`` ("Add your model, step by step") tells them.

The spec is the one the page shows (step 2), the commands are the ones it gives (step 4: its ``export`` line and
its ``airflow dags test`` lines, run as written in a checkout-like folder), the data is shaped like a team's
(one CSV per calendar day named by date, 150-400 rows a day, a string label with a rare class, integer plan
codes, a boolean, gaps in a numeric feature, a date column, a column the spec does not name). Then the scoring
batch a user has: an out-of-domain plan code and missing values. Real Airflow in subprocesses, real MLflow.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "models.md"
START = dt.date(2026, 3, 1)
DAYS = 20


def step_by_step() -> str:
    text = DOC.read_text()
    return text[text.index("## Add your model, step by step") :]


def documented_spec() -> tuple[str, str]:
    """The model spec of step 2: (model name, YAML text)."""
    found = re.search(r"```yaml\n(.*?)```", step_by_step(), flags=re.DOTALL)
    assert found, f"{DOC}: step 2 shows no model spec"
    yaml_text = "\n".join(line.strip("\n")[3:] for line in found.group(1).splitlines())
    name = re.search(r"^name: (\w+)$", yaml_text, flags=re.MULTILINE)
    assert name, yaml_text
    return name.group(1), yaml_text


def documented_commands() -> tuple[dict[str, str], list[list[str]]]:
    """Step 4's shell block: the variables its ``export`` line sets (``$PWD`` unexpanded) and its
    ``airflow dags test`` commands, as argument lists."""
    found = re.search(r"```bash\n(.*?)```", step_by_step(), flags=re.DOTALL)
    assert found, f"{DOC}: step 4 gives no commands to run a model's DAGs"
    exports: dict[str, str] = {}
    commands = []
    for raw in found.group(1).splitlines():
        line = raw.split("#")[0].split(">")[0].strip()
        if line.startswith("export "):
            exports.update(item.split("=", 1) for item in shlex.split(line)[1:])
        elif "airflow dags test" in line:
            commands.append(shlex.split(line)[line.split().index("airflow") :])
    return exports, commands


def tickets(day: int, rng: np.random.Generator, *, labelled: bool = True) -> pd.DataFrame:
    """One day of tickets: 150-400 rows, ``escalated`` about 3 %, gaps in ``wait_minutes``."""
    n = int(rng.integers(150, 401))
    plan = rng.choice([3, 4, 5, 6, 8], n, p=[0.35, 0.25, 0.2, 0.12, 0.08])
    wait = rng.gamma(2.0, 15.0, n).round()
    first = rng.random(n) < 0.6
    channel = rng.choice(["email", "phone", "chat"], n, p=[0.5, 0.3, 0.2])
    score = 0.03 * wait - 1.5 * first + 0.4 * (plan >= 6) + rng.normal(0, 0.6, n)
    outcome = np.where(score > 2.6, "escalated", np.where(score > 0.2, "reopened", "resolved"))
    frame = pd.DataFrame(
        {
            "ticket_id": [f"T{day:03d}-{i:03d}" for i in range(n)],
            "opened_on": (START + dt.timedelta(days=day)).isoformat(),
            "wait_minutes": np.where(rng.random(n) < 0.08, np.nan, wait),
            "plan_code": plan,
            "first_contact": first,
            "channel": channel,
        }
    )
    if labelled:
        frame["outcome"] = outcome
    return frame


def land(folder: Path, day: int, rng: np.random.Generator) -> pd.DataFrame:
    folder.mkdir(parents=True, exist_ok=True)
    frame = tickets(day, rng)
    frame.to_csv(folder / f"tickets_{START + dt.timedelta(days=day):%Y-%m-%d}.csv", index=False)
    return frame


def copy_sqlite(source: Path, target: Path) -> None:
    """A copy of a live SQLite DB through SQLite's backup API. Never by reading the file: the session's metadata
    DB is in WAL mode and open in this process, and closing any other descriptor of the file drops the locks
    this process holds on it (POSIX), so the next process to close it deletes the WAL from under this one."""
    import contextlib
    import sqlite3

    with contextlib.closing(sqlite3.connect(source)) as src, contextlib.closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


def test_the_documented_commands_train_score_and_watch_a_new_users_model(
    tmp_path: Path, airflow_db: Path, mlflow_store_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, spec_text = documented_spec()
    exports, commands = documented_commands()
    # what a user needs beyond `make`: the metadata DB and the DAG folder of this checkout
    assert {"AIRFLOW_HOME", "AIRFLOW__CORE__DAGS_FOLDER"} <= set(exports), exports
    assert [c[3] for c in commands] == [f"ct_{model}", f"predict_{model}", f"monitor_{model}"], commands

    # a checkout as `make airflow-db` leaves it (under $PWD), with the spec of step 2 as the user's model
    checkout = tmp_path / "checkout"
    (checkout / "dags").mkdir(parents=True)
    shutil.copy(REPO / "dags" / "mlops_dags.py", checkout / "dags")
    (checkout / "include" / "models").mkdir(parents=True)
    (checkout / "include" / "models" / f"{model}.yaml").write_text(spec_text)
    local = checkout / ".local"
    (local / "airflow").mkdir(parents=True)
    copy_sqlite(airflow_db / "airflow.db", local / "airflow" / "airflow.db")
    (local / "mlflow").mkdir()
    shutil.copy(mlflow_store_template, local / "mlflow" / "mlflow.db")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLOPS", "MLFLOW_TRACKING"))}
    env.update({key: value.replace("$PWD", str(checkout)) for key, value in exports.items()})
    # the checkout's own folders: the package finds include/models and .local beside itself in a real clone
    env.update({"MLOPS_HOME": str(local), "MLOPS_MODELS_DIR": str(checkout / "include" / "models")})

    rng = np.random.default_rng(20260301)
    landing = local / "data" / "landing" / model
    frames = [land(landing, day, rng) for day in range(DAYS)]
    labels = pd.concat(frames)["outcome"].value_counts(normalize=True)
    assert 0.01 < labels["escalated"] < 0.06, labels  # the rare class a real team has

    def run(argv: list[str]) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", *argv], cwd=checkout, env=env, capture_output=True, text=True, timeout=600
        )
        output = proc.stdout + proc.stderr
        reason = re.findall(r"Exception: .*", output)
        assert proc.returncode == 0, f"{' '.join(argv)} failed: {reason}\n{output[-4000:]}"
        assert "state=success" in output, output[-3000:]
        return output

    # step 4: ct_<model>, as documented (the reason in -c goes to MLflow)
    ct_output = run(commands[0])
    assert "columns not in the spec, ignored: ticket_id" in ct_output  # validate_data's log

    store = f"sqlite:///{local / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    from mlops_airflow.core.tracking import client_for

    client = client_for(store)
    champion = client.get_model_version_by_alias(model, "champion")  # the first run promoted a version
    tags = client.get_run(str(champion.run_id)).data.tags
    assert tags["mlops.validation"] == "passed"
    assert tags["mlops.verdict"] == f"promoted v{champion.version}"
    reason = json.loads(next(c for c in commands[0] if c.startswith("{")))["reason"]
    assert tags["mlops.trigger.reason"] == reason  # -c '{"reason": ...}' reached MLflow

    # step 6: a scoring batch with a plan code outside `categories`, a missing wait and a missing plan code
    scoring = local / "data" / "scoring" / model
    scoring.mkdir(parents=True)
    batch = tickets(DAYS, np.random.default_rng(7), labelled=False).head(20).reset_index(drop=True)
    batch["plan_code"] = batch["plan_code"].astype("float64")
    batch.loc[0, "plan_code"] = 7  # not among [3, 4, 5, 6, 8]
    batch.loc[1, "wait_minutes"] = np.nan
    batch.loc[2, "plan_code"] = np.nan
    batch.to_csv(scoring / "tickets_to_score.csv", index=False)
    run(commands[1])
    predicted = pd.read_parquet(next((local / "storage" / model / "predictions").glob("tickets_to_score*.parquet")))
    assert list(predicted["ticket_id"]) == list(batch["ticket_id"])  # every row scored, in order
    values = ["resolved", "reopened", "escalated"]
    assert set(predicted["prediction"]) <= set(values)
    probas = predicted[[f"proba_{v}" for v in values]].to_numpy()
    assert np.isfinite(probas).all() and np.allclose(probas.sum(axis=1), 1.0)
    assert set(predicted["model_version"].astype(str)) == {str(champion.version)}

    # step 6: a new labelled day in the landing zone, then the monitor
    land(landing, DAYS, rng)
    monitor_output = run(commands[2])
    assert "live metric" in monitor_output

    from mlops_airflow.cli import main

    out = io.StringIO()
    models_dir = str(checkout / "include" / "models")
    assert main(["status", model, "--models-dir", models_dir, "--format", "json"], out=out) == 0, out.getvalue()
    status = json.loads(out.getvalue())
    assert str(status["champion"]) == str(champion.version)
    assert status["last_monitor"] is not None


def test_lint_says_what_a_threshold_takes_and_what_it_got(tmp_path: Path) -> None:
    """A threshold written as a bare number, the mistake the step-2 spec invites (``accuracy: {min: 0.4}``)."""
    from mlops_airflow.cli import main

    model, spec_text = documented_spec()
    wrong = spec_text.replace("accuracy: {min: 0.4}", "accuracy: 0.4")
    assert wrong != spec_text
    path = tmp_path / f"{model}.yaml"
    path.write_text(wrong)
    out = io.StringIO()
    assert main(["lint", "--no-dags", str(path)], out=out, err=out) == 1
    line = next(line for line in out.getvalue().splitlines() if "gate.thresholds.accuracy" in line)
    assert line.endswith("gate.thresholds.accuracy: expected a mapping with keys from: min, max (got 0.4)"), line


def test_make_demo_without_the_demo_spec_says_how_to_run_your_own_model(tmp_path: Path) -> None:
    """A team that replaced the demo spec by its own and runs ``make demo``: told what is missing, where, and the
    command that runs its model, not a KeyError."""
    model, spec_text = documented_spec()
    models = tmp_path / "models"
    models.mkdir()
    (models / f"{model}.yaml").write_text(spec_text)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: no Airflow answers there
    with closed:
        env = {**os.environ, "MLOPS_MODELS_DIR": str(models), "MLOPS_HOME": str(tmp_path / "home")}
        env["MLOPS_AIRFLOW_URL"] = f"http://127.0.0.1:{closed.getsockname()[1]}"
        proc = subprocess.run(
            [sys.executable, "-m", "mlops_airflow.demo"], env=env, capture_output=True, text=True, timeout=300
        )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"{models} holds no credit_default.yaml" in proc.stderr
    assert f"ct_{model}" in proc.stderr and "airflow dags test ct_<model>" in proc.stderr
