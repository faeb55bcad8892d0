"""The station's HTTP side against the real server (uvicorn on a free port), without a browser:
server-sent events, the login rate limit, roles, CSRF, automatic logoff, health and metrics.

No broker runs here (the station keeps trying to connect): messages are handed to the hub as
paho would hand them, and the station's clock is a test clock that the tests move forward.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dashboards.station import StationServer, auth
from nabz.broker import free_port
from tests.dashboards.station.client import Agent, Events
from tests.dashboards.station.stack import PASSWORDS, add_users, config_for


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(tmp_path: Path, clock: Clock) -> Iterator[StationServer]:
    config = config_for(tmp_path, f"mqtt://127.0.0.1:{free_port()}")  # nothing listens there
    add_users(config.station.db_path)
    s = StationServer(config, clock=clock)
    s.app.station.hub.ping_s = 0.3
    s.start()
    yield s
    s.stop()


def _vitals(patient: str, t: float, **values: Any) -> tuple[str, bytes]:
    one = {"v": 1, "id": f"vitals-{patient}-{t}", "site": "demo", "patient": patient, "device": "ecg-0001",
           "t": datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z"), "source": "ecg", **values}  # fmt: skip
    return "nabz/v1/demo/vitals", json.dumps(
        {"v": 1, "id": f"batch-{patient}-{t}", "site": "demo", "vitals": [one]}
    ).encode()


def test_events_send_a_snapshot_then_each_changed_tile_and_only_the_patients_asked_for(
    server: StationServer, clock: Clock
) -> None:
    nurse = Agent(server.url)
    assert nurse.login("sana", PASSWORDS["sana"])[0] == 200
    ward = Events(nurse, "/events")
    assert ward.until("hello")["role"] == "nurse"
    snap = ward.until("snapshot")
    assert [t["patient"] for t in snap["tiles"]] == ["p-0002", "p-0001", "p-0003"]  # by label: "Bed 2" first
    assert all(t["stale"] for t in snap["tiles"])
    one = Events(nurse, "/events?patient=p-0001")
    assert [t["patient"] for t in one.until("snapshot")["tiles"]] == ["p-0001"]

    hub = server.app.station.hub
    now = time.time()
    hub.feed(*_vitals("p-0002", now, hr_bpm=88.0, sqi=0.9))
    hub.feed(*_vitals("p-0001", now, hr_bpm=64.0, sqi=0.9))
    tile = ward.until("tile", lambda d: d["patient"] == "p-0002")
    assert tile["hr"] == {"value": 88, "source": "ecg"} and not tile["stale"] and tile["label"] == "Bed 2"
    assert ward.until("summary", lambda d: d["stale"] == 1)["patients"] == 3  # only p-0003 left
    got = one.until("tile")
    assert got["patient"] == "p-0001" and got["hr"]["value"] == 64  # never p-0002's tile
    assert len(hub.clients) == 2
    # No message at all for longer than stale_after_s: the server itself says the tile went stale.
    clock.offset += server.app.station.config.station.stale_after_s + 1
    stale = one.until("tile", lambda d: d["stale"])
    assert stale["patient"] == "p-0001" and stale["hr"] is None and stale["last_seen"] == pytest.approx(now)
    ward.resp.close()
    one.resp.close()


def test_thousands_of_tiles_changing_at_once_reach_a_ward_page_in_one_frame(
    server: StationServer, clock: Clock
) -> None:
    """A large ward (vitals every second), or a whole site's data stopping: before, a frame per
    tile filled a page's queue and every ward page was disconnected at once (3,000 patients)."""
    nurse = Agent(server.url)
    nurse.login("sana", PASSWORDS["sana"])
    ward = Events(nurse, "/events")
    ward.until("snapshot")
    hub = server.app.station.hub
    now = time.time()
    for k in range(2_500):
        hub.feed(*_vitals(f"p-{k + 10:05d}", now, hr_bpm=70.0, sqi=0.9))
    live: set[str] = set()
    kinds: list[str] = []
    while len(live) < 2_500 and len(kinds) < 3_000:  # in the flushes the messages fell into
        kind, data = ward.next()
        kinds.append(kind)
        tiles = data if kind == "tiles" else [data] if kind == "tile" else []
        live |= {t["patient"] for t in tiles if not t["stale"]}
    assert len(live) == 2_500 and "tiles" in kinds  # all of them, mostly many to a frame
    assert len(hub.clients) == 1 and hub.dropped_clients == 0
    ward.resp.close()


