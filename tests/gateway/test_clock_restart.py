"""A gateway restart does not move data in time: each device's clock offset is kept in the spool,
so what a wired sensor replays after the restart (late by the whole downtime) is stamped as if it
had arrived on time, and the live frames that follow carry on without a jump or an overlap.

Found by the fault suite (tests/faults/test_gateway_outage.py): before, the first replayed frame
set a fresh offset 139 s too large, and the estimate then stepped back over it 2 s at a time, so
ECG frames overlapped in time."""

from __future__ import annotations

from gateway.decode import ClockSync

UTC0 = 1_795_597_200_000_000  # µs
FRAME_US = 113 * 4000  # an ECG frame: 113 samples at 250 Hz


def _frames(sync: ClockSync, first: int, last: int, rx_of: dict[int, int]) -> dict[int, int]:
    """Frame k's start in UTC as the clock estimates it."""
    out = {}
    for k in range(first, last):
        t0 = k * FRAME_US
        out[k] = t0 + sync.observe("ecg-0001", t0, t0 + FRAME_US - 4000, rx_of[k])
    return out


def test_replayed_frames_after_a_restart_keep_their_time_and_live_ones_continue() -> None:
    live_rx = {k: UTC0 + k * FRAME_US + FRAME_US + 20_000 for k in range(4000)}  # 20 ms of latency
    before = ClockSync()
    times = _frames(before, 0, 1000, live_rx)
    saved = before.dump("ecg-0001")
    # The gateway is down 60 s; when it is back the sensor replays frames 1000-1132, all arriving
    # within a second, then the live frames follow on time.
    down_us = 60_000_000
    restart_rx = UTC0 + 1000 * FRAME_US + down_us
    rx = dict(live_rx)
    for i, k in enumerate(range(1000, 1133)):
        rx[k] = restart_rx + i * 5_000
    after = ClockSync()
    after.restore("ecg-0001", saved)
    times.update(_frames(after, 1000, 3000, rx))
    starts = [times[k] for k in range(3000)]
    steps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert min(steps) > FRAME_US - 4000 - 2_000  # never backwards, never overlapping
    assert max(steps) < FRAME_US + 2_000  # and no jump forward by the downtime
    assert after.steps == 0


def test_without_the_saved_offset_the_replay_would_be_shifted_by_the_downtime() -> None:
    rx = {k: UTC0 + 1000 * FRAME_US + 60_000_000 + (k - 1000) * 5_000 for k in range(1000, 1010)}
    fresh = ClockSync()
    shifted = _frames(fresh, 1000, 1010, rx)
    assert shifted[1000] - 1000 * FRAME_US - UTC0 > 59_000_000  # what the restore prevents


def test_a_device_that_rebooted_while_the_gateway_was_down_starts_afresh() -> None:
    sync = ClockSync()
    sync.restore("ecg-0001", f"{UTC0}:{5_000 * FRAME_US}")
    offset = sync.observe(
        "ecg-0001", 10 * FRAME_US, 11 * FRAME_US, UTC0 + 9_000_000_000
    )  # device time went back
    assert offset == UTC0 + 9_000_000_000 - 11 * FRAME_US
    assert sync.take_changed() == {"ecg-0001": f"{offset}:{10 * FRAME_US}"}


def test_a_replay_longer_than_an_hour_of_frames_is_held_until_it_catches_up() -> None:
    # The gateway was down 75 minutes; the sensor replays what it buffered ten times faster than
    # real time while it goes on measuring, and catches up after ~11,000 frames (8.5 minutes):
    # the restored offset holds all through (a hold that counted frames ran out at 8,192 and
    # stamped the rest ahead, then stepped back over it).
    live_rx = {k: UTC0 + k * FRAME_US + FRAME_US + 20_000 for k in range(14_000)}
    before = ClockSync()
    times = _frames(before, 0, 1000, live_rx)
    restart_rx = UTC0 + 1000 * FRAME_US + 75 * 60_000_000
    rx = {k: max(live_rx[k], restart_rx + (k - 1000) * FRAME_US // 10) for k in range(1000, 14_000)}
    assert sum(rx[k] > live_rx[k] for k in rx) > 10_000
    after = ClockSync()
    after.restore("ecg-0001", before.dump("ecg-0001"))
    times.update(_frames(after, 1000, 14_000, rx))
    steps = [times[k + 1] - times[k] for k in range(13_999)]
    assert FRAME_US - 2_000 < min(steps) and max(steps) < FRAME_US + 2_000
    assert after.steps == 0


def test_a_hold_that_never_sees_a_frame_on_time_ends_after_an_hour() -> None:
    # The gateway's wall clock was set 10 minutes ahead while it was down (a Pi without a
    # real-time clock), so every frame after the restart looks 10 minutes late. The restored
    # offset is trusted for an hour by the gateway's clock, then the estimate starts afresh.
    skew = 600_000_000
    live_rx = {k: UTC0 + k * FRAME_US + FRAME_US + 20_000 for k in range(1000)}
    before = ClockSync()
    _frames(before, 0, 1000, live_rx)
    rx = {k: UTC0 + k * FRAME_US + FRAME_US + 20_000 + skew for k in range(1000, 10_000)}
    after = ClockSync()
    after.restore("ecg-0001", before.dump("ecg-0001"))
    restored = after.devices["ecg-0001"].offset
    times = _frames(after, 1000, 10_000, rx)
    offsets = {k: t - k * FRAME_US for k, t in times.items()}
    hour = next(k for k in rx if rx[k] - rx[1000] >= ClockSync.HOLD_US)
    assert {offsets[k] for k in range(1000, hour)} == {restored}
    assert all(abs(offsets[k] - restored - skew) < 2_000 for k in range(hour, 10_000))
    assert after.steps == 1
