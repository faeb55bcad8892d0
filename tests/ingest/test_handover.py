"""A wearable moved to a patient of another ingest worker (workers = 2, real mosquitto, one shared
store): no reading is lost in the handover, and afterwards one worker alone gets its readings.

The workers' own 2-second enrolment timer is turned off (`_SYNC_S`); each test steps the workers'
`sync_subscriptions` in the order that used to go wrong. Readings are synthetic heart-rate
messages (one derived vitals each), timed now so none is future- or past-dated."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

import ingest.service
from ingest.partition import device_filter, owner_of
from ingest.service import IngestService
from ingest.store import Store
from nabz import contract
from nabz.config import Config, IngestConfig, MqttConfig
from tests.servers import Mosquitto

DEVICE = "hr-0001"
# a patient of each worker
PATIENT = {w: next(f"p-{i:04d}" for i in range(1, 99) if owner_of(f"p-{i:04d}", 2) == w) for w in (0, 1)}


def _wait(what: Callable[[], bool], timeout_s: float = 10.0, why: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, f"timed out {why()}"
        time.sleep(0.02)


class Rig:
    def __init__(self, mosquitto: Mosquitto, tmp_path: Path) -> None:
        self.mosquitto = mosquitto
        self.path = tmp_path / "ingest.sqlite"
        self.store = Store(self.path)
        self.store.enrol(DEVICE, PATIENT[0])
        self.got: dict[int, Counter[str]] = {0: Counter(), 1: Counter()}  # worker -> device -> vitals
        self.workers: dict[int, IngestService] = {}
        self.pub = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="gw", protocol=MQTTProtocolVersion.MQTTv5
        )
        self.pub.connect("127.0.0.1", mosquitto.port)
        self.pub.loop_start()

    def start(self, w: int) -> IngestService:
        cfg = Config(
            site="test",
            mqtt=MqttConfig(url=self.mosquitto.url, reconnect_min_s=0.2, reconnect_max_s=1.0),
            ingest=IngestConfig(store_path=str(self.path), workers=2, worker=w, heartbeat_s=0.0),
        )
        svc = IngestService(cfg, on_vitals=lambda vs: self.got[w].update(v.device for v in vs))
        svc.start()
        assert svc.subscribed.wait(10)
        self.workers[w] = svc
        return svc

    def confirmed(self, w: int, device: str = DEVICE) -> bool:
        """The broker has acknowledged worker w's subscription to the device (noted in the store)."""
        f = device_filter(device, "nabz-ingest")
        return (f"nabz-ingest-{w}", f) in self.store.confirmed_subscriptions([f])

    def barrier(self, svc: IngestService) -> None:
        """Wait until the broker has handled every packet the worker sent so far (its UNSUBSCRIBE):
        it answers a SUBSCRIBE sent after them only then."""
        svc.subscribed.clear()
        svc.client.subscribe(contract.STATUS_FILTER, 1)
        assert svc.subscribed.wait(5)

    def publish(self, n: int, device: str = DEVICE) -> None:
        for _ in range(n):
            r = contract.HrReading(
                v=1, id=contract.new_id(), site="test", gateway="gw-1", device=device,
                t=datetime.now(UTC), hr_bpm=70.0,
            )  # fmt: skip
            topic = contract.reading_topic("test", "gw-1", device, "hr")
            self.pub.publish(topic, contract.encode(r), qos=1).wait_for_publish(
                5
            )  # PUBACK: the gateway forgets it

    def stored(self) -> int:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            return int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
        finally:
            db.close()

    def close(self) -> None:
        for svc in self.workers.values():
            svc.stop()
        self.pub.loop_stop()
        self.pub.disconnect()


