"""The live side of the station: MQTT in (derived vitals, alarm events), server-sent events out,
alarm commands back to the alerts service.

paho's network thread only hands messages to the web server's event loop
(`call_soon_threadsafe`); everything else runs on that loop, so the ward needs no lock. Changed
tiles are sent as soon as they change, but at most every `flush_s` (0.2 s): a ward of hundreds of patients sends a few
hundred messages a second, and a browser needs a tile redrawn, not every message.

Each browser holds a bounded queue; one that falls behind by more than `_QUEUE_FRAMES` frames is
disconnected (the EventSource reconnects and starts again from a snapshot) rather than allowed to
grow the server's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import paho.mqtt.client as paho

from alerts.service import command_topic
from dashboards.station.data import Records
from dashboards.station.ward import Ward
from nabz import contract
from nabz.config import Config
from nabz.contract import AlarmEvent, VitalsBatch
from nabz.mqtt import connect, make_client, reason_ok

__all__ = ["Hub", "Client", "sse"]

log = logging.getLogger(__name__)

_QUEUE_FRAMES = 2000
_QUEUE_BYTES = 8 * 1024 * 1024  # a page this far behind (seconds of a large ward) is not live
_BATCH_OVER = 50  # more changed tiles than this at once: a ward page gets them in one frame
_vitals = msgspec.json.Decoder(VitalsBatch)
_alarm = msgspec.json.Decoder(AlarmEvent)


def sse(event: str, data: Any) -> str:
    """One server-sent event (text/event-stream): `event:` and a single-line JSON `data:`."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@dataclass(eq=False)
class Client:
    patient: str | None  # None: the whole ward
    queue: asyncio.Queue[str | None] = field(default_factory=lambda: asyncio.Queue(_QUEUE_FRAMES))
    queued_bytes: int = 0  # of the frames waiting (the page takes them off with `take`)

    async def take(self, timeout_s: float) -> str | None:
        frame = await asyncio.wait_for(self.queue.get(), timeout_s)
        self.queued_bytes -= len(frame or "")
        return frame

    def wants(self, patient: str) -> bool:
        return self.patient is None or self.patient == patient


