"""A stopped ingest's persistent session has the broker acknowledge every reading and queue it,
then drop what is over its `max_queued_messages`, still acknowledged: the gateway, which deletes a
reading at its acknowledgement, lost everything past the queue. It keeps its readings in its
spool instead while ingest is known to be away (gateway.pause)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.pause import SendPause
from gateway.service import Gateway
from gateway.virtual import VirtualTransport
from hardware import make_patients
from nabz import contract
from nabz.config import load
from tests.gateway.helpers import running
from tests.servers import Mosquitto


# --- the pure part --------------------------------------------------------------------------------
def test_never_heard_ingest_never_pauses() -> None:
    p = SendPause()
    p.connected(0.0)
    assert not p.paused(10_000.0)


def test_paused_after_three_intervals_or_30_s_of_silence_while_connected_until_heard() -> None:
    p = SendPause()
    p.connected(0.0)
    p.heard(5.0, interval_s=10.0)
    assert not p.paused(35.0) and p.paused(35.1)
    assert p.paused(36.0)  # stays paused
    assert p.heard(40.0, interval_s=10.0) == pytest.approx(4.9)  # paused that long
    assert not p.paused(41.0)
    p.heard(50.0, interval_s=20.0)  # a slower heartbeat: three of its intervals
    assert not p.paused(110.0) and p.paused(110.1)
    p.heard(111.0, interval_s=1.0)  # a fast one: 30 s at least
    assert not p.paused(140.9) and p.paused(141.1)


def test_silence_counts_only_while_connected_but_ingest_found_away_stays_away() -> None:
    p = SendPause()
    p.connected(0.0)
    p.heard(1.0, interval_s=10.0)
    p.disconnected()  # the home's link goes for ten minutes
    assert not p.paused(600.0)
    p.connected(601.0)  # back: sends at once, and waits 30 s for a heartbeat
    assert not p.paused(630.0) and p.paused(631.5)
    p.disconnected()
    p.connected(700.0)  # ingest was seen gone, and is not heard since: still paused
    assert p.paused(700.5)
    assert p.heard(701.0, 10.0) is not None and not p.paused(701.0)


# --- against mosquitto ----------------------------------------------------------------------------
class Ingest:
    """What the gateway meets of ingest: a persistent MQTT v5 session subscribed to the readings,
    which the broker keeps while the process is away, and a heartbeat every `interval_s`."""

    def __init__(self, port: int, interval_s: float) -> None:
        self.port, self.interval_s = port, interval_s
        self.ids: set[str] = set()
        self.deliveries = 0
        self._lock = threading.Lock()
        self._beating = threading.Event()
        self._stop = threading.Event()
        self.client: paho.Client | None = None
        self._beats = threading.Thread(target=self._beat, daemon=True)
        self._beats.start()

    def up(self) -> None:
        c = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="ingest-1", protocol=MQTTProtocolVersion.MQTTv5
        )
        c.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.connect("127.0.0.1", self.port, clean_start=False, properties=props)
        c.loop_start()
        c.subscribe(f"{contract.ROOT}/+/gw/+/+/+", qos=1)
        self.client = c
        self._beating.set()

    def down(self) -> None:
        self._beating.clear()
        assert self.client is not None
        self.client.disconnect()  # the session stays: the broker queues for it
        self.client.loop_stop()
        self.client = None

    def _beat(self) -> None:
        while not self._stop.is_set():
            c = self.client
            if self._beating.is_set() and c is not None:
                hb = contract.Heartbeat(
                    site="test", service="ingest", instance="ingest-1", t=datetime.now(UTC),
                    interval_s=self.interval_s,
                )  # fmt: skip
                c.publish(contract.heartbeat_topic("test", "ingest-1"), contract.encode(hb), qos=0)
            self._stop.wait(self.interval_s)

    def _on_message(self, _c: object, _u: object, m: paho.MQTTMessage) -> None:
        if m.topic.endswith("/status"):
            return
        with self._lock:
            self.ids.add(json.loads(m.payload)["id"])
            self.deliveries += 1

    def count(self) -> int:
        with self._lock:
            return len(self.ids)

    def close(self) -> None:
        self._stop.set()
        if self.client is not None:
            self.down()


def _wait(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Until `predicate` holds or the time is up (the assertions after say what was expected)."""
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)


