"""The alert service on a real broker (mosquitto): vitals and gateway status in, retained alarm events
out, SMS through the dispatcher thread, acknowledgement from the command line.

The service's clock is injected (a value the test moves); waiting here is for messages to cross
the broker, never for time to pass.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from alerts.service import AlertService, command_topic
from alerts.store import AlertStore
from nabz import contract
from nabz.cli import main
from nabz.config import AlertsConfig, Config, MqttConfig
from nabz.contract import AlarmEvent, GatewayStatus
from tests.alerts.helpers import PEOPLE, T0, Recorder, config, v
from tests.servers import Mosquitto


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def wait_for(what: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


class Watcher:
    """Subscribes to every alarm topic; keeps the latest retained event per topic."""

    def __init__(self, url: str) -> None:
        self.latest: dict[str, AlarmEvent] = {}
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="test-watcher")
        self.client.on_message = self._on_message
        port = int(url.rsplit(":", 1)[1])
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(contract.ALARMS_FILTER, qos=1)
        self.client.loop_start()

    def _on_message(self, _c: object, _u: object, m: paho.MQTTMessage) -> None:
        import msgspec

        with self.lock:
            self.latest[m.topic] = msgspec.json.decode(m.payload, type=AlarmEvent)

    def get(self, patient: str, kind: str) -> AlarmEvent | None:
        with self.lock:
            return self.latest.get(contract.alarm_topic("demo", patient, kind))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def watcher(mosquitto: Mosquitto) -> Iterator[Watcher]:
    w = Watcher(mosquitto.url)
    yield w
    w.close()


def _one(x: contract.Vitals) -> bytes:
    """One vitals, as ingest publishes it when a batch derived just that."""
    ((_topic, batch),) = contract.vitals_messages([x])
    return contract.encode(batch)


def publisher(url: str) -> paho.Client:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="test-publisher")
    c.connect("127.0.0.1", int(url.rsplit(":", 1)[1]))
    c.loop_start()
    return c


def _service(
    mosquitto: Mosquitto, tmp_path: Path, client_id: str, sms: Recorder
) -> tuple[Config, Clock, AlertService]:
    """An alert service for p-0001's two devices on this broker, with its clock held at T0."""
    cfg = config(mqtt=MqttConfig(url=mosquitto.url), enrolment={"ecg-0001": "p-0001", "oxi-0001": "p-0001"})
    cfg.alerts.store_path = str(tmp_path / "alerts.sqlite")
    clock = Clock(T0)
    return cfg, clock, AlertService(cfg, notifiers=[sms], clock=clock, client_id=client_id)


@contextmanager
def _running(service: AlertService, url: str) -> Iterator[paho.Client]:
    """The service started and subscribed, and a publisher to feed it; both stopped after."""
    service.start()
    pub = publisher(url)
    try:
        wait_for(lambda: service.client.is_connected())
        time.sleep(0.2)  # the subscription is made in on_connect; give it the broker's round trip
        yield pub
    finally:
        pub.loop_stop()
        pub.disconnect()
        service.stop()


def test_vitals_in_alarm_out_sms_sent_and_acknowledged_from_the_command_line(
    mosquitto: Mosquitto, watcher: Watcher, tmp_path: Path
) -> None:
    sms = Recorder()
    cfg, clock, service = _service(mosquitto, tmp_path, "test-alerts", sms)
    with _running(service, mosquitto.url) as pub:
        for i in range(10):
            clock.now = T0 + i
            pub.publish(contract.vitals_topic("demo"), _one(v(T0 + i, spo2_pct=82.0)), qos=1)
        wait_for(lambda: (e := watcher.get("p-0001", "spo2_low")) is not None and e.notified_at is not None)
        event = watcher.get("p-0001", "spo2_low")
        assert event is not None and (event.state, event.priority) == ("active", "high")
        assert sms.texts(PEOPLE["farah"].phone)[0].startswith("NABZ HIGH p-0001: SpO2 82%")
        code = service.engine.open[("p-0001", "spo2_low")].ack_code

        config_file = tmp_path / "nabz.toml"
        config_file.write_text(f'[alerts]\nstore_path = "{cfg.alerts.store_path}"\n')
        assert main(["alerts", "ack", code, "--by", "farah", "--config", str(config_file)]) == 0
        wait_for(lambda: (e := watcher.get("p-0001", "spo2_low")) is not None and e.state == "acknowledged")
        assert watcher.get("p-0001", "spo2_low").acknowledged_by == "farah"  # type: ignore[union-attr]
        assert main(["alerts", "list", "--config", str(config_file)]) == 0

        # The nurse page acknowledges over MQTT (docs/contract.md section 4).
        for i in range(20):
            clock.now = T0 + 20 + i
            pub.publish(
                contract.vitals_topic("demo"),
                _one(v(T0 + 20 + i, source="ecg", hr_bpm=170.0)),
                qos=1,
            )
        wait_for(lambda: watcher.get("p-0001", "hr_high") is not None)
        hr = service.engine.open[("p-0001", "hr_high")]
        command = {"v": 1, "id": "cmd-00000001", "action": "ack", "code": hr.ack_code, "by": "nurse.sana"}
        pub.publish(command_topic("demo"), json.dumps(command), qos=1)
        wait_for(lambda: (e := watcher.get("p-0001", "hr_high")) is not None and e.state == "acknowledged")
        assert watcher.get("p-0001", "hr_high").acknowledged_by == "nurse.sana"  # type: ignore[union-attr]


