"""The reconnect ladder of one device: when to try again, when to start over, when to say it is lost.

Rules of this file:
- Pure: no I/O, no clock, no randomness of its own. Every event takes `now` (seconds, the
  gateway's clock) and the jitter comes from an injected `rand`. The BLE runner (gateway.ble)
  performs what the returned actions say.
- The link state moves only along `TRANSITIONS` (a table, checked); the three rungs are:
  1. a failed connection attempt or a drop-out is retried after an exponential backoff with jitter;
  2. after `reset_after` failures in a row the runner resets the connection state ("reset"): it
     forgets the cached device and GATT table, and rediscovers the device by scanning;
  3. after `lost_after_s` without a connection the device is reported lost ("report_lost", a
     technical status the gateway publishes at once) - and the ladder keeps climbing: retries go
     on at the capped backoff for as long as the gateway runs. A gateway restart is never needed.
- A successful connection resets the ladder; if the device had been reported lost, it is
  reported found ("report_found").
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from nabz.mqtt import Backoff

__all__ = ["Ladder", "LadderError", "Action", "LinkState", "TRANSITIONS"]

State = Literal["connecting", "connected", "reconnecting"]
LinkState = Literal["connecting", "connected", "reconnecting", "lost"]
Event = Literal["attempt", "connected", "failed", "disconnected"]
Action = Literal["reset", "report_lost", "report_found"]

# (state, event) -> next state. Anything else is a bug in the runner, not a radio condition.
TRANSITIONS: dict[tuple[State, Event], State] = {
    ("connecting", "attempt"): "connecting",  # the first attempt, or a retry after a reset
    ("connecting", "connected"): "connected",
    ("connecting", "failed"): "reconnecting",
    ("reconnecting", "attempt"): "connecting",
    ("connected", "disconnected"): "reconnecting",
}


class LadderError(Exception):
    """An event that cannot happen in the current state (the runner called the ladder wrongly)."""


@dataclass
class Ladder:
    """The reconnect ladder of one device. Times are seconds on the gateway's clock."""

    now: float
    min_s: float = 1.0
    max_s: float = 30.0
    reset_after: int = 3
    lost_after_s: float = 60.0
    rand: Callable[[], float] = field(default=random.random)

    state: State = field(init=False, default="connecting")
    lost: bool = field(init=False, default=False)
    attempting: bool = field(init=False, default=False)
    failures: int = field(init=False, default=0)  # in a row, since the last good connection
    resets: int = field(init=False, default=0)
    reconnects: int = field(init=False, default=0)  # connections after the first
    connections: int = field(init=False, default=0)
    last_reason: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.since = self.now  # when `state` (or `lost`) last changed
        self.down_since = self.now  # last time the device was connected (or the ladder started)
        self.next_attempt = self.now
        self._backoff = Backoff(self.min_s, self.max_s, self.rand)

    # --- what the runner asks ------------------------------------------------------------------
    @property
    def link_state(self) -> LinkState:
        return "lost" if self.lost and self.state != "connected" else self.state

    def attempt_due(self, now: float) -> bool:
        """Whether the runner should start a connection attempt now."""
        return self.state != "connected" and not self.attempting and now >= self.next_attempt

    # --- what the runner tells -----------------------------------------------------------------
    def on_attempt(self, now: float) -> None:
        self._move("attempt", now)
        self.attempting = True

    def on_connected(self, now: float) -> list[Action]:
        self._move("connected", now)
        self.attempting = False
        self.failures = 0
        self.connections += 1
        if self.connections > 1:
            self.reconnects += 1
        if self.lost:
            self.lost = False
            return ["report_found"]
        return []

    def on_failed(self, now: float, reason: str) -> list[Action]:
        """A connection attempt failed (timeout, refused, discovery error...)."""
        self._move("failed", now)
        self.attempting = False
        self.last_reason = reason
        self.failures += 1
        actions: list[Action] = []
        if self.failures % self.reset_after == 0:
            self.resets += 1
            actions.append("reset")
        self.next_attempt = now + self._backoff.delay(self.failures)
        return actions + self.tick(now)

    def on_disconnected(self, now: float, reason: str) -> list[Action]:
        """An established connection dropped. The first retry comes quickly (one jittered min_s)."""
        self._move("disconnected", now)
        self.last_reason = reason
        self.down_since = now
        self.next_attempt = now + self._backoff.delay(1)
        return self.tick(now)

    def tick(self, now: float) -> list[Action]:
        """Time passed: report the device lost once it has been away `lost_after_s`."""
        if self.state != "connected" and not self.lost and now - self.down_since >= self.lost_after_s:
            self.lost = True
            self.since = now
            return ["report_lost"]
        return []

    def _move(self, event: Event, now: float) -> None:
        nxt = TRANSITIONS.get((self.state, event))
        if nxt is None:
            raise LadderError(f"event {event!r} cannot happen while {self.state!r}")
        if nxt != self.state:
            self.since = now
        self.state = nxt