def _config_file(tmp_path: Path, broker: Mosquitto) -> Path:
    cfg_file = tmp_path / "gateway.toml"
    cfg_file.write_text(
        f'site = "test"\n[mqtt]\nurl = "{broker.url}"\nreconnect_min_s = 0.2\nreconnect_max_s = 1.0\n'
        f'[gateway]\nid = "gw-0001"\nspool_path = "{tmp_path / "spool.sqlite"}"\nstatus_interval_s = 1.0\n'
        "pause_after_s = 0.6\n"  # (30 s in service)
    )
    return cfg_file


def _counting_gateway(cfg_file: Path, sent: set[str]) -> Gateway:
    """A gateway of one patient's wearables; the ids of the readings it hands to paho go to `sent`."""
    gw = Gateway(load(cfg_file, environ={}), VirtualTransport(make_patients(1, 3)[0].devices))
    publish = gw.client.publish

    def counting(topic: str, payload: bytes, *a: object, **kw: object) -> object:
        if not topic.endswith("/status"):
            sent.add(json.loads(payload)["id"])
        return publish(topic, payload, *a, **kw)  # type: ignore[arg-type]

    gw.client.publish = counting  # type: ignore[method-assign]
    return gw


@pytest.fixture
def small_queue(tmp_path: Path) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path / "mosquitto", extra_config="max_queued_messages 20\n")
    server.start()
    yield server
    server.stop()


