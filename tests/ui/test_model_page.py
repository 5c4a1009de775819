"""The model page inside Airflow, on a real api-server: refused without Airflow's login; in headless Chromium
after login, it shows the champion, the promotion ledger and the gate verdict a person needs.

Screenshots are kept under the test's tmp dir; with ``MLOPS_SCREENSHOTS_DIR`` set (``make screenshots``)
they are copied there too (the README's are in docs/).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import httpx
import pytest

from mlops_airflow.core.ledger import served_at

pytestmark = pytest.mark.e2e
MODEL = "credit_default"
CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


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


def test_a_person_logs_in_and_reads_champion_ledger_and_verdict(api_server, tmp_path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="NO BROWSER DRIVER: playwright is not installed")
    with sync_api.sync_playwright() as pw:
        browser = _launch(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        # Airflow's own login: the model page is behind it
        page.goto(f"{api_server.url}/mlops/models/")
        assert "champion" not in page.content()
        page.goto(f"{api_server.url}/")
        page.wait_for_selector("input[type=password]")
        page.locator("input:not([type=password])").first.fill(api_server.user)
        page.locator("input[type=password]").fill(api_server.password)
        page.locator("input[type=password]").press("Enter")
        page.wait_for_function("() => !location.pathname.startsWith('/auth')")
        page.wait_for_load_state("networkidle")

        page.goto(f"{api_server.url}/mlops/models/")
        row = page.locator("tr", has=page.locator(f"a:text-is('{MODEL}')"))
        sync_api.expect(row).to_contain_text("v1")
        sync_api.expect(row.locator(".pill")).to_have_text(["v1", "pinned"])
        sync_api.expect(row).to_contain_text("rollback: v2 misprices self-employed applicants")
        sync_api.expect(row).to_contain_text("BLESSED")
        shots = [tmp_path / "model-overview.png"]
        page.screenshot(path=str(shots[-1]), full_page=True)

        page.locator(f"a:text-is('{MODEL}')").click()
        sync_api.expect(page.locator("#champion")).to_have_text("v1")
        ledger = page.locator("#ledger tr")
        sync_api.expect(ledger).to_have_count(4)  # header + three moves, newest first
        sync_api.expect(ledger.nth(1)).to_contain_text("rollback")
        sync_api.expect(ledger.nth(1)).to_contain_text("v2 misprices self-employed applicants")
        sync_api.expect(ledger.nth(2)).to_contain_text("promote")
        sync_api.expect(ledger.nth(2)).to_contain_text("v2")
        sync_api.expect(ledger.nth(3)).to_contain_text("v1")
        sync_api.expect(page.locator("#verdict")).to_contain_text("BLESSED")
        sync_api.expect(page.locator("#gate-report table").first).to_contain_text("non_inferiority")
        drift_plots = page.locator("img[src*='/image?run=']")
        assert drift_plots.count() >= 1
        page.wait_for_function("() => [...document.images].every(img => img.complete)")
        assert all(
            drift_plots.nth(i).evaluate("img => img.complete && img.naturalWidth > 0")
            for i in range(drift_plots.count())
        )
        shots.append(tmp_path / "model-page.png")
        page.screenshot(path=str(shots[-1]), full_page=True)

        # the nav entry: Airflow frames the page at /plugin/mlops-models
        page.goto(f"{api_server.url}/plugin/mlops-models")
        frame = page.frame_locator("iframe").first
        sync_api.expect(frame.locator(f"a:text-is('{MODEL}')")).to_be_visible()
        shots.append(tmp_path / "model-page-in-airflow.png")
        page.screenshot(path=str(shots[-1]))
        browser.close()
    for shot in shots:
        assert shot.stat().st_size > 10_000
        _keep(shot)
