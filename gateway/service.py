"""The gateway runner: transport -> decode -> spool -> MQTT, one step at a time.

Rules of this file:
- One thread owns the spool and calls `step()`; paho's network thread only puts acknowledgements
  and connection changes on a queue.
- A spool row is handed to paho once per process. paho resends unacknowledged QoS 1 messages
  itself after a reconnect; after a gateway restart every row still in the spool is sent again.
  Either way the message id is unchanged, so ingest stores it once.
- Rows are deleted only on PUBACK, so a broker outage, a network outage or a `kill -9` loses nothing.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho

from gateway.decode import Decoder, utc_from_us
from gateway.spool import Spool
from gateway.transport import Transport
from nabz import contract
from nabz.config import Config
from nabz.contract import GatewayStatus, Rejected
from nabz.mqtt import Will, connect, make_client, reason_ok

__all__ = ["Gateway", "GatewayStats"]

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class GatewayStats:
    generated: int  # readings the transport's devices produced (virtual transport only, else 0)
    spooled: int  # readings decoded and written to the spool by this process
    published: int  # readings the broker acknowledged (all time, from the spool's counters)
    spool_depth: int  # messages waiting
    dead_letters: int
    dropped: int  # readings dropped by the spool's overflow policy (all time)
    connected: bool


class Gateway:
    """One home gateway: its devices, its spool, its broker connection."""

    def __init__(
        self,
        config: Config,
        transport: Transport,
        *,
        clock: Clock = time.time,
        gateway_id: str | None = None,
        spool_path: str | None = None,
    ) -> None:
        self.config = config
        self.site = config.site
        self.id = gateway_id or config.gateway.id
        self.transport = transport
        self.clock = clock
        self.decoder = Decoder(self.site, self.id)
        self.spool = Spool(
            spool_path or config.gateway.spool_path, max_bytes=config.gateway.spool_max_mb * 1024 * 1024
        )
        self.status_topic = contract.status_topic(self.site, self.id)
        self._events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._inflight: dict[int, int] = {}  # paho mid -> spool seq
        self._sent_upto = 0  # highest spool seq handed to paho by this process
        self._connected = False
        self._spooled = 0
        self._next_status = 0.0
        self._lock = threading.Lock()
        self.client = make_client(
            config.mqtt,
            client_id=f"nabz-gw-{self.site}-{self.id}",
            will=Will(self.status_topic, self._status_payload("offline", "connection lost (last will)")),
            max_inflight=config.gateway.max_inflight,
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish

    # --- paho thread -----------------------------------------------------------------------
    def _on_connect(self, client: paho.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if reason_ok(reason):
            client.publish(self.status_topic, self._status_payload("online"), qos=1, retain=True)
            self._events.put(("connected", True))
            log.info("gateway %s connected to %s", self.id, self.config.mqtt.url)
        else:
            log.warning("gateway %s: broker refused the connection: %s", self.id, reason)

    def _on_disconnect(self, _c: paho.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        self._events.put(("connected", False))
        if reason_ok(reason):
            log.info("gateway %s disconnected", self.id)
        else:
            log.warning("gateway %s disconnected (%s); the spool keeps everything", self.id, reason)

    def _on_publish(self, _c: paho.Client, _u: object, mid: int, reason: object, _p: object) -> None:
        self._events.put(("ack", (mid, reason_ok(reason))))

    # --- owner thread ----------------------------------------------------------------------
    def start(self) -> None:
        self.transport.start(self._now_us())
        connect(self.client, self.config.mqtt)

    def step(self) -> int:
        """Poll, decode, spool, publish and process acknowledgements once; returns work done."""
        work = self._receive()
        work += self._process_events()
        if self._connected:
            work += self._publish()
            now = self.clock()
            if now >= self._next_status:
                self._next_status = now + self.config.gateway.status_interval_s
                self.client.publish(self.status_topic, self._status_payload("online"), qos=1, retain=True)
        return work

    def run(self, stop: threading.Event, period_s: float = 0.05) -> None:
        """Step until `stop` is set (the gateway's main loop)."""
        while not stop.is_set():
            if self.step() == 0:
                stop.wait(period_s)

    def drain(self, timeout_s: float) -> bool:
        """Step until the spool is empty (everything acknowledged) or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.step()
            if self.spool.depth == 0:
                return True
            time.sleep(0.02)
        return self.spool.depth == 0

    def stop(self, *, graceful: bool = True) -> None:
        """Stop the transport; say goodbye (retained 'offline') when graceful; close the spool."""
        self.transport.stop()
        if graceful and self._connected:
            info = self.client.publish(
                self.status_topic, self._status_payload("offline", "shutdown"), 1, True
            )
            try:
                info.wait_for_publish(timeout=2.0)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()
        self.spool.close()

    def stats(self) -> GatewayStats:
        return GatewayStats(
            generated=int(getattr(self.transport, "readings_generated", 0)),
            spooled=self._spooled,
            published=self.spool.counter("published_readings"),
            spool_depth=self.spool.depth,
            dead_letters=self.spool.counter("dead_letters"),
            dropped=self.spool.counter("dropped_readings"),
            connected=self._connected,
        )

    # --- internals -------------------------------------------------------------------------
    def _now_us(self) -> int:
        return int(self.clock() * 1_000_000)

    def _receive(self) -> int:
        notes = self.transport.poll(self._now_us())
        rows: list[tuple[str, str, bytes, str, int]] = []
        for note in notes:
            reading = self.decoder.decode(note)
            if isinstance(reading, Rejected):
                self.spool.dead_letter(note.device, note.char, note.data, reading.reason, reading.detail)
                log.warning("gateway %s: bad frame from %s: %s", self.id, note.device, reading.detail)
                continue
            stream = contract.stream_of(reading)
            topic = contract.reading_topic(self.site, self.id, reading.device, stream)
            count = contract.reading_count(reading)
            rows.append((reading.id, topic, contract.encode(reading), stream, count))
            self._spooled += count
        self.spool.put(rows)
        return len(notes)

    def _process_events(self) -> int:
        acked: list[int] = []
        n = 0
        while True:
            try:
                kind, value = self._events.get_nowait()
            except queue.Empty:
                break
            n += 1
            if kind == "connected":
                self._connected = bool(value)
                if value:
                    self._next_status = self.clock() + self.config.gateway.status_interval_s
            elif kind == "ack":
                mid, ok = value
                seq = self._inflight.pop(mid, None)
                if seq is None:
                    continue
                if ok:
                    acked.append(seq)
                else:
                    # The broker refused it (e.g. not authorised): keep it and say so loudly; it is
                    # retried after a restart rather than in a tight loop.
                    log.error("gateway %s: broker refused message (spool seq %d)", self.id, seq)
        self.spool.ack(acked)
        return n

    def _publish(self) -> int:
        room = self.config.gateway.max_inflight - len(self._inflight)
        if room <= 0:
            return 0
        batch = self.spool.peek(self._sent_upto, room)
        for msg in batch:
            info = self.client.publish(msg.topic, msg.payload, qos=1)
            self._inflight[info.mid] = msg.seq
            self._sent_upto = msg.seq
        return len(batch)

    def _status_payload(self, state: str, reason: str | None = None) -> bytes:
        online = state == "online"
        return contract.encode(
            GatewayStatus(
                site=self.site,
                gateway=self.id,
                state="online" if online else "offline",
                t=utc_from_us(self._now_us()) if online or reason == "shutdown" else None,
                reason=reason,
                spool_depth=self.spool.depth if online else None,
                devices=self.transport.devices if online else [],
            )
        )
