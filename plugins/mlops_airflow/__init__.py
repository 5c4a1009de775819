"""mlops-airflow: continuous training of scikit-learn models on Airflow 3, gated and deployed through MLflow.

A DAG file in your repository hands the model specs to the factory::

    from mlops_airflow import model_dags

    globals().update(model_dags("include/models"))

``model_dags`` is imported on first use, so that ``mlops_airflow.core`` (the model server, the CLI) never
imports Airflow.
"""

from __future__ import annotations

import os
from typing import Any

# OpenMP worker threads (scikit-learn's histogram gradient boosting, numpy's BLAS) that sleep when idle
# instead of spinning. Spinning threads on a busy host (other tasks, the scheduler, a second fit) make each
# other wait: three fits of the demo model took 26 s with two other busy processes on 2 cores, against 1.7 s
# with passive threads (0.4 s on one thread). Read by OpenMP when it loads: set here, before scikit-learn is
# imported by a task, the model server or the CLI; a value already in the environment is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["model_dags"]


def __getattr__(name: str) -> Any:
    if name == "model_dags":
        from mlops_airflow.dag_factory import model_dags

        return model_dags
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
