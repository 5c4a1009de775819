"""A trigger's ``data_uri`` cannot make ``ct_``, ``predict_`` or ``monitor_`` read outside the landing roots.

The "secret" below is a folder of well-formed batches outside every root, marked in a column name and in
its values: whatever a task read from it would show up in the snapshot, the predictions or MLflow.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from e2e_support import snapshot_by_hand, wait_for

from mlops_airflow.core import demo_data

pytestmark = pytest.mark.e2e
MARKER = "S3CRET-7f3a9c"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """Fifteen valid demo batches outside every landing root, with a marker column."""
    folder = tmp_path / "outside" / "credit_default"
    for path in demo_data.write_batches(folder, range(15), n_rows=200):
        frame = pd.read_csv(path)
        frame[f"note_{MARKER}"] = MARKER
        frame.to_csv(path, index=False)
    return folder


def leaked(home: Path, *needles: str) -> list[str]:
    """Files under ``home`` (MLflow store and artifacts, snapshots, predictions; not the landing data the
    test put there) holding any needle."""
    found = []
    for path in home.rglob("*"):
        if path.is_file() and path.relative_to(home).parts[0] not in {"data", "data2"}:
            data = path.read_bytes()
            found += [f"{path}: {n}" for n in needles if n.encode() in data]
    return found


def snapshot_folders(home: Path) -> list[str]:
    root = home / "storage" / "credit_default" / "snapshots"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


@pytest.mark.parametrize(
    "data_uri",
    [
        "/etc",
        "file:///etc",
        "../../../../../../../../etc",
        "{landing}/../../../outside/credit_default",
        "{landing}/%2e%2e/%2e%2e/%2e%2e/outside/credit_default",
        "{home}/data2/credit_default",  # shares the root's prefix, not a segment boundary
    ],
)
def test_ct_refuses_a_data_uri_outside_the_roots_before_reading(
    run_dag, landing, demo_batches, secret, mlops_home, mlflow_client, data_uri
):
    demo_batches(range(15))
    shutil.copytree(secret, mlops_home / "data2" / "credit_default")
    result = run_dag("ct_credit_default", conf={"data_uri": data_uri.format(landing=landing, home=mlops_home)})

    assert result.state == "failed"
    assert result.state_of("snapshot") == "failed", result.tasks  # failed, not up_for_retry: no retry
    assert result.state_of("validate_data") == "upstream_failed"
    assert snapshot_folders(mlops_home) == []
    assert leaked(mlops_home, MARKER, "root:x:0:0") == []
    # nothing was read, so nothing was recorded: the run's MLflow run is never opened
    experiments = mlflow_client.search_experiments()
    assert mlflow_client.search_runs([e.experiment_id for e in experiments]) == []


def test_refusal_names_the_param_and_the_allowed_roots(mlops_home, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from mlops_airflow.operators.data import SnapshotOperator
    from mlops_airflow.operators.monitoring import MonitorOperator, PredictOperator

    monkeypatch.setenv("MLOPS_ALLOWED_DATA_ROOTS", "s3://partner/landing")
    root = os.path.realpath(mlops_home / "data")
    for cls in (SnapshotOperator, PredictOperator, MonitorOperator):
        operator = cls(task_id="t", model_name="credit_default", data_uri="/etc/passwd")
        # an empty context: the refusal comes before the task touches MLflow, storage or the run
        with pytest.raises(AirflowFailException) as caught:
            operator.execute({})  # type: ignore[arg-type]
        message = str(caught.value)
        assert message.startswith("data_uri '/etc/passwd'"), message
        assert root in message and "s3://partner/landing" in message and "MLOPS_ALLOWED_DATA_ROOTS" in message


def test_predict_and_monitor_refuse_a_data_uri_outside_the_roots(
    run_dag, landing, secret, mlops_home, mlflow_client, tmp_path, monkeypatch
):
    # The champion is trained from a second, allow-listed landing root: an admitted data_uri still works.
    partner = tmp_path / "partner" / "credit_default"
    demo_data.write_batches(partner, range(15), n_rows=400)
    monkeypatch.setenv("MLOPS_ALLOWED_DATA_ROOTS", str(tmp_path / "partner"))
    trained = run_dag("ct_credit_default", conf={"data_uri": str(partner)})
    assert trained.state == "success", trained.tasks
    snapshot = trained.xcom("snapshot")
    assert snapshot["snapshot_uri"].rsplit("/", 1)[-1].startswith("manual__")
    runs_before = len(mlflow_client.search_runs([e.experiment_id for e in mlflow_client.search_experiments()]))

    for dag_id in ("predict_credit_default", "monitor_credit_default"):
        for data_uri in (str(secret), f"file://{secret}", f"{landing}/../../../outside/credit_default"):
            result = run_dag(dag_id, conf={"data_uri": data_uri})
            task = dag_id.split("_")[0]
            assert result.state_of(task) == "failed", (dag_id, data_uri, result.tasks)

    assert leaked(mlops_home, MARKER) == []
    assert not (mlops_home / "storage" / "credit_default" / "predictions").exists() or not any(
        (mlops_home / "storage" / "credit_default" / "predictions").iterdir()
    )
    runs_after = mlflow_client.search_runs([e.experiment_id for e in mlflow_client.search_experiments()])
    assert len(runs_after) == runs_before  # no monitor run was opened


# Landed files go through one door (core/landing.py): confined, whole, under the size cap, unambiguous.

REPO = Path(__file__).resolve().parents[2]


def with_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: str) -> None:
    """The demo model with more ``source`` keys (YAML lines), as the deployment's only model."""
    models = tmp_path / "models"
    models.mkdir()
    anchor = "  timestamp_column: event_date\n"
    text = (REPO / "include" / "models" / "credit_default.yaml").read_text()
    (models / "credit_default.yaml").write_text(text.replace(anchor, anchor + extra))
    monkeypatch.setenv("MLOPS_MODELS_DIR", str(models))


