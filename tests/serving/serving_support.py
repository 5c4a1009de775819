"""Constants, row makers and version makers shared by the model server tests, their fixtures and
``benchmarks/serving*.py``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlops_airflow.core import demo_data

REPO = Path(__file__).resolve().parents[2]
MODEL = "credit_default"
TOKEN = "test-serving-token-0123456789"
SIGNING_KEY = "test-signing-key-only-airflow-holds"
FEATURES = ["age", "income", "debt_ratio", "credit_lines", "late_payments", "utilization", "employment_type",
            "region", "home_ownership"]  # fmt: skip


def wait_until(what: str, done: Callable[[], Any], seconds: float = 180) -> None:
    """Poll ``done`` until it is true; fail naming ``what`` after ``seconds`` (a bound on waiting, not an
    assertion on speed)."""
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def rows(n: int, day: int = 20, shift: float = 0.0) -> list[dict[str, Any]]:
    frame = demo_data.generate_batch(day, n_rows=n, seed=day, feature_shift=shift)[FEATURES]
    return [{k: (None if v != v else v) for k, v in r.items()} for r in frame.to_dict(orient="records")]


def log_pipeline(spec: Any, pipeline: Any, train: Any) -> str:
    """Log a fitted pipeline in the active run exactly as ``select_candidate`` does; its model URI."""
    from mlops_airflow.operators.training import log_spec_model

    return log_spec_model(spec, pipeline, train, 0.5)


def ct_version(
    client: Any,
    spec: Any,
    log_model: Callable[[], str],
    *,
    signing_key: bytes | None,
    judged_against: str | None = None,
) -> str:
    """A version as ``ct_<model>`` leaves it after a blessing gate, without Airflow: a ``ct_<model>`` parent
    run (tags, ``data_hash`` param), the model logged in it by ``log_model``, the gate's blessing (run tag and
    ``gate/decision.json``), the version registered with ``register_challenger``'s tags and, given a key,
    signed. Nothing moves an alias."""
    import mlflow

    from mlops_airflow.core.registry import TAG_DAG_ID, TAG_RUN_ID
    from mlops_airflow.core.tracking import experiment_id
    from mlops_airflow.core.trust import DECISION_ARTIFACT, TAG_BLESSED, ModelRegistry

    airflow_run = f"manual__{uuid.uuid4().hex[:12]}"
    dag_id = f"ct_{spec.name}"
    tags = {TAG_DAG_ID: dag_id, TAG_RUN_ID: airflow_run, "mlops.kind": "ct"}
    parent = client.create_run(experiment_id(client, spec.name), tags=tags).info.run_id
    data_hash = f"hash-{uuid.uuid4().hex}"
    client.log_param(parent, "data_hash", data_hash)
    with mlflow.start_run(run_id=parent):
        model_uri = log_model()
    client.set_tag(parent, "mlops.candidate_model_uri", model_uri)
    reason = "first run" if judged_against is None else f"no worse than v{judged_against}"
    decision = {"blessed": True, "champion_version": judged_against, "first_run": judged_against is None,
                "reason": reason}  # fmt: skip
    client.set_tag(parent, TAG_BLESSED, "true")
    client.log_dict(parent, decision, DECISION_ARTIFACT)
    client.set_terminated(parent, "FINISHED")
    registry = ModelRegistry(client, spec.name, signing_key=signing_key)
    version_tags = {TAG_DAG_ID: dag_id, TAG_RUN_ID: airflow_run, "mlops.data_hash": data_hash, TAG_BLESSED: "true",
                    "mlops.gate.reason": reason, "mlops.gate.champion_version": judged_against or "",
                    "mlops.mlflow_run_id": parent}  # fmt: skip
    version = str(registry.register(model_uri, parent, version_tags).version)
    registry.sign(version, decision)
    return version


def log_flaky_model(folder: Path, example: Any) -> str:
    """Log, in the active run, a model that answers its own input example (so it passes the server's
    warm-up) and fails on any other row: a version that breaks in live traffic (a real fault, no mock). Its
    model URI."""
    import mlflow

    known = sorted(float(v) for v in example["income"] if v == v and v is not None)
    code = folder / f"flaky_model_{uuid.uuid4().hex[:8]}.py"
    code.write_text(
        "import mlflow\n"
        "import pandas as pd\n"
        "from mlflow.pyfunc import PythonModel\n\n"
        f"KNOWN = {known!r}\n\n\n"
        "class Flaky(PythonModel):\n"
        "    def predict(self, context, model_input, params=None):\n"
        "        income = pd.to_numeric(model_input['income'])\n"
        "        if not (income.isin(KNOWN) | income.isna()).all():\n"
        "            raise RuntimeError('this version fails on live rows')\n"
        "        n = len(model_input)\n"
        "        return pd.DataFrame({'prediction': [0] * n, 'proba_0': [1.0] * n, 'proba_1': [0.0] * n})\n\n\n"
        "mlflow.models.set_model(Flaky())\n"
    )
    info = mlflow.pyfunc.log_model(name="model", python_model=str(code), input_example=example,
                                   pip_requirements=["mlflow"])  # fmt: skip
    return str(info.model_uri)
