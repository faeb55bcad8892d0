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
    assert lad.on_connected(lad.next_attempt + 1) == ["report_found"]
    assert lad.link_state == "connected" and lad.failures == 0 and lad.reconnects == 1


def test_impossible_events_are_bugs_not_radio_conditions() -> None:
    lad = _ladder()
    with pytest.raises(LadderError):
        lad.on_disconnected(1.0, "x")  # never connected
    lad.on_attempt(0.0)
    lad.on_connected(1.0)
    with pytest.raises(LadderError):
        lad.on_failed(2.0, "x")
