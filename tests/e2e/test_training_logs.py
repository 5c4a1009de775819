"""Logging and loading a model keep the task log readable: skops' module scan over Airflow's deprecated shim
modules would otherwise put about 1,160 FutureWarnings (3,500 log lines) into the log of every task that first
imports ``skops.io`` (select_candidate, evaluate_vs_champion, monitor, predict).

Each case runs in a fresh interpreter: the scan runs when ``skops.io`` is first imported (it names every scipy
ufunc's module then), so only a process's first import warns.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
SCRIPT = """
import importlib, sys, warnings
for name in ("airflow.utils.timezone", "airflow.utils.trigger_rule", "airflow.utils.operator_resources"):
    importlib.import_module(name)  # as in a task process, where Airflow has imported them
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from mlops_airflow.operators.training import quiet_skops_scan, trusted_types
pipeline = make_pipeline(StandardScaler(), LogisticRegression())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    if sys.argv[1] == "raw":
        import skops.io
    elif sys.argv[1] == "load":
        from mlops_airflow.core.served_model import import_skops_io

        import_skops_io()
    elif sys.argv[1] == "quiet":
        with quiet_skops_scan():
            trusted_types(pipeline)
    else:
        trusted_types(pipeline)
print(sum("skops" in w.filename for w in caught))
"""


def skops_warnings(mode: str) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(PLUGINS)},  # AIRFLOW_HOME: the session's, from conftest
        timeout=120,
    )
    return int(proc.stdout.strip().splitlines()[-1])


def test_logging_a_model_adds_no_skops_warnings_to_the_task_log() -> None:
    assert skops_warnings("raw") > 100  # the import-time scan the filter is for, on this Airflow version
    assert skops_warnings("plain") == 0
    assert skops_warnings("quiet") == 0


def test_loading_a_model_adds_no_skops_warnings_to_the_task_log() -> None:
    assert skops_warnings("load") == 0
