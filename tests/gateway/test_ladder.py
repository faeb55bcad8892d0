"""The reconnect ladder: backoff with jitter, then a reset, then "lost" - and retries forever.
Time and randomness are injected; nothing here sleeps."""

from __future__ import annotations

import random

import pytest

from gateway.ladder import Ladder, LadderError
from nabz.mqtt import Backoff


def test_backoff_doubles_to_its_cap_with_jitter_inside_the_documented_band() -> None:
    rng = random.Random(7)
    b = Backoff(1.0, 30.0, rng.random)
    for failures, base in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (60, 30.0)]:
        delays = [b.delay(failures) for _ in range(200)]
        assert min(delays) >= base / 2 and max(delays) <= base
        assert max(delays) - min(delays) > base / 4, "no jitter: gateways would retry in lock-step"


def _ladder(now: float = 0.0, **kw: float) -> Ladder:
    return Ladder(now, min_s=1.0, max_s=8.0, reset_after=3, lost_after_s=60.0, rand=lambda: 1.0, **kw)  # type: ignore[arg-type]


def test_a_device_that_never_answers_climbs_every_rung_and_is_retried_forever() -> None:
    lad = _ladder()
    now, actions, attempts = 0.0, [], 0
    while now < 600:
        if lad.attempt_due(now):
            lad.on_attempt(now)
            attempts += 1
            now += 2.0  # the attempt times out
            actions += [(now, a) for a in lad.on_failed(now, "timeout")]
        actions += [(now, a) for a in lad.tick(now)]
        now += 0.5
    kinds = [a for _, a in actions]
    assert kinds.count("report_lost") == 1  # said once, loudly, not every retry
    assert kinds.count("reset") == attempts // 3
    lost_at = next(t for t, a in actions if a == "report_lost")
    assert 60.0 <= lost_at <= 62.0
    assert lad.link_state == "lost"
    # capped backoff: after the cap, one attempt per (timeout + at most max_s + a tick)
    assert attempts >= 600 / (2.0 + 8.0 + 0.5) - 3


def test_a_drop_out_is_retried_quickly_and_a_return_clears_everything() -> None:
    lad = _ladder()
    lad.on_attempt(0.0)
    assert lad.on_connected(0.5) == []
    assert lad.link_state == "connected"
    assert lad.on_disconnected(100.0, "supervision timeout") == []
    assert lad.link_state == "reconnecting"
    assert not lad.attempt_due(100.0) and lad.attempt_due(101.0)  # one jittered min_s later
    lad.on_attempt(101.0)
    assert lad.on_failed(103.0, "timeout") == []
    assert lad.tick(159.9) == [] and lad.tick(160.0) == ["report_lost"]
    assert lad.link_state == "lost"
    while not lad.attempt_due(lad.next_attempt):
        pass
    lad.on_attempt(lad.next_attempt)
    back = lad.next_attempt + 1
    assert lad.on_connected(back) == []
    assert lad.link_state == "lost"  # until the link has proved stable
    assert lad.tick(back + 14.9) == [] and lad.tick(back + 15.0) == ["report_found"]  # STABLE_AFTER_S
    assert lad.link_state == "connected" and lad.failures == 0 and lad.reconnects == 1
    assert lad.since == back + 15.0


def test_impossible_events_are_bugs_not_radio_conditions() -> None:
    lad = _ladder()
    with pytest.raises(LadderError):
        lad.on_disconnected(1.0, "x")  # never connected
    lad.on_attempt(0.0)
    lad.on_connected(1.0)
    with pytest.raises(LadderError):
        lad.on_failed(2.0, "x")


def _flapping_hour(lad: Ladder, up_s: float) -> tuple[int, list[float]]:
    """A wearable that is heard, set up in 3 s, and drops `up_s` later, for an hour (synthetic)."""
    now, connections, lost_at = 0.0, 0, []
    while now < 3600:
        if lad.attempt_due(now):
            lad.on_attempt(now)
            now += 3.0  # connect, discovery, reads, subscriptions
            lost_at += [now for a in lad.on_connected(now) if a == "report_lost"]
            connections += 1
            for _ in range(int(up_s / 0.5)):
                now += 0.5
                assert lad.tick(now) == []  # never found while it flaps
            lost_at += [now for a in lad.on_disconnected(now, "link lost") if a == "report_lost"]
        else:
            lost_at += [now for a in lad.tick(now) if a == "report_lost"]
            now += 0.5
    return connections, lost_at


