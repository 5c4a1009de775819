"""One door to the champion: every consumer proves the version it loads, on the embedded default too.

The embedded default (local MLflow store, no ``MLOPS_SIGNING_KEY``) signs with its own key, created on first
use under ``MLOPS_HOME``. A ``champion`` set by hand to a version no gate signed is refused by batch scoring,
the monitor, the next CT run's baseline and the model page, each naming the version and the rule; so is a
hand-made "CT run" complete with a gate decision artifact, which the source-run check alone would accept.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from typing import Any

import mlflow
import pytest

from mlops_airflow.core import demo_data
from mlops_airflow.core.registry import CHAMPION
from mlops_airflow.core.trust import TAG_SIGNATURE, ModelRegistry, UnblessedVersionError

pytestmark = [pytest.mark.e2e, pytest.mark.demo_champion]  # each test starts from the first CT run
MODEL = "credit_default"


class ConstantModel(mlflow.pyfunc.PythonModel):
    """A model that is not the gate's (stands for any model someone wants to slip in)."""

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]  # MLflow reads hints
        return [0.0] * len(model_input)


def output(capfd: pytest.CaptureFixture[str]) -> str:
    """What the DAG runs since the last call printed (``dag.test()`` writes task logs to the console)."""
    captured = capfd.readouterr()
    return captured.out + captured.err


def hand_made_ct_version(client: Any) -> str:
    """What anyone with write access to the store can make: a run tagged as ``ct_credit_default``'s, a model
    it logged, a gate decision saying blessed, and a version registered from it."""
    exp = client.get_experiment_by_name(MODEL).experiment_id
    with mlflow.start_run(experiment_id=exp) as run:
        logged = mlflow.pyfunc.log_model(name="model", python_model=ConstantModel())
        mlflow.log_param("data_hash", "f" * 64)
        mlflow.log_dict({"blessed": True, "champion_version": None}, "gate/decision.json")
        mlflow.set_tags(
            {
                "airflow.dag_id": f"ct_{MODEL}",
                "airflow.run_id": "manual__forged",
                "mlops.kind": "ct",
                "mlops.gate.blessed": "true",
                "mlops.candidate_model_uri": logged.model_uri,
            }
        )
    tags = {"airflow.dag_id": f"ct_{MODEL}", "airflow.run_id": "manual__forged", "mlops.gate.blessed": "true",
            "mlops.data_hash": "f" * 64}  # fmt: skip
    version = ModelRegistry(client, MODEL).register(logged.model_uri, run.info.run_id, tags)
    return str(version.version)


@pytest.fixture
def first_ct_run(demo_champion, mlops_home) -> None:
    """The embedded default with no key in the environment: 15 landed days, one CT run (v1), a scoring day."""
    assert "MLOPS_SIGNING_KEY" not in os.environ
    demo_data.write_batches(mlops_home / "data" / "scoring" / MODEL, range(15, 16))
    assert demo_champion.state == "success"


def test_embedded_default_signs_and_every_consumer_refuses_a_forged_champion(
    first_ct_run, run_dag, demo_batches, mlflow_client, mlops_home, capfd
) -> None:
    key_file = mlops_home / "signing_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    genuine = mlflow_client.get_model_version(MODEL, "1")
    assert genuine.tags[TAG_SIGNATURE].startswith("hmac-sha256:"), "the embedded default signs"
    assert key not in output(capfd), "the key is never logged"

    # The source-run check alone accepts the hand-made CT run: that is why the embedded default signs.
    forged = hand_made_ct_version(mlflow_client)
    assert ModelRegistry(mlflow_client, MODEL).verify_blessed(forged).signed is False
    mlflow_client.set_model_version_tag(MODEL, forged, TAG_SIGNATURE, genuine.tags[TAG_SIGNATURE])
    mlflow_client.set_registered_model_alias(MODEL, CHAMPION, forged)

    rule = f"version {forged} may not serve: its gate signature"
    scored = run_dag(f"predict_{MODEL}")
    assert scored.state == "failed" and scored.state_of("predict") == "failed"
    assert rule in output(capfd)
    assert not list((mlops_home / "storage" / MODEL / "predictions").glob("*.parquet")), "nothing was scored"

    monitored = run_dag(f"monitor_{MODEL}")
    assert monitored.state_of("monitor") == "failed"
    assert rule in output(capfd)

    demo_batches(range(15, 16))
    ct = run_dag(f"ct_{MODEL}")
    assert ct.state_of("evaluate_vs_champion") == "failed", ct.tasks
    assert rule in output(capfd)
    assert str(mlflow_client.get_registered_model(MODEL).aliases[CHAMPION]) == forged, "nothing moved it"

    rolled = run_dag(f"rollback_{MODEL}", conf={"version": forged, "reason": "serve mine"})
    assert rolled.state == "failed"

    from mlops_airflow.core.config import get_spec
    from mlops_airflow.ui.app import _status, render_model

    st = _status(get_spec(MODEL))
    assert st.champion == forged and rule in (st.champion_refused or "")
    page = render_model(get_spec(MODEL), st, None, None, None, None)
    assert "id='champion-refused'" in page and "not proven blessed" in page

    # A rollback to the genuine version serves again, proven by its signature.
    assert run_dag(f"rollback_{MODEL}", conf={"version": "1", "reason": "forged champion"}).state == "success"
    assert run_dag(f"predict_{MODEL}").state == "success"
    assert _status(get_spec(MODEL)).champion_proof == "signature"


def test_versions_blessed_before_the_key_existed_are_re_signed_once_by_an_operator(
    first_ct_run, run_dag, demo_batches, mlflow_client, mlops_home, capfd
) -> None:
    # As an installation older than its key: the version was blessed, never signed, and the key is newer.
    mlflow_client.delete_model_version_tag(MODEL, "1", TAG_SIGNATURE)
    forged = hand_made_ct_version(mlflow_client)  # blessed-looking too, and registered before the key
    old = os.stat(mlops_home / "signing_key").st_mtime
    (mlops_home / "signing_key").unlink()
    scored = run_dag(f"predict_{MODEL}")
    assert scored.state == "failed"
    assert "signing resign credit_default" in output(capfd)
    assert os.stat(mlops_home / "signing_key").st_mtime >= old

    def resign(*args: str) -> str:
        cmd = [sys.executable, "-m", "mlops_airflow.core.signing", "resign", MODEL, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), check=True)
        return proc.stdout

    listed = resign()
    assert "v1: would be signed" in listed and "already" not in listed
    assert TAG_SIGNATURE not in mlflow_client.get_model_version(MODEL, "1").tags, "listing writes nothing"
    # Registered before the key existed, the hand-made run passes the source-run check too: the list names it,
    # which is why the command only lists until the operator, having read the list, names what to sign.
    assert f"v{forged}: would be signed" in listed
    done = resign("--version", "1", "--yes")
    assert "v1: signed" in done
    assert run_dag(f"predict_{MODEL}").state == "success"

    # A version registered after the key existed and unsigned was never signed by a gate: refused.
    late = hand_made_ct_version(mlflow_client)
    refused = resign("--version", late, "--yes")
    assert f"v{late}: NOT signed" in refused and "after the key existed" in refused
    with pytest.raises(UnblessedVersionError):
        key = (mlops_home / "signing_key").read_bytes().strip()
        ModelRegistry(mlflow_client, MODEL, key).verify_signed(mlflow_client.get_model_version(MODEL, late))
    print(json.dumps({"listed": listed, "refused": refused}))
