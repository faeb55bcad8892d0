"""Sequence tracking: each frame accepted once, drop-outs asked for again, what never comes back
counted; state survives a restart of the gateway."""

from __future__ import annotations

from firmware import nabz_codec as codec
from gateway.decode import Decoder, Notification
from gateway.gaps import GapTracker, StreamState
from gateway.service import admit
from nabz.contract import EcgReading, Rejected

K = ("ecg-0001", "ecg")


def test_in_order_frames_pass_and_duplicates_are_dropped() -> None:
    g = GapTracker()
    assert all(g.observe(K, s, False, 113, 0.0).accept for s in range(10))
    v = g.observe(K, 7, False, 113, 0.0)
    assert not v.accept and v.reason == "duplicate"
    assert g.streams[K].duplicates == 1


def test_a_drop_out_is_asked_for_once_and_filled_by_resent_frames_only_once() -> None:
    g = GapTracker(timeout_s=10.0)
    for s in range(5):
        g.observe(K, s, False, 113, 0.0)
    v = g.observe(K, 12, False, 113, 1.0)  # 5..11 lost in a drop-out
    assert v.accept and v.resend == (5, 11)
    assert g.streams[K].missing_frames() == 7
    for s in range(5, 12):
        assert g.observe(K, s, True, 113, 2.0).accept
    assert not g.observe(K, 8, True, 113, 2.0).accept  # asked twice, answered twice: kept once
    assert g.expire(100.0) == []
    assert g.totals("ecg-0001").resent_frames == 7 and g.totals("ecg-0001").gap_frames == 0


def test_what_does_not_come_back_in_time_is_counted_in_frames_and_samples() -> None:
    g = GapTracker(timeout_s=10.0)
    g.observe(K, 100, False, 113, 0.0)
    g.observe(K, 200, False, 113, 5.0)  # 101..199 missing; the device kept only the last 64
    for s in range(136, 200):
        g.observe(K, s, True, 113, 6.0)
    assert g.expire(14.9) == []
    (lost,) = g.expire(15.0)
    assert (lost.first_seq, lost.frames, lost.samples) == (101, 35, 35 * 113)
    assert g.streams[K].gap_frames == 35 and g.streams[K].missing == []


def test_the_devices_resend_report_settles_what_is_not_coming_at_once() -> None:
    g = GapTracker(timeout_s=60.0)
    g.observe(K, 100, False, 113, 0.0)
    g.observe(K, 200, False, 113, 5.0)  # 101..199 missing, asked for
    (lost,) = g.report(K, 101, 199, 136, 64)  # "I hold 136..199; the rest is older than my buffer"
    assert (lost.first_seq, lost.frames, lost.samples) == (101, 35, 35 * 113)
    assert g.pending() == [(K, 136, 199)]  # the frames on their way still wait
    for s in range(136, 200):
        assert g.observe(K, s, True, 113, 6.0).accept
    assert g.pending() == [] and g.expire(1e9) == []
    assert g.streams[K].gap_frames == 35 and g.streams[K].resent_frames == 64


def test_a_report_of_nothing_resent_gives_up_exactly_the_requested_frames_across_the_wrap() -> None:
    g = GapTracker(timeout_s=60.0)
    top = 2**32 - 3
    g.observe(K, top, False, 50, 0.0)
    g.observe(K, 5, False, 50, 1.0)  # top+1 .. 4 missing: 2**32-2, 2**32-1, 0, 1, 2, 3, 4
    g.observe(K, 9, False, 50, 1.0)  # 6..8 missing too
    assert g.report(K, 6, 8, 9, 0)[0].frames == 3  # the second request: none held
    assert g.pending() == [(K, 2**32 - 2, 4)]  # the first gap is untouched by the second report
    before, after = g.report(K, 2**32 - 2, 4, 0, 2)  # frames 0 and 1 come; none other will
    assert (before.first_seq, before.frames) == (2**32 - 2, 2) and (after.first_seq, after.frames) == (2, 3)
    assert g.pending() == [(K, 0, 1)]
    assert g.streams[K].gap_frames == 8 and g.report(K, 5, 4, 5, 0) == []  # an empty request