def cut(path: Path, rows: int) -> None:
    """Keep the header and the first ``rows`` rows: a batch caught half-way through landing."""
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[: rows + 1]))


def refusals(result: Any) -> list[dict[str, Any]]:
    summary = result.xcom("validate_data", key="validation_summary")
    assert summary is not None and summary["success"] is False, (result.tasks, summary)
    return summary["failed"]


def trained_nothing(result: Any) -> bool:
    return not any(k.startswith("train[") and v == "success" for k, v in result.tasks.items())


@pytest.mark.parametrize("target", ["/etc/passwd", "a valid batch outside the roots"])
def test_a_landed_symlink_out_of_the_roots_is_refused_unread(
    run_dag, landing, demo_batches, secret, mlops_home, mlflow_client, target
):
    demo_batches(range(14), n_rows=200)
    newest = landing / demo_data.batch_file_name(14)
    newest.symlink_to(Path(target) if target.startswith("/") else secret / newest.name)
    result = run_dag("ct_credit_default")

    assert result.state_of("validate_data") == "failed", result.tasks  # failed, not up_for_retry: no retry
    assert trained_nothing(result)
    [refused] = refusals(result)
    assert (refused["file"], refused["expectation"]) == (newest.name, "landing_root"), refused
    assert "resolves outside the allowed landing roots" in refused["rule"], refused
    # nothing of the target reached the snapshot, MLflow, XCom or the validation message
    assert leaked(mlops_home, MARKER, "root:x:0:0") == []
    assert MARKER not in json.dumps(result.xcom("snapshot")) and "root:x:0:0" not in refused["rule"]


def test_a_column_named_twice_fails_validation_naming_file_and_column(run_dag, landing, demo_batches):
    demo_batches(range(14), n_rows=200)
    [newest] = demo_batches(range(14, 15), n_rows=200)
    header, rows = newest.read_text().split("\n", 1)
    newest.write_text(header.replace("income", "age") + "\n" + rows)
    result = run_dag("ct_credit_default")

    assert result.state_of("validate_data") == "failed", result.tasks  # not a raw ArrowInvalid, retried
    assert trained_nothing(result)
    [refused] = refusals(result)
    assert (refused["file"], refused["column"], refused["expectation"]) == (newest.name, "age", "unique_column_names")
    assert "appears 2 times in the header" in refused["rule"], refused


def test_an_infinite_feature_value_fails_validation_naming_file_column_and_rule(run_dag, landing, demo_batches):
    demo_batches(range(14), n_rows=200)
    [newest] = demo_batches(range(14, 15), n_rows=200)
    frame = pd.read_csv(newest)
    frame.loc[[3, 7], "income"] = float("inf")  # income has a lower bound only: a range check lets inf through
    frame.to_csv(newest, index=False)
    result = run_dag("ct_credit_default")

    assert result.state_of("validate_data") == "failed", result.tasks
    assert trained_nothing(result)
    [refused] = refusals(result)
    assert (refused["file"], refused["column"]) == (newest.name, "income"), refused
    assert refused["expectation"] == "expect_column_values_to_be_finite" and refused["unexpected_count"] == 2


