"""The alerts runner: derived vitals and gateway status in over MQTT, the engine, alarm events out
(retained), and a dispatcher thread that owns the notifiers.

paho's thread queues; one worker thread owns the engine, feeds it vitals, status and commands
from the nurse page (`nabz/v1/<site>/alerts/command`) and ticks it once a second; the dispatcher thread sends what the engine queued (woken at once when it queues)
and polls notifiers that receive (a modem's incoming SMS and delivery reports). The store is
their only shared state.

It also watches and tells: ingest's heartbeats and the vitals feed the site watchdog
(alerts.watchdog: a whole site gone quiet is one high alarm); the worker thread publishes this
service's heartbeat every `alerts.heartbeat_s` (`degraded` while no notifier can send, so the
gateways' dead-man switches can text instead); `/metrics` and `/healthz` with
`alerts.metrics_listen`. A service with no notifier that reaches a phone (the outbox only) says
so at start and in `nabz_alerts_phone_notifier`, except in the demo. A message that breaks the
engine is logged and skipped, never fatal.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

import msgspec
import paho.mqtt.client as paho

from alerts.dispatch import Dispatcher, build_notifiers
from alerts.engine import AlertEngine
from alerts.notify import Notifier, reaches_phone
from alerts.store import AlertStore
from alerts.watchdog import SITE_QUIET, SiteWatch
from nabz import contract
from nabz.config import DEMO_ON_CALL, Config
from nabz.contract import AlarmEvent, GatewayStatus, Heartbeat, Vitals, VitalsBatch
from nabz.health import HealthServer, Metric
from nabz.mqtt import connect, make_client, reason_ok

__all__ = ["AlertService", "AlarmCommand", "command_topic", "COMMAND_FILTER", "demo_recipients"]

log = logging.getLogger(__name__)

_vitals_decoder = msgspec.json.Decoder(VitalsBatch)


class _AnyBatch(msgspec.Struct):
    """A vitals batch whose entries are left undecoded: a batch that fails validation as a whole
    is read this way to keep its valid vitals (one bad entry must not hide other patients')."""

    site: contract.Id
    vitals: list[msgspec.Raw]


_any_batch_decoder = msgspec.json.Decoder(_AnyBatch)
_one_vitals_decoder = msgspec.json.Decoder(Vitals)
_status_decoder = msgspec.json.Decoder(GatewayStatus)
_heartbeat_decoder = msgspec.json.Decoder(Heartbeat)
_STUCK_S = 120.0  # a worker or dispatcher loop silent this long (real seconds) is unhealthy


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
    # ack: the priority the nurse saw; an alarm that has worsened since is not acknowledged
    priority: Literal["high", "medium", "low"] | None = None
    # epoch seconds: the sender gave up waiting then and told its user so; applied later, never
    not_after: float | None = None


_command_decoder = msgspec.json.Decoder(AlarmCommand)


def command_topic(site: str) -> str:
    return f"{contract.ROOT}/{site}/alerts/command"


COMMAND_FILTER = f"{contract.ROOT}/+/alerts/command"


def demo_recipients(config: Config) -> bool:
    """Whether the only number to text is the demo's placeholder (no on-call people set)."""
    return not config.oncall.people and tuple(config.alerts.on_call) == DEMO_ON_CALL


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
        self.engine = AlertEngine(config, self.store, now=clock())
        notifiers = notifiers or build_notifiers(config)
        if any(reaches_phone(n) for n in notifiers) and demo_recipients(config):
            # The demo's number might be somebody's: they would get every alarm and could ACK it.
            raise ValueError(
                "the alerts service would text the demo's placeholder number: set [oncall.people] or"
                " [alerts] on_call before using a modem or an SMS provider"
            )
        # Outside the demo (whose texts go to its placeholder number, in the outbox on purpose),
        # a service that reaches no phone tells no doctor of any alarm: said at start and in the
        # metrics, but not refused (a site may be waiting for its modem).
        self.phone_notifier = any(reaches_phone(n) for n in notifiers)
        if not self.phone_notifier and not demo_recipients(config):
            log.warning(
                "alerts: no notifier reaches a phone: alarms go to the outbox file only (%s); set [alerts] "
                'notifiers = ["gsm", "outbox"] (or "http") to text the doctors on call',
                config.alerts.outbox_path,
            )
        self.dispatcher = Dispatcher(config, self.store, notifiers)
        # (topic, payload, mid, qos): a message is acknowledged to the broker only once handled,
        # so what a stop or a crash leaves in this queue is delivered again to the next process
        self._queue: queue.SimpleQueue[tuple[str, bytes, int, int]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self.bad_messages = 0
        self.bad_vitals = 0  # single vitals left out of a batch whose others were used
        self.errors = 0
        self.published = 0
        self.heartbeats = 0
        self.instance = client_id
        self.sites = SiteWatch(config.alerts.site_quiet_after_s)
        if config.enrolment:
            self.sites.watch(config.site)
        for a in self.engine.open.values():
            if a.kind == SITE_QUIET:
                self.sites.restore(a.site, a.condition_started_at)
        self._loop_at = self._dispatch_at = time.monotonic()
        self._disconnected_at: float | None = time.monotonic()
        self.health: HealthServer | None = None
        if config.alerts.metrics_listen:
            self.health = HealthServer(config.alerts.metrics_listen, self.metrics, self.problems)
        self.client = make_client(
            config.mqtt, client_id=client_id, persistent_session=True, manual_ack=True, server=True
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda _c, _u, m: self._queue.put((m.topic, bytes(m.payload), m.mid, m.qos))
        # The nurse page's commands come on a session of their own: on the main one they would
        # wait in the broker behind any backlog of vitals (after a restart, a minute's worth),
        # arrive after the page had given up, and be refused as too late. A command is worth
        # something only while the nurse waits for it, so this session is not kept.
        self.commands = make_client(config.mqtt, client_id=f"{client_id}-commands", server=True)
        self.commands.on_connect = self._on_commands_connect
        # ... and a queue of their own (topic, payload, received at), handled before the vitals
        self._commands_q: queue.SimpleQueue[tuple[str, bytes, float]] = queue.SimpleQueue()
        self.commands.on_message = lambda _c, _u, m: self._commands_q.put(
            (m.topic, bytes(m.payload), self.clock())
        )
        self._commands_down_at: float | None = time.monotonic()
        self.commands.on_disconnect = lambda *_: setattr(self, "_commands_down_at", time.monotonic())

    def _on_connect(self, client: paho.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if reason_ok(reason):
            self._disconnected_at = None
            client.subscribe([(contract.VITALS_FILTER, 1), (contract.STATUS_FILTER, 1)])
            client.subscribe(contract.heartbeat_filter(), qos=0)
            client.unsubscribe(COMMAND_FILTER)  # a session kept from before commands had their own

    def _on_commands_connect(
        self, client: paho.Client, _u: object, _f: object, reason: object, _p: object
    ) -> None:
        if reason_ok(reason):
            self._commands_down_at = None
            client.subscribe(COMMAND_FILTER, qos=1)

    def _on_disconnect(self, _c: paho.Client, _u: object, _f: object, _r: object, _p: object) -> None:
        self._disconnected_at = time.monotonic()

    def start(self) -> None:
        connect(self.client, self.config.mqtt, persistent_session=True)
        connect(self.commands, self.config.mqtt)
        for target, name in ((self._run, "nabz-alerts"), (self._dispatch, "nabz-alerts-dispatch")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        if self.health is not None:
            self.health.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=10)
        if self._threads and not any(t.is_alive() for t in self._threads):
            try:  # a planned restart takes up every running delay exactly where it stood
                self.engine.save_timers(self.clock(), full=True)
            except sqlite3.Error as exc:
                log.warning("alerts: could not save the rule timers at stop: %s", exc)
        if self.health is not None:
            self.health.stop()
        for c in (self.commands, self.client):
            c.disconnect()
            c.loop_stop()

    def _handle(
        self, topic: str, payload: bytes, now: float, received_at: float | None = None
    ) -> list[AlarmEvent]:
        try:
            if topic.endswith("/heartbeat"):
                self.sites.heartbeat(_heartbeat_decoder.decode(payload), now)
                return []
            if topic.endswith("/status"):
                status = _status_decoder.decode(payload)
                if topic != contract.status_topic(status.site, status.gateway):
                    # The broker's ACL lets a gateway write under its own id only; what the message
                    # says it is must agree, or one home's gateway could clear another's alarms.
                    self.bad_messages += 1
                    log.warning("alerts: a status on %s says it is %s/%s; ignored", topic, status.site,
                                status.gateway)  # fmt: skip
                    return []
                self.sites.gateway(status)
                return self.engine.gateway_status(status, now)
            if topic.endswith("/alerts/command"):
                c = _command_decoder.decode(payload)
                args = {
                    k: v
                    for k, v in msgspec.structs.asdict(c).items()
                    if v is not None and k not in ("v", "id")
                }
                if c.not_after is not None:  # judged by when it came, not when its turn came
                    args["received_at"] = now if received_at is None else received_at
                self.store.add_command(now, c.action, args, f"mqtt:{c.by}")
                return self.engine.tick(now)  # applied at once, in order with everything else
            try:
                batch = _vitals_decoder.decode(payload)
                site, good = batch.site, batch.vitals
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                site, good = self._salvage(topic, payload, exc)
            self.sites.seen(site, now)
            events: list[AlarmEvent] = []
            for vitals in good:
                events.extend(self.engine.observe(vitals, now))
            return events
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec: the latter for bad UTF-8
            self.bad_messages += 1
            log.warning("alerts: ignoring a malformed message on %s: %s", topic, exc)
            return []

    def _salvage(self, topic: str, payload: bytes, exc: Exception) -> tuple[str, list[Vitals]]:
        """The valid vitals of a batch that fails validation: it is counted as a malformed message
        and each invalid vitals in it is counted and logged with its reason, but the valid ones are
        used (one bad entry must not hide other patients' vitals). Raises `exc` if not even the
        batch's outline (site, list of vitals) can be read."""
        try:
            outline = _any_batch_decoder.decode(payload)
        except (msgspec.DecodeError, UnicodeDecodeError):
            raise exc from None
        self.bad_messages += 1
        log.warning("alerts: a malformed vitals batch on %s (%s); using its valid vitals", topic, exc)
        good: list[Vitals] = []
        for raw in outline.vitals:
            try:
                x = _one_vitals_decoder.decode(raw)
                if x.site != outline.site:
                    raise msgspec.ValidationError(f"site {x.site!r} in a batch of site {outline.site!r}")
            except (msgspec.DecodeError, UnicodeDecodeError) as why:
                self.bad_vitals += 1
                log.warning("alerts: left out one vitals of that batch: %s", why)
                continue
            good.append(x)
        return outline.site, good

    def _run(self) -> None:
        next_tick = next_beat = 0.0
        while not self._stop.is_set():
            self._loop_at = time.monotonic()
            if (
                self.config.alerts.heartbeat_s > 0
                and self._loop_at >= next_beat
                and self._disconnected_at is None
            ):
                next_beat = self._loop_at + self.config.alerts.heartbeat_s
                try:
                    self._heartbeat()
                except (
                    Exception
                ):  # a missed heartbeat is a warning to the watchers; a dead rules loop is worse
                    self.errors += 1
                    log.exception("alerts: could not publish the heartbeat")
            received_at: float | None = None  # a command's (a nurse's first: she is waiting for it)
            try:
                topic, payload, received_at = self._commands_q.get_nowait()
                mid = qos = 0
            except queue.Empty:
                try:
                    topic, payload, mid, qos = self._queue.get(timeout=0.2)
                except queue.Empty:
                    topic, payload, mid, qos = "", b"", 0, 0
            now = self.clock()
            save = False
            try:
                events = self._handle(topic, payload, now, received_at) if topic else []
                if time.monotonic() >= next_tick:  # the cadence is the runner's; the time is the clock's
                    next_tick = time.monotonic() + 1.0
                    events.extend(self.engine.tick(now))
                    events.extend(self.engine.external(self.sites.tick(now), now))
                    save = True
            except Exception:
                # A bug (not bad input: that is counted above) must not stop the alarms for everyone.
                self.errors += 1
                log.exception("alerts: failed on a message on %s; carrying on", topic or "(tick)")
                events = []
            if events:
                self._wake.set()
            for e in events:
                self.client.publish(
                    contract.alarm_topic(e.site, e.patient, e.kind), contract.encode(e), qos=1, retain=True
                )
                self.published += 1
            if qos:  # handled, its events on their way (or failed as a bug, which a redelivery would repeat)
                self.client.ack(mid, qos)
            if save:  # what a crash would lose of the rules' delays: at most the last second
                try:
                    self.engine.save_timers(now)
                except Exception:
                    self.errors += 1
                    log.exception("alerts: could not save the rule timers; trying again in a second")

    def _heartbeat(self) -> None:
        detail = None
        if self.dispatcher.failing:
            detail = f"no notifier can send: {self.dispatcher.last_failure}"[:300]
        elif time.monotonic() - self._dispatch_at > _STUCK_S:
            detail = f"the dispatcher has not turned for {time.monotonic() - self._dispatch_at:.0f} s"
        elif self.dispatcher.degraded:  # SMS still go, through a later notifier
            detail = f"a notifier failed on its latest SMS: {self.dispatcher.degraded}"[:300]
        hb = Heartbeat(
            site=self.config.site,
            service="alerts",
            instance=self.instance,
            t=datetime.fromtimestamp(self.clock(), UTC),
            interval_s=self.config.alerts.heartbeat_s,
            state="degraded" if detail else "ok",
            detail=detail,
        )
        self.client.publish(
            contract.heartbeat_topic(self.config.site, self.instance), contract.encode(hb), qos=0
        )
        self.heartbeats += 1

    def problems(self) -> list[str]:
        """Why this service is not healthy now (empty: healthy): for /healthz."""
        now = time.monotonic()
        out = []
        if self._disconnected_at is not None and now - self._disconnected_at > 30.0:
            out.append(f"not connected to the broker for {now - self._disconnected_at:.0f} s")
        if self._commands_down_at is not None and now - self._commands_down_at > 30.0:
            out.append(
                f"the session for the nurse page's commands is down for {now - self._commands_down_at:.0f} s"
            )
        if any(not t.is_alive() for t in self._threads) or not self._threads:
            out.append("a worker thread is not running")
        if now - self._loop_at > _STUCK_S:
            out.append(f"the rules loop has not turned for {now - self._loop_at:.0f} s")
        if now - self._dispatch_at > _STUCK_S:
            out.append(f"the dispatcher has not turned for {now - self._dispatch_at:.0f} s")
        if self.dispatcher.failing:
            out.append(f"no notifier could send the latest SMS: {self.dispatcher.last_failure}"[:300])
        return out

    def metrics(self) -> list[Metric]:
        d = self.dispatcher
        opened: dict[tuple[str, str], int] = {}
        for a in list(self.engine.open.values()):
            key = (a.priority, a.state)
            opened[key] = opened.get(key, 0) + 1
        queued = len(self.store.queued())
        return [
            Metric("nabz_alerts_open_alarms", "open alarms by priority and state", "gauge",
                   [({"priority": p, "state": s}, float(n)) for (p, s), n in sorted(opened.items())]),
            Metric.one("nabz_alerts_sms_sent_total", "SMS a notifier accepted", "counter", d.sent_ok),
            Metric.one("nabz_alerts_sms_failed_total", "SMS no notifier took (each attempt)", "counter", d.failures),
            Metric("nabz_alerts_notifier_failures_total", "failed attempts, by notifier", "counter",
                   [({"notifier": n}, float(c)) for n, c in sorted(d.notifier_failures.items())]),
            Metric.one("nabz_alerts_nobody_on_call_total", "alarms whose escalation named nobody on call"
                       " (texted to everyone instead)", "counter", self.engine.nobody_on_call),
            Metric.one("nabz_alerts_notifications_queued", "notifications waiting to be sent", "gauge", queued),
            Metric.one("nabz_alerts_phone_notifier", "1 if a notifier reaches a phone (gsm, http); 0: alarms"
                       " go to the outbox file only", "gauge", 1.0 if self.phone_notifier else 0.0),
            Metric.one("nabz_alerts_can_notify", "0 while the latest SMS went through no notifier", "gauge",
                       0.0 if d.failing else 1.0),
            Metric("nabz_alerts_notifier_up", "0 while a notifier's latest attempt failed", "gauge",
                   [({"notifier": n}, 0.0 if n in d.notifier_down else 1.0) for n in sorted(d.notifier_failures)]),
            Metric.one("nabz_alerts_bad_messages_total", "malformed messages ignored", "counter", self.bad_messages),
            Metric.one("nabz_alerts_bad_vitals_total", "invalid vitals left out of a batch, the rest used",
                       "counter", self.bad_vitals),
            Metric.one("nabz_alerts_errors_total", "messages the service failed on (bugs)", "counter", self.errors),
            Metric.one("nabz_alerts_broker_connected", "1 while connected to the broker", "gauge",
                       0.0 if self._disconnected_at is not None else 1.0),
            Metric.one("nabz_alerts_heartbeats_total", "heartbeats published", "counter", self.heartbeats),
        ]  # fmt: skip

    def _dispatch(self, poll_every_s: float = 1.0) -> None:
        next_poll = 0.0
        while not self._stop.is_set():
            self._dispatch_at = time.monotonic()
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
