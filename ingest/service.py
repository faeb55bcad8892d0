"""The ingest runner: MQTT in (persistent session, manual acknowledgement), IngestCore, vitals out.

Rules of this file:
- A message is acknowledged to the broker only after its batch is stored (see ingest.pipeline),
  so a crash at any point means redelivery, never loss; dedup makes redelivery harmless.
- The session is persistent (MQTT v5 session expiry, or clean_session=False on 3.1.1) under a
  fixed client id, so messages that arrive while ingest is down wait in the broker.
- paho's thread only queues; one worker thread owns the batch loop.
- With `ingest.workers` > 1 this process is one worker slot: its client id ends in the slot, and
  it subscribes (MQTT v5 shared subscriptions) to the devices of the patients it owns only, kept in
  step with the enrolment every 2 s (ingest.partition, docs/scale.md).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho

from ingest.influx import InfluxSink, SinkError
from ingest.partition import device_filter, owned_devices
from ingest.pipeline import BatchResult, IngestCore, Message
from ingest.store import Store
from nabz import contract
from nabz.config import Config, ConfigError
from nabz.mqtt import connect, make_client, reason_ok

__all__ = ["IngestService"]

log = logging.getLogger(__name__)

# A batch grows while messages keep coming (each within _BATCH_GAP_S of the last), up to
# _BATCH_MAX messages or the InfluxDB flush interval: big batches under load, low latency when quiet.
_BATCH_MAX = 2000
_BATCH_GAP_S = 0.05


@dataclass(frozen=True, slots=True)
class _Incoming:
    msg: Message
    mid: int
    qos: int


class IngestService:
    """Subscribes to readings, stores them, publishes derived vitals."""

    def __init__(
        self,
        config: Config,
        *,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
        client_id: str | None = None,
        on_vitals: Callable[[list[contract.Vitals]], None] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.store = store or Store(config.ingest.store_path)
        cid = client_id or config.ingest.client_id
        if config.ingest.workers > 1:  # one persistent session per worker slot
            cid = f"{cid}-{config.ingest.worker}"
        spill = config.influx.spill_dir or str(Path(config.ingest.store_path).parent / f"influx-spill-{cid}")
        self.sink = InfluxSink(config.influx, spill_dir=spill) if config.influx.url else None
        try:
            self.core = IngestCore(
                self.store,
                sink=self.sink,
                enrolment=config.enrolment,
                waveforms=config.influx.waveforms,
                spo2_calibration=config.ingest.spo2_calibration,
                keep_payloads=config.ingest.keep_payloads or self.sink is None,
            )
        except ValueError as exc:
            raise ConfigError(f"ingest.spo2_calibration: {exc}") from exc
        self.on_vitals = on_vitals
        self._queue: queue.SimpleQueue[_Incoming] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self.connected = threading.Event()
        self.totals = BatchResult()
        ic = config.ingest
        self._partitioned = ic.workers > 1
        if self._partitioned and not 0 <= ic.worker < ic.workers:
            raise ValueError(f"ingest.worker {ic.worker} outside 0..{ic.workers - 1}")
        self._subscribed: set[str] = set()
        self._sub_lock = threading.Lock()
        self._next_sync = 0.0
        self._next_prune = 0.0
        self.client = make_client(
            config.mqtt,
            client_id=cid,
            persistent_session=True,
            manual_ack=True,
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # --- paho thread ---------------------------------------------------------------------------
    def _on_connect(self, client: paho.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if not reason_ok(reason):
            log.warning("ingest: broker refused the connection: %s", reason)
            return
        if self._partitioned:
            with self._sub_lock:
                self._subscribed = set()
            self._sync_subscriptions()
        else:
            client.subscribe([(contract.READINGS_FILTER, 1)])
        self.connected.set()
        log.info("ingest connected to %s", self.config.mqtt.url)

    def _on_disconnect(self, _c: paho.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        self.connected.clear()
        if not reason_ok(reason):
            log.warning("ingest disconnected (%s); unacknowledged messages will be redelivered", reason)

    def _on_message(self, _c: paho.Client, _u: object, m: paho.MQTTMessage) -> None:
        self._queue.put(_Incoming(Message(m.topic, bytes(m.payload), self.clock()), m.mid, m.qos))

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        connect(self.client, self.config.mqtt, persistent_session=True)
        self._worker = threading.Thread(target=self._run, name="nabz-ingest", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=10)
        self.client.disconnect()
        self.client.loop_stop()
        if self.sink is not None:
            self.sink.close()

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    # --- worker --------------------------------------------------------------------------------
    def _sync_subscriptions(self) -> None:
        """Subscribe to the devices of the patients this worker owns (ingest.partition)."""
        ic = self.config.ingest
        self.core.refresh_enrolment()
        want = owned_devices(self.core.enrolment, ic.worker, ic.workers)
        with self._sub_lock:
            new, gone = sorted(want - self._subscribed), sorted(self._subscribed - want)
            self._subscribed = want
        group = ic.share_group
        for i in range(0, len(new), 100):
            self.client.subscribe([(device_filter(d, group), 1) for d in new[i : i + 100]])
        if gone:
            self.client.unsubscribe([device_filter(d, group) for d in gone])
        if new or gone:
            log.info("ingest worker %d/%d: +%d -%d devices", ic.worker, ic.workers, len(new), len(gone))

    def _run(self) -> None:
        pending: list[_Incoming] = []
        while not self._stop.is_set():
            if self.sink is not None and time.monotonic() >= self._next_prune:
                # InfluxDB is the store: the embedded one is a dedup ledger of dedup_window_h
                self._next_prune = time.monotonic() + 600.0
                cutoff = self.clock() - self.config.ingest.dedup_window_h * 3600.0
                if gone := self.store.prune(cutoff):
                    log.info("ingest: %d messages older than the dedup window pruned", gone)
            if self._partitioned and time.monotonic() >= self._next_sync and self.connected.is_set():
                self._next_sync = time.monotonic() + 2.0  # enrolment changes are picked up this fast
                self._sync_subscriptions()
            if not pending:
                pending = self._take_batch()
                if not pending:
                    continue
            try:
                result = self.core.handle_batch([i.msg for i in pending])
            except SinkError as exc:
                log.error("ingest: %s; holding %d messages unacknowledged and retrying", exc, len(pending))
                self._stop.wait(1.0)
                continue
            except Exception:
                # A bug, not bad input (bad input is dead-lettered). Keep the messages unacknowledged
                # so that nothing is lost, and back off.
                log.exception("ingest: batch failed; retrying")
                self._stop.wait(1.0)
                continue
            for item in pending:
                if item.qos > 0:
                    self.client.ack(item.mid, item.qos)
            pending = []
            self._account(result)
            self._publish_vitals(result.vitals)

    def _take_batch(self) -> list[_Incoming]:
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.config.influx.flush_interval_ms / 1000.0
        while len(batch) < _BATCH_MAX:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=min(_BATCH_GAP_S, left)))
            except queue.Empty:
                break
        return batch

    def _account(self, r: BatchResult) -> None:
        t = self.totals
        t.stored += r.stored
        t.stored_readings += r.stored_readings
        t.duplicates += r.duplicates
        t.dead_lettered += r.dead_lettered

    def _publish_vitals(self, vitals: list[contract.Vitals]) -> None:
        for v in vitals:
            self.client.publish(contract.vitals_topic(v.site, v.patient), contract.encode(v), qos=1)
        if vitals and self.on_vitals is not None:
            self.on_vitals(vitals)
