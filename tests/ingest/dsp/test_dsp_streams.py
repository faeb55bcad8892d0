"""The per-patient processors the ingest worker holds: chunks with UTC times in, vitals out.

Record 100 is real (PhysioNet MIT-BIH); the other signals are SYNTHETIC (`ingest.dsp.synth`).
Time is data here: every chunk carries the UTC time of its first sample; nothing sleeps.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt
import pytest

from ingest.dsp import EcgProcessor, EcgVitals, PpgProcessor, PpgVitals, ecg_rate
from ingest.dsp.streams import BRIDGE_S, PpgWindow, analyse_many
from ingest.dsp.synth import regular_beats, synth_ecg, synth_ppg

FS_ECG = 250
FS_PPG = 100
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
Recording = tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]  # the `record_100` fixture


def _feed_ecg(
    proc: EcgProcessor, x: npt.NDArray[np.float64], sizes: list[int], t0: float = T0
) -> list[EcgVitals]:
    out: list[EcgVitals] = []
    i = k = 0
    while i < x.size:
        n = sizes[k % len(sizes)]
        out += proc.push(x[i : i + n], t0 + i / FS_ECG)
        i, k = i + n, k + 1
    return out


def _synthetic_ecg(hr_bpm: float, seconds: float, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    x = synth_ecg(regular_beats(hr_bpm, seconds), seconds, FS_ECG)
    return np.round(x + 15.0 * rng.standard_normal(x.size))


def test_record_100_rates_match_the_annotations(record_100: Recording) -> None:
    # real data streamed in 120-sample chunks (about two BLE notifications a second)
    x, beats = record_100
    vitals = _feed_ecg(EcgProcessor(FS_ECG), x, [120])
    assert len(vitals) == pytest.approx(x.size / FS_ECG - 4, abs=2)
    errors = []
    for v in vitals[10:]:
        end = round((v.t - T0) * FS_ECG)
        truth = ecg_rate(beats, FS_ECG, end=end)
        assert v.hr_bpm is not None and truth.hr_bpm is not None
        errors.append(abs(v.hr_bpm - truth.hr_bpm))
    assert np.percentile(errors, 99) < 2.0
    assert min(v.sqi for v in vitals) > 0.7
    assert max(v.pause_s for v in vitals) < 2.0  # record 100 has no pause
    reported = sum(len(v.rr_ms) for v in vitals)
    assert reported == pytest.approx(beats.size, abs=10)  # each RR reported once


def test_emits_once_a_second_stamped_at_the_window_end(rng: np.random.Generator) -> None:
    x = _synthetic_ecg(75, 20.0, rng)  # synthetic
    vitals = _feed_ecg(EcgProcessor(FS_ECG), x, [100])
    assert len(vitals) == 16  # from the 5 s warm-up to 20 s
    assert np.allclose(np.diff([v.t for v in vitals]), 1.0)
    lag_s = 5.0 - (vitals[0].t - T0)  # the window ends at the detector's confirmation delay
    assert 0.3 < lag_s < 0.5


@pytest.mark.parametrize("hr_bpm", [30, 60, 120, 180, 250])
def test_processor_heart_rate(hr_bpm: int, rng: np.random.Generator) -> None:
    x = _synthetic_ecg(hr_bpm, 30.0, rng)  # synthetic
    vitals = _feed_ecg(EcgProcessor(FS_ECG), x, [125])
    v = vitals[-1]
    assert v.hr_bpm == pytest.approx(hr_bpm, abs=2.0)
    assert v.sqi > 0.8
    rr = [r for v in vitals[5:] for r in v.rr_ms]
    assert len(rr) >= 10 and all(r == pytest.approx(60_000 / hr_bpm, abs=8.0) for r in rr)


def test_leads_off_gives_no_rate(rng: np.random.Generator) -> None:
    # synthetic: 15 s of ECG, then the lead falls off (flat at the last value, 1 µV dither)
    x = _synthetic_ecg(70, 15.0, rng)
    flat = np.round(x[-1] + 0.5 * rng.standard_normal(15 * FS_ECG))
    vitals = _feed_ecg(EcgProcessor(FS_ECG), np.concatenate((x, flat)), [250])
    assert vitals[5].hr_bpm is not None
    last = vitals[-1]
    assert last.sqi < 0.2
    assert last.hr_bpm is None and last.rr_ms == []


def test_pause_is_reported(rng: np.random.Generator) -> None:
    # synthetic: 70 bpm, a 6 s pause, 70 bpm
    beats = np.concatenate((regular_beats(70, 20.0), 26.0 + regular_beats(70, 14.0, start_s=0.0)))
    x = np.round(synth_ecg(beats, 40.0, FS_ECG) + 15.0 * rng.standard_normal(40 * FS_ECG))
    vitals = _feed_ecg(EcgProcessor(FS_ECG), x, [250])
    pauses = [v.pause_s for v in vitals]
    assert max(pauses) >= 5.0
    during = [v for v in vitals if 24.0 < v.t - T0 < 26.0]
    assert during and all(v.sqi >= 0.5 for v in during)  # a quiet line is not "leads off"
    assert all(v.hr_bpm is None or v.hr_bpm < 45.0 for v in during)  # the rate falls, not holds


def test_output_does_not_depend_on_chunking(record_100: Recording) -> None:
    x = record_100[0][: 90 * FS_ECG]
    a = _feed_ecg(EcgProcessor(FS_ECG), x, [250])
    b = _feed_ecg(EcgProcessor(FS_ECG), x, [7, 333, 1, 120])
    assert len(a) == len(b)
    for u, w in zip(a, b, strict=True):
        assert u.t == pytest.approx(w.t, abs=1e-6)  # t0 + i / fs rounds differently per chunk
        assert dataclasses.replace(u, t=0.0) == dataclasses.replace(w, t=0.0)


def test_a_long_hole_resets_instead_of_splicing(rng: np.random.Generator) -> None:
    x = _synthetic_ecg(70, 50.0, rng)  # synthetic
    proc = EcgProcessor(FS_ECG)
    before = _feed_ecg(proc, x[: 20 * FS_ECG], [250])
    # 12 s of samples never arrive (longer than BRIDGE_S); the stream resumes at the right time
    after = _feed_ecg(proc, x[32 * FS_ECG :], [250], t0=T0 + 32.0)
    assert BRIDGE_S < 12.0
    assert before[-1].t - T0 < 20.0
    assert after[0].t - T0 > 32.0 + 4.0  # warm-up again: nothing reported across the hole
    assert all(v.hr_bpm == pytest.approx(70, abs=2) for v in after)
    assert all(v.pause_s < 1.5 for v in after)


def test_a_drop_out_is_bridged_without_inventing_a_pause_or_an_rr_interval(rng: np.random.Generator) -> None:
    """A BLE drop-out: 3 s of frames arrive only after the live ones that followed them (the
    gateway's RESEND), so to the processor they are a hole, then duplicates."""
    x = _synthetic_ecg(70, 50.0, rng)  # synthetic
    proc = EcgProcessor(FS_ECG)
    before = _feed_ecg(proc, x[: 20 * FS_ECG], [125])
    after = _feed_ecg(proc, x[23 * FS_ECG :], [125], t0=T0 + 23.0)
    late = _feed_ecg(proc, x[20 * FS_ECG : 23 * FS_ECG], [125], t0=T0 + 20.0)  # the resent frames
    assert late == []
    assert before[-1].t - T0 < 20.0 and after[0].t - T0 < 24.0  # no warm-up: it goes on at once
    assert all(not (20.0 < v.t - T0 < 23.0) for v in after)  # nothing reported from inside the hole
    assert all(v.pause_s < 1.5 for v in after)  # the beats nobody saw are not a pause ...
    rr = [r for v in after for r in v.rr_ms]
    assert rr and all(r == pytest.approx(857, abs=40) for r in rr)  # ... nor one long RR (AF, HRV)
    assert all(v.hr_bpm is not None and 55 < v.hr_bpm < 75 for v in after)


def test_a_pause_across_a_drop_out_is_still_reported(rng: np.random.Generator) -> None:
    """A pause (the last beat at 19.26 s, the next at 26.0 s: 6.74 s) with a frame (0.45 s) in
    its middle resent late: reported as its longest stretch seen without a beat (26.0 - 22.45 s),
    not forgotten by a reset (the processor reset there until 2026-11-27, and the pause alarm,
    over 3 s, never came)."""
    beats = np.concatenate((regular_beats(70, 20.0), 26.0 + regular_beats(70, 14.0, start_s=0.0)))
    x = np.round(synth_ecg(beats, 40.0, FS_ECG) + 15.0 * rng.standard_normal(40 * FS_ECG))
    hole = (int(22.0 * FS_ECG), int(22.45 * FS_ECG))
    proc = EcgProcessor(FS_ECG)
    vitals = _feed_ecg(proc, x[: hole[0]], [113])
    vitals += _feed_ecg(proc, x[hole[1] :], [113], t0=T0 + hole[1] / FS_ECG)
    assert max(v.pause_s for v in vitals) == pytest.approx(26.0 - 22.45, abs=0.05)


@pytest.mark.parametrize("hr_bpm", [34, 40, 50])
def test_a_drop_out_that_hid_a_beat_makes_no_pause(hr_bpm: int, rng: np.random.Generator) -> None:
    """Slow sinus rhythm; a lost frame (0.3 s, resent late) held an R peak. The beat-free time on
    both sides of the hole is not one pause: counted so (a first version of the bridging), this
    was a 3.2 s 'pause' at 34/min, and a lossy link at 66/min made tens of seconds of asystole."""
    beats = regular_beats(hr_bpm, 60.0)
    x = np.round(synth_ecg(beats, 60.0, FS_ECG) + 15.0 * rng.standard_normal(60 * FS_ECG))
    hidden = beats[np.searchsorted(beats, 30.0)]
    hole = (int((hidden - 0.15) * FS_ECG), int((hidden + 0.15) * FS_ECG))
    proc = EcgProcessor(FS_ECG)
    vitals = _feed_ecg(proc, x[: hole[0]], [113])
    vitals += _feed_ecg(proc, x[hole[1] :], [113], t0=T0 + hole[1] / FS_ECG)
    rr = 60.0 / hr_bpm
    assert max(v.pause_s for v in vitals) <= rr + 0.1  # never more than the rhythm's own RR
    assert all(v.hr_bpm is None or v.hr_bpm > hr_bpm - 5 for v in vitals)


def test_resent_chunks_are_ignored(rng: np.random.Generator) -> None:
    x = _synthetic_ecg(70, 20.0, rng)  # synthetic
    once = _feed_ecg(EcgProcessor(FS_ECG), x, [125])
    proc = EcgProcessor(FS_ECG)
    twice: list[EcgVitals] = []
    for i in range(0, x.size, 125):
        twice += proc.push(x[i : i + 125], T0 + i / FS_ECG)
        twice += proc.push(x[i : i + 125], T0 + i / FS_ECG)  # QoS 1 duplicate
        if i >= 250:  # and a late resend that overlaps half of it
            twice += proc.push(x[i - 60 : i + 125], T0 + (i - 60) / FS_ECG)
    assert [dataclasses.replace(v, t=0.0) for v in twice] == [dataclasses.replace(v, t=0.0) for v in once]


def test_small_clock_jitter_and_drift_are_absorbed(rng: np.random.Generator) -> None:
    # the wearable's 250 Hz is really 250.25 Hz (0.1 %): t0 drifts from the sample count
    x = _synthetic_ecg(70, 60.0, rng)  # synthetic
    proc = EcgProcessor(FS_ECG)
    out: list[EcgVitals] = []
    for i in range(0, x.size, 125):
        out += proc.push(x[i : i + 125], T0 + i / 250.25 + rng.uniform(-0.02, 0.02))
    assert len(out) == 56  # no reset in 60 s
    assert all(v.hr_bpm is not None for v in out)


def _feed_ppg(
    proc: PpgProcessor, red: npt.NDArray[np.float64], ir: npt.NDArray[np.float64], t0: float = T0
) -> list[PpgVitals]:
    out: list[PpgVitals] = []
    for i in range(0, red.size, 50):
        out += proc.push(red[i : i + 50], ir[i : i + 50], t0 + i / FS_PPG)
    return out


def test_ppg_processor_reports_uncalibrated_spo2(rng: np.random.Generator) -> None:
    red, ir = synth_ppg(72, 20.0, FS_PPG, r_ratio=0.6, rng=rng)  # synthetic
    vitals = _feed_ppg(PpgProcessor(FS_PPG), red, ir)
    assert len(vitals) == 13  # from the first full 8 s window to 20 s
    assert np.allclose(np.diff([v.t for v in vitals]), 1.0)
    assert vitals[0].t == pytest.approx(T0 + 8.0 - 1 / FS_PPG)
    for v in vitals:
        assert v.spo2_calibrated is False
        assert v.spo2_pct == pytest.approx(95.0, abs=1.0)
        assert v.pr_bpm == pytest.approx(72.0, abs=2.0)
        assert v.pi_pct is not None and v.sqi > 0.8


def test_ppg_processor_applies_the_calibration(rng: np.random.Generator) -> None:
    red, ir = synth_ppg(72, 10.0, FS_PPG, r_ratio=0.8, rng=rng)  # synthetic
    proc = PpgProcessor(FS_PPG, calibration=[(0.4, 100.0), (0.6, 97.0), (1.0, 87.0)])
    vitals = _feed_ppg(proc, red, ir)
    assert vitals and all(v.spo2_calibrated for v in vitals)
    assert all(v.spo2_pct == pytest.approx(92.0, abs=1.0) for v in vitals)


def test_ppg_finger_out_reports_nothing(rng: np.random.Generator) -> None:
    # synthetic: 10 s on the finger, then 12 s of ambient light only
    red, ir = synth_ppg(72, 10.0, FS_PPG, rng=rng)
    red = np.concatenate((red, 800.0 + 30.0 * rng.standard_normal(12 * FS_PPG)))
    ir = np.concatenate((ir, 1200.0 + 30.0 * rng.standard_normal(12 * FS_PPG)))
    vitals = _feed_ppg(PpgProcessor(FS_PPG), red, ir)
    assert vitals[0].spo2_pct is not None
    last = vitals[-1]
    assert last.sqi < 0.2
    assert (last.spo2_pct, last.pr_bpm, last.pi_pct) == (None, None, None)


def test_ppg_long_gap_resets(rng: np.random.Generator) -> None:
    red, ir = synth_ppg(72, 40.0, FS_PPG, rng=rng)  # synthetic
    proc = PpgProcessor(FS_PPG)
    before = _feed_ppg(proc, red[: 12 * FS_PPG], ir[: 12 * FS_PPG])
    after = _feed_ppg(proc, red[24 * FS_PPG :], ir[24 * FS_PPG :], t0=T0 + 24.0)
    assert before and after
    assert after[0].t == pytest.approx(T0 + 24.0 + 8.0 - 1 / FS_PPG)  # a full window after the gap


def test_ppg_drop_out_is_bridged(rng: np.random.Generator) -> None:
    red, ir = synth_ppg(72, 30.0, FS_PPG, r_ratio=0.6, rng=rng)  # synthetic
    proc = PpgProcessor(FS_PPG)
    before = _feed_ppg(proc, red[: 12 * FS_PPG], ir[: 12 * FS_PPG])
    after = _feed_ppg(proc, red[14 * FS_PPG :], ir[14 * FS_PPG :], t0=T0 + 14.0)
    assert before and after
    assert after[0].t == pytest.approx(T0 + 14.0 + 1.0 - 1 / FS_PPG)  # at once, not 8 s later
    assert all(v.pr_bpm == pytest.approx(72.0, abs=3.0) for v in after)
    assert all(v.spo2_pct == pytest.approx(95.0, abs=1.5) for v in after)


def test_ppg_windows_held_for_a_batch_keep_their_samples(rng: np.random.Generator) -> None:
    """Ingest collects a batch's PPG windows before analysing them: a window must still hold the
    samples it was due with after many more chunks (and a reset) have come in."""
    red, ir = synth_ppg(72, 60.0, FS_PPG, rng=rng)  # synthetic
    now, held = PpgProcessor(FS_PPG), PpgProcessor(FS_PPG)
    at_once: list[PpgVitals] = []
    windows: list[PpgWindow] = []
    for i in range(0, red.size, 37):
        t = T0 + i / FS_PPG + (12.0 if i >= 30 * FS_PPG else 0.0)  # 12 s missing at 30 s: a reset
        at_once += now.push(red[i : i + 37], ir[i : i + 37], t)
        windows += held.windows(red[i : i + 37], ir[i : i + 37], t)
    assert len(windows) == 23 + 22  # 0-30.3 s, then from 42.3 s: a full window again 8 s after it
    for w in windows:
        last = round((w.t - T0 - (12.0 if w.t > T0 + 30 else 0.0)) * FS_PPG)  # index of its last sample
        assert np.array_equal(w.red, red[last + 1 - 8 * FS_PPG : last + 1])
        assert np.array_equal(w.ir, ir[last + 1 - 8 * FS_PPG : last + 1])
    assert analyse_many(windows) == at_once