def test_a_wearable_that_drops_at_once_after_each_connection_backs_off_and_is_reported_lost() -> None:
    # Before 2026-11-27 every connection reset the ladder: re-paged every 0.5-1 s (623 full
    # connections an hour, draining its battery) and never reported lost.
    lad = Ladder(0.0, min_s=1.0, max_s=30.0, reset_after=3, lost_after_s=60.0, rand=random.Random(1).random)
    connections, lost_at = _flapping_hour(lad, up_s=2.0)
    # Capped backoff: one connection per (at least max_s/2 + setup + up time), as for a device
    # that never answers - after the first few quick retries.
    assert connections <= 3600 / (15.0 + 5.0) + 6, connections
    assert len(lost_at) == 1 and 60.0 <= lost_at[0] <= 60.0 + 5.0  # at most one short connection late
    assert lad.link_state == "lost"
    assert lad.resets >= connections // 3 - 1  # the reset rung is climbed too


def test_short_links_that_carry_data_are_retried_quickly_but_still_count_towards_lost() -> None:
    """At the edge of range links last 8 s: backed off as failures, the wearable was connected a
    sixth of the time; retried quickly, over half of it. It is still reported lost once (its data
    comes in pieces) and never found while no link holds."""
    lad = Ladder(0.0, min_s=1.0, max_s=30.0, reset_after=3, lost_after_s=60.0, rand=random.Random(1).random)
    connections, lost_at = _flapping_hour(lad, up_s=8.0)
    assert connections * 8.0 / 3600 > 0.5
    assert len(lost_at) == 1 and lad.link_state == "lost" and lad.failures == 0


def test_a_link_that_holds_a_minute_is_a_return_and_its_next_drop_is_retried_at_once() -> None:
    lad = _ladder()
    lad.on_attempt(0.0)
    lad.on_connected(3.0)
    assert lad.on_disconnected(5.0, "link lost") == []  # a flap: retried quickly the first time
    assert lad.failures == 1 and lad.next_attempt == 6.0
    lad.on_attempt(6.0)
    lad.on_connected(9.0)
    assert lad.on_disconnected(11.0, "link lost") == []
    assert lad.failures == 2 and lad.next_attempt == 13.0  # 2 s: the backoff climbs
    lad.on_attempt(13.0)
    lad.on_connected(59.0)  # back just before lost_after_s, and it stays
    assert lad.tick(70.0) == [] and lad.link_state == "connected"  # never reported lost
    assert lad.tick(119.0) == [] and lad.failures == 0 and lad.stable
    assert lad.on_disconnected(200.0, "supervision timeout") == []
    assert lad.next_attempt == 201.0 and lad.link_state == "reconnecting"
    assert lad.tick(259.9) == [] and lad.tick(260.0) == ["report_lost"]  # 60 s after the stable link


def test_a_link_that_became_stable_is_counted_as_such_when_it_drops_between_ticks() -> None:
    lad = _ladder()
    lad.on_attempt(0.0)
    lad.on_connected(1.0)
    assert lad.stable_at() == 16.0
    assert lad.on_disconnected(500.0, "link lost") == []  # no tick while up: still a stable link
    assert lad.failures == 0 and lad.down_since == 500.0 and lad.next_attempt == 501.0
    assert lad.stable_at() is None


def test_a_lost_device_that_flaps_stays_lost_instead_of_raising_and_clearing_its_alarm() -> None:
    lad = _ladder()
    now = 0.0
    while lad.link_state != "lost":
        if lad.attempt_due(now):
            lad.on_attempt(now)
            lad.on_failed(now + 2.0, "timeout")
        lad.tick(now)
        now += 0.5
    shown = []
    for _ in range(5):
        while not lad.attempt_due(now):
            now += 0.5
        lad.on_attempt(now)
        assert lad.on_connected(now + 3.0) == []  # no report_found
        shown.append(lad.link_state)
        assert "report_lost" not in lad.on_disconnected(now + 8.0, "link lost")  # nor a second lost
        shown.append(lad.link_state)
        now += 8.0
    assert set(shown) == {"lost"}


def test_durations_follow_the_monotonic_now_and_since_the_wall_clock_whatever_ntp_does_to_it() -> None:
    """The runner gives each event the monotonic time (`now`) and the wall clock (`wall`): a step
    of the wall clock (2 h forward, then 1 h back) moves neither a wait nor lost; only `since`,
    which is reported, follows the wall clock."""
    lad = _ladder(0.0, wall=1_000.0)
    assert lad.since == 1_000.0
    lad.on_attempt(0.0, wall=1_000.0)
    lad.on_connected(1.0, wall=1_001.0)
    assert lad.tick(16.0, wall=1_016.0 + 7200) == []  # stable, nothing to report
    assert lad.on_disconnected(100.0, "supervision timeout", wall=8_300.0) == []
    assert lad.since == 8_300.0 and lad.next_attempt == 101.0  # one jittered min_s, monotonic
    assert lad.tick(159.9, wall=8_359.9 + 7200) == []  # a forward step: not lost
    assert lad.tick(160.0, wall=8_360.0 - 3600) == ["report_lost"]  # a step back: lost on time
    assert lad.since == 4_760.0
