"""The ingest runner: MQTT in (persistent session, manual acknowledgement), IngestCore, vitals out.

Rules of this file:
- A message is acknowledged to the broker only after its batch is stored (see ingest.pipeline),
  so a crash at any point means redelivery, never loss; dedup makes redelivery harmless.
- The session is persistent (MQTT v5 session expiry, or clean_session=False on 3.1.1) under a
  fixed client id, so messages that arrive while ingest is down wait in the broker.
- paho's thread only queues; one worker thread owns the batch loop.
- With `ingest.workers` > 1 this process is one worker slot: its client id ends in the slot, and
  it subscribes (MQTT v5 shared subscriptions) to the devices of the patients it owns only, kept in
  step with the enrolment every 2 s (ingest.partition, docs/scale.md). Its subscriptions are noted
  in the store (`Store.note_subscriptions`): a device moved away is let go only once its new owner's
  subscription is confirmed (never a moment without a subscriber, when mosquitto would drop its
  readings), and on a reconnect to a kept session whatever it no longer owns is unsubscribed.
- One process per slot (ingest.slots: a lock file beside the store), every slot on one `workers`.
  Worker 0 (or the single worker) drains and ends the slots a change of `workers` left behind
  (a removed slot, or the single worker's session): each is run here, under its lock, owning
  nothing, until its devices' new owners have them, its queued messages and spill are stored,
  and then its session at the broker is ended (`retiring`).
- A batch that fails because the store or InfluxDB cannot take it (locked, busy, full, down) is
  held unacknowledged and retried with backoff (/healthz says so): nothing about the messages.
- A batch that fails for another reason (a bug) is retried message by message; a message that
  still fails alone is dead-lettered `internal_error`, so one bad message cannot hold up
  everything behind it.
- It says how it is doing (ingest.opsstats): a heartbeat from the batch loop every
  `ingest.heartbeat_s` (gateways and the alerts service watch for its absence), with how far
  behind it is (`behind_s`: how long its latest batch's messages waited to be taken, in the
  broker's queue as the gateways' message expiry shows and in its own, or the batch held now;
  every second from a second behind until one says it is within half a second; after a
  connection, not before its first batch: gateways keep their readings while it is far
  behind), `ingest_stats`
  and `gateway_status` points to InfluxDB (worker 0 writes the gateways'), and `/metrics` and
  `/healthz` when `ingest.metrics_listen` is set. Gateways' retained status messages are read
  for these and acknowledged at once; they never enter a batch.
"""

from __future__ import annotations

import logging
import queue
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import msgspec
import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ingest.dsp import _kernels as dsp_kernels
from ingest.influx import InfluxSink, SinkError
from ingest.opsstats import GatewayStatuses, Rates, Totals, gateway_metrics, ops_lines
from ingest.partition import device_filter, filter_device, holding, owned_devices, owner_of, slot_client_id
from ingest.pipeline import BatchResult, IngestCore, Message
from ingest.slots import SlotBusy, SlotLock, lock_path, lock_slots, retired_slots, slot_holders
from ingest.store import Store
from nabz import contract
from nabz.config import Config, ConfigError
from nabz.health import HealthServer, Metric
from nabz.mqtt import connect, end_session, make_client, queued_s, reason_ok
from nabz.secrets import safe_url

__all__ = ["IngestService"]

log = logging.getLogger(__name__)

# A batch grows while messages keep coming (each within _BATCH_GAP_S of the last), up to
# _BATCH_MAX messages or the InfluxDB flush interval: big batches under load, low latency when quiet.
_BATCH_MAX = 2000
_BATCH_GAP_S = 0.05


_PRUNE_ROWS = 20_000  # per table and second at most (see _run)

_STUCK_S = 60.0  # the batch loop silent this long (real seconds): /healthz says so
_LAG_S = 60.0  # a message waiting this long to be stored: /healthz says so
_BEHIND_BEAT_S = 1.0  # messages waiting this long for ingest: a heartbeat this often (gateway.pause)
_CAUGHT_UP_S = 0.5  # ... until one says they wait less than this
_FIRST_BEAT_S = (0.5, 5.0)  # after connecting, the first heartbeat waits for the first batch (see _beat_due)
_DISCONNECTED_S = 30.0  # away from the broker this long: /healthz says so
_SYNC_S = 2.0  # enrolment changes are picked up this fast (subscriptions, with several workers)
_STORE_RETRY_S = (0.5, 10.0)  # a batch the store cannot take: retried after 0.5, 1, 2 ... 10 s
_RETIRE_QUIET_S = 1.0  # a retiring slot holding nothing ends after this long without a message
_RETIRE_SYNC_S = 0.25  # a retiring slot looks for its devices' new owners this often
_RETIRE_SCAN_S = 60.0  # worker 0 looks for slots left behind (or whose retiring failed) this often


def _spill_place(config: Config) -> tuple[Path, str]:
    """Where a slot's InfluxDB spill directory is, as (parent, prefix): ``<parent>/<prefix><client
    id>``. A configured spill_dir holds one per worker; by default they sit beside the store."""
    if config.influx.spill_dir:
        return Path(config.influx.spill_dir), ""
    return Path(config.ingest.store_path).parent, "influx-spill-"


