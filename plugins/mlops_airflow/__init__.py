"""mlops-airflow: continuous training of scikit-learn models on Airflow 3, gated and deployed through MLflow.

A DAG file in your repository hands the model specs to the factory::

    from mlops_airflow import model_dags

    globals().update(model_dags("include/models"))

``model_dags`` is imported on first use, so that ``mlops_airflow.core`` (the model server, the CLI) never
imports Airflow.
"""

from __future__ import annotations

from typing import Any

__all__ = ["model_dags"]


def __getattr__(name: str) -> Any:
    if name == "model_dags":
        from mlops_airflow.dag_factory import model_dags

        return model_dags
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
