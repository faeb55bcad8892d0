"""The nurse station in a real browser (Debian's Chromium driven by Playwright) against the real
station server, real mosquitto, the real ingest and alerts services.

Screenshots and the measured numbers go to test-artifacts/station/ (gitignored): look at them.
The tests in this module run in order on one running system, as a nurse's shift would: the
patient page and the admin's audit log show the alarm the test before them acknowledged, so they
need the module run whole; the others can run alone (the `nurse` fixture logs Sana in).
"""

from __future__ import annotations

import json
import re
import statistics
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.dashboards.station.stack import PASSWORDS, Stack, start_stack
from tests.servers import require

ARTIFACTS = Path(__file__).parents[3] / "test-artifacts" / "station"
CHROMIUM = "/usr/bin/chromium"
# Flags that work for a headless Chromium run as root in a container (REALPARTS.md, Browser).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
]
NUMBERS: dict[str, Any] = {}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("station"))
    now = time.time()
    s.seed_history(1, now - 30.0)  # six hours of (synthetic) derived vitals for the trends
    s.waveforms(1, now - 20.0, 26.0)  # p-0001: 26 s of ECG and PPG around "now"
    s.reading("gw-0001", "oxi-0001", "battery", now, battery_pct=87)
    s.reading("gw-0001", "oxi-0001", "spo2", now, spo2_pct=97.0, pr_bpm=74.0)
    yield s
    s.stop()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "numbers.json").write_text(json.dumps(NUMBERS, indent=2) + "\n")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require("chromium", "chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def nurse(browser: Browser, stack: Stack) -> Iterator[Page]:
    """Sana, logged in, on the ward page (each test that uses her can run alone)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    page = ctx.new_page()
    _login(page, stack.url, "sana", PASSWORDS["sana"])
    expect(page.locator("article.tile")).to_have_count(3, timeout=10_000)
    yield page
    ctx.close()


def _login(page: Page, url: str, user: str, password: str) -> None:
    page.goto(url + "/")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def _wait_js(page: Page, expression: str, timeout_s: float = 10.0) -> Any:
    """Poll an expression until it is truthy. (Playwright's wait_for_function evaluates strings with
    eval, which the station's Content-Security-Policy rightly forbids; evaluate() goes through the
    DevTools protocol instead.)"""
    deadline = time.monotonic() + timeout_s
    while True:
        value = page.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout_s} s: {expression}")
        time.sleep(0.01)


def _metrics(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    return {k: float(v) for k, v in re.findall(r"^(\S+) (\S+)$", text, re.M)}


def test_login_refuses_a_wrong_password_then_shows_the_ward(browser: Browser, stack: Stack) -> None:
    ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    try:
        _login_and_look(ctx.new_page(), stack)
    finally:
        ctx.close()


def _login_and_look(nurse: Page, stack: Stack) -> None:
    _login(nurse, stack.url, "sana", "not-her-password")
    expect(nurse.locator(".error")).to_have_text("Wrong user name or password.")
    t0 = time.monotonic()
    _login(nurse, stack.url, "sana", PASSWORDS["sana"])
    tiles = nurse.locator("article.tile")
    expect(tiles).to_have_count(3, timeout=10_000)
    NUMBERS["login_to_tiles_s"] = round(time.monotonic() - t0, 3)
    nav = nurse.evaluate("JSON.stringify(performance.getEntriesByType('navigation')[0])")
    NUMBERS["ward_load_event_ms"] = round(json.loads(nav)["loadEventEnd"], 1)

    # The patient enrolled but never heard from is unmistakably without data.
    p3 = nurse.locator('article[data-patient="p-0003"]')
    expect(p3).to_have_class(re.compile(r"\bstale\b"))
    expect(p3.locator(".stale-banner")).to_contain_text("NO DATA")
    expect(p3.locator(".stale-banner")).to_contain_text("never received")
    # p-0001 shows the ECG heart rate and the oximeter's SpO2, labelled uncalibrated.
    p1 = nurse.locator('article[data-patient="p-0001"]')
    expect(p1.locator(".hr .n")).to_have_text(re.compile(r"^\d{2,3}$"), timeout=10_000)
    expect(p1.locator(".spo2 .n")).to_have_text("97", timeout=10_000)
    expect(p1.locator(".spo2 .cal")).to_have_text("uncalibrated")
    expect(p1.locator(".bat")).to_have_text("battery 87 %")
    assert _metrics(stack.url)["nabz_station_logins_failed_total"] == 1


def test_a_tile_updates_live_without_a_reload(nurse: Page, stack: Stack) -> None:
    nurse.evaluate("window.__noReload = 1")
    nurse.evaluate(
        """() => {
        window.__seen = {};
        new MutationObserver(() => {
          const n = document.querySelector('article[data-patient="p-0002"] .hr .n');
          if (n && !(n.textContent in window.__seen)) window.__seen[n.textContent] = Date.now();
        }).observe(document.getElementById('tiles'), {subtree: true, childList: true, characterData: true});
    }"""
    )
    p2 = nurse.locator('article[data-patient="p-0002"]')
    expect(p2).to_have_class(re.compile(r"\bstale\b"))
    full, direct = [], []
    for i, hr in enumerate(range(61, 71)):
        time.sleep(0.3)  # past the station's coalescing interval (0.2 s): an update on its own
        if i % 2 == 0:  # the whole chain: a wearable's reading → ingest → derived vitals → station → page
            sent = stack.reading("gw-0002", "ecg-0002", "hr", time.time(), hr_bpm=hr, contact=True)
        else:  # the station's own part: derived vitals → station → page
            one = {"v": 1, "id": f"vitals-test-{hr}", "site": "demo", "patient": "p-0002",
                   "device": "ecg-0002", "t": _iso_now(), "source": "device", "hr_bpm": hr}  # fmt: skip
            payload = {"v": 1, "id": f"batch-test-{hr}", "site": "demo", "vitals": [one]}
            sent = stack.publish("nabz/v1/demo/vitals", payload)
        seen_ms = _wait_js(nurse, f"window.__seen && window.__seen['{hr}']")
        (full if i % 2 == 0 else direct).append(seen_ms / 1000 - sent)
    expect(p2.locator(".hr .n")).to_have_text("70")
    expect(p2).not_to_have_class(re.compile(r"\bstale\b"))
    expect(p2.locator(".tile-head .label")).to_have_text("Bed 2")
    assert nurse.evaluate("window.__noReload") == 1, "the page was reloaded"
    NUMBERS["reading_to_tile_s"] = {"median": round(statistics.median(full), 3), "max": round(max(full), 3)}
    NUMBERS["vitals_to_tile_s"] = {
        "median": round(statistics.median(direct), 3),
        "max": round(max(direct), 3),
    }
    assert max(full + direct) < 2.0
    assert _metrics(stack.url)["nabz_station_sse_clients"] >= 1


def _iso_now() -> str:
    from tests.dashboards.station.stack import iso

    return iso(time.time())


def test_an_alarm_appears_and_the_nurse_acknowledges_it(nurse: Page, stack: Stack) -> None:
    now = time.time()
    for k in range(4):  # the oximeter reads 80 % for 4 s: below 88 % for the (test's) 1-2 s delay
        stack.reading("gw-0001", "oxi-0001", "spo2", now - 3 + k, spo2_pct=80.0, pr_bpm=96.0)
    p1 = nurse.locator('article[data-patient="p-0001"]')
    alarm = p1.locator("li.alarm.prio-high")
    expect(alarm).to_be_visible(timeout=15_000)
    expect(alarm).to_contain_text("SpO2")
    expect(p1).to_have_class(re.compile(r"\bprio-high\b"))
    expect(nurse.locator("#summary .chip.prio-high")).to_have_text("1 high")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    nurse.screenshot(path=str(ARTIFACTS / "overview-alarm.png"), full_page=True)

    alarm_id = alarm.get_attribute("data-alarm")
    assert alarm_id
    alarm.locator("button.ack").click()
    expect(alarm).to_contain_text("ACK sana", timeout=10_000)
    expect(nurse.locator("#toast")).to_contain_text("Acknowledged")
    nurse.screenshot(path=str(ARTIFACTS / "overview-acknowledged.png"), full_page=True)

    # The same lifecycle as an SMS acknowledgement: the alerts service moved the alarm, by her name.
    (stored,) = [a for a in stack.alerts.store.alarms() if a["alarm_id"] == alarm_id]
    assert stored["state"] == "acknowledged" and stored["acknowledged_by"] == "sana"
    transitions = [
        a for a in stack.alerts.store.audit() if a["alarm_id"] == alarm_id and a["state"] == "acknowledged"
    ]
    assert transitions and json.loads(transitions[0]["detail"])["acknowledged_by"] == "sana"
    # ... and the station's own audit log has who clicked, from where.
    rows = [r for r in stack.station.app.station.db.audit_rows() if r.action == "ack"]
    assert [(r.username, r.target) for r in rows] == [("sana", alarm_id)]
    assert json.loads(rows[0].detail)["kind"] == "spo2_low" and rows[0].address == "127.0.0.1"
    assert stack.station.app.station.db.verify_audit() is None


def test_the_patient_page_shows_trends_history_and_a_readable_strip(nurse: Page, stack: Stack) -> None:
    nurse.locator('article[data-patient="p-0001"] a.tile-head').click()
    expect(nurse.locator("h1")).to_have_text("p-0001")
    trend = nurse.locator("img.trend")
    expect(trend).to_be_visible()
    _wait_js(
        nurse,
        "document.querySelector('img.trend').complete && document.querySelector('img.trend').naturalWidth > 0",
    )
    row = nurse.locator("table.history tbody tr").first
    expect(row).to_contain_text("SpO2")
    expect(row).to_contain_text("by sana")
    nurse.screenshot(path=str(ARTIFACTS / "patient.png"), full_page=True)

    # Silence SMS for this alarm kind: the alerts service applies it; the page lists it; it can end.
    nurse.select_option("#silence-form select[name=kind]", "spo2_low")
    nurse.select_option("#silence-form select[name=duration_s]", "1800")
    nurse.fill("#silence-form input[name=reason]", "family with the patient")
    nurse.click("#silence-form button[type=submit]")
    silence = nurse.locator("ul.silences li")
    expect(silence).to_contain_text("spo2_low", timeout=10_000)
    expect(silence).to_contain_text("by sana: family with the patient")
    (s,) = stack.alerts.store.silences(time.time())
    assert (s.patient, s.kind, s.ends_at - s.starts_at, s.created_by) == (
        "p-0001",
        "spo2_low",
        1800.0,
        "sana",
    )
    silence.locator("button.unsilence").click()
    expect(nurse.locator("ul.silences li")).to_have_count(0, timeout=10_000)
    assert stack.alerts.store.silences(time.time()) == []
    row = nurse.locator("table.history tbody tr").first

    t0 = time.monotonic()
    row.locator("a").click()
    svg = nurse.locator("#strip svg")
    expect(svg).to_be_visible()
    NUMBERS["strip_page_s"] = round(time.monotonic() - t0, 3)
    width_mm = float(svg.get_attribute("width").removesuffix("mm"))  # type: ignore[union-attr]
    sc = stack.config.station
    # 10 mm for the calibration pulse, then 25 mm per second: from 12 s before the alarm to 6 s after
    # it (or to now, for an alarm raised less than 6 s ago).
    assert 10 + 25 * sc.strip_before_s < width_mm <= 10 + 25 * (sc.strip_before_s + sc.strip_after_s) + 0.01
    points = svg.locator("polyline").first.get_attribute("points") or ""
    (x0, _), (x1, _) = [map(float, p.split(",")) for p in points.split()[:2]]
    assert x1 - x0 == pytest.approx(25 / 250, abs=0.006)  # ECG at 250 Hz, 25 mm/s: 0.1 mm per sample
    assert svg.locator("polyline").count() >= 2  # ECG and PPG traces
    assert "no ECG stored" not in svg.inner_html()
    svg.screenshot(path=str(ARTIFACTS / "strip.png"))


def test_it_works_on_a_phone_screen(browser: Browser, stack: Stack) -> None:
    ctx = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    page = ctx.new_page()
    _login(page, stack.url, "imran", PASSWORDS["imran"])
    expect(page.locator("article.tile")).to_have_count(3, timeout=10_000)
    expect(page.locator('article[data-patient="p-0001"] li.alarm')).to_contain_text("ACK sana")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, (
        "the ward scrolls sideways on a phone"
    )
    box = page.locator('article[data-patient="p-0001"]').bounding_box()
    assert box is not None and box["width"] <= 390
    page.screenshot(path=str(ARTIFACTS / "phone-ward.png"), full_page=True)
    ctx.close()


def test_an_admin_reads_the_audit_log_but_cannot_see_patients_or_acknowledge(
    browser: Browser, stack: Stack
) -> None:
    ctx = browser.new_context()
    page = ctx.new_page()
    _login(page, stack.url, "root.admin", PASSWORDS["root.admin"])
    expect(page).to_have_url(re.compile(r"/admin$"))
    audit = page.locator("table.audit")
    expect(audit).to_contain_text("ack")
    expect(audit).to_contain_text("login_failed")
    expect(page.locator("text=the chain checked out whole")).to_be_visible()
    # who did what, not about which patient: the nurse's views and acknowledgement hide their target
    rows = audit.locator("tbody tr").all_inner_texts()
    assert any("view_patient" in r and "(patient)" in r for r in rows)
    assert not any("p-0001" in r for r in rows)
    status = page.evaluate(
        """async () => (await fetch('/api/alarms/0123456789abcdef/ack', {method: 'POST',
            headers: {'X-CSRF-Token': document.querySelector('meta[name=csrf]').content}})).status"""
    )
    assert status == 403
    resp = page.goto(stack.url + "/patient/p-0001")
    assert resp is not None and resp.status == 403
    ctx.close()
    denied = [r for r in stack.station.app.station.db.audit_rows() if r.action == "denied"]
    assert {r.username for r in denied} == {"root.admin"} and len(denied) == 2
