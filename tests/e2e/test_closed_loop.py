"""The closed-loop simulation on a tiny configuration: the invariants a user relies on."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "closed_loop.py"
CORRUPT = {1: "out_of_range", 3: "nulls_in_required"}
DAYS = 6


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("closed_loop", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    closed_loop = _load()
    config = closed_loop.SimConfig(
        days=DAYS,
        rows=300,
        warmup=5,
        train_batches=5,
        feature_shift_day=2,
        concept_shift_day=4,
        corrupt=CORRUPT,
        n_bootstrap=200,
        weekly_every=3,
        policies=("never", "always", "gated_nightly"),
    )
    return closed_loop.simulate(config)


def test_one_row_per_day_per_policy(result: dict[str, Any]) -> None:
    assert set(result["policies"]) == {"never", "always", "gated_nightly"}
    for policy in result["policies"].values():
        assert [row["day"] for row in policy["days"]] == list(range(DAYS))
        assert all(0.0 <= row["roc_auc"] <= 1.0 for row in policy["days"])


def test_gated_system_deploys_no_corrupt_batch(result: dict[str, Any]) -> None:
    gated = result["policies"]["gated_nightly"]
    assert gated["corrupt_batches_deployed"] == []
    assert gated["days_served_by_corrupt_model"] == 0
    assert gated["rejected_by_validation"] == len(CORRUPT)
    assert len(gated["quarantined"]) == len(CORRUPT)


def test_always_deploys_every_corrupt_batch_it_sees(result: dict[str, Any]) -> None:
    # A batch landing on day d is in the training window from the night of day d + 1 on.
    seen = sorted(day for day in CORRUPT if day + 1 < DAYS)
    always = result["policies"]["always"]
    assert always["corrupt_batches_deployed"] == seen
    assert always["promotions"] == DAYS


def test_never_keeps_the_initial_model(result: dict[str, Any]) -> None:
    never = result["policies"]["never"]
    assert {row["version"] for row in never["days"]} == {1}
    assert never["models_trained"] == 0
