"""The DAG folder and model specs of this repository, parsed once for the DAG and spec tests.

``AIRFLOW__CORE__DAGS_FOLDER`` and ``MLOPS_MODELS_DIR`` override where they are (default: ``dags/`` and
``include/models/`` at the repository root).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAGS_FOLDER = Path(os.environ.get("AIRFLOW__CORE__DAGS_FOLDER") or ROOT / "dags")
MODELS_DIR = Path(os.environ.get("MLOPS_MODELS_DIR") or ROOT / "include" / "models")


@pytest.fixture(scope="session")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER))
