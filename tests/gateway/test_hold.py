"""Readings nobody on the server takes yet (a wearable paired before it was enrolled, with several
ingest workers; a server whose ingest has not subscribed yet): mosquitto answers "No matching
subscribers" and drops them. The gateway keeps them, holds the device's later readings back, and
sends everything once a reading of the device is taken."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

import gateway.hold as hold_mod
from gateway.hold import Holds
from gateway.service import Gateway
from gateway.spool import Spool, snapshot
from gateway.virtual import VirtualTransport
from hardware import make_patients
from nabz import contract
from tests.gateway.helpers import gateway_config, running
from tests.servers import Mosquitto


# --- the pure part --------------------------------------------------------------------------------
def test_a_held_device_is_probed_after_5_s_then_twice_as_long_up_to_2_minutes() -> None:
    holds = Holds()
    assert holds.hold("oxi-1", now=100.0)  # newly held: worth telling once
    assert not holds.hold("oxi-1", now=100.1)
    assert holds.held("oxi-1") and not holds.held("ecg-1") and not holds.held(None)
    probe_times = []
    now = 100.0
    while len(probe_times) < 8:
        now += 0.5
        for device in holds.probes(now):
            assert device == "oxi-1"
            probe_times.append(now)
            holds.probing(device)
            assert holds.probes(now + 1000) == []  # one probe in flight at a time
            holds.unanswered(device, now)  # nobody yet (or refused)
    gaps = [round(b - a, 1) for a, b in zip([100.0, *probe_times], probe_times, strict=False)]
    assert gaps == [5.0, 10.0, 20.0, 40.0, 80.0, 120.0, 120.0, 120.0]
    assert holds.taken("oxi-1") is not None and not holds.held("oxi-1")
    assert holds.taken("oxi-1") is None  # released once


def test_a_probe_refused_by_the_broker_is_asked_again_not_held_for_ever() -> None:
    """A probe answered with a refusal (an ACL being changed) was never probed again: the device
    stayed held after its owner subscribed (found by review)."""
    holds = Holds(first_s=1.0, max_s=4.0)
    holds.hold("ecg-1", now=0.0)
    [device] = holds.probes(1.0)
    holds.probing(device)
    holds.unanswered(device, 1.0)  # the refusal
    assert holds.probes(2.9) == [] and holds.probes(3.0) == ["ecg-1"]


# --- the spool's held rows ------------------------------------------------------------------------
def _rows(
    device: str, n: int, size: int = 300, stream: str = "ppg", start: int = 0
) -> list[tuple[str, str, bytes, str, int]]:
    return [
        (f"{device}-{i}", f"nabz/v1/s/gw/g/{device}/{stream}", bytes(size), stream, 10)
        for i in range(start, start + n)
    ]


def test_held_rows_stay_out_of_the_other_devices_way_and_come_back_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite")
    spool.put(_rows("oxi-9", 3) + _rows("ecg-1", 2))
    assert spool.hold("oxi-9", "nabz/v1/s/gw/g/oxi-9/")
    spool.put(_rows("oxi-9", 2, start=3) + _rows("ecg-1", 1, start=2))  # later ones go aside at once
    assert [m.id for m in spool.peek(0, 100)] == ["ecg-1-0", "ecg-1-1", "ecg-1-2"]
    assert (spool.depth, spool.held_depth, spool.held_devices) == (3, 5, ["oxi-9"])
    again = Spool(tmp_path / "s.sqlite")  # a restart keeps them held
    assert again.held_devices == ["oxi-9"] and again.held_depth == 5
    seen = snapshot(tmp_path / "s.sqlite")  # `nabz gateway status` counts them
    assert (seen.depth, seen.held) == (8, 5)
    oldest = again.held_oldest("oxi-9")
    assert oldest is not None and oldest.id == "oxi-9-0"
    assert again.release("oxi-9", [oldest.id])  # the probe was taken: the rest come back in order
    assert [m.id for m in again.peek(0, 100)][3:] == ["oxi-9-1", "oxi-9-2", "oxi-9-3", "oxi-9-4"]
    assert again.held_depth == 0 and again.counter("published_messages") == 1


def test_rows_in_flight_when_a_device_is_held_keep_their_place(tmp_path: Path) -> None:
    """The rows of a device in flight when it was held were answered a moment later and appended
    after its later rows: after the release the server got 0, 100-299, then 1-99 (found by
    review). Now all of a device's rows move in their order, and one taken after all is named."""
    spool = Spool(tmp_path / "s.sqlite")
    spool.put(_rows("oxi-9", 300))
    in_flight = spool.peek(0, 100)  # sent; the first answer says nobody takes them
    assert spool.hold("oxi-9", "nabz/v1/s/gw/g/oxi-9/")
    assert spool.depth == 0 and spool.held_depth == 300
    assert spool.release("oxi-9", [in_flight[0].id])  # one was taken after all, then the rest
    assert [m.id for m in spool.peek(0, 1000)] == [f"oxi-9-{i}" for i in range(1, 300)]