def test_a_landed_file_over_the_size_cap_is_refused_unread(run_dag, landing, demo_batches, monkeypatch):
    demo_batches(range(14), n_rows=200)  # about 17 kB each
    [big] = demo_batches(range(14, 15), n_rows=5000)
    monkeypatch.setenv("MLOPS_MAX_FILE_BYTES", "100000")
    result = run_dag("ct_credit_default")

    assert result.state_of("validate_data") == "failed", result.tasks
    assert trained_nothing(result)
    [refused] = refusals(result)
    assert (refused["file"], refused["expectation"]) == (big.name, "max_file_bytes"), refused
    assert f"{big.stat().st_size} bytes, over the cap of 100000 bytes" in refused["rule"], refused


def test_a_half_landed_batch_fails_the_snapshot_when_the_spec_says_fail(
    run_dag, landing, demo_batches, mlops_home, tmp_path, monkeypatch
):
    from airflow.sdk.exceptions import AirflowFailException

    from mlops_airflow.core.landing import write_manifest
    from mlops_airflow.operators.data import SnapshotOperator

    with_source(tmp_path, monkeypatch, "  landing: {protocol: manifest, on_incomplete: fail}\n")
    demo_batches(range(14), n_rows=200)
    [newest] = demo_batches(range(14, 15))  # 1,000 rows
    write_manifest(landing)
    cut(newest, 499)
    result = run_dag("ct_credit_default")

    assert result.state_of("snapshot") == "failed", result.tasks  # failed, not up_for_retry
    assert result.state_of("validate_data") == "upstream_failed"
    assert snapshot_folders(mlops_home) == []
    with pytest.raises(AirflowFailException) as caught:  # what the task log says
        SnapshotOperator(task_id="snapshot", model_name="credit_default").execute({"run_id": "manual__probe"})
    message = str(caught.value)
    assert newest.name in message and "_MANIFEST.json" in message and "on_incomplete: fail" in message, message
    assert snapshot_folders(mlops_home) == []


def test_half_landed_and_escaping_batches_are_kept_out_of_ct_predict_and_monitor(
    run_dag, landing, demo_batches, mlops_home, secret, tmp_path, monkeypatch
):
    from mlops_airflow.core.landing import write_manifest

    with_source(tmp_path, monkeypatch, "  landing: {protocol: manifest}\n")  # on_incomplete: skip
    demo_batches(range(14), n_rows=400)
    [newest] = demo_batches(range(14, 15))
    write_manifest(landing)
    cut(newest, 499)
    trained = run_dag("ct_credit_default")

    assert trained.state == "success", trained.tasks
    snapshot = trained.xcom("snapshot")
    assert snapshot["eval_batches"] == ["batch_2026-01-14.csv"], snapshot  # the newest whole batch
    assert snapshot["skipped_batches"] == [newest.name] and snapshot["train_rows"] == 13 * 400

    monitored = run_dag("monitor_credit_default")
    assert monitored.state_of("monitor") == "success", monitored.tasks
    assert monitored.xcom("monitor")["batches"] == ["batch_2026-01-14.csv"]

    scoring = mlops_home / "data" / "scoring" / "credit_default"
    whole, half = demo_data.write_batches(scoring, range(15, 17), n_rows=300)
    write_manifest(scoring)
    cut(half, 100)
    predictions = mlops_home / "storage" / "credit_default" / "predictions"
    assert run_dag("predict_credit_default").state_of("predict") == "success"
    assert sorted(p.name for p in predictions.iterdir()) == [whole.name.replace(".csv", ".parquet")]
    demo_data.write_batch(scoring, 16, n_rows=300)  # the producer finishes the batch and its manifest
    write_manifest(scoring)
    assert run_dag("predict_credit_default").state_of("predict") == "success"
    assert len(pd.read_parquet(predictions / half.name.replace(".csv", ".parquet"))) == 300

    # a symlink out of the roots fails either task, unread
    (scoring / demo_data.batch_file_name(17)).symlink_to(secret / demo_data.batch_file_name(3))
    (landing / demo_data.batch_file_name(15)).symlink_to(secret / demo_data.batch_file_name(4))
    assert run_dag("predict_credit_default").state_of("predict") == "failed"
    assert run_dag("monitor_credit_default").state_of("monitor") == "failed"
    assert leaked(mlops_home, MARKER) == []


# A select_candidate try killed while logging its model leaves nothing its retry does not clean.

