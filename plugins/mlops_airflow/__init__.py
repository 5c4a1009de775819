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

# OpenMP worker threads (scikit-learn's histogram gradient boosting) that spin only briefly before they sleep.
# With OpenMP's default spinning, threads on a busy host (other tasks, the scheduler, a second fit) make each
# other wait: three fits of the demo model took 7.7 to 26 s beside two busy processes on 2 cores, 1.1 s with
# a short spin, 1.7 s with no spin (``OMP_WAIT_POLICY=PASSIVE``, which made the same fits 7x slower on an
# idle host: 2.3 s against 0.3 s; the short spin costs nothing there). Read by OpenMP (libgomp, which
# scikit-learn's Linux wheels use) when it loads: set here, before scikit-learn is imported by a task, the
# model server or the CLI; a value already in the environment is kept.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

__all__ = ["model_dags"]


def __getattr__(name: str) -> Any:
    if name == "model_dags":
        from mlops_airflow.dag_factory import model_dags

        return model_dags
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
