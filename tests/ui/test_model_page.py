"""The model page inside Airflow, on a real api-server: refused without Airflow's login; in headless Chromium
after login, it reads as one story (the champion, the ledger, the trend, the last CT run marked history when
the champion has moved since), every link on it lands where it says, framed inside Airflow too; the trigger
forms ask a reason of a rollback only; the task logs of the moves are clean and a refused rollback says why.

Screenshots are kept under the test's tmp dir; with ``MLOPS_SCREENSHOTS_DIR`` set (``make screenshots``)
they are copied there too (the README's are in docs/).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from mlops_airflow.core.ledger import served_at

pytestmark = pytest.mark.e2e
MODEL = "credit_default"
OTHER_MODEL = "churn_risk"  # tests/ui/conftest.py: no run yet
CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: "2026-12-07 04:10 UTC (3 h ago)"
HUMAN_TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d UTC \((just now|\d+ (min|h|days) ago)\)"
LANDING_TIMEOUT = 60_000  # ms: an Airflow or MLflow page loading on a busy machine; a wait, not a check


def token(api_server) -> str:
    answer = httpx.post(
        f"{api_server.url}/auth/token",
        json={"username": api_server.user, "password": api_server.password},
        timeout=30,
    )
    assert answer.status_code in (200, 201), answer.text
    return str(answer.json()["access_token"])


@pytest.mark.parametrize(
    "path", ["/mlops/models/", f"/mlops/models/{MODEL}", "/mlops/api/models", f"/mlops/api/models/{MODEL}"]
)
def test_model_page_refuses_a_request_without_airflow_login(api_server, path) -> None:
    url = f"{api_server.url}{path}"
    anonymous = httpx.get(url, timeout=30, follow_redirects=False)
    assert anonymous.status_code == 401, anonymous.text
    assert "champion" not in anonymous.text
    forged = httpx.get(url, headers={"Authorization": "Bearer not-a-token"}, timeout=30)
    assert forged.status_code == 403, forged.text
    cookie = httpx.get(url, cookies={"_token": "not-a-token"}, timeout=30)
    assert cookie.status_code == 403, cookie.text
    plot = httpx.get(f"{api_server.url}/mlops/models/{MODEL}/image?run=x&path=drift/plots/a.png", timeout=30)
    assert plot.status_code == 401


def test_model_api_answers_the_ledger_after_two_promotions_and_a_rollback(api_server) -> None:
    headers = {"Authorization": f"Bearer {token(api_server)}"}
    data = httpx.get(f"{api_server.url}/mlops/api/models/{MODEL}", headers=headers, timeout=60).json()
    assert data["champion"] == "1" and data["pinned"] == "1" and data["unrecorded_move"] is False
    moves = [(e["op"], e["from_version"], e["to_version"]) for e in data["ledger"]]
    assert moves == [("promote", None, "1"), ("promote", "1", "2"), ("rollback", "2", "1")]
    assert data["ledger"][2]["reason"].startswith("v2 misprices self-employed applicants")
    assert data["ledger"][1]["dag_id"] == f"ct_{MODEL}" and data["ledger"][1]["source_run_id"]
    assert data["last_ct"]["verdict"].startswith("BLESSED")
    # the last CT run promoted v2, and the rollback moved the champion after it: its verdict is history
    assert (data["moved_since_last_ct"]["op"], data["moved_since_last_ct"]["to_version"]) == ("rollback", "1")
    assert data["last_monitor"]["drift_share"] > 0 and data["last_monitor"]["drifted_features"]

    # "what served at time t": just before the rollback, v2; at the rollback and after, v1
    from mlops_airflow.core.ledger import LedgerEntry, _parse_at

    entries = [LedgerEntry(**e) for e in data["ledger"]]
    first, second, rollback = (_parse_at(e.at) for e in entries)
    assert first < second < rollback  # the fixture starts the rollback a clock second after the promotion
    assert served_at(entries, first - dt.timedelta(seconds=1)) is None
    assert served_at(entries, first).to_version == "1"
    assert served_at(entries, rollback - dt.timedelta(seconds=1)).to_version == "2"
    assert served_at(entries, rollback).to_version == "1"

    unknown = httpx.get(f"{api_server.url}/mlops/api/models/no_such_model", headers=headers, timeout=30)
    assert unknown.status_code == 404
    outside = httpx.get(
        f"{api_server.url}/mlops/models/{MODEL}/image",
        params={"run": data["last_ct"]["mlflow_run_id"], "path": "gate/decision.json"},
        headers=headers,
        timeout=30,
    )
    assert outside.status_code == 404  # only PNGs of the plot folders are served


def _launch(playwright):
    if not CHROMIUM.exists():
        pytest.skip(
            "NO BROWSER: /usr/bin/chromium is missing, the model page was NOT tested in a browser. "
            "Install Debian's chromium (`make browser`, as root) to run this test."
        )
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS, headless=True)


def _keep(shot: Path) -> None:
    target = os.environ.get("MLOPS_SCREENSHOTS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / shot.name)


def _logged_in(pw: Any, api_server) -> Any:
    """A page of a new browser, logged in through Airflow's own login form."""
    page = _launch(pw).new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(120_000)
    page.goto(f"{api_server.url}/")
    page.wait_for_selector("input[type=password]")
    page.locator("input:not([type=password])").first.fill(api_server.user)
    page.locator("input[type=password]").fill(api_server.password)
    page.locator("input[type=password]").press("Enter")
    page.wait_for_function("() => !location.pathname.startsWith('/auth')")
    page.wait_for_load_state("networkidle")
    return page