def _put_away(spill_dir: Path) -> None:
    """A retired slot's spill directory, its lines all in InfluxDB: removed, unless it holds
    something else (`rejected.lp`, lines InfluxDB refused, for an operator to read): then renamed
    `<name>.retired-<UTC time>`, out of the way of the next look for slots left behind."""
    try:
        leftovers = [p for p in spill_dir.iterdir() if p.name != "spill.lock" and p.suffix != ".spill"]
        if leftovers:
            kept = spill_dir.with_name(f"{spill_dir.name}.retired-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}")
            spill_dir.rename(kept)
            log.warning("ingest: %s kept in %s", ", ".join(p.name for p in leftovers), kept)
        else:
            shutil.rmtree(spill_dir, ignore_errors=True)
    except OSError as exc:
        log.error("ingest: the retired spill directory %s was not put away: %s", spill_dir, exc)


def _store_unavailable(exc: BaseException) -> bool:
    """The embedded store cannot take writes now (locked, busy, full, I/O error, read-only, damaged):
    nothing about the messages, which wait. Other database errors (a constraint, a value it cannot
    bind) may be about one message: those go the one-by-one way."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


@dataclass(frozen=True, slots=True)
class _Incoming:
    msg: Message
    mid: int
    qos: int
    mono: float  # time.monotonic() on arrival, for lag in real seconds whatever the clock
    queued: float  # seconds it waited in the broker's queue before (nabz.mqtt.queued_s; 0: unknown)


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
        retiring: str | None = None,
    ) -> None:
        """`retiring`: the client id of a slot a change of `workers` left behind, to drain and end
        (worker 0 runs these itself, `_retire_left_behind`): it owns no patient."""
        self.config = config
        self.retiring = retiring
        self.clock = clock
        # Without InfluxDB the embedded store is the only copy of the readings, and the broker's
        # acknowledgement follows its commit: each commit must survive a power loss (FULL). With
        # InfluxDB the lines are there (or in the fsynced spill) before the commit, so NORMAL's
        # last commits lost to a power cut cost the store's copy only.
        self.store = store or Store(
            config.ingest.store_path, synchronous="NORMAL" if config.influx.url else "FULL"
        )
        self._base_client_id = client_id or config.ingest.client_id
        cid = retiring or slot_client_id(self._base_client_id, config.ingest.worker, config.ingest.workers)
        parent, prefix = _spill_place(config)
        self.sink = (
            InfluxSink(config.influx, spill_dir=parent / f"{prefix}{cid}") if config.influx.url else None
        )
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
        # The broker has acknowledged a subscription since the latest connection: from then on a
        # reading published is delivered here (before it, a first-ever session would miss it).
        self.subscribed = threading.Event()
        self.totals = BatchResult()
        self.instance = cid
        self.gateways = GatewayStatuses()
        self._gw_lock = threading.Lock()
        self.rates = Rates()
        self.internal_errors = 0
        self.batch_failures = 0
        self.store_failures = 0  # batches the store could not take (held, retried)
        self._store_trouble: str | None = None  # the store's latest error while it fails
        self._store_failures_in_row = 0
        self.heartbeats = 0
        self._loop_at = time.monotonic()  # the batch loop's last turn
        self._last_lag_s = 0.0
        # how far behind, for the heartbeat: the longest wait of the latest batch's messages,
        # the broker's queue and ours (None: no batch since the last heartbeat)
        self._behind_s: float | None = None
        self._last_behind_s = 0.0  # the same, not reset (/metrics)
        self._said_behind_s = 0.0  # what the last heartbeat said
        # the oldest message of the batch being stored (None: none), for /healthz and the heartbeat
        self._pending_head: _Incoming | None = None
        self._batch_started = time.monotonic()
        self._connected_mono = 0.0  # when the latest connection came (monotonic)
        self._batch_connected = 0.0  # ... as it was when the batch being stored was taken
        self._batched_since_connect = False
        self._last_reading = 0.0  # when the latest reading came (monotonic): the first heartbeat's gate
        self._last_heartbeat = float("-inf")
        self._next_heartbeat = 0.0
        self._next_stats = 0.0
        self._disconnected_at: float | None = time.monotonic()
        self.health: HealthServer | None = None
        if config.ingest.metrics_listen and retiring is None:
            self.health = HealthServer(
                config.ingest.metrics_listen,
                self.metrics,
                self.problems,
                port_offset=config.ingest.worker if config.ingest.workers > 1 else 0,
            )
        ic = config.ingest
        self._partitioned = ic.workers > 1 or retiring is not None
        if ic.workers > 1 and not 0 <= ic.worker < ic.workers:
            raise ValueError(f"ingest.worker {ic.worker} outside 0..{ic.workers - 1}")
        self.holding: set[str] = set()  # devices subscribed to (owned, or moved and not yet taken over)
        self._sub_lock = threading.RLock()  # one sync at a time (paho's thread on connect, the loop)
        self._ack_lock = threading.Lock()  # SUBSCRIBE mids and SUBACKs, between the two threads
        self._sub_mids: dict[int, list[str]] = {}  # SUBSCRIBE packet id -> its filters
        self._confirmed: list[str] = []  # filters the broker acknowledged, not yet noted in the store
        self._sync_on_connect: bool | None = None  # a connect's sync left to the loop: session kept?
        self._next_sync = 0.0
        self._next_prune = 0.0
        self._next_prune_log = 0.0
        self._pruned = [0, 0]  # messages, vitals since the last log line
        self._slot_lock: SlotLock | None = None
        self._convert = False  # retiring the single worker's session: its plain filter to make per device
        self._unsub_mids: set[int] = set()  # a retiring slot's UNSUBSCRIBEs not yet acknowledged
        self._last_arrival = time.monotonic()
        self.session_ended = threading.Event()  # a retiring slot: drained, its broker session ended
        self.finished = threading.Event()  # ... and its spill written to InfluxDB: retired
        self._retirer: threading.Thread | None = None
        self.client = make_client(
            config.mqtt,
            client_id=cid,
            persistent_session=True,
            manual_ack=True,
            server=True,
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe

    # --- paho thread ---------------------------------------------------------------------------
    def _on_connect(self, client: paho.Client, _u: object, flags: object, reason: object, _p: object) -> None:
        if not reason_ok(reason):
            log.warning("ingest: broker refused the connection: %s", reason)
            return
        if self._partitioned:
            kept = bool(getattr(flags, "session_present", False))
            with self._ack_lock:  # the previous connection's packets are gone with it
                self._sub_mids.clear()
                self._confirmed.clear()
            try:
                self.sync_subscriptions(session_kept=kept)
            except Exception:  # the store busy, say: the batch loop does it on its next turn
                log.exception("ingest: subscribing on connect failed; the batch loop tries again")
                self._sync_on_connect = kept
                self._next_sync = 0.0
        else:
            client.subscribe([(contract.READINGS_FILTER, 1)])
        if self.retiring is None:
            client.subscribe([(contract.STATUS_FILTER, 1)])  # retained: every gateway's latest, at once
        self._disconnected_at = None
        self._connected_mono, self._batched_since_connect = time.monotonic(), False
        self.connected.set()
        log.info("ingest connected to %s", safe_url(self.config.mqtt.url))

    def _on_subscribe(
        self, _c: paho.Client, _u: object, mid: int, reasons: list[ReasonCode], _p: Properties | None
    ) -> None:
        with self._ack_lock:
            filters = self._sub_mids.pop(mid, None)
            if filters is not None:
                refused = [f for f, rc in zip(filters, reasons, strict=False) if not reason_ok(rc)]
                self._confirmed.extend(f for f, rc in zip(filters, reasons, strict=False) if reason_ok(rc))
        if filters is not None and refused:
            log.error(
                "ingest: the broker refused %d subscriptions, e.g. %s: %s", len(refused), refused[0], reasons
            )
        self.subscribed.set()

    def _on_unsubscribe(self, _c: paho.Client, _u: object, mid: int, _r: object, _p: object) -> None:
        with self._ack_lock:
            self._unsub_mids.discard(mid)
        self._last_arrival = time.monotonic()  # a retiring slot's quiet second counts from here

    def _on_disconnect(self, _c: paho.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        with self._ack_lock:  # gone with the connection: the reconnect's sync unsubscribes again
            self._unsub_mids.clear()
        self.connected.clear()
        self.subscribed.clear()
        self._disconnected_at = time.monotonic()
        if not reason_ok(reason):
            log.warning("ingest disconnected (%s); unacknowledged messages will be redelivered", reason)

    def _on_message(self, client: paho.Client, _u: object, m: paho.MQTTMessage) -> None:
        topic = m.topic  # decoded from bytes at every read
        if topic.endswith("/status") and topic.count("/") == 5:  # a gateway's status: not a reading
            with self._gw_lock:
                self.gateways.feed(topic, bytes(m.payload), self.clock())
            if m.qos > 0:
                client.ack(m.mid, m.qos)
            return
        self._last_arrival = self._last_reading = time.monotonic()
        self._queue.put(
            _Incoming(
                Message(topic, bytes(m.payload), self.clock()), m.mid, m.qos, self._last_arrival, queued_s(m)
            )
        )

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._take_slot()
        try:
            dsp_kernels.warm()  # compiled (or loaded from numba's cache) before the first message
            connect(self.client, self.config.mqtt, persistent_session=True)
        except BaseException:
            self._release_slot()
            raise
        self._worker = threading.Thread(target=self._run, name="nabz-ingest", daemon=True)
        self._worker.start()
        if self.health is not None:
            self.health.start()
        if self.retiring is None and (self.config.ingest.worker == 0 or self.config.ingest.workers == 1):
            self._retirer = threading.Thread(target=self._retire_left_behind, name="nabz-retire", daemon=True)
            self._retirer.start()

    def stop(self) -> None:
        self._stop.set()
        if self._retirer is not None:
            self._retirer.join(timeout=20)
        if self._worker is not None:
            self._worker.join(timeout=10)
        try:
            if self.health is not None:
                self.health.stop()
            self.client.disconnect()
            self.client.loop_stop()
            if self.sink is not None:
                self.sink.close()
                if self.finished.is_set():
                    _put_away(self.sink.spill.dir)
        finally:
            self._release_slot()

    def _take_slot(self) -> None:
        """This slot's lock; refused when the slot runs already, or other slots run with another
        `workers` (ingest.slots)."""
        ic = self.config.ingest
        path = lock_path(ic.store_path, self.instance)
        try:
            self._slot_lock = SlotLock.take(path, ic.workers)
        except SlotBusy as exc:
            raise ConfigError(
                f"ingest slot {self.instance} is running already ({exc}) with the store {ic.store_path}: "
                "two processes in one slot would split its patients' streams"
            ) from None
        if self.retiring is not None:
            return
        other = {
            c: w
            for c, (_pid, w) in slot_holders(ic.store_path, self._base_client_id).items()
            if w != ic.workers
        }
        if other:
            self._release_slot()
            c, w = min(other.items())
            raise ConfigError(
                f"ingest slot {c} runs with workers = {w}, this one has workers = {ic.workers}: stop every "
                "ingest worker and start them all with the same workers (docs/scale.md)"
            )

    def _release_slot(self) -> None:
        if self._slot_lock is not None:
            self._slot_lock.release(remove=self.retiring is not None and self.finished.is_set())
            self._slot_lock = None

    def _retire_left_behind(self) -> None:
        """Worker 0 (or the single worker): drain and end each slot a change of `workers` left
        behind (ingest.slots), each on a thread of its own under its lock, once this worker is
        subscribed; looked for again every minute (a slot whose retiring failed is found again:
        its lock file stays until it is retired)."""
        ic = self.config.ingest
        while not self.subscribed.wait(1.0):
            if self._stop.is_set():
                return
        running: dict[str, threading.Thread] = {}
        while not self._stop.is_set():
            try:
                seen = (
                    set(self.store.subscription_clients()) | set(self._spill_slots())
                    | set(lock_slots(ic.store_path))
                )  # fmt: skip
            except (sqlite3.Error, OSError) as exc:
                log.warning("ingest: could not look for slots left behind (%s); trying again later", exc)
                seen = set()
            for slot in retired_slots(self._base_client_id, ic.workers, seen):
                if slot not in running or not running[slot].is_alive():
                    running[slot] = threading.Thread(
                        target=self._retire, args=(slot,), name=f"nabz-retire-{slot}", daemon=True
                    )
                    running[slot].start()
            self._stop.wait(_RETIRE_SCAN_S)
        for thread in running.values():
            thread.join(timeout=15)

    def _retire(self, slot: str) -> None:
        """Drain and end one slot left behind; on any failure it is tried again at the next look."""
        svc: IngestService | None = None
        try:
            svc = IngestService(  # (not the configuration's [enrolment] again: this worker applied it)
                msgspec.structs.replace(self.config, enrolment={}), store=self.store,
                client_id=self._base_client_id, retiring=slot, on_vitals=self.on_vitals, clock=self.clock,
            )  # fmt: skip
            svc.start()
        except Exception as exc:  # running (another workers), its spill in use, the broker away ...
            log.error("ingest: slot %s, left behind by a change of workers, not drained: %s", slot, exc)
            if svc is not None and svc.sink is not None:
                svc.sink.close()  # its spill directory, for the next look
            return
        log.info("ingest: draining slot %s, left behind by a change of workers", slot)
        try:
            while not self._stop.wait(0.5):
                if svc.session_ended.is_set():
                    if svc.sink is None or not svc.sink.spill:  # its spill is in InfluxDB too
                        svc.finished.set()
                        break
                elif svc._worker is None or not svc._worker.is_alive():
                    log.error("ingest: slot %s: its broker session could not be ended; trying again", slot)
                    break
        finally:
            svc.stop()
        if svc.finished.is_set():
            log.warning(
                "ingest: slot %s, left behind by a change of workers, drained (%d messages stored) and "
                "its broker session ended", slot, svc.totals.stored,
            )  # fmt: skip

    def _spill_slots(self) -> list[str]:
        """Client ids with a spill directory where this configuration keeps them."""
        if not self.config.influx.url:
            return []
        parent, prefix = _spill_place(self.config)
        if not parent.is_dir():
            return []
        return [p.name[len(prefix) :] for p in parent.iterdir() if p.is_dir() and p.name.startswith(prefix)]

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    # --- worker --------------------------------------------------------------------------------
    def sync_subscriptions(self, *, session_kept: bool | None = None) -> None:
        """Subscribe to the devices of the patients this worker owns, and let go of the others
        (ingest.partition.holding): a device moved to another worker once that worker's
        subscription to it is confirmed. The batch loop calls this every 2 s; `_on_connect`
        right after a CONNACK, with `session_kept` (did the broker keep this slot's session?).

        On a kept session the broker has this slot's subscriptions from before, some perhaps for
        devices moved away meanwhile (the broker would share their readings with the new owner):
        it unsubscribes from every enrolled device it is not to hold, noted or not."""
        if self.retiring is not None:
            self._sync_retiring(session_kept)
            return
        ic = self.config.ingest
        group = ic.share_group
        with self._sub_lock:
            self._note_confirmed()
            self.core.refresh_enrolment()
            enrolment = self.core.enrolment
            owned = owned_devices(enrolment, ic.worker, ic.workers)
            noted = self.store.subscriptions(self.instance)  # filter -> confirmed
            if session_kept is False:  # a new session at the broker: it holds nothing of ours
                noted = dict.fromkeys(noted, False)
            held = {d for f in noted if (d := filter_device(f, group)) is not None}
            hold = holding(owned, held, enrolment, self._taken_over(held - owned, enrolment))
            want = {device_filter(d, group) for d in hold}
            # On connect all of them: a new session has none, and on a kept one subscribing again
            # changes nothing but makes sure (a SUBSCRIBE noted may never have got there).
            new = want - set(noted) if session_kept is None else want
            gone = set(noted) - want
            if session_kept:
                gone |= {device_filter(d, group) for d in enrolment} - want
            self.store.note_subscriptions(
                self.instance, added=new, removed=gone, unconfirm_all=session_kept is False
            )
            gone_list = sorted(gone)  # first: once a SUBACK comes (`subscribed`), they are gone
            for i in range(0, len(gone_list), 100):
                self.client.unsubscribe(gone_list[i : i + 100])
            new_list = sorted(new)
            for i in range(0, len(new_list), 100):
                part = new_list[i : i + 100]
                with self._ack_lock:  # its SUBACK may come before subscribe() returns
                    _rc, mid = self.client.subscribe([(f, 1) for f in part])
                    if mid is not None:
                        self._sub_mids[mid] = part
            kept_moved = hold - owned
            if kept_moved - (self.holding - owned):
                log.info(
                    "ingest worker %d/%d: keeps %d moved devices (e.g. %s) until their new worker has subscribed",
                    ic.worker, ic.workers, len(kept_moved), min(kept_moved),
                )  # fmt: skip
            self.holding = hold
        if new or gone or session_kept is not None:
            log.info(
                "ingest worker %d/%d: +%d -%d devices",
                ic.worker,
                ic.workers,
                len(new),
                len(set(noted) - want),
            )

    def _sync_retiring(self, session_kept: bool | None) -> None:
        """A slot left behind: it owns nothing, and lets each device go once the device's owner has
        a confirmed subscription. On a kept session it holds every enrolled device, noted or not,
        until then (a note goes before its UNSUBSCRIBE: a kill or a lost connection between them
        leaves a subscription no note lists; unsubscribing a filter it never had is harmless).
        The single worker's session
        (a plain subscription to every reading) is first made one shared subscription per enrolled
        device not yet taken over, then its plain one dropped (in that order: never a moment
        without a subscriber), so each device is handed over on its own, as a moved device is."""
        group = self.config.ingest.share_group
        with self._sub_lock:
            self._note_confirmed()
            self.core.refresh_enrolment()
            enrolment = self.core.enrolment
            noted = self.store.subscriptions(self.instance)
            if session_kept is False:  # a new session: the broker kept nothing of this slot
                self.store.note_subscriptions(self.instance, removed=set(noted))
                self.holding, self._convert = set(), False
                return
            if session_kept:  # what it may have at the broker: any enrolled device, noted or not
                if self.instance == self._base_client_id:
                    self._convert = True
                unnoted = sorted(f for d in enrolment if (f := device_filter(d, group)) not in noted)
                self.store.note_subscriptions(self.instance, added=unnoted)
                noted = {**noted, **dict.fromkeys(unnoted, False)}
            if self._convert:
                mine = {d for d in enrolment if d not in self._taken_over(set(enrolment), enrolment)}
                per_device = sorted(device_filter(d, group) for d in mine)
                for i in range(0, len(per_device), 100):
                    part = per_device[i : i + 100]
                    with self._ack_lock:
                        rc, mid = self.client.subscribe([(f, 1) for f in part])
                        if rc != paho.MQTT_ERR_SUCCESS:  # not connected: all again at the reconnect
                            return
                        if mid is not None:
                            self._sub_mids[mid] = part
                self._unsubscribe([contract.READINGS_FILTER])
                self._convert = False
            held = {d for f in noted if (d := filter_device(f, group)) is not None}
            hold = holding(set(), held, enrolment, self._taken_over(held, enrolment))
            gone = {f for f in noted if filter_device(f, group) not in hold}
            self.store.note_subscriptions(self.instance, removed=gone)
            self._unsubscribe(sorted(gone))
            self.holding = hold

    def _unsubscribe(self, filters: list[str]) -> None:
        """A retiring slot's UNSUBSCRIBEs, each awaited (`_retired`); one not sent (no connection)
        is sent again at the reconnect, which unsubscribes whatever the slot does not hold."""
        for i in range(0, len(filters), 100):
            with self._ack_lock:
                rc, mid = self.client.unsubscribe(filters[i : i + 100])
                if rc == paho.MQTT_ERR_SUCCESS and mid is not None:
                    self._unsub_mids.add(mid)
        if filters:
            self._last_arrival = time.monotonic()

    def _retired(self, pending: list[_Incoming]) -> bool:
        """A retiring slot that holds nothing and has stored all it got: end its broker session
        (its spill, if InfluxDB is down, is written afterwards: `_retire` waits for it). True:
        the batch loop ends (`session_ended` says whether the session did; if not, the slot is
        tried again at worker 0's next look)."""
        quiet = time.monotonic() - self._last_arrival >= _RETIRE_QUIET_S
        with self._ack_lock:
            unacknowledged = bool(self._unsub_mids)
        if pending or self.holding or self._convert or unacknowledged or not quiet:
            return False
        if not self._queue.empty() or not self.connected.is_set():
            return False
        self.client.disconnect()
        self.client.loop_stop()
        if not end_session(self.config.mqtt, self.instance):
            return True
        try:
            self.store.note_subscriptions(self.instance, removed=set(self.store.subscriptions(self.instance)))
        except sqlite3.Error:
            pass  # notes of a session that no longer exists: the next look finds nothing at the broker
        self.session_ended.set()
        return True

    def _taken_over(self, moved: set[str], enrolment: dict[str, str]) -> set[str]:
        """Of these devices (held, owned by other workers now), those whose owner's session has a
        confirmed subscription to them."""
        ic = self.config.ingest
        if not moved:
            return set()
        if ic.workers == 1:  # the single worker, subscribed to every reading (before it retires anyone)
            return {d for d in moved if d in enrolment}
        owner = {
            d: slot_client_id(self._base_client_id, owner_of(enrolment[d], ic.workers), ic.workers)
            for d in moved
            if d in enrolment
        }
        filters = {device_filter(d, ic.share_group): d for d in owner}
        confirmed = self.store.confirmed_subscriptions(list(filters))
        return {d for f, d in filters.items() if (owner[d], f) in confirmed}

    def _note_confirmed(self) -> None:
        """Note in the store the subscriptions the broker has acknowledged since the last call."""
        with self._ack_lock:
            done, self._confirmed = self._confirmed, []
        if not done:
            return
        try:
            self.store.note_subscriptions(self.instance, confirmed=done)
        except Exception:
            with self._ack_lock:
                self._confirmed[:0] = done
            raise

    def _run(self) -> None:
        pending: list[_Incoming] = []
        while not self._stop.is_set():
            self._loop_at = time.monotonic()
            self._housekeeping()
            if self.sink is not None and time.monotonic() >= self._next_prune:
                # InfluxDB is the store: the embedded one is a dedup ledger of dedup_window_h and
                # the nurse station's recent vitals. A little at a time, so a turn of this loop
                # is never held up long: up to _PRUNE_ROWS a second, more than a worker stores.
                self._next_prune = time.monotonic() + 1.0
                now, ic = self.clock(), self.config.ingest
                try:
                    self._pruned[0] += self.store.prune(
                        now - ic.dedup_window_h * 3600.0, max_rows=_PRUNE_ROWS
                    )
                    vitals_before = int((now - ic.vitals_window_h * 3600.0) * 1e9)
                    self._pruned[1] += self.store.prune_vitals(vitals_before, max_rows=_PRUNE_ROWS)
                except sqlite3.Error as exc:  # e.g. locked by other workers: storing comes first
                    log.warning("ingest: pruning the embedded store failed (%s); trying again later", exc)
                    self._next_prune = time.monotonic() + 30.0
                if time.monotonic() >= self._next_prune_log and any(self._pruned):
                    self._next_prune_log = time.monotonic() + 600.0
                    log.info(
                        "ingest: pruned %d messages older than the dedup window and %d derived vitals"
                        " older than ingest.vitals_window_h", *self._pruned,
                    )  # fmt: skip
                    self._pruned = [0, 0]
            if self._confirmed:  # SUBACKs: noted at once, a moved device's old owner is waiting
                self._try("noting confirmed subscriptions", self._note_confirmed)
            if time.monotonic() >= self._next_sync and (self.connected.is_set() or not self._partitioned):
                # a retiring slot lets go of a device as soon as its owner has it: shares are split meanwhile
                self._next_sync = time.monotonic() + (_SYNC_S if self.retiring is None else _RETIRE_SYNC_S)
                if self._partitioned:
                    kept, self._sync_on_connect = self._sync_on_connect, None
                    if not self._try("subscribing", partial(self.sync_subscriptions, session_kept=kept)):
                        self._sync_on_connect = kept
                else:  # a gateway binding added to an enrolled device, say
                    self._try("reading the enrolment", self.core.refresh_enrolment)
            if not pending:
                pending = self._take_batch()
                if not pending:
                    if self.retiring is not None and self._retired(pending):
                        return
                    continue
            self._pending_head, self._batch_started = pending[0], time.monotonic()
            self._batch_connected = self._connected_mono
            try:
                result = self.core.handle_batch([i.msg for i in pending])
            except SinkError as exc:
                self.batch_failures += 1
                log.error("ingest: %s; holding %d messages unacknowledged and retrying", exc, len(pending))
                self._stop.wait(1.0)
                continue
            except Exception as exc:
                self.batch_failures += 1
                if _store_unavailable(exc):
                    self._store_failed(exc, len(pending))
                    continue
                # A bug, not bad input (bad input is dead-lettered): find the message, if it is one.
                log.exception("ingest: a batch of %d failed; trying its messages one by one", len(pending))
                pending = self._one_by_one(pending)
                if pending and self._store_trouble is None:
                    self._stop.wait(1.0)
                continue
            self._done(pending, result)
            pending = []

    def _try(self, what: str, do: Callable[[], object]) -> bool:
        """Housekeeping that needs the store: a failure is logged and tried again later (raised,
        it would end the batch loop)."""
        try:
            do()
        except sqlite3.Error as exc:
            log.warning("ingest: %s failed on the embedded store (%s); trying again later", what, exc)
            return False
        return True

    def _store_failed(self, exc: BaseException, held: int) -> None:
        """The store cannot take a batch: hold it unacknowledged, wait (backoff), retry."""
        self.store_failures += 1
        self._store_trouble = f"{type(exc).__name__}: {exc}"[:200]
        self._store_failures_in_row += 1
        first, most = _STORE_RETRY_S
        wait_s = min(most, first * 2.0 ** min(self._store_failures_in_row - 1, 16))
        log.error(
            "ingest: the embedded store cannot take a batch (%s); holding %d messages unacknowledged,"
            " retrying in %.1f s", self._store_trouble, held, wait_s,
        )  # fmt: skip
        self._stop.wait(wait_s)

    def _done(self, items: list[_Incoming], result: BatchResult) -> None:
        if self._store_trouble is not None:
            log.info("ingest: the embedded store takes batches again")
            self._store_trouble = None
            self._store_failures_in_row = 0
        self.client.ack_many([item.mid for item in items if item.qos == 1])  # in arrival order
        if self.retiring is not None:  # the broker sends what it still has as these acks free room
            self._last_arrival = time.monotonic()
        for item in items:
            if item.qos == 2:
                self.client.ack(item.mid, item.qos)
        if items:
            now, started = time.monotonic(), self._batch_started
            self._last_lag_s = now - items[0].mono
            # how long they waited to be taken: the broker's queue, then ours until the batch began
            self._behind_s = self._last_behind_s = max(i.queued + started - i.mono for i in items)
            self._pending_head = None
            # (a batch taken before a reconnection says nothing of what the broker kept meanwhile)
            self._batched_since_connect |= self._batch_connected == self._connected_mono
        self._account(result)
        self._publish_vitals(result.vitals)

    def _one_by_one(self, items: list[_Incoming]) -> list[_Incoming]:
        """Each message of a failed batch alone; one that still fails is dead-lettered
        `internal_error` with its payload. Returns what is left when the store or sink fails."""
        for k, item in enumerate(items):
            try:
                result = self.core.handle_batch([item.msg])
            except SinkError:
                return items[k:]
            except Exception as exc:
                if _store_unavailable(exc):
                    self._store_failed(exc, len(items) - k)
                    return items[k:]
                log.exception("ingest: message on %s fails on its own: dead-lettered", item.msg.topic)
                try:
                    with self.store.batch():
                        self.store.dead_letter(
                            item.msg.topic, item.msg.payload, "internal_error",
                            f"{type(exc).__name__}: {exc}"[:500], item.msg.received_at,
                        )  # fmt: skip
                except Exception as exc2:
                    log.exception("ingest: cannot dead-letter either; retrying later")
                    if _store_unavailable(exc2):
                        self._store_failed(exc2, len(items) - k)
                    return items[k:]
                self.internal_errors += 1
                result = BatchResult(dead_lettered=1)
            self._done([item], result)
        return []

    # --- telling people how it goes ------------------------------------------------------------
    def _housekeeping(self) -> None:
        now = time.monotonic()
        ic = self.config.ingest
        if self.retiring is not None:  # no heartbeat, statistics or rates: a passing helper of worker 0
            return
        if ic.heartbeat_s > 0 and self._beat_due(now, ic.heartbeat_s) and self.connected.is_set():
            self._next_heartbeat = now + ic.heartbeat_s
            self._last_heartbeat = now
            self._heartbeat()
        if self.sink is not None and ic.stats_interval_s > 0 and now >= self._next_stats:
            self._next_stats = now + ic.stats_interval_s
            self._write_stats()
        self.rates.add(self._totals(), now)

    def _beat_due(self, now: float, interval_s: float) -> bool:
        """Every `interval_s`; every _BEHIND_BEAT_S while behind by that much, until a heartbeat has
        said it is within _CAUGHT_UP_S (gateways hold their readings meanwhile, and send again at
        that one: gateway.pause). After a connection, not before the first batch is stored (what
        the broker kept meanwhile comes first: a heartbeat then would say 0 behind, and every
        paused gateway would send its backlog on top of it), unless nothing comes within half a
        second; at most 5 s later in any case (a batch held because the store fails)."""
        if not self._batched_since_connect:
            quiet, most = _FIRST_BEAT_S
            since = now - self._connected_mono
            if since < most and (since < quiet or self._last_reading > self._connected_mono):
                return False
        if now >= self._next_heartbeat:
            return True
        fast = self._behind_now(now) >= _BEHIND_BEAT_S or self._said_behind_s >= _CAUGHT_UP_S
        return fast and now - self._last_heartbeat >= min(_BEHIND_BEAT_S, interval_s)

    def _behind_now(self, now: float) -> float:
        """How far behind for the heartbeat: the latest stored batch's longest wait, or the wait
        so far of the batch being stored (held while the store or InfluxDB fails), if longer."""
        head = self._pending_head
        pending = 0.0 if head is None else head.queued + now - head.mono
        return max(self._behind_s or 0.0, pending)

    def _heartbeat(self) -> None:
        problems = []
        if self._store_trouble is not None:
            problems.append(f"the embedded store cannot take readings ({self._store_trouble})")
        if self.sink is not None and self.sink.spill:
            problems.append(f"InfluxDB down: {self.sink.spill.pending_lines} lines wait in the spill")
        detail = "; ".join(problems) or None
        hb = contract.Heartbeat(
            site=self.config.site,
            service="ingest",
            instance=self.instance,
            t=datetime.fromtimestamp(self.clock(), UTC),
            interval_s=self.config.ingest.heartbeat_s,
            state="degraded" if detail else "ok",
            detail=detail,
            taking=self._store_trouble is None,
            behind_s=round(self._behind_now(time.monotonic()), 3),
        )
        self._said_behind_s, self._behind_s = hb.behind_s or 0.0, None
        self.client.publish(
            contract.heartbeat_topic(self.config.site, self.instance), contract.encode(hb), qos=0
        )
        self.heartbeats += 1

    def _totals(self) -> Totals:
        t = self.totals
        return Totals(t.stored, t.stored_readings, t.dead_lettered, t.duplicates)

    def _write_stats(self) -> None:
        assert self.sink is not None
        ic = self.config.ingest
        with self._gw_lock:
            gateways = self.gateways.snapshot() if ic.worker == 0 else []
        t_ns = int(self.clock() * 1e9)
        try:
            self.sink.write(ops_lines(self.config.site, ic.worker, self._totals(), gateways, t_ns))
        except SinkError as exc:
            log.warning("ingest: operations statistics not written: %s", exc)

    def problems(self) -> list[str]:
        """Why this worker is not healthy now (empty: healthy): for /healthz."""
        now = time.monotonic()
        out = []
        if self._disconnected_at is not None and now - self._disconnected_at > _DISCONNECTED_S:
            out.append(f"not connected to the broker for {now - self._disconnected_at:.0f} s")
        if self._worker is None or not self._worker.is_alive():
            out.append("the batch loop is not running")
        elif now - self._loop_at > _STUCK_S:
            out.append(f"the batch loop has not turned for {now - self._loop_at:.0f} s")
        head = self._pending_head
        if head is not None and now - head.mono > _LAG_S:
            out.append(f"messages wait {now - head.mono:.0f} s to be stored")
        if self._store_trouble is not None:
            out.append(f"the embedded store cannot take readings ({self._store_trouble}); they are held")
        if self.sink is not None and self.sink.stranded:
            out.append(
                f"{self.sink.stranded} InfluxDB spill segments of an older version wait in "
                f"{self.sink.spill.dir.parent}: move them into {self.sink.spill.dir} (docs/operations.md)"
            )
        return out

    def metrics(self) -> list[Metric]:
        t = self._totals()
        msg_rate, reading_rate = self.rates.per_second()
        labels = {"worker": str(self.config.ingest.worker)}
        dead = self.store.counters()
        by_reason = [
            ({"reason": name.split(".", 1)[1]}, float(v))
            for name, v in dead.items()
            if name.startswith("dead_letters.")
        ]
        head = self._pending_head
        pending = 0.0 if head is None else time.monotonic() - head.mono
        out = [
            Metric("nabz_ingest_stored_messages_total", "messages stored by this worker since it started", "counter",
                   ((labels, t.stored_messages),)),
            Metric("nabz_ingest_stored_readings_total", "readings stored by this worker since it started", "counter",
                   ((labels, t.stored_readings),)),
            Metric("nabz_ingest_dead_letters_total", "messages this worker dead-lettered since it started", "counter",
                   ((labels, t.dead_letters),)),
            Metric("nabz_ingest_duplicates_total", "redelivered messages discarded since it started", "counter",
                   ((labels, t.duplicates),)),
            Metric("nabz_ingest_store_dead_letters_total", "dead letters in the store, by reason (all workers)",
                   "counter", by_reason),
            Metric("nabz_ingest_messages_per_second", "messages stored per second, last minute", "gauge",
                   ((labels, round(msg_rate, 3)),)),
            Metric("nabz_ingest_readings_per_second", "readings stored per second, last minute", "gauge",
                   ((labels, round(reading_rate, 3)),)),
            Metric("nabz_ingest_queue_messages", "messages received and not yet in a batch", "gauge",
                   ((labels, self.backlog),)),
            Metric("nabz_ingest_lag_seconds", "age of the oldest message not yet stored (0: none)", "gauge",
                   ((labels, round(pending, 3)),)),
            Metric("nabz_ingest_last_batch_lag_seconds", "receipt to storage of the last batch's first message",
                   "gauge", ((labels, round(self._last_lag_s, 3)),)),
            Metric("nabz_ingest_behind_seconds", "the longest wait of the last batch's messages, in the broker's"
                   " queue and ingest's", "gauge", ((labels, round(self._last_behind_s, 3)),)),
            Metric("nabz_ingest_internal_errors_total", "messages dead-lettered because ingest failed on them",
                   "counter", ((labels, self.internal_errors),)),
            Metric("nabz_ingest_batch_failures_total", "batches that failed and were retried", "counter",
                   ((labels, self.batch_failures),)),
            Metric("nabz_ingest_store_failures_total", "batches the embedded store could not take (held, retried)",
                   "counter", ((labels, self.store_failures),)),
            Metric("nabz_ingest_vitals_not_stored_total", "derived vitals published but not in the embedded store",
                   "counter", ((labels, self.core.not_stored_vitals),)),
            Metric("nabz_ingest_broker_connected", "1 while connected to the broker", "gauge",
                   ((labels, float(self.connected.is_set())),)),
            Metric("nabz_ingest_heartbeats_total", "heartbeats published", "counter", ((labels, self.heartbeats),)),
        ]  # fmt: skip
        if self.sink is not None:
            out += [
                Metric("nabz_ingest_influx_spill_lines", "lines waiting in the disk spill (database down)", "gauge",
                       ((labels, float(self.sink.spill.pending_lines)),)),
                Metric("nabz_ingest_influx_points_written_total", "lines written to InfluxDB", "counter",
                       ((labels, float(self.sink.points_written)),)),
                Metric("nabz_ingest_influx_rejected_lines_total", "lines InfluxDB refused as malformed", "counter",
                       ((labels, float(self.sink.rejected_lines)),)),
            ]  # fmt: skip
        with self._gw_lock:
            out += gateway_metrics(self.gateways.snapshot())
        return out

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
        for topic, batch in contract.vitals_messages(vitals):
            self.client.publish(topic, contract.encode(batch), qos=1)
        if vitals and self.on_vitals is not None:
            self.on_vitals(vitals)
