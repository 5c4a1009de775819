"""Mapped candidates side by side share the cores: each train task's native threads = cores // task slots."""

from __future__ import annotations

import os

import pytest

from mlops_airflow.operators.training import candidate_threads


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
