"""Ingest up but far behind: after a long ingest outage every gateway sends its backlog at once,
faster than ingest drains it, and the broker's queue for ingest fills and drops the excess, still
acknowledged, as for a stopped ingest. Ingest's heartbeat says how long its messages waited for
it (the broker's queue, read from the message expiry every reading carries, and its own); a
gateway keeps its readings while a worker is far behind (gateway.pause)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

import ingest.service
import nabz.mqtt
from gateway.decode import Decoder, Notification
from gateway.pause import SendPause
from gateway.service import Gateway
from gateway.virtual import VirtualTransport
from hardware import make_patients
from ingest.service import IngestService
from nabz import contract
from nabz.config import Config, GatewayConfig, IngestConfig, MqttConfig
from nabz.contract import Rejected
from tests.gateway.helpers import running
from tests.servers import Mosquitto

T0_US = 1_780_000_000 * 1_000_000


# --- the pure part --------------------------------------------------------------------------------
def test_a_worker_far_behind_holds_readings_until_it_is_back_within_half() -> None:
    p = SendPause(behind_max_s=5.0)
    p.connected(0.0)
    p.heard(0.0, 10.0)
    p.behind("w0", 4.9, 1.0)
    assert not p.catching_up(1.0)
    p.behind("w0", 5.0, 2.0)
    assert p.catching_up(2.0) and not p.paused(2.0)  # (not away: it is heard)
    p.behind("w1", 0.0, 2.5)  # another worker up to date: w0 is still behind
    assert p.catching_up(2.5)
    p.behind("w0", 2.6, 3.0)  # within the limit, not yet within half
    assert p.catching_up(3.0)
    p.behind("w0", 2.5, 4.0)
    assert not p.catching_up(4.0)
    p.behind("w0", 3.0, 4.5)  # within the limit again: not far behind
    assert not p.catching_up(4.5)
    p.behind("w0", 7.0, 5.0)
    p.behind("w0", None, 6.0)  # an ingest that does not say (an earlier release): not behind
    assert not p.catching_up(6.0)


def test_a_worker_far_behind_then_silent_is_left_to_the_silence_rule() -> None:
    p = SendPause(behind_max_s=5.0)
    p.connected(0.0)
    p.heard(0.0, 10.0)
    p.behind("w0", 60.0, 0.0)
    assert p.catching_up(30.0) and not p.catching_up(30.1)
    assert p.paused(30.1)  # and silent that long: away, until heard


# --- ingest's side --------------------------------------------------------------------------------
PATIENTS = 4
ENROLMENT = {f"{kind}-{k:04d}": f"p-{k:04d}" for k in range(1, PATIENTS + 1) for kind in ("ecg", "oxi")}


def _readings(seconds: int, patients: int = 1) -> list[tuple[str, str, bytes, str, int]]:
    """Patients' readings as a gateway spools them: (id, topic, payload, stream, readings)."""
    dec = Decoder("test", "gw-0001")
    out = []
    devices = [d for p in make_patients(patients, seed=9) for d in p.devices]
    for s in range(seconds):
        for d in devices:
            for n in d.advance(1.0):
                r = dec.decode(Notification(n.device_id, n.char_uuid, n.data, T0_US + s * 1_000_000))
                assert not isinstance(r, Rejected)
                stream = contract.stream_of(r)
                topic = contract.reading_topic("test", "gw-0001", r.device, stream)
                out.append((r.id, topic, contract.encode(r), stream, contract.reading_count(r)))
    return out


def _ingest_config(url: str, tmp_path: Path, heartbeat_s: float) -> Config:
    return Config(
        site="test",
        mqtt=MqttConfig(url=url, reconnect_min_s=0.2, reconnect_max_s=0.5),
        ingest=IngestConfig(store_path=str(tmp_path / "ingest.sqlite"), heartbeat_s=heartbeat_s),
        enrolment=ENROLMENT,
    )


