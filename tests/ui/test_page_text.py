"""How the model page words times, runs, versions and reasons, and draws the metric trend (pure functions)."""

from __future__ import annotations

import datetime as dt
from xml.etree import ElementTree

from mlops_airflow.core.ledger import TrendPoint, gate_interval
from mlops_airflow.ui.text import reason, run_label, version, when
from mlops_airflow.ui.trend import trend_svg

NOW = dt.datetime(2026, 12, 7, 7, 10, 30, tzinfo=dt.UTC)


def test_times_read_as_utc_minutes_with_their_age() -> None:
    assert when("2026-12-07T04:10:17.557587+00:00", NOW) == "2026-12-07 04:10 UTC (3 h ago)"
    assert when("2026-12-07T07:10:00", NOW) == "2026-12-07 07:10 UTC (just now)"  # no zone: UTC
    assert when("2026-12-07T08:10:17+01:00", NOW) == "2026-12-07 07:10 UTC (just now)"
    assert when("2026-12-07T06:40:00+00:00", NOW) == "2026-12-07 06:40 UTC (30 min ago)"
    assert when("2026-12-01T00:00:00+00:00", NOW) == "2026-12-01 00:00 UTC (6 days ago)"
    assert when(dt.datetime(2026, 12, 8, 2, tzinfo=dt.UTC), NOW) == "2026-12-08 02:00 UTC (in 18 h)"
    assert when(None, NOW) == "" and when("not a time", NOW) == "not a time"


def test_runs_are_named_by_trigger_and_time_not_by_run_id() -> None:
    assert run_label("manual__2026-12-07T04:10:17.557587+00:00") == "manual run, 2026-12-07 04:10 UTC"
    assert run_label("scheduled__2026-12-08T02:00:00+00:00") == "scheduled run, 2026-12-08 02:00 UTC"
    assert run_label("asset_triggered__2026-12-07T06:00:01+00:00") == "asset-triggered run, 2026-12-07 06:00 UTC"
    assert run_label("my-own-run-id") == "my-own-run-id"


def test_versions_always_read_vn_and_reasons_drop_what_the_row_shows() -> None:
    assert [version(v) for v in ("2", 3, "v4", None, "")] == ["v2", "v3", "v4", "", ""]
    rolled = (
        "v2 misprices self-employed applicants (rollback by rollback_m run manual__2026-12-07T04:10:00+00:00 by ann)"
    )
    assert reason(rolled) == "v2 misprices self-employed applicants"
    assert reason("blessed by the gate in ct_m run scheduled__2026-12-08T02:00:00+00:00") == "blessed by the gate"
    assert reason("an operator's own words (with brackets)") == "an operator's own words (with brackets)"


def test_the_gate_interval_is_on_the_metrics_own_scale_for_either_direction() -> None:
    comparison = {"champion": {"roc_auc": 0.80, "brier": 0.20}, "bootstrap": {"lower": -0.01, "upper": 0.02}}
    low, high = gate_interval(comparison, "roc_auc")  # candidate better = higher
    assert (round(low, 6), round(high, 6)) == (0.79, 0.82)
    low, high = gate_interval(comparison, "brier")  # candidate better = lower
    assert (round(low, 6), round(high, 6)) == (0.18, 0.21)
    assert gate_interval({"candidate": {"roc_auc": 0.8}, "bootstrap": None}, "roc_auc") == (None, None)


def test_the_trend_draws_each_version_its_interval_and_rings_the_champion() -> None:
    points = [
        TrendPoint("1", 0.81, None, None, None),
        TrendPoint("2", 0.77, 0.76, 0.78, "1"),
        TrendPoint("3", None, None, None, None),  # its CT run wrote no comparison
    ]
    svg = ElementTree.fromstring(trend_svg(points, "1", "roc_auc"))
    ns = {"s": "http://www.w3.org/2000/svg"}
    groups = svg.findall("s:g", ns)
    assert [g.get("data-version") for g in groups] == ["1", "2", "3"]
    assert [g.get("class") for g in groups] == ["point champion", "point", "point"]
    assert [len(g.findall("s:line[@class='interval']", ns)) for g in groups] == [0, 1, 0]
    titles = [g.find("s:title", ns).text for g in groups]
    assert titles[1] == "v2: roc_auc 0.77; gate interval 0.76 to 0.78 against v1"
    assert titles[2] == "v3: roc_auc not measured"
    assert trend_svg([TrendPoint("1", None, None, None, None)], None, "roc_auc") == ""