def test_a_site_alarms_tile_leaves_open_pages_when_it_clears(server: StationServer) -> None:
    nurse = Agent(server.url)
    nurse.login("sana", PASSWORDS["sana"])
    ward = Events(nurse, "/events")
    ward.until("snapshot")
    hub = server.app.station.hub
    event = {"v": 1, "id": "ev-site-1", "alarm_id": "alarm-site01", "site": "demo", "patient": "site-demo",
             "kind": "site_quiet", "priority": "high", "state": "active", "message": "no data from the site",
             "condition_started_at": "2026-11-25T09:00:05Z", "raised_at": "2026-11-25T09:00:12Z"}  # fmt: skip
    hub.feed("nabz/v1/demo/patient/site-demo/alarm/site_quiet", json.dumps(event).encode())
    assert ward.until("tile", lambda d: d["patient"] == "site-demo")["alarm_priority"] == "high"
    cleared = {**event, "id": "ev-site-2", "state": "cleared", "cleared_at": "2026-11-25T09:01:00Z"}
    hub.feed("nabz/v1/demo/patient/site-demo/alarm/site_quiet", json.dumps(cleared).encode())
    assert ward.until("gone") == {"patient": "site-demo"}
    ward.resp.close()


def test_an_open_page_is_logged_off_when_the_session_idles(server: StationServer, clock: Clock) -> None:
    nurse = Agent(server.url)
    nurse.login("sana", PASSWORDS["sana"])
    ev = Events(nurse, "/events")
    ev.until("snapshot")
    clock.offset += server.app.station.config.station.session_idle_s + 1
    assert ev.until("logout")["reason"] == "idle"
    assert ev.next() == ("", None)
    status, _, _, url = nurse.request("GET", "/")
    assert status == 200 and "/login" in url
    actions = [r.action for r in server.app.station.db.audit_rows()]
    assert actions == ["login", "view_ward", "logoff_auto"]


