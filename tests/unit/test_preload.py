"""make up's warm imports for the scheduler (deploy/preload/airflow_local_settings.py).

Airflow imports ``airflow_local_settings`` at start-up and copies its public names into ``airflow.settings``
(policies, settings overrides). The warm-import module must change nothing there, and its modules must import.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

PRELOAD = Path(__file__).resolve().parents[2] / "deploy" / "preload"


@pytest.fixture
def local_settings_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(PRELOAD))
    monkeypatch.delitem(sys.modules, "airflow_local_settings", raising=False)
    yield
    sys.modules.pop("airflow_local_settings", None)


def test_warm_imports_change_no_airflow_setting(local_settings_on_path):
    from airflow import settings

    before = dict(vars(settings))
    settings.import_local_settings()
    warm = sys.modules["airflow_local_settings"]
    assert Path(warm.__file__).parent == PRELOAD  # this module, not another one on the path
    after = vars(settings)
    assert set(after) == set(before)
    assert all(after[name] is before[name] for name in before)


def test_every_warm_module_imports(local_settings_on_path):
    warm = importlib.import_module("airflow_local_settings")
    for name in warm.WARM_MODULES:
        assert name in sys.modules, name
    assert "skops.io" in sys.modules
    assert not any(name.startswith("airflow") for name in warm.WARM_MODULES)


def test_openmp_threads_spin_briefly_unless_the_environment_says_otherwise(monkeypatch):
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    importlib.reload(importlib.import_module("mlops_airflow"))
    import os

    assert os.environ["GOMP_SPINCOUNT"] == "10000"
    monkeypatch.setenv("GOMP_SPINCOUNT", "300000")  # a deployment's own choice is kept
    importlib.reload(importlib.import_module("mlops_airflow"))
    assert os.environ["GOMP_SPINCOUNT"] == "300000"
