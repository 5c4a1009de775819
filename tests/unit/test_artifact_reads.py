"""Every artifact the package reads back from MLflow goes through one capped reader (core/tracking.py): a file
anyone who may write to the tracking server logged under a run's known path is refused by its listed size
before it is downloaded, and by its downloaded size; text that is not UTF-8 and JSON that is not JSON are
refused by name. Real MLflow store (SQLite, local artifacts), real artifacts logged through ``MlflowClient``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from mlops_airflow.core.errors import ArtifactError

MODEL = "credit_default"


@pytest.fixture
def client(mlops_home: Any) -> Any:
    from mlops_airflow.core import settings
    from mlops_airflow.core.tracking import client_for

    return client_for(settings.default_tracking_uri())


def _run(client: Any, kind: str = "monitor", **tags: str) -> str:
    from mlops_airflow.core.tracking import TAG_KIND, experiment_id

    exp = experiment_id(client, MODEL)
    run_id = str(client.create_run(exp, tags={TAG_KIND: kind, **tags}).info.run_id)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _over(cap: int, **fields: Any) -> str:
    """A valid JSON object of ``fields`` one byte longer than ``cap`` (padded with a text field)."""
    head = json.dumps(fields)[:-1] + ', "pad": "'
    return head + "x" * (cap + 1 - len(head) - 2) + '"}'


def _log_bytes(client: Any, run_id: str, data: bytes, path: str, tmp: Path) -> None:
    folder, _, name = path.rpartition("/")
    local = tmp / name
    local.write_bytes(data)
    client.log_artifact(run_id, str(local), folder or None)


def test_an_artifact_over_the_cap_is_refused_by_its_listed_size_naming_run_path_and_rule(client) -> None:
    from mlops_airflow.core.tracking import read_artifact_bytes

    run_id = _run(client)
    client.log_text(run_id, "x" * 2000, "drift/report.json")

    with pytest.raises(ArtifactError) as refused:
        read_artifact_bytes(client, run_id, "drift/report.json", max_bytes=1999)
    assert (refused.value.run_id, refused.value.path) == (run_id, "drift/report.json")
    assert refused.value.rule == "is larger than the 1999 bytes the package reads (listed at 2000 bytes)"
    assert str(refused.value) == f"MLflow run {run_id}: artifact 'drift/report.json' {refused.value.rule}"
    assert read_artifact_bytes(client, run_id, "drift/report.json", max_bytes=2000) == b"x" * 2000
    assert read_artifact_bytes(client, run_id, "drift/absent.json") is None
    assert read_artifact_bytes(client, run_id, "nowhere/report.json") is None
    assert read_artifact_bytes(client, run_id, "drift") is None  # a folder is no file

    # read through the artifact URI a search answered: the same listing, the same cap
    run = client.get_run(run_id)
    uri = run.info.artifact_uri
    with pytest.raises(ArtifactError, match="listed at 2000 bytes"):
        read_artifact_bytes(client, run_id, "drift/report.json", 1999, artifact_uri=uri)
    assert read_artifact_bytes(client, run_id, "drift/report.json", 2000, artifact_uri=uri) == b"x" * 2000

    for bad in ("../other/report.json", "/drift/report.json", "drift//report.json", "drift/./report.json"):
        with pytest.raises(ArtifactError, match="is not a relative path inside the run's artifacts"):
            read_artifact_bytes(client, run_id, bad)


def test_load_json_names_an_artifact_over_the_cap_not_utf8_or_not_json(client, tmp_path) -> None:
    from mlops_airflow.core.tracking import MAX_ARTIFACT_BYTES, load_json

    run_id = _run(client, "ct")
    client.log_text(run_id, _over(MAX_ARTIFACT_BYTES, spec={"name": MODEL}), "spec/model.json")
    _log_bytes(client, run_id, b'{"name": "caf\xe9"}', "spec/latin1.json", tmp_path)
    client.log_text(run_id, '{"name": ', "spec/cut.json")
    client.log_text(run_id, '{"name": "fine"}', "spec/fine.json")
    client.log_text(run_id, "[" * 100_000 + "]" * 100_000, "spec/deep.json")

    with pytest.raises(ArtifactError) as big:
        load_json(client, run_id, "spec/model.json")
    assert big.value.rule == (
        f"is larger than the {MAX_ARTIFACT_BYTES} bytes the package reads (listed at {MAX_ARTIFACT_BYTES + 1} bytes)"
    )
    with pytest.raises(ArtifactError) as latin1:
        load_json(client, run_id, "spec/latin1.json")
    assert latin1.value.path == "spec/latin1.json" and latin1.value.rule.startswith("is not UTF-8 text (byte 13")
    with pytest.raises(ArtifactError) as cut:
        load_json(client, run_id, "spec/cut.json")
    assert cut.value.rule.startswith("is not JSON (line 1, column 10")
    with pytest.raises(ArtifactError, match="nested too deep"):
        load_json(client, run_id, "spec/deep.json")
    assert load_json(client, run_id, "spec/fine.json") == {"name": "fine"}
    assert load_json(client, run_id, "spec/absent.json") is None


def test_the_model_card_is_not_made_from_a_comparison_over_the_cap(client) -> None:
    from mlops_airflow.core import model_card
    from mlops_airflow.core.tracking import MAX_ARTIFACT_BYTES

    run_id = _run(client, "ct")
    client.log_text(run_id, _over(MAX_ARTIFACT_BYTES, candidate={"roc_auc": 0.8}), "evaluation/comparison.json")
    with pytest.raises(ArtifactError, match=r"evaluation/comparison\.json' is larger than"):
        model_card._load_json(client, run_id, "evaluation/comparison.json")


def test_the_model_page_leaves_out_reports_over_the_cap_and_says_so_in_the_log(client, caplog) -> None:
    from mlops_airflow.core.ledger import COMPARISON, DRIFT_REPORT, metric_trend, model_status
    from mlops_airflow.core.tracking import MAX_ARTIFACT_BYTES, MAX_REPORT_BYTES

    run_id = _run(client)
    client.log_text(run_id, _over(MAX_ARTIFACT_BYTES, drifted_features=["income"]), DRIFT_REPORT)
    ct = _run(client, "ct")
    client.log_text(ct, _over(MAX_REPORT_BYTES, note="# gate"), "gate/report.md")
    client.log_text(ct, _over(MAX_ARTIFACT_BYTES, candidate={"roc_auc": 0.8}), COMPARISON)
    client.create_registered_model(MODEL)
    client.create_model_version(MODEL, f"runs:/{ct}/model", run_id=ct)

    with caplog.at_level(logging.WARNING):
        st = model_status(client, MODEL, "roc_auc")
        trend = metric_trend(client, MODEL, "roc_auc")
    assert st.last_monitor is not None and st.last_monitor.drifted_features == []
    assert [(p.version, p.value) for p in trend] == [("1", None)]
    logged = caplog.text
    assert f"MLflow run {run_id}: artifact '{DRIFT_REPORT}' is larger than the {MAX_ARTIFACT_BYTES} bytes" in logged
    assert f"MLflow run {ct}: artifact '{COMPARISON}' is larger than" in logged

    from mlops_airflow.core.ledger import gate_report

    assert gate_report(client, ct) is None  # a report the page would render: 1 MiB at most
    client.log_text(ct, "# gate\n\nblessed", "gate/report.md")
    assert gate_report(client, ct) == "# gate\n\nblessed"

    # the same run with a report within the cap: read as before
    fine = _run(client)
    client.log_text(fine, '{"drifted_features": ["income"]}', DRIFT_REPORT)
    assert model_status(client, MODEL, "roc_auc").last_monitor.drifted_features == ["income"]


def test_the_estimate_history_skips_a_batch_list_over_the_cap(client, caplog) -> None:
    from mlops_airflow.core.tracking import MAX_ARTIFACT_BYTES, experiment_id
    from mlops_airflow.ui.history import ESTIMATE_BATCHES, estimate_history

    def batch(name: str) -> dict[str, Any]:
        return {"metric": "roc_auc", "source": "landing", "batch": name, "value": 0.8, "low": 0.7, "high": 0.9}

    exp = experiment_id(client, MODEL)
    client.log_text(_run(client), json.dumps({"batches": [batch("batch_2026-01-01.csv")]}), ESTIMATE_BATCHES)
    big = _run(client)
    client.log_text(big, _over(MAX_ARTIFACT_BYTES, batches=[batch("batch_2026-01-02.csv")]), ESTIMATE_BATCHES)

    with caplog.at_level(logging.WARNING):
        history = estimate_history(client, exp, "roc_auc")
    assert [p.batch for p in history.points] == ["batch_2026-01-01.csv"]
    assert f"MLflow run {big}: artifact '{ESTIMATE_BATCHES}' is larger than" in caplog.text


def test_the_plot_route_serves_only_pngs_within_the_cap_from_the_plot_folders(client, tmp_path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlops_airflow.core.ledger import MAX_PLOTS, PNG_SIGNATURE, image_artifact, image_artifacts
    from mlops_airflow.core.tracking import MAX_IMAGE_BYTES

    run_id = _run(client)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    client.log_figure(run_id, fig, "drift/plots/age.png")
    plt.close(fig)
    svg = b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(document.cookie)'/>"
    _log_bytes(client, run_id, svg, "drift/plots/evil.png", tmp_path)
    _log_bytes(client, run_id, PNG_SIGNATURE + b"\0" * MAX_IMAGE_BYTES, "drift/plots/huge.png", tmp_path)
    _log_bytes(client, run_id, PNG_SIGNATURE, "gate/secret.png", tmp_path)

    served = image_artifact(client, run_id, "drift/plots/age.png")
    assert served is not None and served.startswith(PNG_SIGNATURE)
    assert image_artifact(client, run_id, "drift/plots/evil.png") is None  # not a PNG, whatever its name
    assert image_artifact(client, run_id, "drift/plots/huge.png") is None  # over the cap
    for outside in ("gate/secret.png", "drift/plots/../../gate/secret.png", "/drift/plots/age.png"):
        assert image_artifact(client, run_id, outside) is None

    many = tmp_path / "many"
    many.mkdir()
    for i in range(MAX_PLOTS + 5):
        (many / f"p{i:03d}.png").write_bytes(PNG_SIGNATURE)
    client.log_artifacts(run_id, str(many), "evaluation")
    listed = image_artifacts(client, run_id, "evaluation")
    assert len(listed) == MAX_PLOTS and listed[0] == "evaluation/p000.png"  # the page shows a bounded number