def test_a_session_ends_after_its_longest_life_even_when_in_use(server: StationServer, clock: Clock) -> None:
    nurse = Agent(server.url)
    nurse.login("imran", PASSWORDS["imran"])
    max_s = server.app.station.config.station.session_max_s
    for _ in range(int(max_s // 1500)):
        clock.offset += 1500  # active every 25 minutes
        assert "/login" not in nurse.request("GET", "/patient/p-0001")[3]
    clock.offset += 1500
    status, _, text, url = nurse.request("GET", "/patient/p-0001")
    assert "/login" in url and "why=expired" in url and "session ended" in text


def test_failed_logins_are_limited_counted_and_audited(server: StationServer, clock: Clock) -> None:
    """Five wrong passwords block the name for a minute, each one after that twice as long."""
    a = Agent(server.url)
    for _ in range(5):
        assert a.login("sana", "guess-guess-guess")[0] == 401
    status, headers, text, _ = a.login("sana", PASSWORDS["sana"])  # right, but too late
    assert status == 429 and 50 < int(headers["retry-after"]) <= 61 and "Too many failed logins" in text
    assert a.login("imran", PASSWORDS["imran"])[0] == 200  # another user from the same address
    metrics = Agent(server.url).request("GET", "/metrics")[2]
    assert (
        "nabz_station_logins_failed_total 5" in metrics and "nabz_station_logins_blocked_total 1" in metrics
    )
    clock.offset += 60
    assert Agent(server.url).login("sana", "guess-guess-again")[0] == 401  # one more guess ...
    status, headers, _, _ = Agent(server.url).login("sana", PASSWORDS["sana"])
    assert status == 429 and 110 < int(headers["retry-after"]) <= 121  # ... and twice the wait
    clock.offset += 120
    assert Agent(server.url).login("sana", PASSWORDS["sana"])[0] == 200
    rows = server.app.station.db.audit_rows()
    assert [r.action for r in rows if r.username == "sana"] == ["login_failed"] * 5 + [
        "login_blocked",
        "login_failed",
        "login_blocked",
        "login",
        "view_ward",
    ]
    assert PASSWORDS["sana"] not in json.dumps([r.detail for r in rows])


def test_logins_sent_all_at_once_are_held_to_the_limit(
    server: StationServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reviewer's attack: 39 wrong passwords for one name at once, then the right one while
    they are still being checked. Before, failures were counted only once argon2 had answered, so
    every password was checked and the right one got in; and each check held one of the threads
    every page needs, so a nurse's open ward stalled behind the flood. Now at most
    login_max_failures passwords are checked, the right one is refused, two at a time."""
    nurse = Agent(server.url)
    assert nurse.login("imran", PASSWORDS["imran"])[0] == 200  # logged in before the flood
    real, gate, lock = auth.verify_password, threading.Event(), threading.Lock()
    checked: list[str] = []
    running, peak = [0], [0]

    def slow_verify(stored_hash: str | None, password: str) -> bool:  # argon2 on a busy server
        with lock:
            checked.append(password)
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            gate.wait(30)
            return real(stored_hash, password)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(auth, "verify_password", slow_verify)
    limit = server.app.station.config.station.login_max_failures
    answers: dict[str, int] = {}

    def attempt(password: str) -> None:
        answers[password] = Agent(server.url).login("sana", password)[0]

    wrong = [f"wrong-guess-{i:04d}" for i in range(39)]
    threads = [threading.Thread(target=attempt, args=(pw,)) for pw in wrong]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5  # until those not checked are answered (before: none were)
    while len(answers) < len(wrong) - limit and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        status, _, _, url = nurse.request("GET", "/", timeout=3)  # the flood is still being checked
        assert status == 200 and "/login" not in url
        right = threading.Thread(target=attempt, args=(PASSWORDS["sana"],))
        right.start()
        right.join(3)
    finally:
        gate.set()
    for t in [*threads, right]:
        t.join(30)
    assert answers[PASSWORDS["sana"]] == 429
    assert Counter(answers[pw] for pw in wrong) == {401: limit, 429: len(wrong) - limit}
    assert len(checked) == limit and PASSWORDS["sana"] not in checked
    assert peak[0] <= 2  # argon2 checks at once (64 MiB each)
    actions = Counter(r.action for r in server.app.station.db.audit_rows() if r.username == "sana")
    assert actions == {"login_failed": limit, "login_blocked": len(wrong) - limit + 1}


def test_a_flood_of_names_from_one_address_stays_blocked_however_long_it_waits_its_turn(
    server: StationServer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Password spraying: many names, one guess each, from one address, queued behind the two
    argon2 checks. Failures were dated when their request arrived, so once the queue had waited
    longer than a block every guess behind it was checked (2,224 of 4,000 in the reviewer's run)."""
    real, gate = auth.verify_password, threading.Event()
    checked: list[str] = []

    def slow_verify(stored_hash: str | None, password: str) -> bool:
        checked.append(password)
        gate.wait(30)
        return real(stored_hash, password)

    monkeypatch.setattr(auth, "verify_password", slow_verify)
    st = server.app.station
    answers: list[int] = []
    threads = [
        threading.Thread(
            target=lambda i=i: answers.append(Agent(server.url).login(f"guess-{i:02d}", "x" * 12)[0])
        )
        for i in range(30)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(st.by_user._attempts) < 30 and time.monotonic() < deadline:  # all arrived, queued
        time.sleep(0.02)
    clock.offset += 1000.0  # the queue is slow: a quarter of an hour passes before their turns
    gate.set()
    for t in threads:
        t.join(30)
    limit = 4 * st.config.station.login_max_failures  # an address's
    assert len(checked) <= limit + 1 and Counter(answers)[429] >= 30 - limit - 1


def test_a_user_name_no_account_can_have_is_audited_as_invalid(server: StationServer) -> None:
    """A login form's user name, or a proxy header's address, goes into the audit log that
    `nabz station audit` prints on an installer's terminal: escape sequences there could hide or
    rewrite rows. Before, the name was audited as typed."""
    evil = "\x1b[2A\x1b[2K\r\x1b[8m"  # up two lines, erase, hide what follows
    a = Agent(server.url)
    assert a.login(evil, "x" * 12)[0] == 401
    assert (
        a.request("POST", "/login", b"username=sana&password=x", {"X-Forwarded-For": "not-an-address"})[0]
        == 401
    )
    rows = server.app.station.db.audit_rows()
    assert [(r.username, r.action, r.address) for r in rows] == [
        ("(invalid)", "login_failed", "127.0.0.1"),
        ("sana", "login_failed", "(invalid)"),  # uvicorn trusts X-Forwarded-For from 127.0.0.1
    ]
    assert not any(
        c in f for r in rows for f in (r.username, r.target, r.detail, r.address) for c in "\x1b\r"
    )


def test_roles_csrf_and_the_command_path_are_enforced(server: StationServer) -> None:
    anon = Agent(server.url)
    status, _, _, url = anon.request("GET", "/patient/p-0001")
    assert status == 200 and url.endswith("/login?next=/patient/p-0001")
    assert anon.post_json("/api/alarms/abcdef0123/ack")[0] == 401

    admin = Agent(server.url)
    status, _, _, url = admin.login("root.admin", PASSWORDS["root.admin"])
    assert url.endswith("/admin")
    assert admin.request("GET", "/patient/p-0001")[0] == 403
    assert admin.post_json("/api/silences", {"patient": "p-0001", "duration_s": 900})[0] == 403

    nurse = Agent(server.url)
    nurse.login("sana", PASSWORDS["sana"])
    assert nurse.request("GET", "/admin")[0] == 403
    assert nurse.post_json("/api/alarms/abcdef0123/ack", csrf=False)[0] == 403  # no CSRF token
    status, body = nurse.post_json("/api/alarms/abcdef0123/ack")
    assert status == 409 and "not open" in body["error"]
    # An open alarm, but the broker is down: refused at once, not queued for later.
    hub = server.app.station.hub
    event = {"v": 1, "id": "ev-0000000001", "alarm_id": "alarm-000001", "site": "demo", "patient": "p-0001",
             "kind": "spo2_low", "priority": "high", "state": "active", "message": "SpO2 84% (<88%)",
             "condition_started_at": "2026-11-25T09:00:05Z", "raised_at": "2026-11-25T09:00:12Z"}  # fmt: skip
    hub.feed("nabz/v1/demo/patient/p-0001/alarm/spo2_low", json.dumps(event).encode())
    deadline = time.monotonic() + 5
    while hub.ward.open_alarm("alarm-000001") is None and time.monotonic() < deadline:
        time.sleep(0.02)
    status, body = nurse.post_json("/api/alarms/alarm-000001/ack")
    assert status == 503 and "SMS" in body["error"]
    assert nurse.post_json("/api/silences", {"patient": "p-0001", "kind": "*", "duration_s": 12345})[0] == 400
    actions = [(r.username, r.action) for r in server.app.station.db.audit_rows()]
    assert ("root.admin", "denied") in actions and ("sana", "ack_failed") in actions
    assert ("sana", "ack_refused") in actions


def test_health_and_metrics_say_what_a_monitoring_system_needs(server: StationServer) -> None:
    a = Agent(server.url)
    status, _, text, _ = a.request("GET", "/healthz")
    assert status == 503 and json.loads(text)["mqtt"] == "disconnected"
    status, headers, text, _ = a.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    values = dict(re.findall(r"^(\S+) (\S+)$", text, re.M))
    for name in ('nabz_station_open_alarms{priority="high"}', "nabz_station_tiles_stale", "nabz_station_sse_clients",
                 "nabz_station_logins_failed_total", "nabz_station_mqtt_connected"):  # fmt: skip
        assert name in values, name
    assert values["nabz_station_tiles"] == "3" and values["nabz_station_tiles_stale"] == "3"
    status, headers, _, _ = a.request("GET", "/login")
    assert "script-src 'self'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"


def test_a_damaged_store_does_not_keep_the_ward_from_starting(tmp_path: Path) -> None:
    """The alerts store is not a database any more (a bad disk, a bad copy): the station starts
    anyway, shows the ward from the live data, and its health page names the unreadable file.
    Before, start-up failed and the nurses had no ward at all."""
    config = config_for(tmp_path, f"mqtt://127.0.0.1:{free_port()}")
    add_users(config.station.db_path)
    Path(config.alerts.store_path).write_bytes(b"this is not an sqlite file" * 200)
    s = StationServer(config)
    s.start()
    try:
        nurse = Agent(s.url)
        nurse.login("sana", PASSWORDS["sana"])
        assert nurse.request("GET", "/")[0] == 200
        assert nurse.request("GET", "/patient/p-0001")[0] == 200
        status, _, text, _ = nurse.request("GET", "/healthz")
        assert status == 503 and config.alerts.store_path in json.loads(text)["unreadable_stores"]
    finally:
        s.stop()


@pytest.mark.parametrize("public_origin", [None, "https://ward.example.org", "https://Ward.Example.org:443/"])
def test_behind_a_proxy_that_keeps_its_own_host_nurses_log_in_only_with_the_public_origin_set(
    tmp_path: Path, public_origin: str | None
) -> None:
    """nginx by default sends the upstream's Host (127.0.0.1:port), while the browser's Origin is
    the public address: the Origin check refuses every login unless public_origin says it."""
    config = config_for(tmp_path, f"mqtt://127.0.0.1:{free_port()}", public_origin=public_origin)
    add_users(config.station.db_path)
    s = StationServer(config)
    s.start()
    try:
        nurse = Agent(s.url, origin="https://ward.example.org")
        status, _, _, url = nurse.login("sana", PASSWORDS["sana"])
        if public_origin is None:
            assert status == 403
        else:
            assert status == 200 and not url.endswith("/login")
            assert Agent(s.url, origin="https://evil.example.com").login("sana", PASSWORDS["sana"])[0] == 403
    finally:
        s.stop()


def test_the_server_says_so_when_its_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        config = config_for(tmp_path, f"mqtt://127.0.0.1:{free_port()}")
        from dashboards.station import StationError

        server = StationServer(config, port=s.getsockname()[1])
        with pytest.raises(StationError, match="could not listen.*in use"):
            server.start(timeout_s=5)
        server.app.station.db.close()


def test_a_strip_says_when_the_waveforms_are_in_influxdb_not_here(server: StationServer) -> None:
    """With no payloads kept and no [influx] url for the station, it has no samples to draw: it says
    so instead of an empty strip (and reads nothing of `messages` to find that out)."""
    from alerts.lifecycle import Alarm, to_event
    from alerts.store import AlertStore
    from ingest.pipeline import IngestCore
    from ingest.store import Store

    config = server.app.station.config
    IngestCore(Store(config.ingest.store_path), keep_payloads=False)
    raised = time.time() - 60
    a = Alarm("alarm-000002", "demo", "p-0001", "hr_high", "high", "active", "HR 150/min", 150.0, 130.0,
              "/min", raised - 5, raised)  # fmt: skip
    AlertStore(config.alerts.store_path).record(a, to_event(a, "ev-0000000002"), raised)
    nurse = Agent(server.url)
    nurse.login("sana", PASSWORDS["sana"])
    status, _, text, _ = nurse.request("GET", "/patient/p-0001/alarm/alarm-000002")
    assert status == 200 and "HR 150/min" in text
    assert "keeps no waveforms of its own (ingest.keep_payloads = false): they are in InfluxDB" in text