def test_readings_made_while_ingest_is_away_longer_than_the_broker_queues_all_arrive(
    small_queue: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Ingest (heartbeat every 0.2 s) goes away for 8 s while a patient's two wearables make
    ~55 messages, over twice what the broker queues for it (20). Every message the gateway made
    reaches ingest once it is back; the gateway said it was keeping them."""
    cfg_file = _config_file(tmp_path, small_queue)
    sent: set[str] = set()
    gw = _counting_gateway(cfg_file, sent)
    ingest = Ingest(small_queue.port, interval_s=0.2)
    caplog.set_level(logging.INFO, logger="gateway.service")
    try:
        ingest.up()
        with running(gw):
            _wait(lambda: ingest.count() >= 20)
            ingest.down()
            sent_before = len(sent)
            # over twice what the broker queues made meanwhile (~8 s; counted, not timed: a
            # slow machine makes them more slowly)
            _wait(lambda: len(sent) - sent_before + gw.spool.depth > 45, timeout_s=30.0)
            assert gw.stats().paused and gw.status().paused
            said = subprocess.run(
                [sys.executable, "-m", "nabz.cli", "gateway", "status", "--config", str(cfg_file), "--json"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert said.returncode == 1 and json.loads(said.stdout)["problems"] == [
                "ingest is not heard: readings are kept in the spool until it is (not sent)"
            ]
            sent_away, kept = len(sent) - sent_before, gw.spool.depth  # (messages)
            ingest.up()
            time.sleep(1.0)
            assert not gw.stats().paused
            gw.transport.stop()
            assert gw.drain(15)
        _wait(lambda: ingest.count() >= len(sent))
        # over twice what the broker queues were made meanwhile (the test means it), and most
        # of them waited at the gateway
        assert ingest.count() == len(sent), (ingest.count(), len(sent))
        assert sent_away + kept > 45 and sent_away < 20, (sent_away, kept)
        assert gw.stats().published == gw.stats().spooled  # every reading made was taken
        said = [r.getMessage() for r in caplog.records]
        assert any("ingest not heard for" in m for m in said), said
        assert any("ingest is heard again" in m for m in said), said
    finally:
        gw.stop()
        ingest.close()


def test_a_gateway_restarted_while_ingest_is_away_keeps_its_readings_until_ingest_is_heard(
    small_queue: Mosquitto, tmp_path: Path
) -> None:
    """A restart (systemd, a power blip at the home) forgot that ingest was away: the new process
    sent the whole spool into the stopped ingest's queue (24 of 66 lost in the reviewer's run)."""
    cfg_file = _config_file(tmp_path, small_queue)
    sent: set[str] = set()
    ingest = Ingest(small_queue.port, interval_s=0.2)
    first = _counting_gateway(cfg_file, sent)
    first_stopped, second = False, None
    try:
        ingest.up()
        with running(first):
            _wait(lambda: ingest.count() >= 10)
            ingest.down()
            _wait(lambda: first.stats().paused)
            assert first.stats().paused
            time.sleep(2.0)
        first.stop()
        first_stopped = True
        sent_before = len(sent)
        second = _counting_gateway(cfg_file, sent)
        left = second.spool.depth  # by the first process
        with running(second):
            # more than the broker queues (20) made meanwhile (~3 s; counted, not timed)
            _wait(lambda: second.stats().connected and second.spool.depth - left > 20, timeout_s=30.0)
            assert second.stats().connected and second.spool.depth - left > 20
            assert second.stats().paused and len(sent) == sent_before  # nothing sent into the queue
            kept = second.spool.depth
            ingest.up()
            time.sleep(1.0)
            second.transport.stop()
            assert second.drain(15)
        _wait(lambda: ingest.count() >= len(sent))
        assert kept > left + 20, (kept, left)
        assert ingest.count() == len(sent), (ingest.count(), len(sent))
    finally:
        if not first_stopped:
            first.stop()
        if second is not None:
            second.stop()
        ingest.close()


def test_a_restart_remembers_whether_ingest_was_heard_and_away() -> None:
    p = SendPause()
    assert p.saved() == "00:10"
    fresh = SendPause()
    fresh.restore(p.saved(), 100.0)
    fresh.connected(100.0)
    assert not fresh.paused(10_000.0)  # never heard: never paused
    p.connected(0.0)
    p.heard(1.0, 10.0)
    heard = SendPause()
    heard.restore(p.saved(), 500.0)
    heard.connected(500.0)
    assert not heard.paused(529.0) and heard.paused(531.0)  # its silence counted from the start
    assert p.paused(40.0) and p.saved() == "11:10"
    away = SendPause()
    away.restore(p.saved(), 900.0)
    assert away.paused(900.0)  # away: paused until a heartbeat
    assert away.heard(905.0, 10.0) is not None and not away.paused(905.0)
    slow = SendPause()
    slow.connected(0.0)
    slow.heard(0.0, 60.0)  # a heartbeat every minute: three of them
    again = SendPause()
    again.restore(slow.saved(), 10.0)
    again.connected(10.0)
    assert not again.paused(189.0) and again.paused(191.0)
    broken = SendPause()
    broken.restore("", 1.0)  # no mark (a gateway of an earlier version)
    broken.connected(1.0)
    assert not broken.paused(1_000.0)


def test_a_pause_the_full_card_kept_from_the_spool_is_written_once_there_is_room(tmp_path: Path) -> None:
    """The mark that a restart reads was written only when the pause began: on a full card it
    was lost for good, and a restart sent into the stopped ingest's queue again (found by review)."""
    now = [100.0]
    cfg = load(_config_file(tmp_path, Mosquitto(tmp_path / "unused")), environ={})
    gw = Gateway(cfg, VirtualTransport(make_patients(1, 3)[0].devices), clock=lambda: now[0])
    gw.pause.connected(now[0])
    gw.pause.heard(now[0], 0.2)
    set_marks = gw.spool.set_marks
    gw.spool.set_marks = lambda marks: False  # type: ignore[method-assign]  # the card is full
    now[0] += 1.0
    assert gw._paused()
    gw.spool.set_marks = set_marks  # type: ignore[method-assign]  # room again
    now[0] += 1.0
    assert gw._paused() and gw.spool.marks("pause/") == {}  # not at every step: 5 s on
    now[0] += 5.0
    assert gw._paused()
    gw.spool.close()
    again = Gateway(cfg, VirtualTransport(make_patients(1, 3)[0].devices), clock=lambda: now[0])
    again.pause.connected(now[0])
    assert again.stats().paused and again._paused()
    again.spool.close()
