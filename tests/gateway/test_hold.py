"""Readings nobody on the server takes yet (a wearable paired before it was enrolled, with several
ingest workers; a server whose ingest has not subscribed yet): mosquitto answers "No matching
subscribers" and drops them. The gateway keeps them, holds the device's later readings back, and
sends everything once a reading of the device is taken."""

from __future__ import annotations

import itertools
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

import gateway.hold as hold_mod
import gateway.spool as spool_mod
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


def test_a_release_a_full_card_cut_short_is_tried_again_later_and_the_device_is_taken() -> None:
    holds = Holds(first_s=1.0, max_s=4.0)
    holds.hold("oxi-1", now=0.0)
    holds.release_later("oxi-1", now=0.5)  # taken, but the rest of its rows could not move back
    assert not holds.held("oxi-1") and holds and holds.probes(100.0) == []
    tries = []
    for k in range(1, 40):
        for device in holds.releases_due(k * 0.5):
            tries.append(k * 0.5)
            holds.release_later(device, k * 0.5)  # still full
    assert tries == [1.5, 3.5, 7.5, 11.5, 15.5, 19.5]  # after 1 s, then 2, then 4 at most
    assert holds.hold("oxi-1", now=20.0) and not holds.releases  # nobody again: held, newly
    holds.release_later("oxi-1", now=21.0)
    assert holds.taken("oxi-1") is None and not holds  # all back at last


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


# --- the gateway against a broker of the test's (exact answers, on a clock of the test's) ---------
class FakeBroker:
    """Stands in for paho and mosquitto: records what the gateway publishes, and answers each QoS 1
    publish as mosquitto does: taken, or "No matching subscribers" for a device nobody takes."""

    def __init__(self) -> None:
        self.takes: set[str] = set()
        self.delivered: dict[str, list[str]] = {}  # device -> message ids, in arrival order
        self.sent: list[str] = []  # message ids of every reading published
        self._pending: list[tuple[int, str, bytes]] = []
        self._mids = itertools.count(1)

    def publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, properties: Any = None
    ) -> Any:
        mid = next(self._mids)
        if not topic.endswith("/status"):
            self._pending.append((mid, topic, payload))
            self.sent.append(payload.split(b"|")[0].decode())
        return SimpleNamespace(rc=paho.MQTT_ERR_SUCCESS, mid=mid)

    def disconnect(self) -> None:
        pass

    def loop_stop(self) -> None:
        pass

    def answer(self, gw: Gateway, n: int | None = None) -> None:
        """Answer the `n` oldest publishes (all by default)."""
        n = len(self._pending) if n is None else n
        answered, self._pending = self._pending[:n], self._pending[n:]
        for mid, topic, payload in answered:
            reading = contract.parse_reading_topic(topic)
            assert reading is not None
            if reading.device in self.takes:
                self.delivered.setdefault(reading.device, []).append(payload.split(b"|")[0].decode())
                gw._events.put(("ack", (mid, True, "Success", False)))
            else:
                gw._events.put(("ack", (mid, True, "No matching subscribers", True)))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FullCard:
    """One of the spool's moves on a full card: `room_for` chunks move, then none while `full`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, move: str, room_for: int = 0) -> None:
        self.full, self.moved = True, 0
        real = getattr(Spool, move)

        def moving(spool: Spool, *args: Any) -> None:
            if self.full and self.moved >= room_for:
                raise sqlite3.OperationalError("database or disk is full")
            self.moved += 1
            real(spool, *args)

        monkeypatch.setattr(Spool, move, moving)


def _fake_gateway(tmp_path: Path, broker: FakeBroker, **gateway: Any) -> tuple[Gateway, Clock]:
    clock = Clock()
    cfg = gateway_config(
        "mqtt://127.0.0.1:1", id="g", spool_path=str(tmp_path / "spool.sqlite"), status_interval_s=1e9,
        **gateway,
    )  # fmt: skip
    gw = Gateway(cfg, VirtualTransport([]), monotonic=clock)
    gw.client = broker  # type: ignore[assignment]
    gw._events.put(("connected", True))
    return gw, clock


def _put(gw: Gateway, device: str, start: int, n: int, size: int = 0) -> None:
    topic = contract.reading_topic(gw.site, gw.id, device, "ppg")
    ids = [f"{device}-{i:04d}" for i in range(start, start + n)]
    gw.spool.put([(i, topic, i.encode() + b"|" + bytes(size), "ppg", 1) for i in ids])


def _ids(device: str, start: int, n: int) -> list[str]:
    return [f"{device}-{i:04d}" for i in range(start, start + n)]


def _run(gw: Gateway, broker: FakeBroker, clock: Clock, seconds: float, every: float = 1.0) -> None:
    """Step the gateway every `every` s of its clock, the broker answering everything at once."""
    end = clock.t + seconds
    while clock.t < end:
        clock.t += every
        gw.step()
        broker.answer(gw)
    gw.step()


def test_a_release_a_full_card_cuts_short_is_finished_once_it_has_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe is taken on a full card: not one held row can move back. The device stayed held
    for ever, never probed again, and its readings, which the server now takes, waited for a
    restart (found by review). Now it is taken, and its release is tried again until it is done."""
    broker = FakeBroker()
    gw, clock = _fake_gateway(tmp_path, broker)
    _put(gw, "oxi-9", 0, 50)
    _run(gw, broker, clock, 1)
    assert gw.stats().held == ("oxi-9",) and gw.spool.held_depth == 50
    card = FullCard(monkeypatch, "_move_to_spool")
    broker.takes.add("oxi-9")  # its owner subscribes
    _run(gw, broker, clock, 10)  # the probe is taken; nothing moves back
    assert broker.delivered["oxi-9"] == _ids("oxi-9", 0, 1) and gw.spool.held_depth == 49
    assert gw.stats().held == ()  # taken: the status no longer names it
    card.full = False  # room again
    _put(gw, "oxi-9", 50, 5)
    _run(gw, broker, clock, 300)
    assert broker.delivered["oxi-9"] == _ids("oxi-9", 0, 55)
    assert (gw.spool.held_depth, gw.spool.depth, gw.spool.marks("heldmove/")) == (0, 0, {})
    gw.stop(graceful=False)


