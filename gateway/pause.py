"""When the gateway stops sending readings: while ingest is known to be away. Pure: no I/O, no
clock of its own (every call takes `now`, seconds on a monotonic clock).

While ingest is down its persistent MQTT session keeps its subscriptions, so the broker
acknowledges every reading to the gateway (a plain "Success") and queues it for ingest, up to its
`max_queued_messages`; beyond that it drops them, still acknowledged (mosquitto logs "Outgoing
messages are being dropped"). The gateway, taking the acknowledgement as delivery, had deleted
them from its spool: an ingest outage longer than the broker's queue lost readings without a
trace (with `nabz broker config`'s 1,000,000: ~2.4 minutes for 1,000 patients, ~72 s for 2,000;
checked against mosquitto 2.0.11 with a queue of 10: 20 publishes acknowledged, 10 delivered).

So the gateway keeps its readings in its spool, which is made for outages of hours, once it has
heard ingest's heartbeat before and then not for `after_s` (three of the intervals the
heartbeat names, and at least `MIN_S`) while connected to the broker; it sends again at the first
heartbeat. The broker then holds at most about `after_s` of the site's readings for a stopped
ingest, and the rest waits at the homes.

- A gateway that has never heard ingest (a server without heartbeats, an ACL that hides them, a
  test broker with no ingest) never pauses. Having heard it is remembered across restarts (a spool
  mark, with the interval ingest's heartbeat named and whether ingest was found away): a
  restart does not end a pause, and a gateway that once heard a server's heartbeat pauses on any
  later silence of it (`nabz gateway status` says so; the mark goes with the spool).
- Silence is counted only while the gateway is connected: after an outage of its own link it
  sends at once, and pauses only if ingest stays silent for `after_s` from the reconnection
  (a rural link that is up for a minute now and then must not spend it waiting for a
  heartbeat). Once ingest has been found away, the gateway stays paused across its own
  reconnections until a heartbeat is heard: it had seen ingest gone.
- Any ingest heartbeat counts, "degraded" too (InfluxDB down: ingest still takes readings, into
  its spill), but not one saying `taking: false` (its embedded store refuses batches: it holds
  them unacknowledged, and the broker queues the rest for it as if it were down). A heartbeat of
  any worker counts: with several workers, one worker's slot being down is not seen here
  (docs/scale.md).

Ingest running but far behind (found by review: after a long ingest outage every gateway sends
its backlog at once, faster than ingest drains it, and the broker's queue for ingest fills and
drops the excess just the same): each ingest heartbeat says how long the messages of its latest
batch waited for it (`behind_s`: the broker's queue, read from the message expiry every reading
is published with, `contract.QUEUE_CLOCK_S`, and ingest's own), and comes every second from a
second behind until one says it is within half a second. While a worker heard lately is
`behind_max_s` or more behind, readings wait here too, until it is back within half of that. The broker then holds about that many
seconds of ingest's work (with `nabz broker config`'s 1,000,000 messages and ingest's ~20,000 a
second on two cores, docs/benchmarks.md, the queue holds ~50 s), plus what the gateways send in
the second or so a heartbeat takes to reach them. Readings from a gateway on MQTT 3.1.1 carry no
expiry: their time in the broker's queue is not seen. The queue is first in, first out: what was
queued before the pause waits about as long as the backlog, so in practice gateways send again
when ingest has emptied it (an idle worker says 0) and ingest idles for up to a second then. A
restarted gateway does not remember a worker far behind: it sends until the next heartbeat.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SendPause", "MIN_S", "BEHIND_S"]

MIN_S = 30.0  # the shortest silence that pauses sending (seconds; `[gateway] pause_after_s`)
INTERVALS = 3  # ... or this many of ingest's heartbeat intervals, if longer
BEHIND_S = 5.0  # ingest this far behind pauses sending, until within half (`[gateway] pause_behind_s`)


@dataclass
class SendPause:
    heard_at: float | None = None  # ingest's last heartbeat (None: never heard; after a restart, its start)
    interval_s: float = 10.0  # the interval ingest's last heartbeat named
    listening_since: float | None = None  # connected (subscribed to heartbeats) since; None: not
    away_since: float | None = None  # when ingest was found away (None: it is not)
    min_s: float = MIN_S  # the shortest silence that pauses
    behind_max_s: float = BEHIND_S  # ingest this far behind pauses
    # ingest workers far behind, as their heartbeats said: instance -> (behind_s, heard at)
    lagging: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def after_s(self) -> float:
        return max(self.min_s, INTERVALS * self.interval_s)

    @property
    def away(self) -> bool:
        """Ingest found away: readings wait (as `paused` last said)."""
        return self.away_since is not None

    def saved(self) -> str:
        """What a restart must not forget: whether ingest was heard, whether it was away, and the
        interval its heartbeat named (a slow heartbeat is not taken for a silence after a restart)."""
        return f"{int(self.heard_at is not None)}{int(self.away_since is not None)}:{self.interval_s:g}"

    def restore(self, saved: str, now: float) -> None:
        """At start, from `saved`: a gateway restarted while ingest was away stays paused (until a
        heartbeat), and one that had heard ingest counts its silence from now (found by review:
        a restart forgot both, and sent its whole spool into a stopped ingest's queue)."""
        heard, away = saved[:1] == "1", saved[1:2] == "1"
        try:
            self.interval_s = float(saved.partition(":")[2] or self.interval_s)
        except ValueError:
            pass
        if heard:
            self.heard_at = now
        if away:
            self.away_since = now

    def heard(self, now: float, interval_s: float) -> float | None:
        """An ingest heartbeat. Returns how long sending was paused, if it was."""
        self.heard_at, self.interval_s = now, interval_s
        since, self.away_since = self.away_since, None
        return None if since is None else now - since

    def connected(self, now: float) -> None:
        self.listening_since = now

    def disconnected(self) -> None:
        self.listening_since = None

    def paused(self, now: float) -> bool:
        """Whether readings wait in the spool now (ingest found away)."""
        if self.away_since is not None:
            return True
        if self.heard_at is None or self.listening_since is None:
            return False
        if now - max(self.heard_at, self.listening_since) > self.after_s:
            self.away_since = now
            return True
        return False

    def behind(self, instance: str, behind_s: float | None, now: float) -> None:
        """An ingest worker's heartbeat saying how far behind it is (None: it does not say).
        Far behind from `behind_max_s`, and until back within half of it."""
        was = instance in self.lagging
        if behind_s is not None and (
            behind_s > self.behind_max_s / 2 if was else behind_s >= self.behind_max_s
        ):
            self.lagging[instance] = (behind_s, now)
        else:
            self.lagging.pop(instance, None)

    def catching_up(self, now: float) -> bool:
        """Whether readings wait for ingest to catch up: a worker heard lately is far behind. A
        worker not heard for `after_s` since is forgotten here (its silence is `paused`'s)."""
        for instance in [i for i, (_, at) in self.lagging.items() if now - at > self.after_s]:
            del self.lagging[instance]
        return bool(self.lagging)

    def silent_s(self, now: float) -> float | None:
        """How long ingest has not been heard (None: never heard)."""
        return None if self.heard_at is None else now - self.heard_at