def test_held_rows_count_towards_the_limit_and_go_first_when_the_spool_is_full(tmp_path: Path) -> None:
    """A wearable nobody enrolled keeps its readings aside; when the spool is full they go first
    (waveforms first), counted, and the enrolled patient's readings stay."""
    spool = Spool(tmp_path / "s.sqlite", max_bytes=400 * 300)
    spool.hold("oxi-9", "nabz/v1/s/gw/g/oxi-9/")
    spool.put(_rows("oxi-9", 200))
    assert spool.held_depth == 200 and spool.counter("dropped_messages") == 0
    spool.put(_rows("ecg-1", 380, stream="ecg"))  # the enrolled patient's readings fill the spool
    assert spool.depth == 380 and spool.held_bytes <= 20 * 300  # the held rows made way
    assert spool.counter("dropped_messages") == spool.counter("dropped_held") == 180  # nothing else lost


def test_when_every_device_is_held_after_an_outage_nothing_is_dropped(tmp_path: Path) -> None:
    """The gateway comes back with an outage's backlog before ingest has subscribed again (a
    broker restart: mosquitto does not restore shared subscriptions), so every device is held.
    The first rework capped held rows at a quarter of the spool and dropped the rest: the whole
    ECG backlog of the outage was lost (found by review). Now they are moved aside and back whole."""
    spool = Spool(tmp_path / "s.sqlite", max_bytes=4_000_000)
    spool.put(_rows("ecg-1", 1000, size=1500, stream="ecg") + _rows("oxi-1", 1000, size=1500))
    for device in ("ecg-1", "oxi-1"):
        assert spool.hold(device, f"nabz/v1/s/gw/g/{device}/")
    for device in ("ecg-1", "oxi-1"):
        assert spool.release(device)
    assert spool.depth == 2000 and spool.counter("dropped_messages") == 0
    ids = [m.id for m in spool.peek(0, 5000)]
    assert ids[:1000] == [f"ecg-1-{i}" for i in range(1000)]  # each device in its order


def test_a_hold_a_full_card_cut_short_keeps_the_order_and_drops_nothing(tmp_path: Path) -> None:
    """Moving rows aside needs room for a copy. On a full card the first rework made that room by
    dropping the oldest waveforms, the enrolled patients' (63 % of their ECG in the reviewer's
    run), and put the device's new rows before its old ones. Now the move waits; nothing is
    dropped for it, and the device's rows keep their order."""
    spool = Spool(tmp_path / "s.sqlite")
    spool.put(_rows("ecg-1", 1000, size=2000, stream="ecg") + _rows("oxi-9", 500, size=3000))
    pages = spool.db.execute("PRAGMA page_count").fetchone()[0]
    spool.db.execute(f"PRAGMA max_page_count = {pages}")  # the card is full
    assert not spool.hold("oxi-9", "nabz/v1/s/gw/g/oxi-9/") and spool.holding("oxi-9")
    assert spool.counter("dropped_messages") == 0 and spool.depth == 1500
    spool.db.execute(f"PRAGMA max_page_count = {pages + 100_000}")  # room again
    spool.put(_rows("oxi-9", 2, size=3000, start=500))  # new rows go behind its old ones
    assert spool.hold("oxi-9", "nabz/v1/s/gw/g/oxi-9/") and not spool.holding("oxi-9")
    assert spool.release("oxi-9")
    oxi = [m.id for m in spool.peek(0, 5000) if m.id.startswith("oxi")]
    assert oxi == [f"oxi-9-{i}" for i in range(502)]


def test_on_a_full_disk_held_rows_make_room_first(tmp_path: Path) -> None:
    """The card fills up with 3 MB held and 2 MB of an enrolled patient's ECG waiting: making room
    dropped every held row and a fifth of the ECG besides (found by review). Now the held rows
    make the room."""
    spool = Spool(tmp_path / "s.sqlite")
    spool.put(_rows("oxi-9", 3000, size=1000))
    spool.hold("oxi-9", "nabz/v1/s/gw/g/oxi-9/")
    spool.put(_rows("ecg-1", 2000, size=1000, stream="ecg"))
    pages = spool.db.execute("PRAGMA page_count").fetchone()[0]
    spool.db.execute(f"PRAGMA max_page_count = {pages + 2}")  # the card is full
    spool.put(_rows("ecg-1", 10, size=1000, stream="ecg", start=2000))
    assert spool.counter("disk_full") >= 1 and spool.depth == 2010  # every ECG row kept
    assert spool.counter("dropped_messages") == spool.counter("dropped_held") > 0


