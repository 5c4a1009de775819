"""``mlops reproduce``: a registered version retrained from its records answers identically, a changed input is
named, a snapshot that is gone is refused, and the live registry is never touched."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from mlops_airflow.cli import main
from mlops_airflow.core.reproduce import EXPERIMENT_SUFFIX, SPEC_ARTIFACT, TAG_LOCK_HASH

pytestmark = pytest.mark.e2e
CT = "ct_credit_default"
MODEL = "credit_default"
REPO = Path(__file__).resolve().parents[2]


def mlops_reproduce(version: str, *options: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["reproduce", MODEL, version, *options], out, err)
    return code, out.getvalue(), err.getvalue()


def registry_state(client: Any) -> dict[str, Any]:
    """What the live registry holds: aliases, versions and their tags, model tags, runs of the model's experiment."""
    model = client.get_registered_model(MODEL)
    versions = client.search_model_versions(f"name = '{MODEL}'")
    experiment = client.get_experiment_by_name(MODEL).experiment_id
    return {
        "aliases": dict(model.aliases),
        "model_tags": dict(model.tags),
        "versions": {str(v.version): dict(v.tags) for v in versions},
        "runs": sorted(r.info.run_id for r in client.search_runs([experiment])),
    }


def flip_labels(storage: Path, rows: int = 10) -> int:
    """Flip the label of the first ``rows`` rows of every Parquet file of the model's storage (snapshot bytes
    changed on purpose, whatever the layout: the batch store or a copy per snapshot); the files changed."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    changed = 0
    for path in sorted(storage.rglob("*.parquet")):
        table = pq.read_table(path)
        if "default" not in table.column_names:
            continue
        label = table.column("default")
        flipped = pc.subtract(pa.scalar(1, label.type), label)
        first = pa.array([i < rows for i in range(table.num_rows)])
        index = table.column_names.index("default")
        pq.write_table(table.set_column(index, "default", pc.if_else(first, flipped, label)), path)
        changed += 1
    return changed


def test_versions_reproduce_identically_changes_are_named_and_a_gone_snapshot_is_refused(
    run_dag, demo_batches, mlflow_client, mlops_home, tmp_path, monkeypatch
):
    # the code commit the runs record and the reproduction compares: fixed, whatever lands in the checkout meanwhile
    monkeypatch.setenv("MLOPS_GIT_COMMIT", "a" * 40)
    demo_batches(range(15))
    assert run_dag(CT).state == "success"
    demo_batches(range(15, 16))
    assert run_dag(CT).state == "success"
    before = registry_state(mlflow_client)
    assert sorted(before["versions"]) == ["1", "2"] and str(before["aliases"]["champion"]) == "2"

    # both versions, retrained from their records, answer bit for bit alike on their evaluation rows
    code, out, err = mlops_reproduce("1", "--json")
    first = json.loads(out)
    assert code == 0 and first["verdict"] == "identical", out
    assert first["rows_differing"] == 0 and first["max_abs_diff"] == 0.0 and first["eval_rows"] > 0
    assert {c["name"]: c["same"] for c in first["checks"]} == {
        "snapshot manifest": True,
        "training rows": True,
        "evaluation rows": True,
        "spec": True,
        "params": True,
        "decision threshold": True,
        "code commit": True,
        "dependency lock": True,
    }, first["checks"]
    assert first["spec_source"].startswith("as recorded")
    assert "mlops reproduce: retraining candidate" in err  # progress goes to stderr, the report to stdout
    code, out, err = mlops_reproduce("2")
    assert code == 0 and out.startswith(f"{MODEL} v2: IDENTICAL"), out + err
    assert "bit for bit" in out

    # the reproductions went to the scratch experiment, as runs without a model
    scratch = mlflow_client.get_experiment_by_name(MODEL + EXPERIMENT_SUFFIX)
    runs = mlflow_client.search_runs([scratch.experiment_id])
    assert sorted(r.data.tags["mlops.reproduce.version"] for r in runs) == ["1", "2"]
    assert not mlflow_client.search_logged_models(experiment_ids=[scratch.experiment_id])

    # a recorded dependency lock and a code commit that are not the ones in force now are named (the predictions
    # still agree)
    mlflow_client.set_tag(before["versions"]["2"]["mlops.mlflow_run_id"], TAG_LOCK_HASH, "0" * 64)
    monkeypatch.setenv("MLOPS_GIT_COMMIT", "b" * 40)
    code, out, _ = mlops_reproduce("2", "--json")
    monkeypatch.setenv("MLOPS_GIT_COMMIT", "a" * 40)
    moved = json.loads(out)
    assert code == 0 and moved["verdict"] == "identical"
    differing = {c["name"]: c["detail"] for c in moved["checks"] if c["same"] is False}
    assert differing == {"dependency lock": "recorded 000000000000, now " + differing["dependency lock"][-12:],
                         "code commit": "recorded aaaaaaaaaaaa, now bbbbbbbbbbbb"}, differing  # fmt: skip
    assert {n.split(" differs")[0] for n in moved["notes"]} >= {"dependency lock", "code commit"}, moved["notes"]

    # a version trained with a spec that recorded nothing, reproduced with today's spec (another max_iter): the
    # predictions differ, and the spec is named as the cause
    source_run = before["versions"]["2"]["mlops.mlflow_run_id"]
    artifacts = Path(mlflow_client.get_run(source_run).info.artifact_uri.removeprefix("file://"))
    (artifacts / SPEC_ARTIFACT).unlink()  # as a version trained before the spec was recorded
    models = tmp_path / "models"
    models.mkdir()
    spec_text = (REPO / "include" / "models" / f"{MODEL}.yaml").read_text()
    assert "max_iter: 150" in spec_text
    (models / f"{MODEL}.yaml").write_text(spec_text.replace("max_iter: 150", "max_iter: 40"))
    code, out, _ = mlops_reproduce("2", "--json", "--models-dir", str(models))
    spec_changed = json.loads(out)
    assert code == 1 and spec_changed["verdict"] == "different", out
    assert 0 < spec_changed["share_rows_differing"] <= 1 and spec_changed["max_abs_diff"] > 0
    assert spec_changed["spec_source"].startswith("the models folder's current spec")
    assert spec_changed["causes"][0].startswith("spec changed: its hash differs"), spec_changed["causes"]

    # snapshot bytes changed on purpose: the batch store refuses them, and the refusal names the change
    assert flip_labels(mlops_home / "storage" / MODEL) > 0
    code, out, err = mlops_reproduce("1", "--json")
    changed = json.loads(out)
    assert code == 2 and changed["verdict"] == "refused" and changed["reason"] == "snapshot bytes changed", out
    assert "hash to" in changed["message"] and "refused" in err

    # a snapshot that is gone (as retention removes it) is refused, naming it
    snapshot_uri = before["versions"]["2"]["mlops.snapshot_uri"]
    shutil.rmtree(Path(snapshot_uri.removeprefix("file://")))
    code, out, err = mlops_reproduce("2")
    assert code == 2 and out == ""
    assert "refused" in err and "snapshot is gone" in err and snapshot_uri in err, err

    # the live registry is as it was (the lock tag above was set on purpose, on the run, not the registry)
    after = registry_state(mlflow_client)
    assert after == before