def test_sequence_numbers_wrap_and_a_restarted_device_starts_afresh() -> None:
    g = GapTracker()
    top = (1 << 32) - 2
    for s in (top, top + 1, 0, 1):
        assert g.observe(K, s % (1 << 32), False, 37, 0.0).accept
    assert g.observe(K, 3, False, 37, 0.0).resend == (2, 2)
    assert g.observe(K, 500_000, False, 37, 0.0).reason == "gap"  # far ahead: a long drop-out
    v = g.observe(K, 0, False, 37, 1.0)  # far behind, not resent: the device restarted
    assert v.accept and v.reason == "restart"
    st = g.streams[K]
    assert st.restarts == 1 and st.missing == [] and st.gap_frames == 1 + 500_000 - 4
    # further ahead than days of drop-out: a new boot's random first number, not a gap of billions
    v = g.observe(K, 3_000_000_000, False, 37, 2.0)
    assert v.reason == "restart" and st.restarts == 2 and st.gap_frames == 1 + 500_000 - 4


def test_state_round_trips_so_a_killed_gateway_neither_repeats_nor_forgets() -> None:
    g = GapTracker(timeout_s=10.0)
    for s in range(3):
        g.observe(K, s, False, 113, 0.0)
    g.observe(K, 9, False, 113, 1.0)
    saved = g.take_changed()
    assert g.take_changed() == {}
    h = GapTracker(timeout_s=10.0)
    for key, text in saved.items():
        h.load(key, text)
    assert not h.observe(K, 2, False, 113, 2.0).accept  # already spooled before the kill
    assert h.pending() == [(K, 3, 8)]  # still asked for after the restart
    assert h.observe(K, 4, True, 113, 2.0).accept
    assert StreamState.load(h.streams[K].dump()) == h.streams[K]


def _ecg_note(seq: int, t0_us: int, rx_us: int, *, n: int = 5, flags: int = 0) -> Notification:
    data = codec.wave_encode(codec.WAVE_KIND_ECG, flags, 250, seq, t0_us, [100] * n)
    return Notification("ecg-0001", codec.NABZ_ECG_WAVEFORM, data, rx_us)


def test_a_malformed_frame_does_not_move_the_tracker_so_the_good_frames_after_it_are_kept() -> None:
    """A frame with a corrupt sequence number and a bad length is dead-lettered; had the tracker
    taken its number, it would ask for 500 frames that never existed and drop the next 100 good
    ones as duplicates."""
    decoder, gaps = Decoder("demo", "gw-0001"), GapTracker()
    rx, t0 = 1_795_597_200_000_000, 1_000_000_000

    def admit_ecg(note: Notification) -> object:
        return admit(decoder, gaps, note, note.rx_us / 1e6)[0]

    assert all(
        isinstance(admit_ecg(_ecg_note(s, t0 + s * 20_000, rx + s * 20_000)), EcgReading) for s in range(10)
    )
    bad = _ecg_note(510, t0 + 200_000, rx + 200_000)
    reading = admit_ecg(Notification(bad.device, bad.char, bad.data[:-3], bad.rx_us))
    assert isinstance(reading, Rejected) and "sample bytes follow" in reading.detail
    kept = [admit_ecg(_ecg_note(s, t0 + s * 20_000, rx + s * 20_000)) for s in range(10, 110)]
    assert all(isinstance(r, EcgReading) for r in kept)
    st = gaps.streams[("ecg-0001", "ecg")]
    assert (st.next_seq, st.gap_events, st.duplicates) == (110, 0, 0)


def test_a_wearable_that_reboots_is_a_restart_not_a_run_of_duplicates() -> None:
    """Its device clock starts again at 0. Firmware that also starts its frames at 0 sends numbers
    the gateway has seen, but with other device times: a restart (before, up to 1,024 frames of
    the new boot were dropped as duplicates). A real duplicate, same number and time, is dropped."""
    g = GapTracker()
    frame_us = 452_000
    for s in range(300):
        assert g.observe(K, s, False, 113, 0.0, 1_000 + s * frame_us).accept
    assert g.observe(K, 299, False, 113, 0.0, 1_000 + 299 * frame_us).reason == "duplicate"
    assert g.observe(K, 0, False, 113, 1.0, 7_000).reason == "restart"  # boot 2, 6 ms later in its boot
    assert all(g.observe(K, s, False, 113, 1.0, 7_000 + s * frame_us).accept for s in range(1, 400))
    st = g.streams[K]
    assert (st.restarts, st.duplicates, st.next_seq) == (1, 1, 400)
    # Nabz firmware starts at a random number: ahead, with its device time gone back, or further
    # ahead than the time between could hold (2 million frames in a minute)
    assert g.observe(K, 1_000, False, 113, 2.0, 5_000).reason == "restart"
    assert g.observe(K, 1_000 + 2_000_000, False, 113, 3.0, 5_000 + 60 * 10**6).reason == "restart"
    # a long drop-out is a gap, however many frames it took (here ten hours of one-sample frames)
    far = 2_001_001 + 9_000_000
    assert g.observe(K, far, False, 1, 4.0, 5_000 + 60 * 10**6 + 10 * 3600 * 10**6).reason == "gap"
    # a sampler re-anchoring its clock moves a frame's time back a little: not a new boot
    assert g.observe(K, far + 1, False, 1, 4.0, 5_000 + 60 * 10**6 + 10 * 3600 * 10**6 - 8_000).accept
    assert g.streams[K].restarts == 3


