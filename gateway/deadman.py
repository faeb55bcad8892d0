"""The gateway's dead-man switch: when the server has been silent too long, say so — by SMS
through a GSM modem on the gateway itself, because the uplink being down is common where this runs.

Rules of this file:
- `HeartbeatWatch` and `DeadMan` are pure (time comes in as `now`, the gateway's clock). The
  watch keeps, per server service (`ingest`, `alerts`), when a heartbeat that says the service
  works was last heard (`nabz/v1/<site>/server/+/heartbeat`, docs/contract.md "Heartbeats"). An
  alerts heartbeat saying `degraded` means it cannot send SMS: that is not working, for us.
- Silence counts from the gateway's start: a gateway that starts while the server is down texts
  after `after_s` too. Whether the gateway reaches the broker at all is part of the message (the
  two causes need different people).
- `DeadMan` texts once when the server goes silent, reminds every `repeat_s` while it stays
  silent, and says when it is heard again. Nothing is sent while it is heard.
- `DeadManSender` is the only thing here that blocks: its own thread hands each text to the
  modem (alerts.gsm, TS 27.005) with retries, so a slow modem never holds up the spool.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal
from zoneinfo import ZoneInfo

import msgspec

from alerts.notify import Notifier
from nabz.contract import Heartbeat

__all__ = ["HeartbeatWatch", "Silence", "DeadMan", "DeadManSender", "recipients"]

log = logging.getLogger(__name__)

_decoder = msgspec.json.Decoder(Heartbeat)


@dataclass(frozen=True, slots=True)
class Silence:
    """Services not heard working for `after_s`: (service, last heard working or None, why)."""

    services: tuple[tuple[str, float | None, str], ...]

    @property
    def names(self) -> list[str]:
        return [s for s, _, _ in self.services]


class HeartbeatWatch:
    def __init__(self, services: Sequence[str], after_s: float, started_at: float | None = None) -> None:
        self.services = tuple(services)
        self.after_s = after_s
        self.started_at = started_at
        self.working_at: dict[str, float] = {}  # service -> last heartbeat saying it works
        self.heard_at: dict[str, float] = {}  # service -> last heartbeat at all
        self.detail: dict[str, str] = {}  # service -> what its last heartbeat said was wrong
        self.malformed = 0

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
        self.heard_at[hb.service] = now
        if hb.service == "alerts" and hb.state == "degraded":
            self.detail[hb.service] = hb.detail or "degraded"
            return "degraded"
        self.detail.pop(hb.service, None)
        self.working_at[hb.service] = now
        return hb.state

    def silence(self, now: float) -> Silence | None:
        if self.started_at is None:
            self.started_at = now
        out = []
        for s in self.services:
            last = self.working_at.get(s)
            if now - (last if last is not None else self.started_at) >= self.after_s:
                if s in self.detail and s in self.heard_at and now - self.heard_at[s] < self.after_s:
                    why = f"{s} cannot do its job ({self.detail[s]})"
                else:
                    why = f"no heartbeat from {s}"
                out.append((s, last, why))
        return Silence(tuple(out)) if out else None


@dataclass
class DeadMan:
    """When to text about the server's silence (see the module docstring)."""

    site: str
    gateway: str
    repeat_s: float = 6 * 3600.0
    timezone: str = "Asia/Karachi"
    state: Literal["heard", "silent"] = "heard"
    silent_since: float | None = None
    last_text_at: float | None = None
    texts: int = 0
    _tz: ZoneInfo = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._tz = ZoneInfo(self.timezone)

    def _hhmm(self, t: float) -> str:
        return datetime.fromtimestamp(t, UTC).astimezone(self._tz).strftime("%H:%M %Z")

    def step(self, now: float, silence: Silence | None, broker_connected: bool) -> list[str]:
        """The texts to send now (usually none)."""
        if silence is None:
            if self.state == "silent":
                self.state = "heard"
                since = self.silent_since
                self.silent_since = None
                self.texts += 1
                self.last_text_at = now
                return [
                    f"NABZ {self.site}/{self.gateway}: the server is heard again"
                    f" (silent since {self._hhmm(since or now)}). Alarms reach you through it again."
                ]
            return []
        known = [t for _, t, _ in silence.services if t is not None]
        since = min(known) if known else None
        if self.state == "heard":
            self.state = "silent"
            self.silent_since = since
            return [self._text(now, silence, broker_connected, repeat=False)]
        if self.repeat_s > 0 and self.last_text_at is not None and now - self.last_text_at >= self.repeat_s:
            return [self._text(now, silence, broker_connected, repeat=True)]
        return []

    def _text(self, now: float, silence: Silence, connected: bool, *, repeat: bool) -> str:
        self.texts += 1
        self.last_text_at = now
        since = (
            f"since {self._hhmm(self.silent_since)}" if self.silent_since else "since this gateway started"
        )
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


def recipients(phones: list[str], oncall: object | None, fallback: list[str], at: float) -> list[str]:
    """The numbers to text: `phones` if given, else the on-call primary and backup at `at`."""
    if phones:
        return list(dict.fromkeys(phones))
    from alerts.oncall import Schedule

    schedule = Schedule(oncall, fallback)  # type: ignore[arg-type]
    people = schedule.who("primary", at) + schedule.who("backup", at)
    return list(dict.fromkeys(p.phone for p in people))


class DeadManSender:
    """A thread that sends the dead-man's texts through a notifier (a GSM modem), with retries."""

    def __init__(self, notifier: Notifier, *, retry_s: float = 30.0, attempts: int = 10) -> None:
        self.notifier = notifier
        self.retry_s = retry_s
        self.attempts = attempts
        self.sent: list[tuple[str, str]] = []
        self.failed: list[tuple[str, str, str]] = []
        self._queue: queue.SimpleQueue[tuple[str, str, str] | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nabz-deadman", daemon=True)
        self._thread.start()

    def send(self, phone: str, text: str, key: str) -> None:
        self._queue.put((phone, text, key))

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        self._thread.join(5)

    def _run(self) -> None:
        import time

        while not self._stop.is_set():
            item = self._queue.get()
            if item is None:
                return
            phone, text, key = item
            detail, ok = "", False
            for attempt in range(self.attempts):
                try:
                    d = self.notifier.send(phone, text, f"{key}-{attempt}", time.time())
                except Exception as exc:  # a notifier's bug is a failed attempt
                    log.exception("dead-man SMS to %s", phone)
                    ok, retryable, detail = False, True, f"{type(exc).__name__}: {exc}"
                else:
                    ok, retryable, detail = d.ok, d.retryable, d.detail
                if ok:
                    self.sent.append((phone, text))
                    log.warning("dead-man SMS sent to %s: %s", phone, text)
                    break
                log.error(
                    "dead-man SMS to %s failed (%s)%s", phone, detail, "; retrying" if retryable else ""
                )
                if not retryable or self._stop.wait(min(self.retry_s * 2**attempt, 300.0)):
                    break
            if not ok:
                self.failed.append((phone, text, detail))
