"""The smoke test loads a registered model as pyfunc, checks its outputs and latency, and can serve it."""

from __future__ import annotations

import pytest

from mlops_airflow.core import demo_data
from mlops_airflow.core.config import get_spec
from mlops_airflow.core.data import split_xy
from mlops_airflow.core.smoke import serve_check, smoke_test
from mlops_airflow.core.training import fit_final

pytestmark = pytest.mark.e2e


@pytest.fixture
def logged_model(mlflow_client):
    import mlflow
    from mlflow.models import infer_signature

    spec = get_spec("credit_default")
    frame = demo_data.generate_batch(0, n_rows=400)
    pipeline = fit_final(spec, {"max_iter": 20}, frame)
    x, _ = split_xy(spec, frame)
    from mlops_airflow.core.tracking import experiment_id

    with mlflow.start_run(experiment_id=experiment_id(mlflow_client, "smoke")):
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=infer_signature(x.head(5), pipeline.predict_proba(x.head(5))),
            input_example=x.head(5),
            pyfunc_predict_fn="predict_proba",
            serialization_format="cloudpickle",
        )
    return info.model_uri, split_xy(spec, demo_data.generate_batch(1, n_rows=100))[0]


def test_smoke_test_passes_a_sound_model_and_fails_one_over_budget(logged_model):
    uri, rows = logged_model
    result = smoke_test(uri, rows, "classification", max_latency_ms=1000.0)
    assert result["passed"], result
    assert result["rows"] == 100 and result["latency_ms_per_row"] > 0
    assert result["requirement_mismatches"] == []  # logged from this interpreter: every pin is installed

    slow = smoke_test(uri, rows, "classification", max_latency_ms=1e-6)
    assert not slow["passed"]
    assert any("exceeds the budget" in p for p in slow["problems"])


def test_served_model_answers_invocations(logged_model):
    uri, rows = logged_model
    served = serve_check(uri, rows.head(10))
    assert served["served"] is True and served["predictions"] == 10