def test_after_a_reboot_the_readings_get_the_new_boots_clock_not_the_old_one() -> None:
    """The wearable rebooted while out of range and is heard again after 20 minutes of its new
    boot, later in device time than where its old boot stopped: with the old boot's clock offset
    every frame would be stamped half an hour early. Its random first number shows the restart."""
    decoder, gaps = Decoder("demo", "gw-0001"), GapTracker()
    boot1 = 1_795_597_200_000_000
    for s in range(1_300):  # ~10 minutes of boot 1
        t0 = s * 452_000
        assert isinstance(admit(decoder, gaps, _ecg_note(s, t0, boot1 + t0 + 500_000), 0.0)[0], EcgReading)
    boot2 = boot1 + 1_800 * 10**6
    t0 = 1_220 * 10**6
    reading, verdict = admit(decoder, gaps, _ecg_note(3_141_592_653, t0, boot2 + t0 + 500_000), 0.0)
    assert verdict is not None and verdict.reason == "restart"
    assert isinstance(reading, EcgReading)
    assert abs(reading.t.timestamp() - (boot2 + t0) / 1e6) < 1.0


def test_a_stepped_wall_clock_does_not_give_up_the_gaps_being_resent() -> None:
    """A Pi has no real-time clock: NTP steps it forward after boot while a drop-out's frames are
    being resent. Each open gap keeps the time it had left (before, every one expired at once and
    the resent frames were dropped as duplicates)."""
    g = GapTracker(timeout_s=10.0)
    for s in range(10):
        g.observe(K, s, False, 113, 100.0 + s * 0.45)
    assert g.observe(K, 30, False, 113, 110.0).resend == (10, 29)
    assert g.expire(400.0) == []  # the clock jumped 5 minutes ahead
    assert all(g.observe(K, s, True, 113, 400.01).accept for s in range(10, 30))
    assert g.streams[K].gap_frames == 0 and g.streams[K].missing == []
    g.observe(K, 50, False, 113, 401.0)  # a new gap ...
    assert g.expire(330.0) == []  # ... then the clock steps back: it is not kept open for good
    assert [e.frames for e in g.expire(340.5)] == [19]


def test_one_frame_with_a_corrupt_device_time_does_not_make_the_next_look_like_a_new_boot() -> None:
    g = GapTracker()
    for s in range(10):
        g.observe(K, s, False, 113, 0.0, 1_000 + s * 452_000)
    g.observe(K, 10, False, 113, 0.0, 9 * 10**15)  # its header parses; its time is garbage
    assert g.observe(K, 11, False, 113, 0.0, 1_000 + 11 * 452_000).reason == ""  # the next, in order
    assert g.streams[K].restarts == 0


def test_a_stream_whose_time_moved_on_by_minutes_in_one_frame_is_taken_at_its_new_time() -> None:
    """An oximeter whose sensor was out for five minutes: its next frame is one number on but
    minutes later; the frame after agrees with it, so that is the stream's time from then on."""
    g = GapTracker()
    for s in range(10):
        g.observe(K, s, False, 17, 0.0, s * 170_000)
    late = 300 * 10**6
    g.observe(K, 10, False, 17, 0.0, late)
    g.observe(K, 11, False, 17, 0.0, late + 170_000)
    assert g.streams[K].last_t0 == late + 170_000
    # and a new boot after it is still seen as one (its time back at 0)
    assert g.observe(K, 12, False, 17, 0.0, 5_000).reason == "restart"