@pytest.fixture
def rig(mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    monkeypatch.setattr(ingest.service, "_SYNC_S", 3600.0)  # the tests step the workers themselves
    r = Rig(mosquitto, tmp_path)
    yield r
    r.close()


def test_a_device_moved_while_both_workers_run_loses_no_reading(rig: Rig) -> None:
    w0, w1 = rig.start(0), rig.start(1)
    _wait(lambda: rig.confirmed(0))
    rig.store.enrol(DEVICE, PATIENT[1])  # the nurse moves the wearable to a patient of worker 1
    w0.sync_subscriptions()  # the old owner notices first: it must not let go yet
    rig.publish(10)  # no other subscriber: the broker drops these if worker 0 let go
    _wait(lambda: rig.stored() == 10, 5, lambda: f"{rig.stored()} of 10 readings stored")
    assert (rig.got[0][DEVICE], rig.got[1][DEVICE]) == (10, 0)

    w1.sync_subscriptions()  # the new owner subscribes...
    _wait(lambda: rig.confirmed(1))
    w0.sync_subscriptions()  # ...and once the broker has confirmed it, the old owner lets go
    assert DEVICE not in w0.holding and not rig.confirmed(0)
    rig.barrier(w0)
    rig.publish(10)
    _wait(lambda: rig.stored() == 20)
    assert (rig.got[0][DEVICE], rig.got[1][DEVICE]) == (10, 10)  # all of them to the new owner


def test_a_device_moved_while_its_new_worker_is_down_waits_for_it(rig: Rig) -> None:
    w0, w1 = rig.start(0), rig.start(1)
    _wait(lambda: rig.confirmed(0))
    w1.stop()  # worker 1 restarting (a deploy) when the wearable moves to its patient
    del rig.workers[1]
    rig.store.enrol(DEVICE, PATIENT[1])
    for _ in range(3):  # however long worker 1 takes, worker 0 keeps the device
        w0.sync_subscriptions()
    rig.publish(10)
    _wait(lambda: rig.stored() == 10, 5, lambda: f"{rig.stored()} of 10 readings stored")
    assert rig.got[0][DEVICE] == 10
    rig.start(1)  # back: it subscribes on connect
    _wait(lambda: rig.confirmed(1))
    w0.sync_subscriptions()
    assert DEVICE not in w0.holding


def test_a_worker_back_in_its_kept_session_drops_a_device_moved_while_it_was_away(rig: Rig) -> None:
    w0, w1 = rig.start(0), rig.start(1)
    _wait(lambda: rig.confirmed(0))
    rig.publish(4)
    _wait(lambda: rig.got[0][DEVICE] == 4)
    w0.stop()  # worker 0 restarts (its session, with the device's subscription, stays at the broker)
    del rig.workers[0]
    rig.store.enrol(DEVICE, PATIENT[1])  # meanwhile the wearable moves to a patient of worker 1
    w1.sync_subscriptions()
    _wait(lambda: rig.confirmed(1))
    rig.start(0)  # back in its slot, in its kept session
    rig.got[0].clear()
    rig.publish(20)
    _wait(lambda: rig.stored() == 24, 5, lambda: f"{rig.stored()} of 24 readings stored")
    # one worker has the patient's whole stream (its signal processing and alarm state whole)
    assert (rig.got[0][DEVICE], rig.got[1][DEVICE]) == (0, 20)
    assert not rig.confirmed(0)


def test_a_newly_enrolled_device_is_taken_by_its_owner_alone(rig: Rig) -> None:
    w0, w1 = rig.start(0), rig.start(1)
    _wait(lambda: rig.confirmed(0))
    rig.store.enrol("hr-0002", PATIENT[1])  # a wearable nobody had before: nothing to hand over
    w0.sync_subscriptions()
    w1.sync_subscriptions()
    assert "hr-0002" not in w0.holding and "hr-0002" in w1.holding
    assert DEVICE in w0.holding  # nothing else moved
    _wait(lambda: rig.confirmed(1, "hr-0002"))
    rig.publish(5, "hr-0002")
    _wait(lambda: rig.stored() == 5)
    assert (rig.got[0]["hr-0002"], rig.got[1]["hr-0002"]) == (0, 5)