class Heartbeats:
    def __init__(self, port: int) -> None:
        self.got: list[tuple[float, dict[str, Any]]] = []  # (monotonic, heartbeat)
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="beats")
        self.client.on_message = lambda _c, _u, m: self.got.append((time.monotonic(), json.loads(m.payload)))
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(contract.heartbeat_filter("test"))
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_ingest_says_how_long_its_backlog_waited_in_the_brokers_queue_every_second(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Readings published (as a gateway does, with the queue clock) while ingest is away for 3 s:
    back, its first heartbeat comes after its first batch and says they waited about that long
    (one before it said 0, and every paused gateway sent its backlog on top of the queue), then
    one a second while it is behind though its interval is 30 s, until one says it no longer is.
    Readings without the clock (an MQTT 3.1.1 gateway) waited as long, unseen: the heartbeat
    cannot say."""
    cfg = _ingest_config(mosquitto.url, tmp_path, heartbeat_s=30.0)
    beats = Heartbeats(mosquitto.port)
    svc = IngestService(cfg, client_id="behind-ingest")
    svc.start()
    pub = paho.Client(
        CallbackAPIVersion.VERSION2, client_id="behind-pub", protocol=MQTTProtocolVersion.MQTTv5
    )
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    rows = _readings(4)
    try:
        assert svc.subscribed.wait(10)
        svc.stop()  # its session stays: the broker queues for it
        for _id, topic, payload, _s, _n in rows[: len(rows) // 2]:
            pub.publish(topic, payload, qos=1, properties=nabz.mqtt.READING_PROPERTIES).wait_for_publish(5)
        published = time.monotonic()
        time.sleep(3.0)
        beats.got.clear()
        svc = IngestService(cfg, client_id="behind-ingest")
        svc.start()
        assert svc.subscribed.wait(10)
        waited = time.monotonic() - published  # at most, by the time they come
        _wait(lambda: svc.totals.stored == len(rows) // 2, 15, "the backlog stored")
        _wait(lambda: any(hb["behind_s"] < 0.5 for _t, hb in beats.got), 10, "a heartbeat saying caught up")
        said = [(t - beats.got[0][0], hb["behind_s"]) for t, hb in beats.got]
        assert 2.0 <= said[0][1] <= waited + 1.0, said  # 3 s or so, as the broker counts whole seconds
        assert said[-1][0] < 5.0, said  # a heartbeat a second, not every 30 s
        # the same without the queue clock
        svc.stop()
        for _id, topic, payload, _s, _n in rows[len(rows) // 2 :]:
            pub.publish(topic, payload, qos=1).wait_for_publish(5)
        time.sleep(3.0)
        beats.got.clear()
        svc = IngestService(cfg, client_id="behind-ingest")
        svc.start()
        _wait(lambda: svc.totals.stored == len(rows) - len(rows) // 2, 15, "the second backlog stored")
        time.sleep(1.5)
        assert all(hb["behind_s"] < 1.0 for _t, hb in beats.got), beats.got
    finally:
        svc.stop()
        pub.disconnect()
        pub.loop_stop()
        beats.close()


def test_after_connecting_ingest_beats_once_its_first_batch_is_stored(tmp_path: Path) -> None:
    """What the broker kept for ingest comes at its connection: a heartbeat before the first batch
    would say 0 behind, and every paused gateway would send its backlog on top of it. Unless
    nothing comes within half a second, and 5 s at most (a batch the store cannot take)."""
    svc = IngestService(_ingest_config("mqtt://127.0.0.1:1", tmp_path, heartbeat_s=10.0), client_id="gate")
    svc._connected_mono, svc._batched_since_connect = 100.0, False  # noqa: SLF001
    svc._last_reading = 100.1  # noqa: SLF001 - readings came
    assert not svc._beat_due(100.2, 10.0) and not svc._beat_due(104.9, 10.0)  # noqa: SLF001
    assert svc._beat_due(105.1, 10.0)  # noqa: SLF001
    svc._last_reading = 99.0  # noqa: SLF001 - nothing came
    assert not svc._beat_due(100.4, 10.0) and svc._beat_due(100.6, 10.0)  # noqa: SLF001
    svc._batched_since_connect = True  # noqa: SLF001
    assert svc._beat_due(100.1, 10.0)  # noqa: SLF001


# --- both, through mosquitto ----------------------------------------------------------------------
@pytest.fixture
def queue_of_800(tmp_path: Path) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path / "mosquitto", extra_config="max_queued_messages 800\n")
    server.start()
    yield server
    server.stop()


def test_a_backlog_sent_faster_than_ingest_takes_it_all_arrives(
    queue_of_800: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A gateway with 3,000 messages in its spool sends them at 400 a second to an ingest that
    stores 200 a second, through a broker that queues at most 800 for it: every message is
    stored. Without the pause the queue overflowed and the broker dropped many of them (1,400
    in one run), acknowledged. Scaled down from the field, where the
    broker queues 1,000,000 (`nabz broker config`) and ingest takes ~20,000 a second: here ingest
    takes 50 messages at a time, unacknowledged, and a batch of at most 50, and its heartbeat comes
    every 0.2 s."""
    monkeypatch.setattr(nabz.mqtt, "RECEIVE_MAXIMUM", 50)
    monkeypatch.setattr(ingest.service, "_BATCH_MAX", 50)  # a batch takes 0.25 s, as ~2,000 do in the field
    cfg = _ingest_config(queue_of_800.url, tmp_path, heartbeat_s=0.2)
    svc = IngestService(cfg, client_id="slow-ingest")
    handle = svc.core.handle_batch

    def slowly(batch: list[Any]) -> Any:
        time.sleep(0.005 * len(batch))  # 200 messages a second
        return handle(batch)

    svc.core.handle_batch = slowly  # type: ignore[method-assign]
    svc.start()
    rows = _readings(110, PATIENTS)[:3000]
    assert len(rows) == 3000
    gcfg = Config(
        site="test",
        mqtt=MqttConfig(url=queue_of_800.url, reconnect_min_s=0.2, reconnect_max_s=1.0),
        gateway=GatewayConfig(
            spool_path=str(tmp_path / "spool.sqlite"), status_interval_s=1.0, pause_behind_s=1.0
        ),
    )
    gw = Gateway(gcfg, VirtualTransport([]))
    gw.spool.put(rows)
    publish = gw.client.publish

    def uplink(topic: str, payload: bytes, *a: object, **kw: object) -> object:
        if not topic.endswith("/status"):
            time.sleep(0.0025)  # 400 messages a second
        return publish(topic, payload, *a, **kw)  # type: ignore[arg-type]

    gw.client.publish = uplink  # type: ignore[method-assign]
    caplog.set_level(logging.INFO, logger="gateway")
    statuses: list[dict[str, Any]] = []
    watch = paho.Client(CallbackAPIVersion.VERSION2, client_id="status-watch")
    watch.on_message = lambda _c, _u, m: statuses.append(json.loads(m.payload))
    watch.connect("127.0.0.1", queue_of_800.port)
    watch.subscribe(contract.status_topic("test", "gw-0001"), qos=1)
    watch.loop_start()
    try:
        assert svc.subscribed.wait(10)
        with running(gw):
            _wait(lambda: gw.spool.depth == 0, 60, "the spool sent")
            log = queue_of_800.log

            def dropping() -> bool:
                return "Outgoing messages are being dropped" in log.read_text(errors="replace")

            _wait(lambda: svc.totals.stored == 3000 or dropping(), 60, "ingest to store the backlog")
            assert not dropping(), f"the broker dropped messages; {3000 - svc.totals.stored} not stored"
            _wait(lambda: not statuses[-1].get("paused"), 10, "the gateway to say it sends")
        assert svc.totals.stored == 3000
        assert "behind; keeping readings in the spool" in caplog.text
        assert "ingest has caught up" in caplog.text
        # its status said so (`nabz gateway status`, the operations board), and then that it sends again
        assert any(st.get("paused") and st.get("behind") == [svc.instance] for st in statuses), statuses
        assert not statuses[-1].get("behind"), statuses[-3:]
    finally:
        gw.stop()
        watch.disconnect()
        watch.loop_stop()
        svc.stop()
