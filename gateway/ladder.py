"""The reconnect ladder of one device: when to try again, when to start over, when to say it is lost.

Rules of this file:
- Pure: no I/O, no clock, no randomness of its own. Every event takes `now` (seconds on a
  monotonic clock: every wait and duration is measured on it) and may take `wall` (the wall clock
  at that moment, default `now`), which only dates `since`, the time reported outward. A Pi has no
  real-time clock and NTP steps its wall clock, by hours at boot and sometimes back: measured on
  it, a drop-out of a second would be hours long (a false "lost") and a real loss hours late. The
  jitter comes from an injected `rand`. The runners (gateway.ble, gateway.serial_transport)
  perform what the returned actions say, and call `tick` while the link is up as well as while
  it is down (stability and "found" are decided by time passing, not only by events).
- The link state moves only along `TRANSITIONS` (a table, checked); the three rungs are:
  1. a failed connection attempt or a drop-out is retried after an exponential backoff with jitter;
  2. after `reset_after` failures in a row the runner resets the connection state ("reset"): it
     forgets the cached device and GATT table, and rediscovers the device by scanning;
  3. after `lost_after_s` without a stable link the device is reported lost ("report_lost", a
     technical status the gateway publishes at once) - and the ladder keeps climbing: retries go
     on at the capped backoff for as long as the gateway runs. A gateway restart is never needed.
- Only a stable link - one that has stayed up `stable_after_s` - counts as the device being back:
  it clears the failures (the next drop-out is retried within one `min_s` again), restarts the
  count towards lost, and, if the device had been reported lost, reports it found
  ("report_found"). A link that drops sooner is a flap: it counts as one more failure (backoff
  and reset rungs alike), and the time since the last stable link keeps counting towards lost.
- Lost is reported at the first moment the device is not connected once `lost_after_s` have
  passed since its last stable link (or since the ladder started): a device that came back just
  before then and stays is never reported lost, and a flapping one is reported at most one short
  connection late. While lost, a new connection is shown as "lost" until it is stable, so a
  flapping device does not raise and clear its alarm at every connection.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field
from typing import Literal

from nabz.mqtt import Backoff

__all__ = ["Ladder", "LadderError", "Action", "LinkState", "TRANSITIONS", "STABLE_AFTER_S", "USEFUL_AFTER_S"]

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

# How long a link must stay up before the device counts as back. A wearable that connects and
# drops at once (a brown-out under radio load, a firmware crash loop, the edge of range) pays a
# full connection, discovery and reads - 3 to 5 s of radio - at every cycle; were each such
# connection taken as a success, it would be paged again within `min_s` forever, draining its
# battery, and never reported lost although hardly any data arrives. 15 s is three to five
# setups: a link that holds that long spends at most a quarter of its radio time setting up, and
# a wearable at the edge of range whose links last half a minute, delivering most of its data,
# is not reported lost. Never longer than `lost_after_s` (see `Ladder.__post_init__`): a link
# that has lasted as long as the device may be away before it is lost is not a flap.
STABLE_AFTER_S = 15.0
# A link shorter than that but up this long delivered data (notifications flow within a second of
# subscribing): it is retried quickly, not backed off as a failure. A wearable whose links last
# 5-14 s at the edge of range then stays connected over half the time instead of a sixth to a third.
USEFUL_AFTER_S = 5.0


def _dated(now: float, wall: float | None) -> float:
    """The wall-clock time of an event at monotonic `now` (a caller on one clock gives no `wall`)."""
    return now if wall is None else wall


class LadderError(Exception):
    """An event that cannot happen in the current state (the runner called the ladder wrongly)."""


@dataclass
class Ladder:
    """The reconnect ladder of one device. `now`, and every time it keeps but `since`, are seconds
    on a monotonic clock; `since` is on the wall clock (`wall` at the start, default `now`)."""

    now: float
    min_s: float = 1.0
    max_s: float = 30.0
    reset_after: int = 3
    lost_after_s: float = 60.0
    rand: Callable[[], float] = field(default=random.random)
    stable_after_s: float = STABLE_AFTER_S
    wall: InitVar[float | None] = None

    state: State = field(init=False, default="connecting")
    lost: bool = field(init=False, default=False)
    attempting: bool = field(init=False, default=False)
    stable: bool = field(init=False, default=False)  # the link up now has lasted stable_after_s
    failures: int = field(init=False, default=0)  # in a row (flaps included), since the last stable link
    resets: int = field(init=False, default=0)
    reconnects: int = field(init=False, default=0)  # connections after the first
    connections: int = field(init=False, default=0)
    last_reason: str = field(init=False, default="")

    def __post_init__(self, wall: float | None) -> None:
        self.stable_after_s = min(self.stable_after_s, self.lost_after_s)
        self.since = _dated(self.now, wall)  # when `link_state` last changed (wall clock)
        self.down_since = self.now  # end of the last stable link (or the ladder's start)
        self.up_since = self.now  # start of the current connection (meaningful while connected)
        self.next_attempt = self.now
        self._backoff = Backoff(self.min_s, self.max_s, self.rand)

    # --- what the runner asks ------------------------------------------------------------------
    @property
    def link_state(self) -> LinkState:
        """The state to report: "lost" from the report until the device has a stable link again."""
        return "lost" if self.lost else self.state

    def attempt_due(self, now: float) -> bool:
        """Whether the runner should start a connection attempt now."""
        return self.state != "connected" and not self.attempting and now >= self.next_attempt

    def stable_at(self) -> float | None:
        """When the link up now becomes stable (for a runner that ticks only when needed)."""
        return self.up_since + self.stable_after_s if self.state == "connected" and not self.stable else None

    # --- what the runner tells -----------------------------------------------------------------
    def on_attempt(self, now: float, wall: float | None = None) -> None:
        self._move("attempt", now, wall)
        self.attempting = True

    def on_connected(self, now: float, wall: float | None = None) -> list[Action]:
        """A connection is up (set up and subscribed). Not yet a return: see `tick`."""
        self._move("connected", now, wall)
        self.attempting = False
        self.up_since = now
        self.stable = False
        self.connections += 1
        if self.connections > 1:
            self.reconnects += 1
        return self.tick(now, wall)

    def on_failed(self, now: float, reason: str, wall: float | None = None) -> list[Action]:
        """A connection attempt failed (timeout, refused, discovery error...)."""
        self._move("failed", now, wall)
        self.attempting = False
        self.last_reason = reason
        return self._failure(now) + self.tick(now, wall)

    def on_disconnected(self, now: float, reason: str, wall: float | None = None) -> list[Action]:
        """An established connection dropped. After a stable link the first retry comes quickly
        (one jittered min_s); after a flap the backoff climbs as after a failed attempt."""
        actions = self.tick(now, wall)  # a link that had become stable by now counts as one
        self._move("disconnected", now, wall)
        self.last_reason = reason
        if self.stable:
            self.stable = False
            self.down_since = now
            self.next_attempt = now + self._backoff.delay(1)
        elif now - self.up_since >= min(USEFUL_AFTER_S, self.stable_after_s / 3):
            # Not stable, but it carried data: the radio reaches it, so the next try comes quickly
            # (the time still counts towards lost, which only a stable link ends).
            self.next_attempt = now + self._backoff.delay(1)
        else:
            actions += self._failure(now)
        return actions + self.tick(now, wall)

    def tick(self, now: float, wall: float | None = None) -> list[Action]:
        """Time passed: a link up `stable_after_s` is stable (the device is back, found if it had
        been lost); a device not connected `lost_after_s` after its last stable link is lost."""
        if self.state == "connected":
            if not self.stable and now - self.up_since >= self.stable_after_s:
                self.stable = True
                self.failures = 0
                if self.lost:
                    self.lost = False
                    self.since = _dated(now, wall)
                    return ["report_found"]
            return []
        if not self.lost and now - self.down_since >= self.lost_after_s:
            self.lost = True
            self.since = _dated(now, wall)
            return ["report_lost"]
        return []

    def _failure(self, now: float) -> list[Action]:
        self.failures += 1
        actions: list[Action] = []
        if self.failures % self.reset_after == 0:
            self.resets += 1
            actions.append("reset")
        self.next_attempt = now + self._backoff.delay(self.failures)
        return actions

    def _move(self, event: Event, now: float, wall: float | None) -> None:
        nxt = TRANSITIONS.get((self.state, event))
        if nxt is None:
            raise LadderError(f"event {event!r} cannot happen while {self.state!r}")
        shown = self.link_state
        self.state = nxt
        if self.link_state != shown:
            self.since = _dated(now, wall)
