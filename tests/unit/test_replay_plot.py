"""The replay plot marks the nights a model was promoted, never those whose CT run refused one."""

from __future__ import annotations

from mlops_airflow.core.replay import PROMOTED


def test_promotion_markers_follow_promotions_only() -> None:
    promoted = ["schedule CT: promoted v3", "first: promoted v1 unchecked", "drift CT: promoted v12"]
    refused = [
        "schedule CT: not promoted: gate: roc_auc 0.71 below the champion's 0.74 (promoted v2)",
        "drift CT: not promoted: validation failed",
        "",
    ]
    assert [bool(PROMOTED.search(t)) for t in promoted] == [True, True, True]
    assert [bool(PROMOTED.search(t)) for t in refused] == [False, False, False]