def test_on_a_full_disk_holding_and_releasing_do_not_crash(tmp_path: Path) -> None:
    """Holding a device copies its rows within the spool's file: on a full card that raised
    'database or disk is full', and the gateway died at every start (found by review). Now a
    hold or release that cannot be written is left for later, and the counts stay the tables'."""
    spool = Spool(tmp_path / "s.sqlite")
    spool.put(_rows("ecg-1", 2000, size=1000, stream="ecg") + _rows("oxi-9", 1500, size=1000))
    pages = spool.db.execute("PRAGMA page_count").fetchone()[0]
    spool.db.execute(f"PRAGMA max_page_count = {pages + 2}")  # the card is full
    spool.hold("oxi-9", "nabz/v1/s/gw/g/oxi-9/")  # never raises (True, or False: left for later)
    spool.put(_rows("ecg-1", 10, size=1000, stream="ecg", start=2000))
    spool.release("oxi-9")  # never raises either

    def counted() -> tuple[int, int]:
        return (
            spool.db.execute("SELECT COUNT(*) FROM spool").fetchone()[0],
            spool.db.execute("SELECT COUNT(*) FROM held").fetchone()[0],
        )

    assert counted() == (spool.depth, spool.held_depth)
    assert spool.depth + spool.held_depth == 3510 - spool.counter("dropped_messages")


# --- against mosquitto ----------------------------------------------------------------------------
class Listener:
    """A server-side subscriber, v5 like ingest, to the readings of the devices it is told."""

    def __init__(self, port: int) -> None:
        self.ids: dict[str, dict[str, set[str]]] = {}  # device -> stream -> message ids
        self.statuses: list[dict[str, Any]] = []
        self.times: dict[str, list[float]] = {}  # device -> arrival times
        self._lock = threading.Lock()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"listener-{time.monotonic_ns()}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe("nabz/v1/+/gw/+/status", qos=1)

    def take(self, device: str) -> None:
        self.client.subscribe(f"$share/ingest/nabz/v1/+/gw/+/{device}/+", qos=1)

    def _on_message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        with self._lock:
            if msg.topic.endswith("/status"):
                self.statuses.append(body)
            else:
                self.ids.setdefault(body["device"], {}).setdefault(body["stream"], set()).add(body["id"])
                self.times.setdefault(body["device"], []).append(time.monotonic())

    def arrived(self, device: str) -> list[float]:
        with self._lock:
            return list(self.times.get(device, []))

    def count(self, device: str) -> int:
        with self._lock:
            return sum(len(v) for v in self.ids.get(device, {}).values())

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _wait(predicate: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


@pytest.fixture
def quick_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hold_mod, "PROBE_FIRST_S", 0.3)
    monkeypatch.setattr(hold_mod, "PROBE_MAX_S", 0.6)


def test_readings_of_a_wearable_nobody_takes_yet_are_kept_and_delivered_once_it_is_taken(
    mosquitto: Mosquitto, tmp_path: Path, quick_probes: None
) -> None:
    """The ECG patch's readings are taken from the start; the oximeter's only after 3 s (its
    owner subscribes late, as after `nabz enrol` with several workers). Every oximeter message
    the gateway made arrives, and the ECG's flow meanwhile."""
    cfg = gateway_config(
        mosquitto.url, id="gw-0001", spool_path=str(tmp_path / "spool.sqlite"), status_interval_s=1.0
    )
    gw = Gateway(cfg, VirtualTransport(make_patients(1, 3)[0].devices))
    server = Listener(mosquitto.port)
    server.take("ecg-0001")
    sent: dict[str, set[str]] = {}  # device -> message ids the gateway handed to paho
    publish = gw.client.publish

    def counting(topic: str, payload: bytes, *a: object, **kw: object) -> object:
        if not topic.endswith("/status"):
            body = json.loads(payload)
            sent.setdefault(body["device"], set()).add(body["id"])
        return publish(topic, payload, *a, **kw)  # type: ignore[arg-type]

    gw.client.publish = counting  # type: ignore[method-assign]
    try:
        with running(gw):
            assert _wait(lambda: server.count("ecg-0001") > 20, 10)
            time.sleep(3.0)
            assert gw.stats().held == ("oxi-0001",)
            assert server.count("oxi-0001") == 0
            assert any(s.get("held") == ["oxi-0001"] for s in server.statuses)  # the server is told
            # held back: the oximeter's later readings are not sent into nothing (one probe a while)
            assert len(sent["oxi-0001"]) < 40, len(sent["oxi-0001"])
            server.take("oxi-0001")
            time.sleep(2.0)
            gw.transport.stop()
            assert gw.drain(15)
        assert gw.stats().held == () and gw.spool.depth == 0
        assert _wait(lambda: server.count("oxi-0001") == len(sent["oxi-0001"]), 10), (
            server.count("oxi-0001"),
            len(sent["oxi-0001"]),
        )
        assert server.count("ecg-0001") == len(sent["ecg-0001"])
        assert gw.stats().published == gw.stats().spooled  # every reading made was taken
        assert [s.get("held", []) for s in server.statuses][-1] == []
    finally:
        gw.stop()
        server.close()


