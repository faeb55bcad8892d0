"""The gateway runner: transport -> decode -> spool -> MQTT, one step at a time.

Rules of this file:
- One thread owns the spool and calls `step()`; paho's network thread only puts acknowledgements
  and connection changes on a queue. Status messages are built and published by the owner thread.
- A spool row is handed to paho once per process. paho resends unacknowledged QoS 1 messages
  itself after a reconnect; after a gateway restart every row still in the spool is sent again.
  Either way the message id is unchanged, so ingest stores it once.
- Rows are deleted only on PUBACK, so a broker outage, a network outage or a `kill -9` loses nothing.
- Waveform frames pass the gap tracker (gateway.gaps) before they get a message id: a duplicate
  is dropped, a jump in sequence numbers becomes a RESEND request to the device, and frames that
  never come back are counted and reported. The tracker's state and the transport's checkpoint are
  stored in the same transaction as the readings they describe.
- A reading the broker acknowledges with "No matching subscribers" (nobody on the server takes
  that device's readings yet: not enrolled, or ingest not subscribed) stays in the spool, and
  the device's later readings are held back with it until a probe is taken (gateway.hold). Rows
  of a held device left in the spool (a move a full card cut short) are not sent: they go out
  after it, moved to the end of the spool with its held rows, and the move is tried again at
  the device's probe time.
- The status (retained) is published at birth, every `status_interval_s`, and at once when
  something a person must know happens: a device lost or found, an unrecoverable gap, a spool
  overflow, a message the broker refused, a device whose readings nobody takes.
- Readings stay in the spool while ingest is known to be away (gateway.pause): heard before, then
  not heard taking readings for three of its heartbeat intervals (30 s at least) while connected.
  A stopped ingest's session has the broker acknowledge readings and queue them, then drop what
  is over its limit.
- The gateway watches the server's heartbeats (gateway.deadman): silent too long, it logs an
  error and, with a modem (`gateway.deadman.modem`), texts the on-call numbers itself. Whom it
  would text is checked before anything starts (nobody, or the demo's placeholder number, is a
  configuration error); the dead-man measures on the monotonic clock and keeps its state in the
  spool (a mark), so a restart or an NTP step neither forgets an outage nor invents one.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho

from alerts.notify import Notifier, reaches_phone
from alerts.oncall import Schedule
from firmware import nabz_codec as codec
from gateway.deadman import (
    DeadMan,
    DeadManSender,
    HeartbeatWatch,
    deadman_schedule,
    dump,
    recipients,
    restore,
)
from gateway.decode import Decoder, Notification, normalize_uuid, utc_from_us
from gateway.gaps import Expired, GapTracker, Verdict
from gateway.hold import NO_MATCHING_SUBSCRIBERS, Holds
from gateway.pause import SendPause
from gateway.spool import Spool, SpooledMessage
from gateway.transport import LinkHealth, Transport
from nabz import contract
from nabz.config import Config
from nabz.contract import DeviceHealth, GatewayStatus, Rejected
from nabz.mqtt import READING_PROPERTIES, Will, connect, make_client, reason_ok
from nabz.secrets import safe_url

__all__ = ["Gateway", "GatewayStats"]

log = logging.getLogger(__name__)

Clock = Callable[[], float]

_KIND = {"ecg": codec.WAVE_KIND_ECG, "ppg": codec.WAVE_KIND_PPG}
_GAPS = "gaps/"  # spool marks: gap tracker state per device/stream
_CLOCK = "clock/"  # spool marks: each device's clock offset, so a restart keeps data time continuous
_TRANSPORT = "transport/"  # spool marks: the transport's checkpoint
_DEADMAN = "deadman/state"  # spool mark: the dead-man's state (gateway.deadman.dump)
_PAUSE = "pause/state"  # spool mark: ingest heard, and found away (gateway.pause.SendPause.saved)
_DEADMAN_SAVE_S = 5.0  # the dead-man's state is saved this often (and at once when it texts)


@dataclass(frozen=True, slots=True)
class GatewayStats:
    generated: int  # readings the transport's devices produced (virtual transport only, else 0)
    spooled: int  # readings decoded and written to the spool by this process
    published: int  # readings the broker acknowledged (all time, from the spool's counters)
    spool_depth: int  # messages waiting
    dead_letters: int
    dropped: int  # readings dropped by the spool's overflow policy (all time)
    connected: bool
    duplicates: int = 0  # waveform frames received twice and dropped (this process)
    resent_frames: int = 0  # missing frames the devices sent again (all time)
    gap_frames: int = 0  # missing frames that never came back (all time)
    refused: int = 0  # messages the broker refused (this process)
    held: tuple[str, ...] = ()  # devices whose readings nobody on the server takes yet (kept)
    paused: bool = False  # readings kept in the spool: ingest not heard (gateway.pause)


class Gateway:
    """One home gateway: its devices, its spool, its broker connection."""

    def __init__(
        self,
        config: Config,
        transport: Transport,
        *,
        clock: Clock = time.time,
        monotonic: Clock | None = None,
        gateway_id: str | None = None,
        spool_path: str | None = None,
        deadman_notifier: Notifier | None = None,
        deadman_sender: DeadManSender | None = None,
    ) -> None:
        """`clock` is the wall clock (timestamps); `monotonic` measures the dead-man's silences
        (default: time.monotonic, or `clock` itself when a simulated one is given). A
        `deadman_sender` is used as it is (not started: tests drive it) instead of one made at
        start for `deadman_notifier` or the modem."""
        self.config = config
        self.site = config.site
        self.id = gateway_id or config.gateway.id
        self.transport = transport
        self.clock = clock
        self.mono: Clock = monotonic or (time.monotonic if clock is time.time else clock)
        dm = config.gateway.deadman
        texter = deadman_sender.notifier if deadman_sender is not None else deadman_notifier
        texting = reaches_phone(texter) if texter is not None else dm.modem
        self._schedule: Schedule | None = None
        if texting:  # before anything is opened: a gateway that would text nobody does not start
            self._schedule, to = deadman_schedule(dm.phones, config.oncall, config.alerts.on_call, clock())
            log.info("gateway %s: the dead-man texts %s", self.id, ", ".join(to))
        self.decoder = Decoder(self.site, self.id, new_id=contract.message_ids())
        self.spool = Spool(
            spool_path or config.gateway.spool_path, max_bytes=config.gateway.spool_max_mb * 1024 * 1024
        )
        self.gaps = GapTracker(timeout_s=config.gateway.resend_timeout_s)
        for name, text in self.spool.marks(_GAPS).items():
            device, _, stream = name[len(_GAPS) :].rpartition("/")
            self.gaps.load((device, stream), text)
        # the transport's checkpoint as last written: written again only when it changes (a
        # durable transaction per step for nothing, an fsync on the SD card each time)
        self._transport_marks = {k[len(_TRANSPORT) :]: v for k, v in self.spool.marks(_TRANSPORT).items()}
        self.transport.restore(self._transport_marks)
        for name, text in self.spool.marks(_CLOCK).items():
            self.decoder.clock.restore(name[len(_CLOCK) :], text)
        self.status_topic = contract.status_topic(self.site, self.id)
        self._events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wake = threading.Event()  # set with every event: `run` steps at once, not after its wait
        self._inflight: dict[int, tuple[int, str | None, str]] = {}  # paho mid -> (spool seq, device, id)
        self.holds = Holds()  # devices whose readings nobody takes yet (gateway.hold)
        # readings kept here while ingest is away (gateway.pause); a restart keeps it
        self.pause = SendPause(min_s=config.gateway.pause_after_s, behind_max_s=config.gateway.pause_behind_s)
        # every reading carries the queue clock (MQTT v5): ingest reads its wait in the broker's queue
        self._reading_props = READING_PROPERTIES if config.mqtt.protocol == "5" else None
        self.pause.restore(self.spool.marks(_PAUSE).get(_PAUSE, ""), self.mono())
        self._pause_saved = self.pause.saved()
        self._pause_save_tried = float("-inf")
        if self.pause.away:
            log.warning(
                "gateway %s: ingest was not heard when this gateway stopped; keeping readings in the "
                "spool until it is", self.id,
            )  # fmt: skip
        self.spool.taken = self.holds.releases  # their held rows are kept as the spool's (not dropped first)
        for device in self.spool.held_devices:  # held before a restart: held still, probed soon
            if not self.spool.releasing(device):
                self.holds.hold(device, self.mono())
            elif not self.spool.release(device):  # taken before it, the card full: finished now, or later
                self.holds.release_later(device, self.mono())
        self._probes: dict[int, tuple[str, str]] = {}  # paho mid -> (device, message id) of a probe
        self._sent_upto = 0  # highest spool seq handed to paho by this process
        # Rows the broker refused (a quota, an ACL being fixed) stay in the spool behind
        # `_sent_upto`: once `_retry_due` comes (monotonic), a round sends again every row up to
        # where the spool stood (`_retry_end`) that is not in flight, from `_retry_from` on. No
        # state per row. Rows held back (gateway.hold) are out of the spool until released, and
        # then at its end.
        self._retry_wait = _RETRY_FIRST_S  # doubles while refusals go on, back when one is accepted
        self._retry_due: float | None = None
        self._retry_from: int | None = None
        self._retry_end = 0
        self._refusals_logged_at = float("-inf")
        self._refusals_unlogged = 0
        self._connected = False
        self._spooled = 0
        self._duplicates = 0
        self._refused = 0
        self._next_status = 0.0
        self._last_status = float("-inf")
        self._status_now = False
        self._backlog: tuple[float, int, int] | None = None  # (since, messages, published readings)
        self._battery: dict[str, int] = {}
        self._device_state: dict[str, str] = {}  # what each wearable last said of itself (control STATUS)
        self._last_seen: dict[str, int] = {}  # device -> rx µs
        self.watch = HeartbeatWatch(dm.services, dm.after_s)
        self.deadman = DeadMan(self.site, self.id, dm.repeat_s, config.alerts.timezone)
        self._deadman_notifier = deadman_notifier
        self.deadman_sender: DeadManSender | None = deadman_sender
        self._outage_to: list[str] = []  # who was texted about the current outage
        self._deadman_saved_at = float("-inf")
        self._deadman_restored = False  # saved only once restored: never over a state not read yet
        self.client = make_client(
            config.mqtt,
            client_id=f"nabz-gw-{self.site}-{self.id}",
            will=Will(self.status_topic, self._offline_payload("connection lost (last will)")),
            max_inflight=config.gateway.max_inflight,
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message

    # --- paho thread -----------------------------------------------------------------------
    def _on_connect(self, _c: paho.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if reason_ok(reason):
            _c.subscribe(contract.heartbeat_filter(self.site), qos=0)
            self._post(("connected", True))
            log.info("gateway %s connected to %s", self.id, safe_url(self.config.mqtt.url))
        else:
            log.error("gateway %s: broker refused the connection: %s (retrying)", self.id, reason)

    def _on_disconnect(self, _c: paho.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        self._post(("connected", False))
        if reason_ok(reason):
            log.info("gateway %s disconnected", self.id)
        else:
            log.warning("gateway %s disconnected (%s); the spool keeps everything", self.id, reason)

    def _on_publish(self, _c: paho.Client, _u: object, mid: int, reason: object, _p: object) -> None:
        nobody = getattr(reason, "value", None) == NO_MATCHING_SUBSCRIBERS
        self._post(("ack", (mid, reason_ok(reason), str(reason), nobody)))

    def _on_message(self, _c: paho.Client, _u: object, m: paho.MQTTMessage) -> None:
        self._post(("heartbeat", (m.topic, bytes(m.payload))))

    def _post(self, event: tuple[str, Any]) -> None:
        self._events.put(event)
        self._wake.set()

    # --- owner thread ----------------------------------------------------------------------
    def start(self) -> None:
        self.transport.start(self._now_us())
        notifier = self._deadman_notifier
        if notifier is None and self.config.gateway.deadman.modem:
            from alerts.gsm import GsmNotifier

            notifier = GsmNotifier(self.config.modem)
        if notifier is not None and self.deadman_sender is None:
            self.deadman_sender = DeadManSender(notifier, clock=self.mono, wall=self.clock).start()
        self._restore_deadman()
        connect(self.client, self.config.mqtt)
        log.info(
            "gateway %s started: %d messages waiting in the spool, devices %s",
            self.id,
            self.spool.depth,
            ", ".join(self.transport.devices) or "(none yet)",
        )

    def step(self) -> int:
        """Poll, decode, spool, publish and process acknowledgements once; returns work done."""
        work = self._receive()
        work += self._link_events()
        work += self._process_events()
        now = self.clock()
        # Urgent news goes out at once, but no more than once a second of gateway time; after a
        # (re)connection the birth goes out before any reading.
        if now >= self._next_status or (self._status_now and now - self._last_status >= 1.0):
            self._next_status = now + self.config.gateway.status_interval_s
            self._last_status = now
            self._status_now = False
            self._publish_status()
        if self._connected and not self._paused():
            work += self._publish()
        self._watch_server(now)
        return work

    def run(self, stop: threading.Event, period_s: float = 0.05) -> None:
        """Step until `stop` is set (the gateway's main loop)."""
        while not stop.is_set():
            self._step_or_wait(period_s)

    def drain(self, timeout_s: float) -> bool:
        """Step until the spool is empty (everything acknowledged) or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._step_or_wait(0.02)
            if self.spool.depth == 0:
                return True
        return self.spool.depth == 0

    def _step_or_wait(self, wait_s: float) -> int:
        """One step; if it had nothing to do, wait until an event comes (the broker answers) or
        `wait_s` (for the wearables' data). A fixed wait after each window of `max_inflight`
        held a backlog to ~2,700 messages a second."""
        self._wake.clear()
        work = self.step()
        if work == 0:
            self._wake.wait(wait_s)
        return work

    def stop(self, *, graceful: bool = True) -> None:
        """Stop the transport; say goodbye (retained 'offline') when graceful; close the spool."""
        self.transport.stop()
        if graceful and self._connected:
            info = self.client.publish(self.status_topic, self._offline_payload("shutdown"), 1, True)
            try:
                info.wait_for_publish(timeout=2.0)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()
        if self.deadman_sender is not None:
            self.deadman_sender.stop()
        self._save_deadman()  # with the texts not yet delivered: the next start sends them
        self._connected = False
        local = self._local_status(contract.encode(self.status()), stopped=True)
        self.spool.save_status(json.dumps(local).encode(), self.clock())  # `gateway status`: not running
        self.spool.close()

    def stats(self) -> GatewayStats:
        resent = sum(st.resent_frames for st in self.gaps.streams.values())
        gap_frames = sum(st.gap_frames for st in self.gaps.streams.values())
        return GatewayStats(
            generated=int(getattr(self.transport, "readings_generated", 0)),
            spooled=self._spooled,
            published=self.spool.counter("published_readings"),
            spool_depth=self.spool.depth + self.spool.held_depth,
            dead_letters=self.spool.counter("dead_letters"),
            dropped=self.spool.counter("dropped_readings"),
            connected=self._connected,
            duplicates=self._duplicates,
            resent_frames=resent,
            gap_frames=gap_frames,
            refused=self._refused,
            held=tuple(sorted(self.holds.devices)),
            paused=self.pause.away or bool(self.pause.lagging),
        )

    def status(self) -> GatewayStatus:
        """The status as it would be published now."""
        now_us = self._now_us()
        links = self.transport.health(now_us)
        return GatewayStatus(
            site=self.site,
            gateway=self.id,
            state="online",
            t=utc_from_us(now_us),
            spool_depth=self.spool.depth + self.spool.held_depth,
            devices=self.transport.devices,
            spool_bytes=self.spool.size_bytes + self.spool.held_bytes,
            spool_dropped_readings=self.spool.counter("dropped_readings"),
            refused=self._refused,
            dead_letters=self.spool.counter("dead_letters"),
            held=sorted(self.holds.devices),
            paused=self.pause.away or bool(self.pause.lagging),
            behind=sorted(self.pause.lagging),
            health=[self._health(d, links.get(d)) for d in self.transport.devices],
        )

    # --- internals -------------------------------------------------------------------------
    def _now_us(self) -> int:
        return int(self.clock() * 1_000_000)

    def _receive(self) -> int:
        now_us = self._now_us()
        notes = self.transport.poll(now_us)
        rows: list[tuple[str, str, bytes, str, int]] = []
        resends: list[tuple[str, str, int, int]] = []
        for note in notes:
            self._last_seen[note.device] = note.rx_us
            if normalize_uuid(note.char) == codec.NABZ_CONTROL:
                self._control(note)
                continue
            reading, verdict = admit(self.decoder, self.gaps, note, now_us / 1e6)
            if reading is None:
                self._duplicates += 1
                continue
            if verdict is not None and verdict.resend is not None:
                wave = _stream_of_char(note.char)
                resends.append((note.device, wave, *verdict.resend))
                log.info(
                    "gateway %s: %s %s frames %d..%d missing; asking the device to resend",
                    self.id, note.device, wave, *verdict.resend,
                )  # fmt: skip
            elif verdict is not None and verdict.reason == "restart":
                log.warning(
                    "gateway %s: %s restarted its %s stream", self.id, note.device, _stream_of_char(note.char)
                )
            if isinstance(reading, Rejected):
                self._reject(note, reading)
                continue
            stream = contract.stream_of(reading)
            if isinstance(reading, contract.BatteryReading):
                self._battery[reading.device] = reading.battery_pct
            topic = contract.reading_topic(self.site, self.id, reading.device, stream)
            count = contract.reading_count(reading)
            rows.append((reading.id, topic, contract.encode(reading), stream, count))
            self._spooled += count
        for bad in self.transport.take_rejects():
            self.spool.dead_letter(bad.device, bad.char, bad.data, bad.reason, bad.detail)
            log.warning("gateway %s: bad input on %s: %s (%s)", self.id, bad.device, bad.reason, bad.detail)
        for lost in self.gaps.expire(now_us / 1e6):
            self._lost(lost, "never came back")
        marks = {f"{_GAPS}{d}/{s}": text for (d, s), text in self.gaps.take_changed().items()}
        marks.update({f"{_CLOCK}{d}": text for d, text in self.decoder.clock.take_changed().items()})
        checkpoint = {
            k: v for k, v in self.transport.checkpoint().items() if self._transport_marks.get(k) != v
        }
        marks.update({f"{_TRANSPORT}{k}": v for k, v in checkpoint.items()})
        if self.spool.put(rows, marks):
            self._status_now = True  # the overflow policy dropped readings: say so now
        self._transport_marks.update(checkpoint)
        for device, stream, first, last in resends:
            self._ask_resend(device, stream, first, last)
        return len(notes)

    def _lost(self, lost: Expired, why: str) -> None:
        device, stream = lost.key
        self._status_now = True
        log.error(
            "gateway %s: %s %s: %d frames from seq %d (about %d samples) %s: an unrecoverable gap",
            self.id, device, stream, lost.frames, lost.first_seq, lost.samples, why,
        )  # fmt: skip

    def _control(self, note: Notification) -> None:
        """A notification on the control characteristic: the device's answer to a RESEND, or a
        change of its state (docs/contract.md)."""
        try:
            msg = codec.control_notify_decode(note.data)
        except ValueError as exc:
            self._reject(note, Rejected("ble_decode", f"{codec.NABZ_CONTROL}: {exc}"))
            return
        if msg["op"] == codec.CTRL_OP_RESEND_REPORT:
            stream = "ecg" if msg["kind"] == codec.WAVE_KIND_ECG else "ppg"
            for lost in self.gaps.report(
                (note.device, stream), msg["first_seq"], msg["last_seq"], msg["resent_first_seq"],
                msg["resent_count"],
            ):  # fmt: skip
                self._lost(lost, "are no longer held by the device")
            return
        self._battery[note.device] = msg["battery_pct"]
        before = self._device_state.get(note.device)
        if (before or "ok") != msg["state"]:
            self._status_now = True
        self._device_state[note.device] = msg["state"]
        if before != msg["state"]:  # the wearable repeats its status (docs/contract.md): logged on change
            level = logging.INFO if msg["state"] == "ok" else logging.WARNING
            log.log(level, "gateway %s: %s reports its state: %s (battery %d %%)", self.id, note.device,
                    msg["state"], msg["battery_pct"])  # fmt: skip

    def _reject(self, note: Notification, why: Rejected) -> None:
        self.spool.dead_letter(note.device, note.char, note.data, why.reason, why.detail)
        log.warning("gateway %s: bad frame from %s: %s", self.id, note.device, why.detail)

    def _ask_resend(self, device: str, stream: str, first: int, last: int) -> None:
        data = codec.control_resend_encode(_KIND[stream], first, last)
        if not self.transport.write(device, codec.NABZ_CONTROL, data):
            log.info("gateway %s: cannot ask %s to resend now; will ask when it is back", self.id, device)

    def _watch_server(self, now: float) -> None:
        """The dead-man switch: text the on-call numbers when the server has been silent too long.
        `now` is the wall clock, for the text only; silences are measured on `self.mono`."""
        mono = self.mono()
        silence = self.watch.silence(mono, now)
        outage = self.deadman.outage
        texts = self.deadman.step(mono, silence, self._connected, wall=now)
        if self.deadman.outage != outage:
            self._outage_to = []  # a new outage: whoever is on call now
        for text in texts:
            if silence is not None:
                log.error("gateway %s: %s", self.id, text)
            else:
                log.warning("gateway %s: %s", self.id, text)
            self._status_now = True
            if self.deadman_sender is None:
                continue
            # those told of this outage hear of it to its end, and so does whoever is on call now
            self._outage_to = list(dict.fromkeys(self._outage_to + self._deadman_recipients(now)))
            key = f"deadman-{self.id}-{self.deadman.texts}"
            for phone in self._outage_to:
                self.deadman_sender.send(phone, text, key, self.deadman.outage)
        if texts or mono - self._deadman_saved_at >= _DEADMAN_SAVE_S:
            self._save_deadman()

    def _deadman_recipients(self, now: float) -> list[str]:
        dm = self.config.gateway.deadman
        schedule = self._schedule
        try:
            if schedule is None:
                return recipients(dm.phones, self.config.oncall, self.config.alerts.on_call, now)
            return recipients(dm.phones, schedule, [], now)
        except Exception:  # checked at start, so a bug: text someone rather than nobody
            log.exception(
                "gateway %s: dead-man: who is on call cannot be worked out; texting everyone", self.id
            )
            if schedule is not None:
                return list(dict.fromkeys(p.phone for p in schedule.everyone()))
            return list(dict.fromkeys(dm.phones or self.config.alerts.on_call))

    def _save_deadman(self) -> None:
        if not self._deadman_restored:
            return
        pending = self.deadman_sender.undelivered() if self.deadman_sender is not None else []
        mono = self.mono()
        self._deadman_saved_at = mono
        state = dump(self.watch, self.deadman, pending, self._outage_to, mono, self.clock())
        self.spool.set_marks({_DEADMAN: state})

    def _restore_deadman(self) -> None:
        """At start: the silence counted so far, an outage texted about, the texts not delivered."""
        mono = self.mono()
        self.watch.started_at = mono
        self._deadman_restored = True
        saved = self.spool.marks(_DEADMAN).get(_DEADMAN)
        if saved is None:
            return
        pending, self._outage_to = restore(saved, self.watch, self.deadman, mono, self.clock())
        if self.deadman.state == "silent":
            log.error("gateway %s: dead-man: the server was silent when this gateway stopped", self.id)
        sender = self.deadman_sender
        if sender is None:
            if pending:
                log.error(
                    "gateway %s: dead-man: %d text(s) not delivered, and no modem now", self.id, len(pending)
                )
            return
        for p in pending:
            log.warning(
                "gateway %s: dead-man: sending again a text not delivered before: %s", self.id, p.text
            )
            sender.send(p.phone, p.text, p.key, p.outage, p.attempts)

    def _link_events(self) -> int:
        events = self.transport.take_events()
        for ev in events:
            if ev.kind == "connected":
                # Ask again for what is still missing: a request sent just before a drop is lost.
                for (device, stream), first, last in self.gaps.pending():
                    if device == ev.device:
                        self._ask_resend(device, stream, first, last)
            elif ev.kind == "lost":
                self._status_now = True
                log.error("gateway %s: device %s lost (%s); still trying", self.id, ev.device, ev.detail)
            elif ev.kind == "found":
                self._status_now = True
                log.warning("gateway %s: device %s is back", self.id, ev.device)
        return len(events)

    def _process_events(self) -> int:
        acked: list[int] = []
        answers: list[tuple[int, bool, str, bool]] = []
        n = 0
        while True:
            try:
                kind, value = self._events.get_nowait()
            except queue.Empty:
                break
            n += 1
            if kind == "heartbeat":
                topic, payload = value
                now = self.mono()
                before = self.watch.working_at.get("ingest")
                self.watch.last = None
                self.watch.feed(topic, payload, now)
                hb = self.watch.last  # (None: malformed)
                if hb is not None and hb.service == "ingest" and hb.taking:
                    self._ingest_behind(hb.instance, hb.behind_s, now)
                    self._ingest_heard(before, now)
                continue
            if kind == "connected":
                self._connected = bool(value)
                if not value:
                    self.pause.disconnected()
                if value:
                    self.pause.connected(self.mono())
                    self._status_now = True  # the birth message, before anything else is sent
                    if self.spool.depth > 2 * self.config.gateway.max_inflight:
                        published = self.spool.counter("published_readings")
                        self._backlog = (self.clock(), self.spool.depth, published)
            elif kind == "ack":
                mid, ok, _, nobody = value
                if ok and not nobody and mid in self._inflight:
                    acked.append(self._inflight[mid][0])
                answers.append(value)
        # The rows taken are deleted before any device is held or released: a row taken in the
        # same batch as a "nobody" answer of its device was moved aside first, and sent again
        # (found by review).
        self.spool.ack(acked)
        # Every reading of a held device taken in this batch, the probe's and those in flight when
        # it was held: its release removes them all (one at a time, the first release moved the
        # others back to the spool, to be sent again: found by review).
        taken: dict[str, list[str]] = {}
        for mid, ok, _, nobody in answers:
            device: str | None
            if mid in self._probes:
                device, msg_id = self._probes[mid]
            elif mid in self._inflight:
                _seq, device, msg_id = self._inflight[mid]
            else:
                continue
            if ok and not nobody and device is not None and self.holds.held(device):
                taken.setdefault(device, []).append(msg_id)
        for mid, ok, reason, nobody in answers:
            if mid in self._probes:
                device, msg_id = self._probes.pop(mid)
                if ok and not nobody:
                    self._release(device, taken.get(device, [msg_id]))
                else:
                    self._probe_answer(device, msg_id, taken=False)
                continue
            if mid not in self._inflight:
                continue
            seq, device, msg_id = self._inflight.pop(mid)
            if ok and nobody and device is not None:  # dropped by the broker: kept here
                self._untaken(device)
            elif ok:
                self._retry_wait = _RETRY_FIRST_S  # the broker takes messages again
                if device is not None and self.holds.held(device):  # sent before it was held
                    self._release(device, taken.get(device, [msg_id]))  # and taken after all
            else:
                # Refused (not authorised, a quota): kept in the spool and sent again after a
                # minute, then 2, 4 ... 15 at most (not in a tight loop), and reported.
                self._refused += 1
                self._status_now = True
                if self._retry_due is None:  # (during a round: another after it, from the start)
                    self._retry_due = self.mono() + self._retry_wait
                    self._retry_wait = min(2 * self._retry_wait, _RETRY_MAX_S)
                self._refusals_unlogged += 1
                if time.monotonic() - self._refusals_logged_at >= 60.0:  # one line a minute at most
                    self._refusals_logged_at = time.monotonic()
                    log.error(
                        "gateway %s: broker refused %d message(s) (the last: spool seq %d): %s; "
                        "sending them again in %.0f s",
                        self.id, self._refusals_unlogged, seq, reason,
                        max(0.0, (self._retry_due or self.mono()) - self.mono()),
                    )  # fmt: skip
                    self._refusals_unlogged = 0
        if self._backlog is not None and self.spool.depth <= self.config.gateway.max_inflight // 2:
            self._drained()
        return n

    def _prefix(self, device: str) -> str:
        return contract.reading_topic(self.site, self.id, device, "")

    def _untaken(self, device: str) -> None:
        """A reading came back untaken: its device is held (its rows out of the spool's way). A
        move a full card cuts short is tried again at the device's probe time (`_probe`), not at
        every answer: each retry reads the spool through (found by review: 55 s of CPU a minute)."""
        if self.holds.hold(device, self.mono()):
            self.spool.hold(device, self._prefix(device))
            self._status_now = True
            log.warning(
                "gateway %s: nobody on the server takes %s's readings (not enrolled yet, or ingest "
                "not subscribed): kept aside, with its later ones, and asked about again every %.0f s "
                "at most",
                self.id, device, self.holds.max_s,
            )  # fmt: skip

    def _release(self, device: str, delivered: list[str]) -> None:
        """A held device's readings are taken (or a release a full card cut short is tried
        again): what was held goes to the end of the spool. If the card is still full the
        device is taken all the same (no longer held: its rows back in the spool are sent), and
        the rest is tried again later (found by review: such a device stayed held for ever)."""
        now = self.mono()
        held = self.holds.held(device)
        if held and self.spool.releasing(device) and not self.spool.hold(device, self._prefix(device)):
            # Held again during a release cut short, its rows back in the spool were not sent:
            # they go aside first, to come back with the rest in order. Till then, held.
            self.holds.unanswered(device, now)
            return
        if self.spool.release(device, delivered):
            self.holds.taken(device)
        else:
            self.holds.release_later(device, now)
        if held:
            self._status_now = True
            log.info("gateway %s: %s's readings are taken; sending those held", self.id, device)

    def _ingest_behind(self, instance: str, behind_s: float | None, now: float) -> None:
        """An ingest worker's heartbeat said how far behind it is: far behind, readings wait here
        (the broker would queue them for it, then drop them: gateway.pause)."""
        was = self.pause.catching_up(now)
        self.pause.behind(instance, behind_s, now)
        behind = self.pause.catching_up(now)
        if behind and not was:
            self._status_now = True
            log.warning(
                "gateway %s: ingest (%s) is %.0f s behind; keeping readings in the spool until it "
                "has caught up (the broker queues only so many for it, then drops them)",
                self.id, instance, behind_s or 0.0,
            )  # fmt: skip
        elif was and not behind:
            self._status_now = True
            log.info(
                "gateway %s: ingest has caught up; sending the %d messages kept", self.id, self.spool.depth
            )

    def _paused(self) -> bool:
        """Whether readings stay in the spool now: ingest, heard before, not heard for a while
        while connected, or far behind (the broker would queue them for it, then drop them:
        gateway.pause)."""
        if self.pause.lagging:
            if self.pause.catching_up(self.mono()):
                return True
            self._status_now = True  # the workers far behind are silent since: the silence rule's now
            log.warning(
                "gateway %s: the ingest worker far behind is not heard for %.0f s",
                self.id,
                self.pause.after_s,
            )
        was = self.pause.away
        paused = self.pause.paused(self.mono())
        if paused and not was:
            self._status_now = True
            self._save_pause()
            log.warning(
                "gateway %s: ingest not heard for %.0f s; keeping readings in the spool until it is "
                "(the broker queues only so many for a stopped ingest, then drops them)",
                self.id, self.pause.silent_s(self.mono()) or 0.0,
            )  # fmt: skip
        elif paused and self.mono() - self._pause_save_tried >= 5.0:
            self._save_pause()  # not written when it began (a full card): a restart must not forget it
        return paused

    def _save_pause(self) -> None:
        saved = self.pause.saved()
        if saved != self._pause_saved:
            self._pause_save_tried = self.mono()
            if self.spool.set_marks({_PAUSE: saved}):
                self._pause_saved = saved

    def _ingest_heard(self, before: float | None, now: float) -> None:
        """Ingest heard working (taking readings), last before at `before`: a pause ends; and
        after a silence of over three of its intervals (a broker or ingest restart, when every
        device is held until ingest subscribes again) each held device is probed at once instead
        of at its next probe time (up to 2 minutes away: every patient's readings that much late,
        suspected by review)."""
        interval = self.watch.interval_s.get("ingest", 10.0)
        paused_for = self.pause.heard(now, interval)
        self._save_pause()
        if paused_for is not None:
            self._status_now = True
        if paused_for is not None and not self.pause.lagging:  # (far behind: _ingest_behind said so)
            log.info(
                "gateway %s: ingest is heard again; sending the %d messages kept for %.0f s",
                self.id, self.spool.depth, paused_for,
            )  # fmt: skip
        if not self.holds.devices or (before is not None and now - before <= 3 * interval):
            return
        hurried = self.holds.server_back(now)
        if hurried:
            log.info("gateway %s: ingest is heard again; probing %d held devices now", self.id, len(hurried))

    def _probe_answer(self, device: str, msg_id: str, *, taken: bool) -> None:
        if taken:
            self._release(device, [msg_id])
        else:  # nobody yet, or refused (an ACL being changed): ask again later
            self.holds.unanswered(device, self.mono())

    def _probe(self, room: int) -> int:
        """Send each held device whose time has come its oldest held reading again, after trying
        again a move a full card cut short; and try again the releases it cut short."""
        sent = 0
        now = self.mono()
        for device in self.holds.releases_due(now):
            self._release(device, [])
        for device in self.holds.probes(now):
            if sent >= room:
                break
            if self.spool.moving(device) and not self.spool.hold(device, self._prefix(device)):
                if self.spool.releasing(device):  # its oldest rows are back in the spool, unsent
                    self.holds.unanswered(device, now)
                    continue
                # (a hold cut short: its oldest rows are the held ones, the probe the oldest of all)
            row = self.spool.held_oldest(device)
            if row is None:  # nothing of it held (the overflow policy dropped it, or a full card
                self.holds.unanswered(device, now)  # let nothing move): asked about later, still held
                continue
            info = self.client.publish(row.topic, row.payload, qos=1, properties=self._reading_props)
            if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
                self.holds.unanswered(device, now)
                continue
            self._probes[info.mid] = (device, row.id)
            self.holds.probing(device)
            sent += 1
        return sent

    def _send(self, msg: SpooledMessage, device: str | None) -> bool:
        info = self.client.publish(msg.topic, msg.payload, qos=1, properties=self._reading_props)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):  # not queued by paho
            log.warning("gateway %s: paho did not take message %d (rc %d); later", self.id, msg.seq, info.rc)
            return False
        self._inflight[info.mid] = (msg.seq, device, msg.id)
        return True

    def _drained(self) -> None:
        assert self._backlog is not None
        since, messages, published = self._backlog
        self._backlog = None
        took = max(self.clock() - since, 1e-6)
        readings = self.spool.counter("published_readings") - published
        log.info(
            "gateway %s: backlog of %d messages delivered in %.1f s (%d readings, %.0f readings/s)",
            self.id, messages, took, readings, readings / took,
            extra={"drain_messages": messages, "drain_s": round(took, 3), "drain_readings": readings,
                   "drain_readings_per_s": round(readings / took)},
        )  # fmt: skip

    def _publish(self) -> int:
        room = self.config.gateway.max_inflight - len(self._inflight) - len(self._probes)
        if room <= 0:
            return 0
        if self.holds:
            room -= self._probe(room)
        if self._retry_due is not None and self.mono() >= self._retry_due:
            self._retry_due, self._retry_from, self._retry_end = None, 0, self._sent_upto
        batch: list[SpooledMessage] = []
        if self._retry_from is not None:  # a round of sending refused rows again
            flying = {seq for seq, _, _ in self._inflight.values()}
            got = self.spool.peek(self._retry_from, room)
            again = [m for m in got if m.seq <= self._retry_end and m.seq not in flying]
            batch = again
            if not got or got[-1].seq >= self._retry_end or len(got) < room:
                self._retry_from = None  # round done
            else:
                self._retry_from = got[-1].seq
        if len(batch) < room:
            batch += self.spool.peek(self._sent_upto, room - len(batch))
        sent = skipped = 0
        for msg in batch:
            reading = contract.parse_reading_topic(msg.topic)
            device = reading.device if reading is not None else None
            if device is not None and (self.holds.held(device) or self.spool.holding(device)):
                # Left in the spool by a move a full card cut short: nobody takes it, or older
                # rows of its device are held. It goes when the move is done, not into nothing
                # (found by review: a whole backlog sent again every minute) or ahead of them.
                self._sent_upto = max(self._sent_upto, msg.seq)
                skipped += 1
                continue
            if not self._send(msg, device):
                if msg.seq <= self._sent_upto and self._retry_due is None:  # the rest of a round
                    self._retry_due, self._retry_from = self.mono() + 1.0, None
                break
            self._sent_upto = max(self._sent_upto, msg.seq)
            sent += 1
        return sent + skipped  # (rows skipped are work: the next step comes at once)

    def _publish_status(self) -> None:
        status = self.status()
        payload = contract.encode(status)
        self.spool.save_status(json.dumps(self._local_status(payload)).encode(), self.clock())
        if self._connected:
            self.client.publish(self.status_topic, payload, qos=1, retain=True)

    def _local_status(self, payload: bytes, stopped: bool = False) -> dict[str, Any]:
        """What `nabz gateway status` reads from the spool: the status, the broker link, and the
        dead-man's view of the server."""
        sender = self.deadman_sender
        return {
            "status": json.loads(payload),
            "mqtt": {
                "url": safe_url(self.config.mqtt.url),
                "connected": self._connected,
                "reconnect_waits_s": [round(w, 2) for w in getattr(self.client, "reconnect_waits", [])],
            },
            "published_readings": self.spool.counter("published_readings"),
            "server": {
                "silent": self.deadman.state == "silent",
                "heard_s_ago": {s: round(self.mono() - t, 1) for s, t in self.watch.working_at.items()},
                "texts_undelivered": [
                    {"to": p.phone, "text": p.text, "attempts": p.attempts, "error": p.detail}
                    for p in (sender.undelivered() if sender is not None else [])
                ],
                "texts_failed": [
                    {"to": to, "text": text, "error": why}
                    for to, text, why in (sender.failed if sender else [])
                ][-10:],
                "modem_error": sender.modem_error if sender is not None else None,
            },
            "stopped": stopped,
        }

    def _health(self, device: str, link: LinkHealth | None) -> DeviceHealth:
        link = link or LinkHealth("connecting")
        totals = self.gaps.totals(device)
        seen = self._last_seen.get(device)
        return DeviceHealth(
            device=device,
            state=link.state,
            since=utc_from_us(link.since_us) if link.since_us is not None else None,
            last_seen=utc_from_us(seen) if seen is not None else None,
            battery_pct=self._battery.get(device),
            rssi_dbm=link.rssi_dbm,
            mtu=link.mtu,
            reconnects=link.reconnects,
            gap_events=totals.gap_events,
            resent_frames=totals.resent_frames,
            gap_frames=totals.gap_frames,
            device_state=self._device_state.get(device),  # type: ignore[arg-type]  # the codec's names
        )

    def _offline_payload(self, reason: str) -> bytes:
        return contract.encode(
            GatewayStatus(
                site=self.site,
                gateway=self.id,
                state="offline",
                t=utc_from_us(self._now_us()) if reason == "shutdown" else None,
                reason=reason,
            )
        )


_RETRY_FIRST_S = 60.0  # a refused message is sent again after this, then twice as long each time
_RETRY_MAX_S = 900.0
_WAVE_CHARS = {codec.NABZ_ECG_WAVEFORM: "ecg", codec.NABZ_PPG_WAVEFORM: "ppg"}


def _stream_of_char(char: str) -> str:
    return _WAVE_CHARS[normalize_uuid(char)]


def admit(
    decoder: Decoder, gaps: GapTracker, note: Notification, now_s: float
) -> tuple[contract.Reading | Rejected | None, Verdict | None]:
    """One notification through the decoder and, for a waveform frame, the gap tracker, in the
    order that keeps each honest: a frame is parsed whole before the tracker sees it (a malformed
    one must not move the expected sequence number, or good frames after it would be dropped as
    duplicates), and the tracker decides before the clock estimate and the message id (a
    duplicate must reach neither). A restarted stream restarts the device's clock estimate.

    Returns (reading or rejection, the tracker's verdict for a waveform frame); the reading is
    None for a frame the tracker dropped."""
    frame = decoder.parse_wave(note)
    if frame is None:
        return decoder.decode(note), None
    if isinstance(frame, Rejected):
        return frame, None
    stream = _stream_of_char(note.char)
    resent = bool(frame["flags"] & codec.WAVE_FLAG_RESENT)
    verdict = gaps.observe((note.device, stream), frame["seq"], resent, frame["n"], now_s, frame["t0_us"])
    if not verdict.accept:
        return None, verdict
    if verdict.reason == "restart":
        decoder.clock.reset(note.device)
    return decoder.wave_reading(note, frame), verdict