def test_a_release_cut_short_before_a_restart_is_finished_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release the full card cut short after its first chunk, then a restart: the mark left on
    disk made the device "moving" at every start, and a moving device was never probed, so its
    held readings never went (found by review). Now the start finishes the release, or tries it
    again until the card has room."""
    monkeypatch.setattr(spool_mod, "_MOVE_CHUNK", 10)
    broker = FakeBroker()
    gw, clock = _fake_gateway(tmp_path, broker)
    _put(gw, "oxi-9", 0, 30)
    _run(gw, broker, clock, 1)
    card = FullCard(monkeypatch, "_move_to_spool", room_for=1)
    broker.takes.add("oxi-9")
    _run(gw, broker, clock, 10)  # the probe and the 10 rows that came back are delivered
    assert broker.delivered["oxi-9"] == _ids("oxi-9", 0, 11) and gw.spool.held_depth == 19
    assert gw.spool.marks("heldmove/") == {"heldmove/oxi-9": "release"}
    gw.stop(graceful=False)
    gw, clock = _fake_gateway(tmp_path, broker)  # the card still full: taken, tried again later
    _run(gw, broker, clock, 60)
    assert gw.stats().held == () and gw.spool.held_depth == 19
    gw.stop(graceful=False)
    card.full = False
    gw, clock = _fake_gateway(tmp_path, broker)  # room: finished at the start
    assert gw.spool.held_depth == 0
    _run(gw, broker, clock, 10)
    assert broker.delivered["oxi-9"] == _ids("oxi-9", 0, 30)
    assert (gw.stats().held, gw.spool.held_depth, gw.spool.marks("heldmove/")) == ((), 0, {})
    gw.stop(graceful=False)


def test_a_reading_taken_in_the_batch_that_holds_its_device_is_not_sent_again(tmp_path: Path) -> None:
    """Ten readings in flight; the first five are taken, then ingest's subscription goes and the
    other five come back with nobody subscribed, all in one batch of answers. The hold moved the
    five taken (their deletion still to come) aside with the others, and they were sent again,
    the first as the probe (found by review)."""
    broker = FakeBroker()
    broker.takes.add("oxi-9")
    gw, clock = _fake_gateway(tmp_path, broker)
    _put(gw, "oxi-9", 0, 10)
    gw.step()
    broker.answer(gw, 5)
    broker.takes.discard("oxi-9")  # a worker restarting
    broker.answer(gw)
    gw.step()
    held = [r[0] for r in gw.spool.db.execute("SELECT id FROM held ORDER BY seq")]
    assert held == _ids("oxi-9", 5, 5) and gw.spool.counter("published_messages") == 5
    broker.takes.add("oxi-9")
    _run(gw, broker, clock, 10)
    assert broker.delivered["oxi-9"] == _ids("oxi-9", 0, 10)  # each once
    gw.stop(graceful=False)


def test_a_held_device_whose_rows_were_all_dropped_stays_held_till_a_probe_is_taken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The overflow policy dropped every held row of a device: at its probe time it was "released"
    with no probe at all, the log saying its readings were taken and the status no longer naming
    it, though nobody took them (found by review). Now it stays held, and its next reading is
    the probe."""
    broker = FakeBroker()
    broker.takes.add("ecg-1")
    gw, clock = _fake_gateway(tmp_path, broker, spool_max_mb=1)
    _put(gw, "oxi-9", 0, 5)
    _run(gw, broker, clock, 1)
    assert gw.stats().held == ("oxi-9",)
    _put(gw, "ecg-1", 0, 1100, size=1000)  # an outage's backlog reaches the limit
    assert gw.spool.held_depth == 0 and gw.spool.counter("dropped_held") == 5
    with caplog.at_level(logging.INFO, logger="gateway.service"):
        _run(gw, broker, clock, 10)
        assert gw.stats().held == ("oxi-9",)
        assert not [r for r in caplog.records if "are taken" in r.getMessage()]
        _put(gw, "oxi-9", 5, 1)
        broker.takes.add("oxi-9")
        _run(gw, broker, clock, 300)
        assert broker.delivered["oxi-9"] == _ids("oxi-9", 5, 1) and gw.stats().held == ()
        assert len([r for r in caplog.records if "are taken" in r.getMessage()]) == 1
    gw.stop(graceful=False)


