"""PPG on SYNTHETIC red/IR signals (`ingest.dsp.synth.synth_ppg`), with known R, PI and rate.

The synthetic sensor behaves like a MAX30102: counts fall at each systole; the ratio of ratios is
set exactly, so SpO2 can be checked against the curve it should follow.
"""

from __future__ import annotations

import numpy as np
import pytest

from ingest.dsp import (
    ppg_peaks,
    ppg_perfusion_index,
    ppg_process,
    ppg_rate,
    ppg_spo2,
    ppg_sqi,
)
from ingest.dsp.ppg import ppg_process_many
from ingest.dsp.synth import synth_ppg

FS = 100
CALIBRATION = [(0.4, 100.0), (0.6, 97.0), (1.0, 87.0), (2.0, 60.0)]


@pytest.mark.parametrize("r_ratio", [0.4, 0.5, 0.7, 0.9, 1.2, 2.0])
def test_spo2_follows_the_uncalibrated_curve(r_ratio: float, rng: np.random.Generator) -> None:
    red, ir = synth_ppg(72, 8.0, FS, r_ratio=r_ratio, noise_counts=5.0, rng=rng)
    est = ppg_spo2(red, ir, FS)
    assert est.calibrated is False
    assert est.r == pytest.approx(r_ratio, rel=0.02)
    assert est.spo2_pct == pytest.approx(110.0 - 25.0 * r_ratio, abs=1.0)


def test_spo2_is_clipped_to_0_100(rng: np.random.Generator) -> None:
    red, ir = synth_ppg(72, 8.0, FS, r_ratio=0.2, rng=rng)
    assert ppg_spo2(red, ir, FS).spo2_pct == 100.0
    red, ir = synth_ppg(72, 8.0, FS, r_ratio=5.0, rng=rng)
    assert ppg_spo2(red, ir, FS).spo2_pct == 0.0


def test_calibration_table_is_interpolated_and_flagged(rng: np.random.Generator) -> None:
    red, ir = synth_ppg(72, 8.0, FS, r_ratio=0.8, rng=rng)
    est = ppg_spo2(red, ir, FS, calibration=CALIBRATION)
    assert est.calibrated is True
    assert est.spo2_pct == pytest.approx(92.0, abs=1.0)  # halfway between (0.6, 97) and (1.0, 87)
    red, ir = synth_ppg(72, 8.0, FS, r_ratio=0.3, rng=rng)
    assert ppg_spo2(red, ir, FS, calibration=CALIBRATION).spo2_pct == 100.0  # clamped at the end


@pytest.mark.parametrize(
    "table",
    [
        [(0.5, 98.0)],
        [(1.0, 90.0), (0.5, 98.0)],
        [(0.5, 98.0), (1.0, 120.0)],
        [(0.5, 98.0), (float("nan"), 90.0)],
    ],
)
def test_malformed_calibration_is_refused(table: list[tuple[float, float]], rng: np.random.Generator) -> None:
    red, ir = synth_ppg(72, 8.0, FS, rng=rng)
    with pytest.raises(ValueError):
        ppg_spo2(red, ir, FS, calibration=table)


@pytest.mark.parametrize("hr_bpm", [40, 72, 120, 180])
def test_pulse_rate(hr_bpm: int, rng: np.random.Generator) -> None:
    red, ir = synth_ppg(hr_bpm, 8.0, FS, rng=rng)
    rate = ppg_rate(ppg_peaks(ir, FS), FS)
    assert rate is not None
    assert rate == pytest.approx(hr_bpm, abs=2.0)


def test_peaks_are_the_count_minima(rng: np.random.Generator) -> None:
    red, ir = synth_ppg(60, 8.0, FS, noise_counts=0.0, rng=rng)
    for p in ppg_peaks(ir, FS):
        lo, hi = max(0, p - 20), p + 20
        assert abs(int(np.argmin(ir[lo:hi])) + lo - p) <= 3


@pytest.mark.parametrize("pi_pct", [0.5, 2.0, 8.0])
def test_perfusion_index(pi_pct: float, rng: np.random.Generator) -> None:
    red, ir = synth_ppg(72, 8.0, FS, pi_pct=pi_pct, rng=rng)
    assert ppg_perfusion_index(ir, FS) == pytest.approx(pi_pct, rel=0.1)


def test_clean_pulse_has_high_quality(rng: np.random.Generator) -> None:
    red, ir = synth_ppg(72, 8.0, FS, rng=rng)
    assert ppg_sqi(red, ir, FS) > 0.8


def test_finger_out_scores_zero_and_reports_nothing(rng: np.random.Generator) -> None:
    # ambient light only: constant low counts plus noise
    red = 800.0 + 30.0 * rng.standard_normal(8 * FS)
    ir = 1200.0 + 30.0 * rng.standard_normal(8 * FS)
    res = ppg_process(red, ir, FS)
    assert res.sqi < 0.2
    assert (res.pr_bpm, res.spo2, res.pi_pct) == (None, None, None)


def test_saturated_sensor_scores_zero(rng: np.random.Generator) -> None:
    # too much LED current: the infrared channel sits at the 18-bit ADC's full scale
    red, ir = synth_ppg(72, 8.0, FS, dc_ir=262_000.0, dc_red=200_000.0, rng=rng)
    assert ppg_sqi(red, np.minimum(ir, 2**18 - 1), FS) < 0.2


def test_no_pulsatility_scores_zero(rng: np.random.Generator) -> None:
    red = 90_000.0 + 5.0 * rng.standard_normal(8 * FS)
    ir = 120_000.0 + 5.0 * rng.standard_normal(8 * FS)
    assert ppg_sqi(red, ir, FS) < 0.2


def test_motion_lowers_quality(rng: np.random.Generator) -> None:
    # synthetic motion: the same 0.3-4 Hz random modulation of both channels (light path changes),
    # with twice the RMS of the pulse itself
    from scipy.signal import butter, sosfiltfilt

    sos = butter(2, (0.3, 4.0), btype="bandpass", fs=FS, output="sos")
    scores = []
    for _ in range(10):
        red, ir = synth_ppg(72, 8.0, FS, pi_pct=2.0, rng=rng)
        motion = sosfiltfilt(sos, rng.standard_normal(8 * FS))
        motion *= 2.0 * 0.007 / np.std(motion)  # the pulse's RMS is about 0.7 % of DC here
        scores.append(ppg_sqi(red * (1 + motion), ir * (1 + motion), FS))
    print("motion SQIs", np.round(scores, 2))
    assert float(np.median(scores)) < 0.3


def test_many_windows_at_once_equal_one_at_a_time() -> None:
    # synthetic: a batch of patients' windows is analysed in one pass (ingest does this per batch)
    pairs = [
        synth_ppg(50 + 17 * k, 8.0, 100.0, r_ratio=0.5 + 0.05 * k, rng=np.random.default_rng(k))
        for k in range(6)
    ]
    red = np.stack([p[0] for p in pairs])
    ir = np.stack([p[1] for p in pairs])
    red[3] = 900.0  # one window without a finger among them
    many = ppg_process_many(red, ir, 100.0, calibration=[(0.4, 100.0), (1.0, 85.0)])
    for k, got in enumerate(many):
        one = ppg_process(red[k], ir[k], 100.0, calibration=[(0.4, 100.0), (1.0, 85.0)])
        assert (got.pr_bpm, got.spo2, got.pi_pct, got.sqi) == (one.pr_bpm, one.spo2, one.pi_pct, one.sqi)
        assert np.array_equal(got.peaks, one.peaks)
    assert many[3].spo2 is None and many[0].spo2 is not None