def _sync_api() -> Any:
    return pytest.importorskip("playwright.sync_api", reason="NO BROWSER DRIVER: playwright is not installed")


def test_a_person_logs_in_and_reads_champion_ledger_and_verdict(api_server, ops_state, tmp_path) -> None:
    sync_api = _sync_api()
    expect = sync_api.expect
    with sync_api.sync_playwright() as pw:
        page = _logged_in(pw, api_server)
        row = page.locator("tr", has=page.locator(f"a:text-is('{MODEL}')"))
        page.goto(f"{api_server.url}/mlops/models/")
        expect(row.locator(".pill")).to_have_text(["v1", "pinned"])
        expect(row).to_contain_text("rollback from v2: v2 misprices self-employed applicants")
        expect(row.locator(".tag")).to_have_text("history")  # the last CT verdict predates the rollback
        expect(row).to_contain_text("BLESSED")
        shots = [tmp_path / "model-overview.png"]
        page.screenshot(path=str(shots[-1]), full_page=True)

        # the fleet: a health colour per model by the rule stated on the page; sorted by health, worst first
        fleet = page.locator("#fleet tr[data-model]")
        expect(fleet).to_have_count(2)
        expect(row).to_have_attribute("data-health", "red")  # the monitor run saw drift over the threshold
        expect(row.locator(".health-why")).to_contain_text("drift share")
        other = page.locator(f"#fleet tr[data-model='{OTHER_MODEL}']")
        expect(other).to_have_attribute("data-health", "amber")
        expect(other.locator(".health-why")).to_have_text("no champion yet; no monitor run yet")
        expect(page.locator("#health-rule")).to_contain_text("refused by the champion resolver")
        expect(fleet.first).to_have_attribute("data-model", OTHER_MODEL)  # by name
        page.locator("th[data-sort='health'] a").click()
        expect(page.locator("th[data-sort='health']")).to_have_attribute("aria-sort", "ascending")
        expect(fleet.first).to_have_attribute("data-model", MODEL)
        page.locator("th[data-sort='health'] a").click()
        expect(page.locator("th[data-sort='health']")).to_have_attribute("aria-sort", "descending")
        expect(fleet.first).to_have_attribute("data-model", OTHER_MODEL)

        page.locator(f"a:text-is('{MODEL}')").click()
        expect(page.locator("#champion")).to_have_text("v1")
        # the champion's rows: nothing empty, nothing said twice, versions as vN, times in UTC with their age
        names = ["champion", "since", "why", "pinned", "previous champion", "next scheduled run"]
        expect(page.locator("#head th")).to_have_text(names)  # no challenger row: there is none
        expect(page.locator("#head-why")).to_have_text("v2 misprices self-employed applicants")
        expect(page.locator("#head-pinned")).to_contain_text("v1, by the same rollback")
        expect(page.locator("#head-pinned")).not_to_contain_text("misprices")
        expect(page.locator("#head-previous-champion")).to_have_text("v2")
        expect(page.locator("#head-since")).to_have_text(re.compile(f"^{HUMAN_TIME}: rollback from v2, "))
        body = page.inner_text("body")
        assert not re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d", body), "a raw ISO time is shown"
        run_links = page.locator("a.airflow-run")
        expect(run_links).to_have_count(6)  # the champion's move, three moves in the ledger, last CT, monitor
        expect(run_links).to_have_text([re.compile(r"^manual run, \d{4}-\d\d-\d\d \d\d:\d\d UTC$")] * 6)

        # the ledger first, then the trend, the last CT run (history now), drift, the estimate against the realised
        # metric and the replay reports
        expect(page.locator("h2")).to_have_text(
            [
                "Promotion ledger",
                "Metric trend",
                "Last CT run (history)",
                "Drift",
                "Estimated vs realised",
                "Replay reports",
            ]
        )
        ledger = page.locator("#ledger tr")
        expect(ledger).to_have_count(4)  # header + three moves, newest first
        expect(ledger.nth(1).locator("td")).to_have_text(
            [
                re.compile(HUMAN_TIME),
                "rollback",
                "v2",
                "v1",
                re.compile("rollback_credit_default manual run"),
                "v2 misprices self-employed applicants",
                "gate report",
            ]
        )
        expect(ledger.nth(2).locator("td").nth(5)).to_have_text("blessed by the gate")
        expect(ledger.nth(3).locator("td").nth(2)).to_have_text("-")

        # the trend: each version's metric and gate interval, the champion ringed
        from mlops_airflow.core import tracking

        client = tracking.client_for(f"sqlite:///{ops_state.env['MLOPS_HOME']}/mlflow/mlflow.db")
        v2_metric = client.get_run(ops_state.mlflow_runs["ct2"]).data.metrics["candidate_roc_auc"]
        trend = page.locator("#metric-trend")
        expect(trend.locator(".point")).to_have_count(2)
        expect(trend.locator(".point.champion")).to_have_attribute("data-version", "1")
        expect(trend.locator(".point[data-version='1'] .interval")).to_have_count(0)  # judged against no one
        expect(trend.locator(".point[data-version='2'] .interval")).to_have_count(1)
        v2_title = trend.locator(".point[data-version='2'] title").text_content()
        assert f"roc_auc {v2_metric:.4g}; gate interval" in v2_title and "against v1" in v2_title

        # the last CT run: what it decided then, not a green "promoted" under a champion that moved since
        expect(page.locator("#ct-history")).to_contain_text("rollback from v2 to v1")
        expect(page.locator("#verdict .tag")).to_have_text("history")
        expect(page.locator("#verdict .ok")).to_have_count(0)
        expect(page.locator("#gate-report")).to_be_hidden()  # folded
        page.locator("#gate-report-details summary").click()
        expect(page.locator("#gate-report table").first).to_contain_text("non_inferiority")
        page.locator("#gate-report-details summary").click()

        drift_plots = page.locator("img[src*='/image?run=']")
        assert drift_plots.count() >= 1
        page.wait_for_function("() => [...document.images].every(img => img.complete)")
        assert all(
            drift_plots.nth(i).evaluate("img => img.complete && img.naturalWidth > 0")
            for i in range(drift_plots.count())
        )
        # the monitor run's batches, each estimated before its labels; no replay was run
        expect(page.locator("#estimate-trend")).to_be_visible()
        assert page.locator("#estimate-trend .batch .estimated").count() >= 1
        expect(page.locator("#estimate-error")).to_contain_text("from the newest 1 monitor run(s)")
        expect(page.locator("#replays")).to_contain_text(f"no replay report yet: the manual DAG replay_{MODEL}")
        shots.append(tmp_path / "model-page.png")
        page.screenshot(path=str(shots[-1]), full_page=True)

        # the nav entry: Airflow frames the page at /plugin/mlops-models
        page.goto(f"{api_server.url}/plugin/mlops-models")
        frame = page.frame_locator("iframe").first
        expect(frame.locator(f"a:text-is('{MODEL}')")).to_be_visible()
        shots.append(tmp_path / "model-page-in-airflow.png")
        page.screenshot(path=str(shots[-1]))
        page.context.browser.close()
    for shot in shots:
        assert shot.stat().st_size > 10_000
        _keep(shot)


