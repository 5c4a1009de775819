"""Warm imports for task processes of the LocalExecutor (``make up`` puts this folder on the scheduler's path).

Airflow imports ``airflow_local_settings`` once at start-up in each of its processes that can find it. The
LocalExecutor forks its workers from the scheduler and each task process from a worker, so a module imported
here is already in every task process instead of being imported again by each of them (MLflow, pandas,
pyarrow, scikit-learn, skops, Great Expectations: 1.5 to 4 CPU-seconds per task process; a CT run has a
dozen). Only the
scheduler gets this folder: the api-server, the dag-processor and the triggerer do not pay for the imports,
and DAG parsing stays as cheap as without it.

Nothing here changes a setting or a policy (``__all__`` is empty: Airflow copies every public name of this
module into ``airflow.settings``).
"""

from __future__ import annotations

import importlib
import logging
import os

__all__: list[str] = []

WARM_MODULES = (
    "numpy",
    "pandas",
    "pyarrow.parquet",
    "scipy.stats",
    "sklearn.pipeline",
    "sklearn.ensemble",
    "sklearn.linear_model",
    "sklearn.metrics",
    "mlflow",
    "mlflow.pyfunc",
    "mlflow.tracking",
    "great_expectations",
    "mlops_airflow.core.data",
    "mlops_airflow.core.training",
    "mlops_airflow.core.evaluation",
    "mlops_airflow.core.tracking",
)


def _warm() -> None:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")  # before OpenMP loads (mlops_airflow/__init__.py)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations._docs_decorators").setLevel(logging.WARNING)  # ~200 lines on import
    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except Exception as err:  # a module that cannot be imported here is imported by the task as before
            logging.getLogger(__name__).warning("warm import of %s skipped: %s", name, err)
    try:
        from mlops_airflow.core.served_model import import_skops_io

        import_skops_io()
    except Exception as err:
        logging.getLogger(__name__).warning("warm import of skops.io skipped: %s", err)


_warm()
