"""When the embedded store is in trouble (busy, locked, failing) ingest loses no reading and no
derived vitals, and dead-letters nothing that is not about the message; the store is opened to
survive a power loss when it is the only copy. Real mosquitto; synthetic heart-rate readings
timed now. The store's failures are injected where the real ones cannot be timed (a lock released
between two particular statements of the service)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import paho.mqtt.client as paho
import pytest

import ingest.service
from ingest.pipeline import IngestCore, Message
from ingest.service import IngestService
from ingest.store import Store
from nabz import contract
from nabz.config import Config, InfluxConfig, IngestConfig, MqttConfig
from tests.servers import Mosquitto


def _wait(what: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _config(mosquitto: Mosquitto, tmp_path: Path) -> Config:
    return Config(
        site="test",
        mqtt=MqttConfig(url=mosquitto.url, reconnect_min_s=0.2, reconnect_max_s=1.0),
        ingest=IngestConfig(store_path=str(tmp_path / "ingest.sqlite"), heartbeat_s=0.0),
        enrolment={"hr-0001": "p-0001"},
    )


def _publish(mosquitto: Mosquitto, n: int, listen: list[bytes] | None = None) -> paho.Client:
    """n heart-rate readings as a gateway sends them; with `listen`, the vitals ingest publishes
    are collected there (what the alerts service receives)."""
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="gw")
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    if listen is not None:
        got = threading.Event()
        pub.on_subscribe = lambda *_: got.set()
        pub.on_message = lambda _c, _u, m: listen.append(bytes(m.payload))
        pub.subscribe(contract.vitals_topic("test"), 1)
        assert got.wait(5)
    for k in range(n):
        r = contract.HrReading(
            v=1, id=contract.new_id(), site="test", gateway="gw-1", device="hr-0001",
            t=datetime.now(UTC), hr_bpm=70.0 + k,
        )  # fmt: skip
        topic = contract.reading_topic("test", "gw-1", "hr-0001", "hr")
        pub.publish(topic, contract.encode(r), qos=1).wait_for_publish(5)
    return pub


class BusyStore(Store):
    """A store whose first `busy` write transactions fail as SQLite's do when another writer holds
    the database longer than the busy timeout; the next one waits for `go` (so that the test can
    look at the service while it holds the messages)."""

    def __init__(self, path: Path, busy: int) -> None:
        super().__init__(path)
        self.busy = busy
        self.go = threading.Event()

    @contextmanager
    def batch(self, *, durable: bool = False) -> Iterator[None]:
        if self.busy > 0:
            self.busy -= 1
            raise sqlite3.OperationalError("database is locked")
        if self.busy == 0:
            self.busy = -1
            assert self.go.wait(10)
        with super().batch(durable=durable):
            yield


def test_a_busy_store_holds_readings_and_stores_them_when_free_not_dead_letters(
    mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest.service, "_STORE_RETRY_S", (0.01, 0.01))  # the backoff, not waited out
    cfg = _config(mosquitto, tmp_path)
    store = BusyStore(tmp_path / "ingest.sqlite", busy=2)
    svc = IngestService(cfg, store=store, client_id="busy-ingest")
    svc.start()
    pub = None
    try:
        assert svc.subscribed.wait(10)
        pub = _publish(mosquitto, 3)
        _wait(lambda: store.busy == -1)  # failed twice, the third try waits for `go`
        problems = svc.problems()  # what /healthz answers meanwhile
        assert any("embedded store cannot take readings" in p and "database is locked" in p for p in problems)
        store.go.set()
        _wait(lambda: svc.totals.stored == 3)
        assert store.count_readings() == 3
        assert store.dead_letters() == []  # a valid reading is not a dead letter because the store was busy
        assert svc.problems() == []
        assert svc.store_failures == 2
    finally:
        store.go.set()
        svc.stop()
        if pub is not None:
            pub.loop_stop()
            pub.disconnect()


class VitalsFailStore(Store):
    """A store whose write of derived vitals fails (after the readings' commit)."""

    def add_vitals(self, rows: Sequence[tuple[object, ...]]) -> None:
        raise sqlite3.OperationalError("database is locked")


def test_derived_vitals_are_published_when_storing_them_fails(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cfg = _config(mosquitto, tmp_path)
    store = VitalsFailStore(tmp_path / "ingest.sqlite")
    svc = IngestService(cfg, store=store, client_id="vitals-ingest")
    svc.start()
    received: list[bytes] = []
    pub = None
    try:
        assert svc.subscribed.wait(10)
        pub = _publish(mosquitto, 3, listen=received)
        _wait(lambda: svc.totals.stored == 3)
        _wait(
            lambda: sum(len(msgspec.json.decode(m)["vitals"]) for m in received) == 3
        )  # the alerts service's view
        hr = sorted(v["hr_bpm"] for m in received for v in msgspec.json.decode(m)["vitals"])
        assert hr == [70.0, 71.0, 72.0]
        assert store.dead_letters() == [] and store.count_readings() == 3
        assert svc.core.not_stored_vitals == 3  # counted: /metrics nabz_ingest_vitals_not_stored_total
    finally:
        svc.stop()
        if pub is not None:
            pub.loop_stop()
            pub.disconnect()


def _synchronous(store: Store) -> str:
    return {1: "NORMAL", 2: "FULL"}[store.db.execute("PRAGMA synchronous").fetchone()[0]]


def test_without_influxdb_each_commit_is_synced_to_disk_before_the_acknowledgement(tmp_path: Path) -> None:
    """A power cut after the broker's acknowledgement must not take the last commit when the
    embedded store is the only copy (SQLite's WAL with synchronous=NORMAL may roll it back)."""
    alone = IngestService(Config(site="test", ingest=IngestConfig(store_path=str(tmp_path / "a.sqlite"))))
    with_influx = IngestService(
        Config(
            site="test",
            ingest=IngestConfig(store_path=str(tmp_path / "b.sqlite")),
            influx=InfluxConfig(url="http://127.0.0.1:9", token="t", spill_dir=str(tmp_path / "spill")),
        )
    )
    try:
        assert _synchronous(alone.store) == "FULL"
        assert _synchronous(with_influx.store) == "NORMAL"  # InfluxDB has the readings
    finally:
        for svc in (alone, with_influx):
            svc.stop()
            svc.store.close()


def test_a_commit_that_fails_does_not_leave_the_store_stuck(tmp_path: Path) -> None:
    """SQLite keeps a transaction open when its COMMIT fails (here a deferred constraint; in life
    a busy or full database): left so, every later batch failed to begin ("within a transaction")
    and ingest held its messages for good."""
    store = Store(tmp_path / "s.sqlite")
    store.db.execute("PRAGMA foreign_keys = ON")
    store.db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    store.db.execute("CREATE TABLE child (p INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)")
    with pytest.raises(sqlite3.IntegrityError), store.batch():
        store.db.execute("INSERT INTO child VALUES (1)")  # fails at COMMIT, not here
    core = IngestCore(store, enrolment={"hr-0001": "p-0001"})
    r = contract.HrReading(
        v=1,
        id=contract.new_id(),
        site="test",
        gateway="gw-1",
        device="hr-0001",
        t=datetime.now(UTC),
        hr_bpm=70.0,
    )
    msg = Message(contract.reading_topic("test", "gw-1", "hr-0001", "hr"), contract.encode(r), time.time())
    assert core.handle_batch([msg]).stored == 1
    assert store.count_readings() == 1


def test_dead_letters_are_committed_synced_even_beside_influxdb(tmp_path: Path) -> None:
    """InfluxDB gets accepted readings only: a dead letter's one copy is the store, so the commit
    that holds one is synced (FULL) even when the store otherwise runs NORMAL; clean batches are not."""
    store = Store(tmp_path / "s.sqlite", synchronous="NORMAL")
    said: list[str] = []
    store.db.set_trace_callback(said.append)
    core = IngestCore(store, enrolment={"hr-0001": "p-0001"})

    def hr(device: str) -> Message:
        r = contract.HrReading(v=1, id=contract.new_id(), site="test", gateway="gw-0001", device=device,
                               t=datetime.now(UTC), hr_bpm=70)  # fmt: skip
        return Message(
            contract.reading_topic("test", "gw-0001", device, "hr"), contract.encode(r), time.time()
        )

    core.handle_batch([hr("hr-0001")])
    clean = list(said)
    said.clear()
    result = core.handle_batch([hr("hr-0001"), hr("hr-0404")])  # the second is not enrolled
    assert result.dead_lettered == 1
    begin = said.index("BEGIN IMMEDIATE")
    assert "PRAGMA synchronous=FULL" in said[:begin] and "PRAGMA synchronous=FULL" not in clean
    assert _synchronous(store) == "NORMAL"  # and back for the next


def test_while_the_store_cannot_take_readings_the_heartbeat_says_so_and_gateways_keep_theirs(
    mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingest holds what its store refuses unacknowledged, so the broker queues the readings for
    it and then drops them: the heartbeat says it is not taking readings (gateways keep theirs:
    gateway.pause), and says it again when the store takes them."""
    from gateway.deadman import HeartbeatWatch

    monkeypatch.setattr(ingest.service, "_STORE_RETRY_S", (0.05, 0.05))
    cfg = msgspec.structs.replace(
        _config(mosquitto, tmp_path),
        ingest=IngestConfig(store_path=str(tmp_path / "ingest.sqlite"), heartbeat_s=0.1),
    )
    store = BusyStore(tmp_path / "ingest.sqlite", busy=1_000_000)
    beats: list[tuple[str, bytes]] = []
    listener = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="gateway-ear")
    listener.on_message = lambda _c, _u, m: beats.append((m.topic, bytes(m.payload)))
    listener.connect("127.0.0.1", mosquitto.port)
    listener.subscribe(contract.heartbeat_filter("test"), 0)
    listener.loop_start()
    svc = IngestService(cfg, store=store, client_id="busy-ingest")
    svc.start()
    pub = None
    try:
        assert svc.subscribed.wait(10)
        _wait(lambda: bool(beats))
        assert msgspec.json.decode(beats[-1][1], type=contract.Heartbeat).taking
        pub = _publish(mosquitto, 3)
        _wait(lambda: svc.store_failures > 2)
        n = len(beats)
        _wait(lambda: len(beats) > n + 2)
        hb = msgspec.json.decode(beats[-1][1], type=contract.Heartbeat)
        assert not hb.taking and hb.state == "degraded"
        assert hb.detail is not None and "embedded store cannot take readings" in hb.detail
        watch = HeartbeatWatch(["ingest"], after_s=60.0)  # what a gateway makes of it
        assert watch.feed(*beats[-1], now=1.0) == "degraded" and "ingest" not in watch.working_at
        store.busy = 0  # the store takes batches again
        store.go.set()
        _wait(lambda: svc.totals.stored == 3)
        n = len(beats)
        _wait(lambda: len(beats) > n + 1)
        assert msgspec.json.decode(beats[-1][1], type=contract.Heartbeat).taking
    finally:
        store.go.set()
        svc.stop()
        listener.loop_stop()
        listener.disconnect()
        if pub is not None:
            pub.loop_stop()
            pub.disconnect()