def _expected_links(ops_state) -> list[tuple[str, str, Any]]:
    """Every link of the model page: (selector, where it goes, the run it must land on), from the fixture's
    own runs, not from the page."""
    runs, mlflow = ops_state.airflow_runs, ops_state.mlflow_runs
    return [
        ("a[href='./']", "frame", "/mlops/models/"),
        ("#head-since a", "airflow", runs["rollback"]),
        ("#ledger tr:nth-child(2) a.airflow-run", "airflow", runs["rollback"]),
        ("#ledger tr:nth-child(2) a.mlflow-run", "mlflow", mlflow["ct1"]),  # the gate report of v1
        ("#ledger tr:nth-child(3) a.airflow-run", "airflow", runs["ct2"]),
        ("#ledger tr:nth-child(3) a.mlflow-run", "mlflow", mlflow["ct2"]),
        ("#ledger tr:nth-child(4) a.airflow-run", "airflow", runs["ct1"]),
        ("#ledger tr:nth-child(4) a.mlflow-run", "mlflow", mlflow["ct1"]),
        ("#last-ct a.airflow-run", "airflow", runs["ct2"]),
        ("#last-ct a.mlflow-run", "mlflow", mlflow["ct2"]),
        ("#drift a.airflow-run", "airflow", runs["monitor"]),
        ("#drift a.mlflow-run", "mlflow", mlflow["monitor"]),
    ]