def test_one_invalid_vitals_in_a_batch_does_not_hide_the_others_alarm(
    mosquitto: Mosquitto, watcher: Watcher, tmp_path: Path
) -> None:
    """A batch carries many patients' vitals: an entry that fails validation is left out and
    counted, and the rest still raise their alarms (the whole batch used to be dropped)."""
    _cfg, clock, service = _service(mosquitto, tmp_path, "test-alerts-salvage", Recorder())
    with _running(service, mosquitto.url) as pub:
        for i in range(10):
            clock.now = T0 + i
            ((topic, batch),) = contract.vitals_messages(
                [v(T0 + i, patient="p-0002", device="oxi-0002", spo2_pct=97.0), v(T0 + i, spo2_pct=82.0)]
            )
            doc = json.loads(contract.encode(batch))
            doc["vitals"][0]["spo2_pct"] = 150.0  # out of range: this one entry is invalid
            pub.publish(topic, json.dumps(doc), qos=1)
        wait_for(lambda: watcher.get("p-0001", "spo2_low") is not None)
        event = watcher.get("p-0001", "spo2_low")
        assert event is not None and event.state == "active"
        wait_for(lambda: service.bad_vitals == 10)
        assert service.bad_messages == 10
        assert ("p-0002", "spo2_low") not in service.engine.open
        metrics = {m.name: m for m in service.metrics()}
        assert metrics["nabz_alerts_bad_vitals_total"].samples[0][1] == 10.0


def test_a_gateway_that_vanishes_raises_gateway_offline_from_its_retained_last_will(
    mosquitto: Mosquitto, watcher: Watcher, tmp_path: Path
) -> None:
    cfg, clock, service = _service(mosquitto, tmp_path, "test-alerts-2", Recorder())
    topic = contract.status_topic("demo", "gw-0001")
    # A real gateway connection with a Last Will, then cut without a goodbye.
    gw = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="gw-0001")
    will = GatewayStatus(
        site="demo", gateway="gw-0001", state="offline", reason="connection lost (last will)"
    )
    gw.will_set(topic, contract.encode(will), qos=1, retain=True)
    gw.connect("127.0.0.1", mosquitto.port, keepalive=1)
    gw.loop_start()
    online = GatewayStatus(site="demo", gateway="gw-0001", state="online", devices=["ecg-0001", "oxi-0001"])
    gw.publish(topic, contract.encode(online), qos=1, retain=True).wait_for_publish(5)
    service.start()
    try:
        wait_for(lambda: "gw-0001" in service.engine.gateways.devices)
        gw.loop_stop()
        gw.socket().close()  # the gateway's link dies: the broker publishes its will (retained)
        wait_for(lambda: "gw-0001" in service.engine.gateways.offline, timeout_s=15)
        clock.now = T0 + 61 + 120  # a minute and more later, by the service's clock
        wait_for(lambda: watcher.get("p-0001", "gateway_offline") is not None)
        event = watcher.get("p-0001", "gateway_offline")
        assert event is not None and event.state == "active" and "last will" in event.message
        assert AlertStore(cfg.alerts.store_path).open_alarms()[0].kind == "gateway_offline"
    finally:
        service.stop()


def test_a_status_that_names_another_gateway_than_its_topic_is_ignored(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The broker lets gw-0002 write under its own topic only; a status there saying it is
    gw-0001 (to clear gw-0001's real outage) must not be taken for gw-0001's."""
    _cfg, _clock, service = _service(mosquitto, tmp_path, "test-alerts-spoof", Recorder())
    online = GatewayStatus(site="demo", gateway="gw-0001", state="online", devices=["ecg-0001", "oxi-0001"])
    service._handle(contract.status_topic("demo", "gw-0001"), contract.encode(online), T0 - 1)
    will = GatewayStatus(
        site="demo", gateway="gw-0001", state="offline", reason="connection lost (last will)"
    )
    service._handle(contract.status_topic("demo", "gw-0001"), contract.encode(will), T0)
    forged = online
    assert service._handle(contract.status_topic("demo", "gw-0002"), contract.encode(forged), T0 + 10) == []
    assert "gw-0001" in service.engine.gateways.offline and service.bad_messages == 1
    events = service.engine.tick(T0 + 70)
    assert [(e.patient, e.kind, e.state) for e in events] == [("p-0001", "gateway_offline", "active")]


def test_the_service_will_not_text_the_demos_placeholder_number(tmp_path: Path) -> None:
    """A site that turns the modem on but forgets its on-call numbers must not text whoever owns
    the demo's number every alarm (and take their ACKs)."""
    from alerts.notify import OutboxNotifier

    cfg = Config(site="demo", alerts=AlertsConfig(store_path=str(tmp_path / "a.sqlite")))
    with pytest.raises(ValueError, match=r"\[oncall.people\] or \[alerts\] on_call"):
        AlertService(cfg, notifiers=[Recorder("gsm")], client_id="placeholder")
    AlertService(cfg, notifiers=[OutboxNotifier(tmp_path / "o.jsonl")], client_id="demo")  # the demo's way
