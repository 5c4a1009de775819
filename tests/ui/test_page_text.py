"""How the model page words times, runs, versions and reasons and draws the metric trend (pure functions); and
its estimate-vs-realised plot and replay reports, built from a real local MLflow store holding runs logged as
the monitor task and the replay log them."""

from __future__ import annotations

import datetime as dt
import statistics
from pathlib import Path
from types import SimpleNamespace
from xml.etree import ElementTree

import numpy as np
import pandas as pd

from mlops_airflow.core.encoding import html_text
from mlops_airflow.core.ledger import TrendPoint, gate_interval
from mlops_airflow.ui.text import reason, run_label, version, when
from mlops_airflow.ui.trend import trend_svg

NOW = dt.datetime(2026, 12, 7, 7, 10, 30, tzinfo=dt.UTC)
NS = {"s": "http://www.w3.org/2000/svg"}
REPO = Path(__file__).resolve().parents[2]


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


# ---------------------------------------------------------------- estimated vs realised, replay reports

MODEL = "credit_default"
MONITOR_DAG = f"monitor_{MODEL}"


def _scored(seed: int, n: int = 300) -> tuple[pd.Series, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    return pd.Series((rng.random(n) < p).astype("int64")), p


def _monitor_run(client, exp: str, started: dt.datetime, batches: list[tuple[str, str, int, bool]]) -> list:
    """One monitor MLflow run, its batch estimates made by :mod:`mlops_airflow.core.monitoring` and logged by the
    monitor task's own ``_log_estimates`` (``batches``: source, batch name, score seed, labels arrived)."""
    from mlops_airflow.core import monitoring, tracking
    from mlops_airflow.core.config import get_spec
    from mlops_airflow.core.estimate import Calibration
    from mlops_airflow.operators.monitoring import MonitorOperator

    spec = get_spec(MODEL)
    calibration = Calibration("binary", True, "calibrated on the champion's evaluation rows")
    parts = []
    for source, name, seed, labelled in batches:
        labels, scores = _scored(seed)
        parts.append((source, name, scores, labels if labelled else None))
    estimates = monitoring.estimate_batches(spec, calibration, parts, 0.5)
    run_id = f"scheduled__{started.isoformat()}"
    tags = {tracking.TAG_DAG_ID: MONITOR_DAG, tracking.TAG_RUN_ID: run_id, tracking.TAG_KIND: "monitor"}
    run = client.create_run(exp, start_time=int(started.timestamp() * 1000), tags=tags)
    # the task's method reads only its client and spec: called on them, it logs exactly as a monitor run does
    task = SimpleNamespace(client=client, spec=spec)
    MonitorOperator._log_estimates(task, run.info.run_id, calibration, estimates)  # type: ignore[arg-type]
    client.set_terminated(run.info.run_id, "FINISHED")
    return estimates


def _page(name: str = MODEL, models_dir: Path | None = None) -> str:
    """The model page's HTML as the route builds it, read from the test's MLflow store."""
    from mlops_airflow.core.config import get_spec
    from mlops_airflow.ui import app

    spec = get_spec(name, models_dir) if models_dir else get_spec(name)
    st = app._status(spec)
    return app.render_model(
        spec,
        st,
        None,
        None,
        None,
        None,
        estimates=app._estimate_history_of(spec, st),
        replays=app._replay_reports_of(spec),
        validation=app._validation_of(st),
    )


def _svg(page: str, svg_id: str) -> ElementTree.Element:
    start = page.index(f"<svg id='{svg_id}'")
    return ElementTree.fromstring(page[start : page.index("</svg>", start) + len("</svg>")])


def test_estimates_are_plotted_once_per_batch_from_the_newest_run_beside_the_realised_metric(mlops_home) -> None:
    from mlops_airflow.core import monitoring, settings, tracking

    client = tracking.client_for(settings.default_tracking_uri())
    exp = tracking.experiment_id(client, MODEL)
    land, serve = monitoring.LANDING, monitoring.SERVING
    odd = "batch_2026-01-05 <b>'x'.csv"  # a landed file's name is whatever was landed
    day = dt.datetime(2026, 1, 2, 2, tzinfo=dt.UTC)
    older = _monitor_run(
        client,
        exp,
        day,
        [(land, "batch_2026-01-01.csv", 1, True), (land, "batch_2026-01-02.csv", 2, False),
         (land, "batch_2026-01-03.csv", 3, False)],
    )  # fmt: skip
    second = _monitor_run(
        client,
        exp,
        day + dt.timedelta(days=1),
        [(land, "batch_2026-01-02.csv", 12, True), (land, "batch_2026-01-03.csv", 13, False),
         (land, "batch_2026-01-04.csv", 14, False), (serve, "date=2026-01-04", 15, False)],
    )  # fmt: skip
    newest = _monitor_run(
        client,
        exp,
        day + dt.timedelta(days=2),
        [(land, "batch_2026-01-03.csv", 23, True), (land, "batch_2026-01-04.csv", 24, False), (land, odd, 25, False)],
    )
    # logged last but started first (an older run, a retried task): the start time orders runs
    _monitor_run(client, exp, day - dt.timedelta(days=1), [(land, "batch_2026-01-01.csv", 91, False)])
    # each batch as the newest run that saw it logged it: its labels may have arrived since the older run
    shown = [older[0], second[0], newest[0], newest[1], second[3], newest[2]]

    page = _page()
    svg = _svg(page, "estimate-trend")
    columns = svg.findall("s:g[@class='batch']", NS)
    assert [g.get("data-batch") for g in columns] == [b.batch for b in shown]
    assert [g.get("data-source") for g in columns] == [b.source for b in shown]
    assert [g.get("data-estimated") for g in columns] == [f"{b.estimate.value:.4g}" for b in shown]
    assert [g.get("data-low") for g in columns] == [f"{b.estimate.low:.4g}" for b in shown]
    realised = [g.get("data-realised") for g in columns]
    assert realised == [f"{b.estimate.realised:.4g}" for b in shown[:3]] + ["", "", ""]
    assert [len(g.findall("s:rect[@class='realised']", NS)) for g in columns] == [1, 1, 1, 0, 0, 0]
    assert len(svg.findall("s:polygon[@class='band']", NS)) == 1  # every batch has an interval: one band
    assert "<b>'x'" not in page and "batch_2026-01-05 &lt;b&gt;&#x27;x&#x27;.csv" in page
    error = statistics.median(abs(b.estimate.error) for b in shown[:3])
    assert (
        f"median |estimated &minus; realised| roc_auc <b>{error:.4f}</b> over the 3 batch(es) whose labels arrived"
    ) in page
    assert "6 batch(es) from the newest 4 monitor run(s), 6 of them estimated" in page


def test_no_estimate_plot_without_a_monitor_run_nor_for_a_regression_model(mlops_home) -> None:
    from mlops_airflow.core.estimate import NO_REGRESSION

    page = _page()
    assert "id='estimate-trend'" not in page
    assert "nothing to plot: no monitor run yet" in page
    assert "no replay report yet: the manual DAG replay_credit_default" in page
    regression = _page("diabetes_progression", REPO / "tests" / "e2e" / "models")
    assert "id='estimate-trend'" not in regression and f"nothing to plot: {html_text(NO_REGRESSION)}" in regression


def _replay_result(means: dict[str, float | None]) -> dict:
    """A replay's report as :func:`mlops_airflow.core.replay.replay` returns it, for ``means`` by policy."""
    from mlops_airflow.core.replay import ISOLATION

    def policy(mean: float | None) -> dict:
        days = [{"day": 0, "date": "2026-02-01", "value": mean, "version": 1, "model": "m1", "decision": "keep",
                 "trigger": None, "ct": "", "failed_batches_in_model": []}]  # fmt: skip
        counts = ("days_below_gate_threshold", "ct_runs", "ct_runs_schedule", "ct_runs_triggered", "models_trained")
        return {
            "label": "a policy", "mode": "gated", "policy": "nightly", "mean": mean, "worst": mean,
            **dict.fromkeys(counts, 0), "rejected_by_validation": 0, "gate_rejections": 0, "promotions": 0,
            "compute_seconds": 1.0, "corrupt_batches_served": [], "quarantined": [], "days": days,
        }  # fmt: skip

    return {
        "model": MODEL, "from": "2026-02-01", "to": "2026-02-14", "history": "landing", "warmup_batches": 14,
        "days": 14, "label_delay_days": 2, "metric": "roc_auc", "gate_threshold": None, "gate_threshold_value": None,
        "isolation": ISOLATION, "policies": {name: policy(mean) for name, mean in means.items()},
    }  # fmt: skip


def test_replay_reports_name_their_days_policies_winner_and_link_their_mlflow_run(mlops_home, tmp_path) -> None:
    from mlops_airflow.core import settings, tracking
    from mlops_airflow.core.replay import ISOLATION, log_report, write_report

    client = tracking.client_for(settings.default_tracking_uri())
    tags = {tracking.TAG_DAG_ID: f"replay_{MODEL}", tracking.TAG_RUN_ID: "manual__2026-02-20T10:00:00+00:00",
            tracking.TAG_KIND: "replay"}  # fmt: skip
    result = _replay_result({"never": 0.7012, "nightly": 0.7391, "weekly": float("nan"), "triggers": None})
    run_id = log_report(client, result, write_report(result, tmp_path / "report"), tags)
    exp = client.get_experiment_by_name(f"{MODEL}/replay").experiment_id

    page = _page()
    row = page[page.index("<tr class='replay'") :]
    row = row[: row.index("</tr>")]
    assert f"data-run='{run_id}'" in row and "2026-02-01 to 2026-02-14" in row
    assert "never 0.7012, nightly 0.7391, weekly n/a, triggers n/a" in row
    assert "<b>nightly</b> (0.7391)" in row
    link = f"href='{settings.mlflow_ui_url()}/#/experiments/{exp}/runs/{run_id}'"
    assert link in row and ">replay report</a>" in row
    assert f"dags/replay_{MODEL}/runs/manual__2026-02-20T10%3A00%3A00%2B00%3A00" in row
    assert f"A replay never touched the live registry: {html_text(ISOLATION)}" in page
    assert "nan" not in row.lower().replace("manual", "")


def test_a_ct_run_whose_data_failed_validation_shows_file_column_rule_and_values(mlops_home, tmp_path) -> None:
    """The page of a model whose last CT run stopped at validate_data says what broke, as the task log does:
    file, column, rule and the offending values (text from the data shown as text), the first ten of them."""
    from mlops_airflow.core import demo_data, settings, tracking
    from mlops_airflow.core.config import get_spec
    from mlops_airflow.core.data import write_snapshot
    from mlops_airflow.core.validation import validate_snapshot

    spec = get_spec(MODEL).model_copy(update={"min_rows": 100})
    landing = tmp_path / "landing"
    demo_data.write_batches(landing, range(4), n_rows=200)
    for path in sorted(landing.glob("batch_*.csv")):  # three broken rules in each of four files: twelve
        frame = pd.read_csv(path)
        frame.loc[frame.index[:3], "region"] = "<b>Urgent</b>"
        frame.loc[frame.index[3], "age"] = 250
        frame.loc[frame.index[4], "utilization"] = None
        frame.to_csv(path, index=False)
    summary = validate_snapshot(spec, write_snapshot(spec, str(landing), str(tmp_path / "snap")))
    assert not summary.success and len(summary.failed) == 12
    client = tracking.client_for(settings.default_tracking_uri())
    tags = {tracking.TAG_KIND: "ct", tracking.TAG_DAG_ID: f"ct_{MODEL}", tracking.TAG_RUN_ID: "manual__x",
            "mlops.validation": "failed"}  # fmt: skip
    run = client.create_run(tracking.experiment_id(client, MODEL), tags=tags).info
    tracking.log_json(client, run.run_id, summary.to_dict(limit=None), "validation/summary.json")  # as validate_data
    client.set_terminated(run.run_id, "FAILED")

    page = _page()
    section = page[page.index("<div id='validation-failures'>") :]
    section = section[: section.index("</div>")]
    assert "data validation failed: 12 expectation(s) broken in 4 of 4 file(s)" in section
    assert section.count("<li>") == 10 and "2 more in the MLflow run's validation/summary.json" in section
    first = summary.failed[0].text()
    assert f"<li>{html_text(first)}</li>" in section and "batch_2026-01-0" in first
    assert html_text("'<b>Urgent</b>' (3)") in section and "<b>Urgent" not in section
    assert "task log of validate_data" not in page  # the page itself says what broke


# ---------------------------------------------------------------- what anyone who may write to MLflow can forge


def test_the_page_shows_forged_tags_metrics_and_artifacts_as_text_and_never_fails_on_them(mlops_home) -> None:
    """Registered-model and version tags, run start times, metrics and artifacts are writable by anyone who may
    write to the tracking server: values no task writes (not JSON objects, unreadable times, NaN, 1e308, text
    where a number belongs) leave the page and its JSON standing, and markup in them stays text."""
    import json

    from mlflow.entities import Metric

    from mlops_airflow.core import settings, tracking
    from mlops_airflow.core.ledger import COMPARISON, DRIFT_REPORT
    from mlops_airflow.core.registry import CHAMPION, TAG_LEDGER
    from mlops_airflow.core.trust import DONE_PREFIX, TAG_PIN_INFO, TAG_PINNED
    from mlops_airflow.ui import app
    from mlops_airflow.ui.history import ESTIMATE_BATCHES

    client = tracking.client_for(settings.default_tracking_uri())
    exp = tracking.experiment_id(client, MODEL)
    script = "<script>alert(1)</script>"
    far = 10**17  # ms: a start time no calendar holds
    ct = client.create_run(exp, start_time=far, tags={tracking.TAG_KIND: "ct", tracking.TAG_DAG_ID: script}).info
    client.log_text(ct.run_id, json.dumps({"candidate": {"roc_auc": "high"}, "bootstrap": [1]}), COMPARISON)
    client.create_registered_model(MODEL)
    first = client.create_model_version(MODEL, f"runs:/{ct.run_id}/model", run_id=ct.run_id).version
    ct2 = client.create_run(exp, start_time=-far, tags={tracking.TAG_KIND: "ct"}).info
    client.log_text(ct2.run_id, json.dumps({"candidate": {"roc_auc": 1e308}}), COMPARISON)
    second = client.create_model_version(MODEL, f"runs:/{ct2.run_id}/model", run_id=ct2.run_id).version
    ct3 = client.create_run(exp, tags={tracking.TAG_KIND: "ct"}).info
    edge = {"candidate": {"roc_auc": 0.8}, "champion": {"roc_auc": -1e308}, "bootstrap": {"lower": -1e308, "upper": 1}}
    client.log_text(ct3.run_id, json.dumps(edge), COMPARISON)
    client.create_model_version(MODEL, f"runs:/{ct3.run_id}/model", run_id=ct3.run_id)
    client.set_model_version_tag(MODEL, first, "mlops.promoted_at", "not a time")
    client.set_model_version_tag(MODEL, second, "mlops.promoted_at", "0001-01-01T00:00:00+05:00")
    client.set_model_version_tag(MODEL, second, "mlops.promotion_reason", script)
    client.set_model_version_tag(MODEL, second, "airflow.dag_id", "..")  # quoted, ".." is still "..": no link
    client.set_model_version_tag(MODEL, second, "airflow.run_id", "..")
    client.set_registered_model_tag(MODEL, f"{DONE_PREFIX}x", "[1, 2]")
    client.set_registered_model_tag(MODEL, TAG_PIN_INFO, '["not", "an", "object"]')
    client.set_registered_model_tag(MODEL, f"{DONE_PREFIX}y", '{"to": "2", "reason": ["a list"], "user": 7}')
    client.set_registered_model_tag(MODEL, TAG_PINNED, second)
    client.set_registered_model_tag(MODEL, TAG_LEDGER, '{"to": 1}')
    client.set_registered_model_alias(MODEL, CHAMPION, second)
    monitor = client.create_run(exp, start_time=far, tags={tracking.TAG_KIND: "monitor"}).info
    metrics = {"drift_share": float("nan"), "drifted_features": float("nan"), "estimated_roc_auc": float("inf")}
    client.log_batch(monitor.run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()])
    client.log_text(monitor.run_id, json.dumps({"drifted_features": 7}), DRIFT_REPORT)
    batches = [{"metric": "roc_auc", "batch": f"b{i}", "value": v} for i, v in enumerate((1e308, -1e308, "x"))]
    client.log_text(monitor.run_id, json.dumps({"batches": batches}), ESTIMATE_BATCHES)
    client.set_terminated(monitor.run_id, "FINISHED")

    page = _page()  # no exception: every section rendered
    assert script not in page and html_text(script) in page
    assert "dags/../runs" not in page and "dags/..'" not in page
    st = app._status(_spec())
    body = json.loads(app._json(st.to_dict()).body)  # strict JSON: NaN/infinity read as null
    assert body["last_monitor"]["drift_share"] is None and body["last_monitor"]["drifted_features"] == []
    assert body["pinned_by"] is None and sorted(e["to_version"] for e in body["ledger"]) == ["1", "2", "2"]
    assert body["last_monitor"]["estimated_metric"] is None  # MLflow keeps a logged infinity as 1.8e308
    at = "0001-01-01T00:00:00+05:00"  # a time with no UTC time: shown as typed
    page = app.render_model(_spec(), st, None, at, None, None, trend=app._trend_points(_spec()))
    assert f"At {at}: no version served yet" in page
    trend = _svg(page, "metric-trend")
    assert [g.get("data-version") for g in trend.findall("s:g", NS)] == ["1", "2", "3"]
    heights = [float(c.get("cy")) for c in trend.iter(f"{{{NS['s']}}}circle")]
    assert heights[:2] == [0.0, 0.0] and 0 < heights[2] < 240  # v2's 1e308 (and its ring) at the top edge
    assert "nan" not in ElementTree.tostring(trend, encoding="unicode").lower()


def _spec():
    from mlops_airflow.core.config import get_spec

    return get_spec(MODEL)


def test_a_report_renders_without_markup_links_or_images_and_pages_carry_a_content_policy() -> None:
    from mlops_airflow.ui import app

    report = (
        "# Gate\n\n**blessed** <img src=x onerror=alert(1)> [click](https://evil.example/login) "
        "![beacon](https://evil.example/pixel.png) <https://evil.example> [ref]\n\n[ref]: https://evil.example\n\n"
        "| metric | value |\n|---|---|\n| roc_auc | 0.81 |\n"
    )
    html = app.render_markdown(report)
    assert "<strong>blessed</strong>" in html and "<td>roc_auc</td>" in html  # the report's own Markdown
    assert "<img" not in html and "<a " not in html and "href" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "[click](https://evil.example/login)" in html

    page = app._page("m", "<p>x</p>")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'sha256-" in policy and "unsafe" not in policy
    assert "frame-ancestors 'self'" in policy and page.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in app.IMAGE_HEADERS["Content-Security-Policy"]