def test_every_link_of_the_model_page_inside_airflow_lands_on_its_target(api_server, ops_state) -> None:
    """Inside Airflow's frame (its sandbox allows no new tab and no navigation of Airflow's window) each link
    is clicked: Airflow's run pages open in Airflow's window, MLflow's runs in a new tab, the overview in the
    frame."""
    sync_api = _sync_api()
    expect = sync_api.expect
    framed = f"{api_server.url}/plugin/mlops-models/mlops/models/{MODEL}"
    links = _expected_links(ops_state)
    with sync_api.sync_playwright() as pw:
        page = _logged_in(pw, api_server)
        page.goto(framed)
        frame = page.frame_locator("iframe").first
        expect(frame.locator("#champion")).to_have_text("v1", timeout=LANDING_TIMEOUT)  # the page answers in seconds
        expect(frame.locator("a")).to_have_count(len(links))  # no link left unchecked
        for selector, kind, target in links:
            page.goto(framed)
            link = frame.locator(selector)
            expect(link).to_have_count(1, timeout=LANDING_TIMEOUT)
            if kind == "airflow":
                dag_id, run_id = target
                link.click()
                page.wait_for_url(
                    f"{api_server.url}/dags/{dag_id}/runs/{quote(run_id, safe='')}", timeout=LANDING_TIMEOUT
                )
                expect(page.get_by_text(run_id).first).to_be_visible(timeout=LANDING_TIMEOUT)
            elif kind == "mlflow":
                with page.context.expect_page(timeout=LANDING_TIMEOUT) as opened:
                    link.click()
                tab = opened.value
                tab.wait_for_url(
                    f"{api_server.mlflow_url}/#/experiments/{ops_state.experiment_id}/runs/{target}",
                    timeout=LANDING_TIMEOUT,
                )
                expect(tab.get_by_text(target).first).to_be_visible(timeout=LANDING_TIMEOUT)
                tab.close()
                assert page.url == framed  # Airflow's window stayed on the model page
            else:
                link.click()
                page.wait_for_url(f"{api_server.url}/plugin/mlops-models{target}", timeout=LANDING_TIMEOUT)
                expect(frame.locator("h1")).to_have_text("Models")
        page.context.browser.close()


