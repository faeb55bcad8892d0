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
from gateway.virtual import VirtualTransport
from hardware import make_patients
from nabz.config import Config, GatewayConfig, MqttConfig
from tests.gateway.helpers import running
from tests.servers import Mosquitto


# --- the pure part --------------------------------------------------------------------------------
def test_a_held_device_is_probed_after_5_s_then_twice_as_long_up_to_2_minutes() -> None:
    holds = Holds()
    assert holds.untaken("oxi-1", 40, now=100.0)  # newly held: worth telling once
    assert not holds.untaken("oxi-1", 41, now=100.1)
    assert holds.held("oxi-1") and not holds.held("ecg-1") and not holds.held(None)
    probe_times = []
    now = 100.0
    while len(probe_times) < 8:
        now += 0.5
        for device, first in holds.probes(now):
            assert (device, first) == ("oxi-1", 40)  # the oldest row known to be held
            probe_times.append(now)
            holds.probing(device, 40)
            assert holds.probes(now + 1000) == []  # one probe in flight at a time
            holds.untaken(device, 40, now)  # nobody yet
    gaps = [round(b - a, 1) for a, b in zip([100.0, *probe_times], probe_times, strict=False)]
    assert gaps == [5.0, 10.0, 20.0, 40.0, 80.0, 120.0, 120.0, 120.0]
    assert holds.taken("oxi-1") is not None and not holds.held("oxi-1")
    assert holds.taken("oxi-1") is None  # released once


def test_a_probe_that_could_not_go_waits_for_its_next_time() -> None:
    holds = Holds(first_s=1.0, max_s=4.0)
    holds.untaken("ecg-1", 7, now=0.0)
    [(device, first)] = holds.probes(1.0)
    holds.probing(device, first)
    holds.lost_probe(device, 1.0)
    assert holds.probes(2.9) == [] and holds.probes(3.0) == [("ecg-1", 7)]


# --- against mosquitto ----------------------------------------------------------------------------
class Listener:
    """A server-side subscriber, v5 like ingest, to the readings of the devices it is told."""

    def __init__(self, port: int) -> None:
        self.ids: dict[str, dict[str, set[str]]] = {}  # device -> stream -> message ids
        self.statuses: list[dict[str, Any]] = []
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
    cfg = Config(
        site="test",
        mqtt=MqttConfig(url=mosquitto.url, reconnect_min_s=0.2, reconnect_max_s=1.0),
        gateway=GatewayConfig(id="gw-0001", spool_path=str(tmp_path / "spool.sqlite"), status_interval_s=1.0),
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