def test_a_large_backlog_nobody_takes_does_not_hold_up_the_other_wearables(
    mosquitto: Mosquitto, tmp_path: Path, quick_probes: None
) -> None:
    """A wearable listed on the gateway but enrolled nowhere left 40,000 messages (40 MB) in the
    spool. At the gateway's start the enrolled wearables' readings reach the server at once, and
    when another wearable is released (enrolled late) its held readings go without a silence of
    the others (found by review: 38.7 s before the first reading at a start with 100,000 rows,
    and as long again at each release, while the spool was read through page by page)."""
    spool = Spool(tmp_path / "spool.sqlite")
    topic = contract.reading_topic("test", "gw-0001", "oxi-0099", "ppg")
    for k in range(0, 40_000, 5_000):
        spool.put([(f"{k + i:032x}", topic, bytes(1000), "ppg", 36) for i in range(5_000)])
    spool.close()
    cfg = gateway_config(
        mosquitto.url, id="gw-0001", spool_path=str(tmp_path / "spool.sqlite"), status_interval_s=1.0
    )
    gw = Gateway(cfg, VirtualTransport(make_patients(1, 3)[0].devices))
    server = Listener(mosquitto.port)
    server.take("ecg-0001")  # the oximeter is enrolled late
    try:
        started = time.monotonic()
        with running(gw):
            assert _wait(lambda: server.count("ecg-0001") > 0, 60)
            first = time.monotonic() - started
            assert _wait(lambda: gw.stats().held == ("oxi-0001", "oxi-0099"), 20)
            server.take("oxi-0001")
            taken = time.monotonic()
            assert _wait(lambda: gw.stats().held == ("oxi-0099",), 20)
            time.sleep(3.0)
        assert first < 5.0, first
        arrivals = [t for t in server.arrived("ecg-0001") if t > taken - 1.0]
        silences = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
        assert arrivals and max(silences) < 2.0, max(silences)
        assert server.count("oxi-0099") == 0 and server.count("oxi-0001") > 0
    finally:
        gw.stop()
        server.close()


def test_a_move_cut_short_either_way_is_finished_first_so_the_order_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release a full card cut short (some rows back in the spool, the rest held), then the
    device held again, or the gateway restarted: the rows that had come back were put behind the
    ones still held, or the first probe overtook them (found by review). Now a move cut short is
    finished before another begins, and its direction is worked out again at a restart."""
    import sqlite3

    import gateway.spool as spool_mod

    monkeypatch.setattr(spool_mod, "_MOVE_CHUNK", 100)
    spool = Spool(tmp_path / "s.sqlite")
    spool.put(_rows("oxi-9", 300))
    assert spool.hold("oxi-9", "nabz/v1/s/gw/g/oxi-9/")
    real = Spool._move_to_spool
    calls = []

    def full_after_one(self: Spool, device: str, seqs: list[int]) -> None:
        calls.append(len(seqs))
        if len(calls) > 1:
            raise sqlite3.OperationalError("database or disk is full")
        real(self, device, seqs)

    monkeypatch.setattr(Spool, "_move_to_spool", full_after_one)
    assert not spool.release("oxi-9") and spool.moving("oxi-9")  # 100 back, 200 held
    monkeypatch.setattr(Spool, "_move_to_spool", real)
    again = Spool(tmp_path / "s.sqlite")  # a restart: which way was it going?
    assert again.moving("oxi-9") and not again.holding("oxi-9")
    assert again.hold("oxi-9", "nabz/v1/s/gw/g/oxi-9/")  # held again: the release is finished first
    assert again.release("oxi-9")
    assert [m.id for m in again.peek(0, 1000)] == [f"oxi-9-{i}" for i in range(300)]