def test_a_wearable_held_at_the_limit_neither_floods_the_log_nor_makes_the_status_urgent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A wearable enrolled nowhere, held for days, reaches the limit: every put then drops a held
    row, and each drop was an ERROR line (1,200 a minute) and urgent news for the status (sent
    every second instead of every 30 s; found by review). Now one line a minute, with counts."""
    spool = Spool(tmp_path / "s.sqlite", max_bytes=200 * 1000)
    spool.hold("ecg-9", "nabz/v1/s/gw/g/ecg-9/")
    spool.put(_rows("ecg-9", 200, size=1000, stream="ecg"))  # at the limit
    with caplog.at_level(logging.ERROR, logger="gateway.spool"):
        dropped = [spool.put(_rows("ecg-9", 1, size=1000, stream="ecg", start=200 + i)) for i in range(100)]
    assert spool.counter("dropped_held") == 100 and dropped == [0] * 100  # (the status says so in time)
    assert len(caplog.records) == 1, len(caplog.records)


def test_a_hold_a_full_card_cuts_short_is_tried_again_at_probe_times_and_sends_nothing_into_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hold the full card stopped at its first chunk, no readings coming: every "nobody" answer
    tried the hold again (a read of the whole spool each time), and every minute the device's
    whole backlog was sent again into nothing (55 s of CPU a minute; found by review). Now the
    hold is tried again at the device's probe times, and its rows wait for it."""
    broker = FakeBroker()
    broker.takes.add("ecg-1")
    gw, clock = _fake_gateway(tmp_path, broker, max_inflight=50)
    _put(gw, "oxi-9", 0, 1000)
    _put(gw, "ecg-1", 0, 10)
    card = FullCard(monkeypatch, "_move_to_held")
    holds = []
    hold = Spool.hold

    def counted(spool: Spool, device: str, prefix: str) -> bool:
        holds.append(device)
        return hold(spool, device, prefix)

    monkeypatch.setattr(Spool, "hold", counted)
    _run(gw, broker, clock, 600, every=0.5)
    assert len(broker.sent) == 50 + 10, len(broker.sent)  # the first 50 in flight; ecg-1's
    assert broker.delivered["ecg-1"] == _ids("ecg-1", 0, 10)
    assert 5 <= len(holds) <= 12, len(holds)  # at 5, 10, 20 ... s, then every 2 minutes
    card.full = False
    _run(gw, broker, clock, 130)
    assert gw.spool.held_depth == 1000 and gw.stats().held == ("oxi-9",)
    broker.takes.add("oxi-9")
    _run(gw, broker, clock, 130)
    assert broker.delivered["oxi-9"] == _ids("oxi-9", 0, 1000)
    gw.stop(graceful=False)