class Hub:
    def __init__(
        self,
        config: Config,
        records: Records,
        *,
        clock: Callable[[], float] = time.time,
        flush_s: float = 0.2,
        ping_s: float = 5.0,
    ) -> None:
        self.config = config
        self.records = records
        self.clock = clock
        self.flush_s = flush_s
        self.ping_s = ping_s
        labels = {p: c.label for p, c in config.alerts.patients.items() if c.label}
        self.ward = Ward(config.station.stale_after_s, labels)
        self.clients: set[Client] = set()
        self.connected = False
        self.messages = 0
        self.bad_messages = 0
        self.commands_sent: dict[str, int] = {}
        self.dropped_clients = 0
        self._dirty: set[str] = set()
        self._stale: set[str] = set()
        self._followers: dict[str, list[asyncio.Queue[dict[str, Any] | None]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: paho.Client | None = None
        self._kick = asyncio.Event()  # something changed: flush soon
        self._topics: list[tuple[str, int]] = []

    # --- life ---------------------------------------------------------------------------------
    def load(self) -> None:
        """Patients and their latest state from the stores, before any MQTT message arrives."""
        now = self.clock()
        patients = set(self.config.enrolment.values()) | self.records.enrolled_patients()
        patients |= set(self.config.alerts.patients)
        for p in sorted(patients):
            self.ward.add_patient(p)
        for v in self.records.latest_vitals(sorted(patients), now):
            self.ward.vitals(v, now)
        for a in self.records.open_alarms():
            self.ward.alarm_data(a)
        self._stale = {p for p in self.ward.patients if self.ward.stale(p, now)}

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.load)
        site = self.config.site
        client = make_client(self.config.mqtt, client_id=self.config.station.client_id, server=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        self._topics = [
            (contract.vitals_topic(site), 1),
            (f"{contract.ROOT}/{site}/patient/+/alarm/+", 1),
        ]
        connect(client, self.config.mqtt)
        self._task = asyncio.create_task(self._flusher(), name="station-flusher")

    def close_all(self) -> None:
        """End every event stream (before the server shuts down: it waits for open responses)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._close_all)

    def _close_all(self) -> None:
        for c in list(self.clients):
            self._close(c)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for c in list(self.clients):
            self._close(c)
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()

    # --- MQTT (paho's thread) -----------------------------------------------------------------
    def _on_connect(self, client: paho.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if reason_ok(reason):
            client.subscribe(self._topics)
            self.connected = True
        else:
            log.warning("station: broker refused the connection: %s", reason)

    def _on_disconnect(self, _c: paho.Client, _u: object, _f: object, _r: object, _p: object) -> None:
        self.connected = False

    def _on_message(self, _c: paho.Client, _u: object, m: paho.MQTTMessage) -> None:
        self.feed(m.topic, bytes(m.payload))

    def feed(self, topic: str, payload: bytes) -> None:
        """Hand one message to the ward from any thread (what paho's callback does)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.handle, topic, payload)

    # --- on the loop --------------------------------------------------------------------------
    def handle(self, topic: str, payload: bytes) -> None:
        """Apply one MQTT message to the ward (called on the event loop)."""
        self.messages += 1
        try:
            if topic.endswith("/vitals"):
                batch = _vitals.decode(payload)
                if batch.site != self.config.site:
                    return  # another site's (the subscription is this site's; a wider ACL is not)
                now = self.clock()
                for v in batch.vitals:
                    self.ward.vitals(v, now)
                    self._dirty.add(v.patient)
                self._kick.set()
            elif "/alarm/" in topic:
                if not payload:
                    return  # a retained message being deleted
                e = _alarm.decode(payload)
                self.ward.alarm(e)
                self._dirty.add(e.patient)
                self._kick.set()
                self._wake(e.alarm_id)
        except msgspec.DecodeError as exc:
            self.bad_messages += 1
            log.warning("station: ignoring a malformed message on %s: %s", topic, exc)

    def _wake(self, alarm_id: str) -> None:
        state = self.ward.open_alarm(alarm_id)
        for q in self._followers.get(alarm_id, []):
            q.put_nowait(state)

    def follow(self, alarm_id: str) -> asyncio.Queue[dict[str, Any] | None]:
        """The alarm's state at each of its events from now on (None once it cleared); `unfollow`
        when done. Follow before sending a command, so that a quick answer is not missed."""
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._followers.setdefault(alarm_id, []).append(q)
        return q

    def unfollow(self, alarm_id: str, q: asyncio.Queue[dict[str, Any] | None]) -> None:
        qs = self._followers.get(alarm_id, [])
        if q in qs:
            qs.remove(q)
        if not qs:
            self._followers.pop(alarm_id, None)

    def snapshot(self, patient: str | None = None) -> dict[str, Any]:
        now = self.clock()
        tiles = self.ward.tiles(now)
        if patient is not None:
            tiles = [t for t in tiles if t["patient"] == patient]
        return {"now": now, "tiles": tiles, "summary": self.ward.summary(now)}

    def subscribe(self, patient: str | None) -> Client:
        c = Client(patient)
        self.clients.add(c)
        return c

    def unsubscribe(self, c: Client) -> None:
        self.clients.discard(c)

    def _close(self, c: Client) -> None:
        self.clients.discard(c)
        while not c.queue.empty():  # make room for the end marker
            c.queue.get_nowait()
        c.queued_bytes = 0
        c.queue.put_nowait(None)

    def _send(self, c: Client, frame: str) -> None:
        if c.queued_bytes + len(frame) > _QUEUE_BYTES:  # too far behind to be live: it reconnects
            self.dropped_clients += 1
            log.warning("station: a browser fell %d bytes behind; disconnecting it", c.queued_bytes)
            self._close(c)
            return
        try:
            c.queue.put_nowait(frame)
            c.queued_bytes += len(frame)
        except asyncio.QueueFull:
            self.dropped_clients += 1
            log.warning("station: a browser fell %d events behind; disconnecting it", _QUEUE_FRAMES)
            self._close(c)

    def flush(self) -> None:
        """Send changed tiles (and tiles that went stale or fresh) to every browser that shows them."""
        now = self.clock()
        stale = {p for p in self.ward.patients if self.ward.stale(p, now)}
        self._dirty |= stale ^ self._stale
        self._stale = stale
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        summary = sse("summary", self.ward.summary(now))
        gone = {p for p in dirty if p not in self.ward.patients}  # a site alarm's tile, now over
        dirty -= gone
        for p in gone:
            frame = sse("gone", {"patient": p})
            for c in list(self.clients):
                if c.wants(p):
                    self._send(c, frame)
        # many tiles at once (a large ward: vitals every second; a site's data stopping): one
        # frame with all of them to each ward page, not a frame per tile, which filled its queue
        tiles = {p: self.ward.tile(p, now) for p in dirty} if len(dirty) > _BATCH_OVER else {}
        batch = sse("tiles", list(tiles.values())) if tiles else None
        frames: dict[str, str] = {}
        for c in list(self.clients):
            if c.patient is None and batch is not None:
                self._send(c, batch)
            else:
                for p in dirty:
                    if c.wants(p):
                        if p not in frames:
                            frames[p] = sse("tile", tiles.get(p) or self.ward.tile(p, now))
                        self._send(c, frames[p])
            if c.patient is None:
                self._send(c, summary)

    async def _flusher(self) -> None:
        """Flush as soon as something changed, but at most every `flush_s`; at least once a second
        (tiles go stale with no message at all)."""
        next_ping = 0.0
        last = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), 1.0)
            self._kick.clear()
            wait = last + self.flush_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            last = time.monotonic()
            try:
                self.flush()
                if time.monotonic() >= next_ping:
                    next_ping = time.monotonic() + self.ping_s
                    frame = sse("ping", {"now": self.clock(), "mqtt": self.connected})
                    for c in list(self.clients):
                        self._send(c, frame)
            except Exception:  # one bad tile must not stop every page
                log.exception("station: flush")

    # --- commands -----------------------------------------------------------------------------
    def publish_command(self, command: dict[str, Any], timeout_s: float = 5.0) -> bool:
        """Publish one alarm command (QoS 1) and wait for the broker's PUBACK; blocking (a thread).

        Refused at once when the broker is not connected. The command says until when it may be
        applied (`not_after`, the end of the wait): paho resends an unacknowledged message after a
        reconnect, and the alerts service refuses one that comes later, so a command the nurse was
        told did not go through is never applied minutes afterwards. (The nurse page and the
        alerts service must share a clock, NTP; they usually run on the same server.)"""
        if self._client is None or not self.connected:
            return False
        payload = {"v": 1, "id": contract.new_id(), **command, "not_after": self.clock() + timeout_s}
        info = self._client.publish(command_topic(self.config.site), json.dumps(payload), qos=1)
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError) as exc:
            log.warning("station: command not published: %s", exc)
            return False
        ok = info.is_published()
        if ok:
            self.commands_sent[command["action"]] = self.commands_sent.get(command["action"], 0) + 1
        return ok
