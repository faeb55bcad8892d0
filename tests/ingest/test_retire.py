"""Changing `[ingest] workers` on real mosquitto (one shared store, the workers in process):
the slots a change leaves behind are drained and ended by worker 0, so no reading is parked in a
session nobody starts again, and a slot runs in one process at a time (ingest.slots).

Before 2026-11-27 a removed slot's persistent session kept its shared subscriptions: mosquitto
dealt every other reading of its moved devices to it (20 of 40 stored in the review's run, the rest
parked for good), and after going from one worker to several the single worker's session queued
every reading for ever."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.partition import device_filter, owner_of
from ingest.service import IngestService
from ingest.spill import Spill
from ingest.store import Store
from nabz import contract
from nabz.config import Config, ConfigError, InfluxConfig, IngestConfig, MqttConfig
from tests.servers import Mosquitto, VictoriaMetrics


def _wait(what: Callable[[], bool], timeout_s: float = 20.0, why: Callable[[], object] = lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, f"timed out: {why()}"
        time.sleep(0.05)


def _patient(owners: dict[int, int]) -> str:
    """A patient whose worker is owners[n] when there are n workers, for each n given."""
    return next(
        p for i in range(1, 9999) if all(owner_of(p := f"p-{i:04d}", n) == w for n, w in owners.items())
    )


class Rig:
    def __init__(self, mosquitto: Mosquitto, tmp_path: Path, influx: InfluxConfig | None = None) -> None:
        self.mosquitto = mosquitto
        self.path = tmp_path / "ingest.sqlite"
        self.store = Store(self.path)
        self.influx = influx
        self.workers: list[IngestService] = []
        self.refused = 0
        self.pub = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="gw", protocol=MQTTProtocolVersion.MQTTv5
        )
        self.pub.on_publish = lambda _c, _u, _m, rc, _p: setattr(
            self, "refused", self.refused + rc.is_failure
        )
        self.pub.connect("127.0.0.1", mosquitto.port)
        self.pub.loop_start()

    def config(self, worker: int, workers: int) -> Config:
        return Config(
            site="test",
            mqtt=MqttConfig(url=self.mosquitto.url, reconnect_min_s=0.2, reconnect_max_s=1.0),
            ingest=IngestConfig(store_path=str(self.path), workers=workers, worker=worker, heartbeat_s=0.0),
            **({"influx": self.influx} if self.influx else {}),
        )

    def start(self, worker: int, workers: int) -> IngestService:
        svc = IngestService(self.config(worker, workers))
        svc.start()
        assert svc.subscribed.wait(10)
        self.workers.append(svc)
        return svc

    def stop_all(self) -> None:
        while self.workers:
            self.workers.pop().stop()

    def publish(self, n: int, device: str, gap_s: float = 0.0) -> None:
        for _ in range(n):
            r = contract.HrReading(v=1, id=contract.new_id(), site="test", gateway="gw-0001", device=device,
                                   t=datetime.now(UTC), hr_bpm=70.0)  # fmt: skip
            topic = contract.reading_topic("test", "gw-0001", device, "hr")
            self.pub.publish(topic, contract.encode(r), qos=1).wait_for_publish(5)
            time.sleep(gap_s)

    def stored(self, device: str) -> int:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            return int(db.execute("SELECT COUNT(*) FROM messages WHERE device = ?", (device,)).fetchone()[0])
        finally:
            db.close()

    def session_kept(self, client_id: str) -> bool:
        """Whether the broker still has a session for this client id (then ends the probe's own)."""
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
        present: list[bool] = []
        c.on_connect = lambda _c, _u, flags, _rc, _p: present.append(flags.session_present)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 60
        c.connect("127.0.0.1", self.mosquitto.port, clean_start=False, properties=props)
        c.loop_start()
        _wait(lambda: bool(present), 5)
        c.disconnect()
        c.loop_stop()
        return present[0]

    def close(self) -> None:
        self.stop_all()
        self.pub.loop_stop()
        self.pub.disconnect()


def test_fewer_workers_lose_no_reading_and_the_removed_slot_is_ended(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    rig = Rig(mosquitto, tmp_path)
    to0, to1 = "hr-0001", "hr-0002"  # both of slot 2 with three workers; of slots 0 and 1 with two
    rig.store.enrol(to0, _patient({3: 2, 2: 0}))
    rig.store.enrol(to1, _patient({3: 2, 2: 1}))
    try:
        for w in range(3):
            rig.start(w, 3)
        time.sleep(2.5)  # the workers' 2 s subscription turn
        rig.publish(10, to0)
        rig.publish(10, to1)
        _wait(lambda: rig.stored(to0) == rig.stored(to1) == 10)
        rig.stop_all()
        rig.publish(5, to0)  # while every worker is down: queued in slot 2's session
        rig.start(0, 2)
        rig.start(1, 2)
        rig.publish(40, to0, gap_s=0.02)
        rig.publish(40, to1, gap_s=0.02)
        _wait(
            lambda: (rig.stored(to0), rig.stored(to1)) == (55, 50),
            why=lambda: (rig.stored(to0), rig.stored(to1)),
        )
        assert rig.refused == 0  # never a moment without a subscriber ("No matching subscribers")
        _wait(
            lambda: not (tmp_path / "ingest.sqlite.slot-nabz-ingest-2.lock").exists(),
            why=lambda: "slot 2 still held",
        )
        assert rig.store.subscriptions("nabz-ingest-2") == {}
        rig.publish(20, to0)  # and from now on the new owner alone gets them, every one
        _wait(lambda: rig.stored(to0) == 75, why=lambda: rig.stored(to0))
    finally:
        rig.close()
    assert not rig.session_kept("nabz-ingest-2")


def test_more_workers_end_the_single_workers_session(mosquitto: Mosquitto, tmp_path: Path) -> None:
    rig = Rig(mosquitto, tmp_path)
    device = "hr-0001"
    rig.store.enrol(device, _patient({2: 1}))
    try:
        rig.start(0, 1)
        rig.publish(5, device)
        _wait(lambda: rig.stored(device) == 5)
        rig.stop_all()
        rig.publish(5, device)  # queued in the single worker's session
        rig.start(0, 2)
        rig.start(1, 2)
        _wait(lambda: rig.stored(device) == 10, why=lambda: rig.stored(device))
        _wait(
            lambda: not (tmp_path / "ingest.sqlite.slot-nabz-ingest.lock").exists(),
            why=lambda: "still draining",
        )
        rig.publish(5, device)
        _wait(lambda: rig.stored(device) == 15)
        assert rig.refused == 0
    finally:
        rig.close()
    # it no longer queues every reading (a copy of the whole site's stream, held in broker memory)
    assert not rig.session_kept("nabz-ingest")


def test_a_removed_slots_spill_reaches_influxdb(
    mosquitto: Mosquitto, victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    """Lines a removed slot had spilled while InfluxDB was down (acknowledged to the broker: they
    are nowhere else) are written by the drain, and its spill directory goes."""
    influx = InfluxConfig(url=victoria.url, token="t", spill_dir=str(tmp_path / "spill"))
    with Spill(tmp_path / "spill" / "nabz-ingest-2") as spill:
        spill.append([f"device_vitals,device=hr-0009,patient=p-0009,site=test hr_bpm=7{k}.0 {k + 1}000000000"
                      for k in range(3)])  # fmt: skip
    (tmp_path / "spill" / "nabz-ingest-2" / "rejected.lp").write_text("# refused by InfluxDB\nbad line\n")
    rig = Rig(mosquitto, tmp_path, influx)
    try:
        rig.start(0, 2)
        _wait(lambda: len(victoria.export('{__name__="device_vitals_hr_bpm",device="hr-0009"}')) == 1)
        (series,) = victoria.export('{__name__="device_vitals_hr_bpm",device="hr-0009"}')
        assert series["values"] == [70.0, 71.0, 72.0]
        _wait(lambda: not (tmp_path / "spill" / "nabz-ingest-2").exists())
        # the lines InfluxDB refused are an operator's to read: kept, out of the way
        (kept,) = (tmp_path / "spill").glob("nabz-ingest-2.retired-*")
        assert (kept / "rejected.lp").read_text().endswith("bad line\n")
    finally:
        rig.close()


def test_a_slot_runs_in_one_process_and_all_slots_on_one_workers(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    rig = Rig(mosquitto, tmp_path)
    try:
        rig.start(0, 2)
        twin = IngestService(rig.config(0, 2))
        with pytest.raises(ConfigError, match="nabz-ingest-0 is running already"):
            twin.start()  # it would take the session from the first at every reconnect
        mixed = IngestService(rig.config(1, 3))
        with pytest.raises(ConfigError, match="runs with workers = 2, this one has workers = 3"):
            mixed.start()  # two slots would own one patient
        rig.start(1, 2)  # the right one starts
    finally:
        rig.close()


def test_a_drain_cut_short_is_finished_at_the_next_start(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Worker 0 stopped while it drained a removed slot, after the slot's subscription notes had
    gone (as they go at each UNSUBSCRIBE): the slot's lock file still names it, and the readings
    queued in its session are stored at the next start."""
    rig = Rig(mosquitto, tmp_path)
    device = "hr-0001"
    rig.store.enrol(device, _patient({3: 2, 2: 0}))
    try:
        for w in range(3):
            rig.start(w, 3)
        rig.stop_all()
        rig.publish(10, device)  # queued in slot 2's session
        rig.store.note_subscriptions("nabz-ingest-2", removed=set(rig.store.subscriptions("nabz-ingest-2")))
        w0 = rig.start(0, 2)
        rig.start(1, 2)
        _wait(lambda: rig.stored(device) == 10, why=lambda: rig.stored(device))
        # its subscription, no longer noted, is let go too: the new owner alone gets what follows
        _wait(lambda: rig.store.subscriptions("nabz-ingest-2") == {})
        time.sleep(0.3)  # (its note goes before its UNSUBSCRIBE reaches the broker)
        rig.publish(40, device, gap_s=0.05)
        _wait(lambda: rig.stored(device) == 50, why=lambda: rig.stored(device))
        assert w0.totals.stored == 40
        _wait(lambda: not (tmp_path / "ingest.sqlite.slot-nabz-ingest-2.lock").exists())
    finally:
        rig.close()
    assert not rig.session_kept("nabz-ingest-2")


def test_going_to_more_workers_hands_each_device_over_on_its_own(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """1 -> 2 workers with worker 1 not started yet: worker 0's own patient is not shared with the
    single worker's old session meanwhile (each would analyse part of the stream); that session
    keeps only worker 1's device."""
    rig = Rig(mosquitto, tmp_path)
    mine, theirs = "hr-0001", "hr-0002"
    rig.store.enrol(mine, _patient({2: 0}))
    rig.store.enrol(theirs, _patient({2: 1}))
    try:
        rig.start(0, 1)
        rig.stop_all()
        w0 = rig.start(0, 2)
        _wait(lambda: set(rig.store.subscriptions("nabz-ingest")) == {device_filter(theirs, "nabz-ingest")},
              why=lambda: rig.store.subscriptions("nabz-ingest"))  # fmt: skip
        time.sleep(0.5)
        rig.publish(20, mine)
        rig.publish(5, theirs)
        _wait(lambda: (rig.stored(mine), rig.stored(theirs)) == (20, 5))
        assert w0.totals.stored == 20  # every one of its patient's readings, none through the old session
    finally:
        rig.close()
