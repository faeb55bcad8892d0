"""Each kind of bad input has one defined outcome: accepted, reordered, or dead-lettered with a
reason (docs/operations.md). Waveforms from the `hardware` simulator (synthetic)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from gateway.decode import Decoder, Notification
from hardware import make_patients
from ingest.lines import reading_lines
from ingest.pipeline import IngestCore, Message
from ingest.store import Store
from nabz import contract
from nabz.contract import EcgReading

T0_US = 1_795_597_200_000_000
T0 = T0_US / 1e6


def _ecg(seconds: int) -> list[EcgReading]:
    (p,) = make_patients(1, seed=4)
    dec = Decoder("demo", "gw-0001")
    out = []
    for s in range(seconds):
        for n in p.ecg.advance(1.0):
            r = dec.decode(Notification(n.device_id, n.char_uuid, n.data, T0_US + s * 1_000_000))
            if isinstance(r, EcgReading):
                out.append(r)
    return out


def _msg(r: contract.Reading, now: float) -> Message:
    topic = contract.reading_topic(r.site, r.gateway, r.device, contract.stream_of(r))
    return Message(topic, contract.encode(r), now)


def _core(tmp_path: Path) -> IngestCore:
    return IngestCore(Store(tmp_path / "s.sqlite"), enrolment={"ecg-0001": "p-0001", "oxi-0001": "p-0001"})


def test_out_of_order_messages_are_stored_and_processed_in_time_order(tmp_path: Path) -> None:
    frames = _ecg(20)
    ordered = _core(tmp_path / "a")
    shuffled = _core(tmp_path / "b")
    a = ordered.handle_batch([_msg(r, T0 + 20) for r in frames])
    swapped = list(frames)
    for i in range(0, len(swapped) - 1, 2):  # every pair arrives the wrong way round
        swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
    b = shuffled.handle_batch([_msg(r, T0 + 20) for r in swapped])
    assert a.stored == b.stored == len(frames)
    strip = lambda v: (v.t, v.hr_bpm, v.sqi)  # noqa: E731
    assert [strip(v) for v in a.vitals] == [strip(v) for v in b.vitals] and a.vitals  # reordered


def test_duplicates_are_stored_once(tmp_path: Path) -> None:
    frames = _ecg(3)
    core = _core(tmp_path)
    first = core.handle_batch([_msg(r, T0 + 3) for r in frames])
    again = core.handle_batch([_msg(r, T0 + 4) for r in frames[:3]])
    assert (first.stored, again.stored, again.duplicates) == (len(frames), 0, 3)


def test_hours_late_readings_are_stored_but_do_not_disturb_live_processing(tmp_path: Path) -> None:
    frames = _ecg(30)
    cut = 2 * len(frames) // 3
    core = _core(tmp_path)
    live = core.handle_batch([_msg(r, T0 + 20) for r in frames[:cut]])
    late = [msgspec.structs.replace(r, id=r.id + "L", t=r.t - timedelta(hours=3)) for r in frames[:10]]
    result = core.handle_batch([_msg(r, T0 + 20) for r in late])
    assert result.stored == 10 and result.dead_lettered == 0  # accepted: the history is kept
    assert core.store.counter("late_no_dsp") == 10
    after = core.handle_batch([_msg(r, T0 + 30) for r in frames[cut:]])
    assert live.vitals and len(after.vitals) >= 8  # the live processor went on: no reset, no warm-up
    assert all(v.hr_bpm is not None for v in after.vitals)


def test_a_gateway_clock_stepped_back_does_not_stop_the_analysis(tmp_path: Path) -> None:
    """A gateway whose clock ran 3 minutes ahead is corrected by NTP: its later readings are
    dated 3 minutes before the ones already seen, but they are current by ingest's clock. They
    are analysed at once (a new session), not stored unanalysed for 3 minutes (no ECG-derived
    heart rate or asystole alarm meanwhile, until 2026-11-27)."""
    frames = _ecg(40)
    ahead = [msgspec.structs.replace(r, t=r.t + timedelta(minutes=3)) for r in frames[: len(frames) // 2]]
    core = _core(tmp_path)
    before = core.handle_batch([_msg(r, T0 + 20) for r in ahead])  # ingest's clock: 20 s in
    after = core.handle_batch([_msg(r, T0 + 40) for r in frames[len(frames) // 2 :]])  # stepped back
    assert before.vitals and core.store.counter("late_no_dsp") == 0
    assert after.vitals and all(v.hr_bpm is not None for v in after.vitals[-5:])


def test_a_gateway_clock_stepped_back_a_little_does_not_pause_the_analysis(tmp_path: Path) -> None:
    """A step back of 30 s (under the 60 s that makes a new session by itself): the frames that
    follow, numbered on from the last, are new signal. They were taken for resends and skipped
    until their time caught up: no ECG-derived heart rate or asystole alarm for 30 s (found by
    review). Now the processing starts afresh on them (5 s of warm-up)."""
    frames = _ecg(60)
    cut = len(frames) // 3  # 20 s
    stepped = [msgspec.structs.replace(r, t=r.t - timedelta(seconds=30)) for r in frames[cut:]]
    core = _core(tmp_path)
    core.handle_batch([_msg(r, T0 + 20) for r in frames[:cut]])
    t_step = stepped[0].t.timestamp()
    vitals = []
    for k in range(0, len(stepped), 3):  # a second at a time, as they come
        vitals += core.handle_batch([_msg(r, T0 + 21 + k / 3) for r in stepped[k : k + 3]]).vitals
    with_hr = [v.t.timestamp() - t_step for v in vitals if v.source == "ecg" and v.hr_bpm is not None]
    assert with_hr and with_hr[0] < 8.0, with_hr[:3]  # not 30 s


def test_a_frame_resent_across_the_wrap_of_the_frame_numbers_is_not_a_clock_step(tmp_path: Path) -> None:
    """Frame numbers start at random and wrap at 2^32: a frame resent from just before the wrap
    is older, not newer, and is skipped as a resend rather than restarting the analysis (the first
    version compared the numbers without the wrap: found by review)."""
    frames = [msgspec.structs.replace(r, seq=(2**32 - 30 + k) % 2**32) for k, r in enumerate(_ecg(30))]
    late = frames[25]  # before the wrap (k 30 is 0)
    on_time = _core(tmp_path / "a")
    resent = _core(tmp_path / "b")
    a = [
        v
        for k in range(0, 70, 5)
        for v in on_time.handle_batch([_msg(r, T0 + 30) for r in frames[k : k + 5]]).vitals
    ]
    b = []
    for k in range(0, 70, 5):
        batch = [r for r in frames[k : k + 5] if r is not late]
        if k == 40:
            batch.append(late)  # a RESEND's answer, after the wrap
        b += resent.handle_batch([_msg(r, T0 + 30) for r in batch]).vitals
    hr = lambda vs: [round(v.t.timestamp(), 2) for v in vs if v.source == "ecg" and v.hr_bpm is not None]  # noqa: E731
    assert len(hr(b)) == len(hr(a))  # the hole is bridged, not a restart (two vitals fewer, then late)


def test_future_dated_readings_are_dead_lettered(tmp_path: Path) -> None:
    (r,) = _ecg(1)[:1]
    core = _core(tmp_path)
    result = core.handle_batch([_msg(r, T0 - 3600)])  # ingest's clock says the reading is an hour ahead
    assert result.dead_lettered == 1
    (letter,) = core.store.dead_letters()
    assert letter.reason == "future_dated" and "3600 s" in letter.detail
    assert core.handle_batch([_msg(r, T0 - 60)]).stored == 1  # a minute of clock skew is tolerated


def test_wrong_rate_is_dead_lettered(tmp_path: Path) -> None:
    (r,) = _ecg(1)[:1]
    core = _core(tmp_path)
    slow = msgspec.structs.replace(r, rate_hz=50)
    result = core.handle_batch([_msg(slow, T0 + 1)])
    assert result.dead_lettered == 1
    assert [(d.reason, d.detail) for d in core.store.dead_letters()] == [
        ("wrong_rate", "ecg at 50 Hz; accepted 100-1000 Hz")
    ]


def test_oversized_messages_are_dead_lettered(tmp_path: Path) -> None:
    core = _core(tmp_path)
    big = Message("nabz/v1/demo/gw/gw-0001/ecg-0001/ecg", b'{"v": 1, "pad": "' + b"x" * 300_000 + b'"}', T0)
    assert core.handle_batch([big]).dead_lettered == 1
    assert core.store.dead_letters()[0].reason == "too_large"


class _Lines:
    """A line sink that keeps what it is given (stands in for InfluxDB)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, lines: list[str]) -> None:
        self.lines += lines


def test_past_dated_readings_are_dead_lettered_not_stored(tmp_path: Path) -> None:
    """A device clock never set says year 1 (or any time before 2000): before, such a reading passed validation,
    then its batch failed in the store and it went to InfluxDB twice and to the dead letters as
    an ingest fault (`internal_error`)."""
    good, unset, epoch = _ecg(3)[:3]
    sink = _Lines()
    core = IngestCore(Store(tmp_path / "s.sqlite"), sink=sink, enrolment={"ecg-0001": "p-0001"})
    batch = [
        _msg(msgspec.structs.replace(unset, t=datetime(1, 1, 1, tzinfo=UTC)), T0 + 3),
        _msg(msgspec.structs.replace(epoch, t=datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC)), T0 + 3),
        _msg(good, T0 + 3),
    ]
    result = core.handle_batch(batch)
    assert (result.stored, result.dead_lettered) == (1, 2)
    assert [d.reason for d in core.store.dead_letters()] == ["past_dated", "past_dated"]
    assert "0001-01-01" in core.store.dead_letters()[0].detail
    assert core.store.count_readings() == len(good.signal_uv)
    assert len(sink.lines) == len(reading_lines(good, "p-0001"))  # only the good reading went to InfluxDB