KILLED_TRY = """
import json, sys, time
from pathlib import Path
from types import SimpleNamespace

from mlflow.tracking.client import MlflowClient

from mlops_airflow.dag_factory import build_dags

marker, kill_point = Path(sys.argv[1]), sys.argv[2]
# Not a fault double: the real call runs, then this try waits at the chosen point to be SIGKILLed.
if kill_point == "log_model":  # artifacts uploaded, log_model not yet returned: the model is PENDING
    upload = MlflowClient.log_model_artifacts

    def upload_then_wait(self, model_id, local_dir):
        upload(self, model_id, local_dir)
        marker.write_text(model_id)
        time.sleep(3600)

    MlflowClient.log_model_artifacts = upload_then_wait
else:  # log_model returned (READY), the run does not name the model yet
    set_tag = MlflowClient.set_tag

    def wait_before_recording(self, run_id, key, value, *args, **kwargs):
        if key == "mlops.candidate_model_uri":
            marker.write_text(value)
            time.sleep(3600)
        return set_tag(self, run_id, key, value, *args, **kwargs)

    MlflowClient.set_tag = wait_before_recording
task = build_dags()["ct_credit_default"].get_task("select_candidate")
task.snapshot, task.candidates = json.loads(sys.argv[3]), json.loads(sys.argv[4])
task.execute({"run_id": sys.argv[5], "ti": SimpleNamespace(try_number=1)})
"""


@pytest.mark.timeout(900)
@pytest.mark.parametrize("kill_point", ["log_model", "before_recording"])
def test_a_retry_cleans_the_model_a_killed_try_left(mlflow_server, demo_batches, tmp_path, kill_point):
    from types import SimpleNamespace

    from mlflow.exceptions import MlflowException

    from mlops_airflow.core.config import candidate_grid, get_spec
    from mlops_airflow.core.tracking import client_for
    from mlops_airflow.dag_factory import build_dags
    from mlops_airflow.operators.training import TrainCandidateOperator

    demo_batches(range(15), n_rows=200)
    run_id = "manual__2026-01-01T00:00:00+00:00"
    dag = build_dags()["ct_credit_default"]
    context, snapshot = snapshot_by_hand(run_id)
    grid = candidate_grid(get_spec("credit_default"))
    candidate = {"index": 0, "params": grid[0]}
    train = TrainCandidateOperator(
        task_id="train_probe", model_name="credit_default", snapshot=snapshot, candidate=candidate, dag=dag
    )
    candidates = [train.execute(context)]
    parent = snapshot["mlflow_run_id"]
    client = client_for(mlflow_server)
    experiment = client.get_experiment_by_name("credit_default").experiment_id

    def models() -> list[Any]:
        return list(client.search_logged_models([experiment], filter_string=f"source_run_id = '{parent}'"))

    # try 1, in its own process, SIGKILLed at the kill point
    marker, log = tmp_path / "killed-at", tmp_path / "try1.log"
    script = tmp_path / "try1.py"
    script.write_text(KILLED_TRY)
    args = [str(marker), kill_point, json.dumps(snapshot), json.dumps(candidates), run_id]
    with log.open("wb") as out:
        try1 = subprocess.Popen([sys.executable, str(script), *args], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for("the kill point", marker.exists, try1, log)
    finally:
        try1.send_signal(signal.SIGKILL)
        try1.wait(timeout=60)
    assert try1.returncode == -signal.SIGKILL
    [orphan] = models()
    assert str(orphan.status) == ("PENDING" if kill_point == "log_model" else "READY")
    assert "MLmodel" in {f.path for f in client.list_logged_model_artifacts(orphan.model_id)}
    assert "mlops.candidate_model_uri" not in client.get_run(parent).data.tags

    # try 2, as Airflow retries it
    retry = build_dags()["ct_credit_default"].get_task("select_candidate")
    retry.snapshot, retry.candidates = snapshot, candidates
    selected = retry.execute({**context, "ti": SimpleNamespace(try_number=2)})

    [model] = models()  # exactly one model in the run: the orphan is gone
    assert model.model_id != orphan.model_id and str(model.status) == "READY"
    assert selected["model_uri"] == f"models:/{model.model_id}"
    tags = client.get_run(parent).data.tags
    assert tags["mlops.candidate_model_uri"] == selected["model_uri"] and tags["mlops.selected_candidate"] == "0"
    assert model.tags["mlops.candidate_index"] == "0"
    with pytest.raises(MlflowException, match=r"not found|does not exist|RESOURCE_DOES_NOT_EXIST"):
        client.get_logged_model(orphan.model_id)
