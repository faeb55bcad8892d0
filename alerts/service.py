"""The alerts runner: derived vitals and gateway status in over MQTT, the engine, alarm events out
(retained), and a dispatcher thread that owns the notifiers.

paho's thread queues; one worker thread owns the engine, feeds it vitals, status and commands
from the nurse page (`nabz/v1/<site>/alerts/command`) and ticks it once a second; the dispatcher thread sends what the engine queued (woken at once when it queues)
and polls notifiers that receive (a modem's incoming SMS and delivery reports). The store is
their only shared state.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Literal

import msgspec
import paho.mqtt.client as paho

from alerts.dispatch import Dispatcher, build_notifiers
from alerts.engine import AlertEngine
from alerts.notify import Notifier
from alerts.store import AlertStore
from nabz import contract
from nabz.config import Config
from nabz.contract import AlarmEvent, GatewayStatus, Vitals
from nabz.mqtt import connect, make_client, reason_ok

__all__ = ["AlertService", "AlarmCommand", "command_topic", "COMMAND_FILTER"]

log = logging.getLogger(__name__)

_vitals_decoder = msgspec.json.Decoder(Vitals)
_status_decoder = msgspec.json.Decoder(GatewayStatus)


class AlarmCommand(msgspec.Struct, frozen=True, kw_only=True):
    """A command from the nurse page on `nabz/v1/<site>/alerts/command` (docs/contract.md section 4)."""

    v: Literal[1] = 1
    id: str
    action: Literal["ack", "silence", "unsilence"]
    by: str
    code: str | None = None  # ack: the alarm's code or its alarm_id
    patient: str | None = None  # silence
    kind: str = "*"
    duration_s: float | None = None
    reason: str = ""
    silence_id: str | None = None  # unsilence


_command_decoder = msgspec.json.Decoder(AlarmCommand)


def command_topic(site: str) -> str:
    return f"{contract.ROOT}/{site}/alerts/command"


COMMAND_FILTER = f"{contract.ROOT}/+/alerts/command"


class AlertService:
    def __init__(
        self,
        config: Config,
        *,
        notifiers: list[Notifier] | None = None,
        store: AlertStore | None = None,
        clock: Callable[[], float] = time.time,
        client_id: str = "nabz-alerts",
    ) -> None:
        self.config = config
        self.clock = clock
        self.store = store or AlertStore(config.alerts.store_path)
        self.engine = AlertEngine(config, self.store)
        self.dispatcher = Dispatcher(config, self.store, notifiers or build_notifiers(config))
        self._queue: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self.bad_messages = 0
        self.published = 0
        self.client = make_client(config.mqtt, client_id=client_id, persistent_session=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, m: self._queue.put((m.topic, bytes(m.payload)))

    def _on_connect(self, client: paho.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if reason_ok(reason):
            client.subscribe([(contract.VITALS_FILTER, 1), (contract.STATUS_FILTER, 1), (COMMAND_FILTER, 1)])

    def start(self) -> None:
        connect(self.client, self.config.mqtt, persistent_session=True)
        for target, name in ((self._run, "nabz-alerts"), (self._dispatch, "nabz-alerts-dispatch")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=10)
        self.client.disconnect()
        self.client.loop_stop()

    def _handle(self, topic: str, payload: bytes, now: float) -> list[AlarmEvent]:
        try:
            if topic.endswith("/status"):
                return self.engine.gateway_status(_status_decoder.decode(payload), now)
            if topic.endswith("/alerts/command"):
                c = _command_decoder.decode(payload)
                args = {
                    k: v
                    for k, v in msgspec.structs.asdict(c).items()
                    if v is not None and k not in ("v", "id")
                }
                self.store.add_command(now, c.action, args, f"mqtt:{c.by}")
                return self.engine.tick(now)  # applied at once, in order with everything else
            return self.engine.observe(_vitals_decoder.decode(payload), now)
        except msgspec.DecodeError as exc:
            self.bad_messages += 1
            log.warning("alerts: ignoring a malformed message on %s: %s", topic, exc)
            return []

    def _run(self) -> None:
        next_tick = 0.0
        while not self._stop.is_set():
            try:
                topic, payload = self._queue.get(timeout=0.2)
            except queue.Empty:
                topic, payload = "", b""
            now = self.clock()
            events = self._handle(topic, payload, now) if topic else []
            if time.monotonic() >= next_tick:  # the cadence is the runner's; the time is the clock's
                next_tick = time.monotonic() + 1.0
                events.extend(self.engine.tick(now))
            if events:
                self._wake.set()
            for e in events:
                self.client.publish(
                    contract.alarm_topic(e.site, e.patient, e.kind), contract.encode(e), qos=1, retain=True
                )
                self.published += 1

    def _dispatch(self, poll_every_s: float = 1.0) -> None:
        next_poll = 0.0
        while not self._stop.is_set():
            self._wake.wait(0.25)
            self._wake.clear()
            now = self.clock()
            try:
                self.dispatcher.step(now)
                if now >= next_poll:
                    next_poll = now + poll_every_s
                    self.dispatcher.poll(now)
            except Exception:  # a notifier bug must not stop the alarms: log, and go on
                log.exception("alerts dispatcher")