def test_the_trigger_form_asks_a_reason_of_a_rollback_only(api_server, ops_state) -> None:
    sync_api = _sync_api()
    expect = sync_api.expect
    with sync_api.sync_playwright() as pw:
        page = _logged_in(pw, api_server)
        forms = {}
        for dag_id in (f"ct_{MODEL}", f"rollback_{MODEL}"):
            page.goto(f"{api_server.url}/dags/{dag_id}")
            page.get_by_role("button", name="Trigger").first.click()
            forms[dag_id] = page.get_by_role("dialog")
            expect(forms[dag_id]).to_contain_text(dag_id)
            expect(forms[dag_id].locator("#element_reason")).to_have_value("")
            trigger = forms[dag_id].get_by_role("button", name="Trigger", exact=True)
            if dag_id.startswith("ct_"):
                expect(trigger).to_be_enabled()  # "optional" is optional
            else:
                expect(trigger).to_be_disabled()
                forms[dag_id].locator("#element_reason").fill("v2 misprices self-employed applicants")
                expect(trigger).to_be_enabled()
            page.keyboard.press("Escape")
        page.context.browser.close()


def test_promotion_and_rollback_logs_show_no_download_progress_bars(ops_state) -> None:
    """MLflow's artifact progress bar goes to stderr, which Airflow logs as ERROR lines in a successful task."""
    for name, task in (("ct1", "promote"), ("ct2", "promote"), ("rollback", "rollback")):
        lines = ops_state.output[name]
        assert any(f"[DAG TEST] starting task_id={task} " in line for line in lines), f"{name}: output not read"
        bars = [line for line in lines if "Downloading artifacts" in line]
        assert not bars, f"{name}: {bars[0]}"


def test_a_refused_rollback_says_why_on_one_line_and_offers_no_version_rolled_away_from(
    api_server, ops_state, request
) -> None:
    """Champion v1 after the rollback from v2: a second default rollback has no good champion before v1; it
    fails without retry, its first error line says why, and v2 (just rolled away from) is not offered."""
    ops_state.run(request, "refused", f"rollback_{MODEL}", {"reason": "back again"}, expect="failed")
    lines = ops_state.output["refused"]
    errors = [line for line in lines if "[error" in line]
    assert errors, "\n".join(lines[-40:])
    first = errors[0]
    assert "ROLLBACK REFUSED: rollback of 'credit_default': no good champion before the current one (1)" in first
    offered = re.search(r"blessed versions are (\d+(?:, \d+)*|\(none\))", first)
    assert offered and offered.group(1).split(", ") == ["1"], first
    assert any("Task failed with exception" in line for line in errors[1:])  # Airflow's traceback comes after
    assert not [line for line in lines if "Downloading artifacts" in line]
    headers = {"Authorization": f"Bearer {token(api_server)}"}
    data = httpx.get(f"{api_server.url}/mlops/api/models/{MODEL}", headers=headers, timeout=60).json()
    assert data["champion"] == "1" and len(data["ledger"]) == 3  # nothing moved
