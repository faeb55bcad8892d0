"""The gateway's dead-man switch: when the server has been silent too long, say so — by SMS
through a GSM modem on the gateway itself, because the uplink being down is common where this runs.

Rules of this file:
- `HeartbeatWatch` and `DeadMan` are pure. Time comes in as `now`, a monotonic clock: a Pi without
  a real-time clock has its wall clock stepped by NTP after boot, and a silence measured on it
  would be hours long (a false text) or hours late. The wall clock (`wall`) only names the time
  of day in a text. The watch keeps, per server service (`ingest`, `alerts`), when a heartbeat
  that says the service works was last heard (`nabz/v1/<site>/server/+/heartbeat`,
  docs/contract.md "Heartbeats"). An alerts heartbeat saying `degraded` means it cannot send
  SMS: that is not working, for us.
- Silence counts from the gateway's start: a gateway that starts while the server is down texts
  after `after_s` too. Whether the gateway reaches the broker at all is part of the message (the
  two causes need different people).
- A restart does not forget (`dump`/`restore`, kept in the spool by gateway.service): how long
  each service had been silent, whether the server was texted as silent, when the last text went
  and the texts not yet delivered. A monotonic clock does not survive a restart, so the time
  between the last save and the restart is read on the wall clock and added only when it looks
  like a restart (0 to `RESTART_GAP_S`); otherwise (the gateway was off, or the clock was stepped)
  it is not counted, but what was counted before is, and a silence already texted stays texted,
  so the "heard again" text still goes.
- `DeadMan` texts once when the server goes silent, reminds every `repeat_s` while it stays
  silent, and says when it is heard again. Nothing is sent while it is heard.
- `DeadManSender` is the only thing here that blocks: its own thread hands each text to the modem
  (alerts.gsm, TS 27.005) and tries again, every 5 minutes at most, until it is delivered or a
  newer text of the same outage replaces it, so a slow or unregistered modem never holds up the
  spool and never loses a text.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

import msgspec

from alerts.notify import Notifier
from alerts.oncall import Schedule
from nabz.config import DEMO_ON_CALL, ConfigError, OncallConfig
from nabz.contract import Heartbeat

__all__ = [
    "HeartbeatWatch",
    "Silence",
    "DeadMan",
    "DeadManSender",
    "Pending",
    "recipients",
    "deadman_schedule",
    "dump",
    "restore",
    "RESTART_GAP_S",
]

log = logging.getLogger(__name__)

_decoder = msgspec.json.Decoder(Heartbeat)

# Between the last save and a start, at most this much wall time is taken for a restart (systemd
# restarts the gateway after a few seconds; a Pi reboots in about a minute). A longer gap is the
# gateway being off, a home's power cut, or a stepped clock: nobody was listening then.
RESTART_GAP_S = 180.0


@dataclass(frozen=True, slots=True)
class Silence:
    """Services not heard working for `after_s`: (service, last heard working as wall time or None,
    why), and how long the longest of these silences has lasted (seconds, across restarts)."""

    services: tuple[tuple[str, float | None, str], ...]
    for_s: float = 0.0

    @property
    def names(self) -> list[str]:
        return [s for s, _, _ in self.services]


class HeartbeatWatch:
    def __init__(self, services: Sequence[str], after_s: float, started_at: float | None = None) -> None:
        self.services = tuple(services)
        self.after_s = after_s
        self.started_at = started_at  # monotonic
        self.working_at: dict[str, float] = {}  # service -> last heartbeat saying it works (monotonic)
        self.heard_at: dict[str, float] = {}  # service -> last heartbeat at all (monotonic)
        self.detail: dict[str, str] = {}  # service -> what its last heartbeat said was wrong
        self.interval_s: dict[str, float] = {}  # service -> the interval its last heartbeat gave
        self.malformed = 0
        self.last: Heartbeat | None = None  # the last heartbeat fed that was well formed
        # From before a restart (`restore`): seconds each service had been silent by then, and the
        # wall time it was last heard working (for the text). Both give way to a heartbeat.
        self.quiet_before: dict[str, float] = {}
        self.last_wall: dict[str, float] = {}

    def feed(self, topic: str, payload: bytes, now: float) -> str:
        """One message from the heartbeat topic; returns what it was, for counting."""
        try:
            hb = _decoder.decode(payload)
        except (msgspec.DecodeError, UnicodeDecodeError):
            self.malformed += 1
            return "malformed"
        parts = topic.split("/")
        if len(parts) != 6 or parts[2] != hb.site or parts[4] != hb.instance:
            self.malformed += 1
            return "topic_mismatch"
        self.last = hb
        self.heard_at[hb.service] = now
        self.interval_s[hb.service] = hb.interval_s
        if (hb.service == "alerts" and hb.state == "degraded") or not hb.taking:
            self.detail[hb.service] = hb.detail or "degraded"
            return "degraded"
        self.detail.pop(hb.service, None)
        self.working_at[hb.service] = now
        return hb.state

    def quiet_s(self, service: str, now: float) -> float:
        """How long `service` has not been heard working (counting from before a restart)."""
        if self.started_at is None:
            self.started_at = now
        last = self.working_at.get(service)
        if last is not None:
            return now - last
        return now - self.started_at + self.quiet_before.get(service, 0.0)

    def last_heard_wall(self, service: str, now: float, wall: float) -> float | None:
        last = self.working_at.get(service)
        if last is not None:
            return wall - (now - last)  # on today's wall clock, even if it was stepped since
        return self.last_wall.get(service)

    def silence(self, now: float, wall: float | None = None) -> Silence | None:
        wall = now if wall is None else wall
        out = []
        longest = 0.0
        for s in self.services:
            quiet = self.quiet_s(s, now)
            if quiet >= self.after_s:
                if s in self.detail and s in self.heard_at and now - self.heard_at[s] < self.after_s:
                    why = f"{s} cannot do its job ({self.detail[s]})"
                else:
                    why = f"no heartbeat from {s}"
                out.append((s, self.last_heard_wall(s, now, wall), why))
                longest = max(longest, quiet)
        return Silence(tuple(out), longest) if out else None


@dataclass
class DeadMan:
    """When to text about the server's silence (see the module docstring)."""

    site: str
    gateway: str
    repeat_s: float = 6 * 3600.0
    timezone: str = "Asia/Karachi"
    state: Literal["heard", "silent"] = "heard"
    silent_since: float | None = None  # wall: the silent services last heard working (None: never)
    silent_from: float | None = None  # wall: when the silence began by this gateway's count
    last_text_at: float | None = None  # monotonic
    texts: int = 0
    outage: int = 0  # silences texted about so far; a newer text of the same outage replaces an older
    _tz: ZoneInfo = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._tz = ZoneInfo(self.timezone)

    def _hhmm(self, t: float) -> str:
        return datetime.fromtimestamp(t, UTC).astimezone(self._tz).strftime("%H:%M %Z")

    def step(
        self, now: float, silence: Silence | None, broker_connected: bool, wall: float | None = None
    ) -> list[str]:
        """The texts to send now (usually none). `now` is monotonic; `wall` (default `now`) only
        names times of day in the text."""
        wall = now if wall is None else wall
        if silence is None:
            if self.state == "silent":
                self.state = "heard"
                since = self.silent_since
                began = self.silent_from if self.silent_from is not None else wall
                self.silent_since = self.silent_from = None
                self.texts += 1
                self.last_text_at = now
                was = (
                    f"silent since {self._hhmm(since)}"
                    if since is not None
                    else f"not heard since this gateway started listening at {self._hhmm(began)}"
                )
                return [
                    f"NABZ {self.site}/{self.gateway}: the server is heard again"
                    f" ({was}). Alarms reach you through it again."
                ]
            return []
        known = [t for _, t, _ in silence.services if t is not None]
        if self.state == "heard":
            self.state = "silent"
            self.outage += 1
            self.silent_since = min(known) if known else None
            self.silent_from = wall - silence.for_s
            return [self._text(now, silence, broker_connected, repeat=False)]
        if self.repeat_s > 0 and self.last_text_at is not None and now - self.last_text_at >= self.repeat_s:
            return [self._text(now, silence, broker_connected, repeat=True)]
        return []

    def _text(self, now: float, silence: Silence, connected: bool, *, repeat: bool) -> str:
        self.texts += 1
        self.last_text_at = now
        if self.silent_since is not None:
            since = f"since {self._hhmm(self.silent_since)}"
        elif self.silent_from is not None:
            since = f"since this gateway started listening at {self._hhmm(self.silent_from)}"
        else:
            since = "since this gateway started"
        cause = (
            "this gateway reaches the broker, the server's services are silent"
            if connected
            else "this gateway cannot reach the broker (uplink or server down)"
        )
        whys = "; ".join(why for _, _, why in silence.services)
        head = "STILL " if repeat else ""
        return (
            f"NABZ {head}SERVER SILENT {self.site}/{self.gateway}: {whys} {since}; {cause}. "
            "Readings are kept here, but alarms for this home may not reach you."
        )


