"""The replay's inputs and its plot: a label delay it can compute with, promotion markers on promotions only."""

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


def test_a_label_delay_beyond_ten_years_or_below_zero_is_refused_by_name(tmp_path) -> None:
    import datetime as dt

    import pytest

    from mlops_airflow.core.config import get_spec
    from mlops_airflow.core.replay import Replay, ReplayError

    spec = get_spec("credit_default")
    day = dt.date(2026, 3, 1)
    for delay in (-1, 10**9):  # the replay takes the delays a spec may hold, no others
        with pytest.raises(ReplayError, match=f"credit_default: label delay {delay} days is not between 0 and 3650"):
            Replay(spec, [], day, day, [], tmp_path, label_delay_days=delay)