def test_a_hold_cut_short_then_taken_delivers_its_readings_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hold the full card cut short after its first chunk: the device's oldest rows held, its
    newer ones still in the spool. Those went out as ordinary traffic, and once the device was
    taken they arrived before the older ones (found by review). Now they wait for the hold, and
    the probe is the oldest of all."""
    monkeypatch.setattr(spool_mod, "_MOVE_CHUNK", 100)
    broker = FakeBroker()
    gw, clock = _fake_gateway(tmp_path, broker)
    _put(gw, "oxi-9", 0, 300)
    card = FullCard(monkeypatch, "_move_to_held", room_for=1)
    gw.step()  # 100 in flight
    broker.answer(gw, 1)
    gw.step()  # nobody: the hold moves 100 rows, then the card is full
    assert gw.spool.holding("oxi-9") and gw.spool.held_depth == 100
    broker.answer(gw)
    gw.step()
    card.full = False
    broker.takes.add("oxi-9")
    _run(gw, broker, clock, 300)
    first = list(dict.fromkeys(broker.delivered["oxi-9"]))
    assert first == _ids("oxi-9", 0, 300)
    gw.stop(graceful=False)


def test_readings_in_flight_when_their_device_was_held_and_taken_in_one_batch_are_sent_once(
    tmp_path: Path,
) -> None:
    """Ten readings in flight; the first comes back with nobody subscribed (the device is held,
    the nine others moved aside), then ingest subscribes and the nine are taken in one batch of
    answers. The first taken released the device with its own id only, the other eight went back
    to the spool and were sent again (found by review: most of the duplicates of its runs)."""
    broker = FakeBroker()
    gw, clock = _fake_gateway(tmp_path, broker)
    _put(gw, "oxi-9", 0, 10)
    gw.step()
    broker.answer(gw, 1)
    gw.step()
    assert gw.stats().held == ("oxi-9",)
    broker.takes.add("oxi-9")
    broker.answer(gw)
    _run(gw, broker, clock, 30)
    assert sorted(broker.delivered["oxi-9"]) == _ids("oxi-9", 0, 10)  # each once
    assert (gw.stats().held, gw.spool.held_depth, gw.spool.depth) == ((), 0, 0)
    gw.stop(graceful=False)


def test_a_taken_devices_rows_still_held_are_kept_as_the_spools_not_dropped_first(tmp_path: Path) -> None:
    """A wearable the server takes again, whose release a full card cut short, has its readings
    still in the held table. They were dropped first, as readings nobody takes, ahead of another
    wearable's waveforms (found by review). They are the spool's now: waveforms go first."""
    spool = Spool(tmp_path / "s.sqlite", max_bytes=400 * 300)
    spool.hold("oxi-9", "nabz/v1/s/gw/g/oxi-9/")
    spool.put(_rows("oxi-9", 200))  # its vital signs, held
    spool.taken = {"oxi-9"}  # taken; the release not done (the gateway's Holds.releases)
    spool.put(_rows("ecg-1", 380, stream="ecg"))
    assert spool.held_depth == 200  # every one of the taken device's readings kept
    assert spool.depth == 200 and spool.counter("dropped_messages") == 180  # the oldest waveforms went
    assert spool.counter("dropped_held") == 0
    spool.taken = ()  # nobody takes it after all: its rows are the first to go again
    spool.put(_rows("ecg-1", 10, stream="ecg", start=380))
    assert spool.held_depth == 190 and spool.depth == 210


def _ingest_heartbeat(gw: Gateway) -> None:
    from datetime import UTC, datetime

    hb = contract.Heartbeat(site=gw.site, service="ingest", instance="nabz-ingest-0",
                            t=datetime.now(UTC), interval_s=10.0)  # fmt: skip
    gw._events.put(("heartbeat", (contract.heartbeat_topic(gw.site, "nabz-ingest-0"), contract.encode(hb))))


def test_held_devices_are_probed_as_soon_as_ingest_is_heard_again_after_an_outage(tmp_path: Path) -> None:
    """After a broker restart every device is held until ingest subscribes again; a long ingest
    outage had stretched the probes to every 2 minutes, so each patient's readings reached the
    server up to 2 minutes after ingest was back (suspected by review). Ingest's first heartbeat
    after the silence now probes every held device at once; heartbeats in a row do not."""
    broker = FakeBroker()
    gw, clock = _fake_gateway(tmp_path, broker)
    _put(gw, "oxi-9", 0, 20)
    _ingest_heartbeat(gw)
    _run(gw, broker, clock, 400, every=5.0)  # ingest silent: held, the probes now 2 minutes apart
    assert gw.stats().held == ("oxi-9",) and "oxi-9" not in broker.delivered
    clock.t += 5.0
    _run(gw, broker, clock, 5.0)
    probes_before = broker.sent.count("oxi-9-0000")
    _ingest_heartbeat(gw)  # ingest is back, subscribed ...
    gw.step()
    _ingest_heartbeat(gw)  # (a second heartbeat right after it hurries nothing)
    broker.takes.add("oxi-9")
    _run(gw, broker, clock, 3.0)  # ... and within seconds, not minutes, the readings go
    assert broker.delivered["oxi-9"] == _ids("oxi-9", 0, 20)
    assert broker.sent.count("oxi-9-0000") == probes_before + 1
    gw.stop(graceful=False)


def test_an_ingest_heartbeat_hurries_only_probes_that_are_not_due_or_out() -> None:
    holds = Holds(first_s=5.0, max_s=120.0)
    holds.hold("a", 0.0)
    holds.hold("b", 0.0)
    for t in (5.0, 15.0, 35.0, 75.0):  # four probes of "a" answered "nobody"
        holds.probing("a")
        holds.unanswered("a", t)
    holds.probing("b")  # one in flight
    assert holds.server_back(100.0) == ["a"]
    assert holds.probes(100.0) == ["a"]
    holds.probing("a")
    holds.unanswered("a", 100.0)
    assert holds.devices["a"].probe_due == 110.0  # its back-off from the start