def deadman_schedule(
    phones: list[str], oncall: OncallConfig, fallback: list[str], at: float
) -> tuple[Schedule | None, list[str]]:
    """Check, at start, whom the dead-man would text: (the on-call schedule, or None when `phones`
    are given; the numbers it gives now). ConfigError when that is nobody or the demo's placeholder
    number (the gateway's own configuration has usually no [oncall], and `[alerts] on_call`
    defaults to the placeholder), or when the schedule cannot be read (a typo would otherwise
    surface only when the text is due)."""
    schedule = None
    if not phones:
        try:
            schedule = Schedule(oncall, fallback)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"the gateway's [oncall], whom the dead-man texts: {exc}") from exc
    to = recipients(phones, schedule if schedule is not None else oncall, fallback, at)
    placeholder = [p for p in to if p in DEMO_ON_CALL]
    if not to or placeholder:
        what = f"the demo's placeholder number {placeholder[0]}" if placeholder else "nobody"
        raise ConfigError(
            f"[gateway.deadman] modem = true, but the dead-man would text {what}: set"
            " [gateway.deadman] phones, or an [oncall] schedule in the gateway's own configuration"
        )
    return schedule, to


def recipients(
    phones: list[str], oncall: OncallConfig | Schedule, fallback: list[str], at: float
) -> list[str]:
    """The numbers to text: `phones` if given, else the on-call primary and backup at `at` (and if
    those roles name nobody then, everyone on the schedule: better too many than none)."""
    if phones:
        return list(dict.fromkeys(phones))
    schedule = oncall if isinstance(oncall, Schedule) else Schedule(oncall, fallback)
    people = schedule.who("primary", at) + schedule.who("backup", at) or schedule.everyone()
    return list(dict.fromkeys(p.phone for p in people))


