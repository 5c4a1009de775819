"""Mapped candidates side by side share the cores: each train task's native threads = cores // task slots."""

from __future__ import annotations

import os
import platform

import pytest

from mlops_airflow.operators.base import candidate_threads


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
    monkeypatch.delenv("MLOPS_TRAIN_THREADS", raising=False)


def test_local_executor_slots_share_the_cores(monkeypatch):
    cores = os.cpu_count() or 1
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "1")
    assert candidate_threads() == cores
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", str(cores))
    assert candidate_threads() == 1
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", str(cores * 8))  # more slots than cores: never 0
    assert candidate_threads() == 1


def test_celery_worker_concurrency_and_the_explicit_setting(monkeypatch):
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    monkeypatch.setenv("AIRFLOW__CELERY__WORKER_CONCURRENCY", "1")
    assert candidate_threads() == (os.cpu_count() or 1)
    monkeypatch.setenv("MLOPS_TRAIN_THREADS", "3")
    assert candidate_threads() == 3


def test_a_thread_count_that_is_not_a_number_is_named(monkeypatch):
    monkeypatch.setenv("MLOPS_TRAIN_THREADS", "all")
    with pytest.raises(ValueError, match="MLOPS_TRAIN_THREADS='all'"):
        candidate_threads()


_FREED_BUFFER = """
import sys
import numpy as np
if sys.argv[1] == "fixed":
    from mlops_airflow.core.training import large_buffers_to_os
    assert large_buffers_to_os()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
big = np.ones(20 << 17)  # 20 MiB, freed: glibc's own threshold rises to it
del big
held = [np.ones(1 << 17) for _ in range(8)]  # 8 x 1 MiB below it, and one 8 MiB buffer between them
buffer = np.ones(1 << 20)
tail = [np.ones(1 << 17) for _ in range(2)]
before = rss()
del buffer
print(before - rss())
"""


@pytest.mark.skipif(
    not (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"), reason="mallopt is glibc's"
)
def test_a_training_task_hands_freed_large_buffers_back_to_the_os():
    """Once glibc has raised its threshold, an 8 MiB buffer freed in the middle of the heap stays in the
    process; with the training tasks' fixed threshold it goes back to the OS when freed."""
    import subprocess
    import sys

    def returned(mode: str) -> int:
        proc = subprocess.run([sys.executable, "-c", _FREED_BUFFER, mode], capture_output=True, text=True, check=True)
        return int(proc.stdout.strip())

    assert returned("fixed") >= 7 << 20
    assert returned("default") < 1 << 20
