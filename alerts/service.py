"""The alerts runner: derived vitals in over MQTT, the engine, alarm events out (retained).

paho's thread queues; one worker thread owns the engine, feeds it vitals and ticks it once a
second for the time-driven rules.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import msgspec
import paho.mqtt.client as paho

from alerts.engine import AlertEngine
from alerts.notify import Notifier, OutboxNotifier
from alerts.store import AlertStore
from nabz import contract
from nabz.config import Config
from nabz.contract import AlarmEvent, Vitals
from nabz.mqtt import connect, make_client, reason_ok

__all__ = ["AlertService"]

log = logging.getLogger(__name__)

_vitals_decoder = msgspec.json.Decoder(Vitals)


class AlertService:
    def __init__(
        self,
        config: Config,
        *,
        notifier: Notifier | None = None,
        store: AlertStore | None = None,
        clock: Callable[[], float] = time.time,
        client_id: str = "nabz-alerts",
    ) -> None:
        self.config = config
        self.clock = clock
        self.store = store or AlertStore(config.alerts.store_path)
        self.engine = AlertEngine(
            config.alerts, config.site, notifier or OutboxNotifier(config.alerts.outbox_path), self.store
        )
        self._queue: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self.bad_messages = 0
        self.client = make_client(config.mqtt, client_id=client_id, persistent_session=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, m: self._queue.put((m.topic, bytes(m.payload)))

    def _on_connect(self, client: paho.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if reason_ok(reason):
            client.subscribe([(contract.VITALS_FILTER, 1)])

    def start(self) -> None:
        connect(self.client, self.config.mqtt, persistent_session=True)
        self._worker = threading.Thread(target=self._run, name="nabz-alerts", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=10)
        self.client.disconnect()
        self.client.loop_stop()

    def _run(self) -> None:
        next_tick = 0.0
        while not self._stop.is_set():
            try:
                topic, payload = self._queue.get(timeout=0.2)
            except queue.Empty:
                topic = ""
                payload = b""
            now = self.clock()
            events: list[AlarmEvent] = []
            if topic:
                try:
                    vitals = _vitals_decoder.decode(payload)
                except msgspec.DecodeError as exc:
                    self.bad_messages += 1
                    log.warning("alerts: ignoring malformed vitals on %s: %s", topic, exc)
                else:
                    events.extend(self.engine.observe(vitals, now))
            if now >= next_tick:
                next_tick = now + 1.0
                events.extend(self.engine.tick(now))
            for e in events:
                self.client.publish(
                    contract.alarm_topic(e.site, e.patient, e.kind), contract.encode(e), qos=1, retain=True
                )