@dataclass(slots=True)
class Pending:
    """A text not yet delivered."""

    phone: str
    text: str
    key: str
    outage: int = 0
    attempts: int = 0
    due: float = 0.0  # monotonic: the next attempt
    detail: str = ""  # why the last attempt failed


RECHECK_S = 300.0  # a modem that could not text is checked again this often while idle


class DeadManSender:
    """Sends the dead-man's texts through a notifier (a GSM modem) until each is delivered.

    A failure that may pass (no network, a busy modem) is tried again after `retry_s`, doubling up
    to `max_retry_s`, for as long as it takes; a newer text of the same outage to the same phone
    replaces a text still waiting (the newest says what the doctor must know). A failure that
    cannot pass (the modem rejects the number) is logged and kept in `failed`. `pump` does one
    round (tests drive it, with injected clocks); `start` runs it on a thread of its own."""

    def __init__(
        self,
        notifier: Notifier,
        *,
        retry_s: float = 30.0,
        max_retry_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.notifier = notifier
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self.clock = clock
        self.wall = wall
        self.sent: list[tuple[str, str]] = []
        self.failed: list[tuple[str, str, str]] = []
        self.modem_error: str | None = None  # what the last check found wrong (None: it can text)
        self._checked_at = float("-inf")  # monotonic
        self._pending: list[Pending] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> str | None:
        """Ask the notifier whether it can text now (a modem: it answers, its SIM is ready), so
        that a missing or wrong modem is found at start, not when the server has gone silent.
        Returns what is wrong (also in `modem_error`), or None."""
        probe = getattr(self.notifier, "init", None)
        if probe is None:
            return None
        self._checked_at = self.clock()
        try:
            probe()
        except Exception as exc:  # noqa: BLE001 - whatever it is, it is reported, and the sender lives on
            self.modem_error = f"{exc}"[:200] or type(exc).__name__
            log.error(
                "dead-man: the modem cannot text (%s): if the server goes silent, nobody will be told",
                self.modem_error,
            )
        else:
            self.modem_error = None
        return self.modem_error

    def start(self) -> DeadManSender:
        self._thread = threading.Thread(target=self._run, name="nabz-deadman", daemon=True)
        self._thread.start()
        return self

    def send(self, phone: str, text: str, key: str, outage: int = 0, attempts: int = 0) -> None:
        with self._lock:
            old = [p for p in self._pending if p.phone == phone and p.outage == outage]
            for p in old:
                log.warning("dead-man SMS to %s not delivered, replaced by a newer one: %s", phone, p.text)
            self._pending = [p for p in self._pending if not (p.phone == phone and p.outage == outage)]
            self._pending.append(Pending(phone, text, key, outage, attempts, self.clock()))
        self._wake.set()

    def undelivered(self) -> list[Pending]:
        with self._lock:
            return [Pending(**asdict(p)) for p in self._pending]

    def pump(self) -> float | None:
        """Try every text that is due; returns when the next is due (monotonic), or None."""
        with self._lock:
            due = [p for p in self._pending if p.due <= self.clock()]
        for p in due:
            if self._stop.is_set():
                break
            try:
                d = self.notifier.send(p.phone, p.text, f"{p.key}-{p.attempts}", self.wall())
            except Exception as exc:  # a notifier's bug is a failed attempt
                log.exception("dead-man SMS to %s", p.phone)
                ok, retryable, detail = False, True, f"{type(exc).__name__}: {exc}"
            else:
                ok, retryable, detail = d.ok, d.retryable, d.detail
            with self._lock:
                p.attempts += 1
                if ok or not retryable:
                    self._pending = [q for q in self._pending if q is not p]
                if ok:
                    self.modem_error = None
                    self.sent.append((p.phone, p.text))
                    log.warning("dead-man SMS sent to %s: %s", p.phone, p.text)
                    continue
                p.detail = detail
                if not retryable:
                    self.failed.append((p.phone, p.text, detail))
                    log.error("dead-man SMS to %s failed for good (%s): %s", p.phone, detail, p.text)
                    continue
                wait = min(self.retry_s * 2.0 ** min(p.attempts - 1, 16), self.max_retry_s)
                p.due = self.clock() + wait
            log.error(
                "dead-man SMS to %s not delivered after %d attempt(s) (%s); trying again in %.0f s",
                p.phone, p.attempts, detail, wait,
            )  # fmt: skip
        with self._lock:
            return min((p.due for p in self._pending), default=None)

    def stop(self) -> None:
        """Stop trying; what is undelivered stays in `undelivered()` (the gateway keeps it)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        self.check()
        while not self._stop.is_set():
            self._wake.clear()
            try:
                due = self.pump()
                if self.modem_error is not None and due is None:  # a modem fitted since is seen
                    if self.clock() >= self._checked_at + RECHECK_S:
                        self.check()
                    due = self._checked_at + RECHECK_S
            except Exception:  # this thread is the doctor's only news of an outage: it must not die
                log.exception("dead-man: sending failed; trying again in %.0f s", self.max_retry_s)
                due = self.clock() + self.max_retry_s
            self._wake.wait(None if due is None else max(0.0, due - self.clock()))


def dump(
    watch: HeartbeatWatch, dm: DeadMan, pending: list[Pending], to: list[str], now: float, wall: float
) -> str:
    """The dead-man's state to keep across a restart (`now` monotonic, `wall` the wall clock);
    `to` is who was texted about the current outage."""
    state: dict[str, Any] = {
        "at": wall,
        "services": {
            s: {"quiet_s": watch.quiet_s(s, now), "last": watch.last_heard_wall(s, now, wall)}
            for s in watch.services
        },
        "state": dm.state,
        "silent_since": dm.silent_since,
        "silent_from": dm.silent_from,
        "since_text_s": None if dm.last_text_at is None else now - dm.last_text_at,
        "texts": dm.texts,
        "outage": dm.outage,
        "to": to,
        "pending": [[p.phone, p.text, p.key, p.outage, p.attempts] for p in pending],
    }
    return json.dumps(state)


def restore(
    text: str, watch: HeartbeatWatch, dm: DeadMan, now: float, wall: float
) -> tuple[list[Pending], list[str]]:
    """Load what `dump` kept into a fresh `watch` (started at `now`) and `dm`; returns the texts
    still to deliver and who was texted about the current outage. See the module docstring for
    how the time between the save and now is counted."""
    try:
        state = json.loads(text)
        gap = wall - float(state["at"])
        services = {str(s): (float(v["quiet_s"]), v["last"]) for s, v in state["services"].items()}
        last_texted = None if state["since_text_s"] is None else float(state["since_text_s"])
        since, began = state["silent_since"], state["silent_from"]
        silent, texts, outage = state["state"] == "silent", int(state["texts"]), int(state["outage"])
        pending = [Pending(str(p), str(t), str(k), int(o), int(a), now) for p, t, k, o, a in state["pending"]]
        to = [str(p) for p in state["to"]]
        since = None if since is None else float(since)
        began = None if began is None else float(began)
        lasts = {s: None if last is None else float(last) for s, (_, last) in services.items()}
    except Exception as exc:  # a damaged mark (or one of another version) must not stop the gateway
        log.error("dead-man: its saved state cannot be read (%s); starting afresh", exc)
        return [], []
    carried = gap if 0.0 <= gap <= RESTART_GAP_S else 0.0
    if carried != gap:
        log.warning(
            "dead-man: %.0f s on the wall clock since its state was saved; not counted as silence"
            " (the gateway was off, or its clock was set)", gap,
        )  # fmt: skip
    for s, (quiet, _) in services.items():
        if s in watch.services:
            watch.quiet_before[s] = quiet + carried
            last = lasts[s]
            if last is not None:
                watch.last_wall[s] = last
    dm.state = "silent" if silent else "heard"
    dm.silent_since, dm.silent_from = since, began
    dm.last_text_at = None if last_texted is None else now - last_texted - carried
    dm.texts, dm.outage = texts, outage
    return pending, to
