"""ECG behaviour on SYNTHETIC signals (sum-of-Gaussians beats, `ingest.dsp.synth`), not recordings.

Synthetic signals make the ground truth exact: rates from 30 to 250 bpm, a pause of known length,
a lead that falls off, an electrode that moves. Accuracy on real data is in test_dsp_ecg_record100.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from ingest.dsp import ecg_clean, ecg_peaks, ecg_rate, ecg_sqi
from ingest.dsp.scoring import score_beats
from ingest.dsp.synth import add_noise, ecg_noise, qrs_signal_power, regular_beats, synth_ecg

FS = 250


def _noisy_ecg(
    beats_s: npt.NDArray[np.float64],
    duration_s: float,
    rng: np.random.Generator,
    *,
    amplitude_uv: float = 1000.0,
) -> npt.NDArray[np.float64]:
    """Synthetic ECG with 20 µV white noise and 1 mV of baseline wander, rounded to integer µV."""
    x = synth_ecg(beats_s, duration_s, FS, amplitude_uv=amplitude_uv)
    wander = 1000.0 * ecg_noise("baseline", x.size, FS, rng)
    return np.round(x + wander + 20.0 * rng.standard_normal(x.size))


@pytest.mark.parametrize("amplitude_uv", [1000.0, -1000.0, 300.0])
@pytest.mark.parametrize("hr_bpm", [30, 60, 120, 180, 250])
def test_heart_rate_from_30_to_250_bpm(hr_bpm: int, amplitude_uv: float, rng: np.random.Generator) -> None:
    # synthetic: regular rhythm, either polarity, down to a 0.3 mV QRS, with wander and noise
    beats = regular_beats(hr_bpm, 40.0)
    x = _noisy_ecg(beats, 40.0, rng, amplitude_uv=amplitude_uv)
    peaks = ecg_peaks(x, FS)
    score = score_beats(np.round(beats * FS).astype(np.int64), peaks, FS, start_s=5.0)
    assert score.fn == 0 and score.fp == 0, score
    rate = ecg_rate(peaks, FS, end=x.size - 1)
    assert rate.hr_bpm is not None
    assert rate.hr_bpm == pytest.approx(hr_bpm, abs=2.0)
    assert ecg_sqi(x[-10 * FS :], FS) > 0.8


@pytest.mark.parametrize("kind", ["white", "muscle"])
@pytest.mark.parametrize("pause_s", [6.0, 20.0])
def test_no_beats_inside_a_pause(pause_s: float, kind: str) -> None:
    # synthetic: 70 bpm, an asystole, 70 bpm again; noise at 12 dB NST SNR throughout.
    # Five seeds each, as a floor that is too low lets noise through in about half the trials.
    beats = np.concatenate((regular_beats(70, 20.0), 20.0 + pause_s + regular_beats(70, 20.0, start_s=0.0)))
    clean = synth_ecg(beats, 40.0 + pause_s, FS)
    power = qrs_signal_power(clean, np.round(beats * FS).astype(np.int64), FS)
    last_before = beats[beats < 20.0][-1]
    for seed in range(5):
        noise = ecg_noise(kind, clean.size, FS, np.random.default_rng(seed))
        x = np.round(add_noise(clean, noise, 12.0, power))
        peaks = ecg_peaks(x, FS)
        inside = peaks[(peaks > (last_before + 0.15) * FS) & (peaks < (20.0 + pause_s - 0.15) * FS)]
        assert inside.size == 0, (seed, inside / FS)
        score = score_beats(np.round(beats * FS).astype(np.int64), peaks, FS, start_s=5.0)
        assert score.fn == 0 and score.fp == 0, (seed, score)  # the beats after it are found again
        # ending the analysis 1 s after the pause: the pause is visible
        rate = ecg_rate(peaks, FS, end=round((21.0 + pause_s) * FS))
        assert rate.pause_s >= pause_s - 1.0


@pytest.mark.parametrize("pause_s", [8.0, 20.0])
def test_long_pause_with_p_waves_stays_a_pause(pause_s: float, rng: np.random.Generator) -> None:
    # synthetic: ventricular standstill with P waves still coming (P-wave asystole): as the QRS
    # threshold decays during the pause, the P waves must not be counted as beats
    beats = regular_beats(70, 20.0)
    t = np.arange(round((20.0 + pause_s) * FS)) / FS
    x = synth_ecg(beats, 20.0 + pause_s, FS)
    for tp in np.arange(20.6, 20.0 + pause_s, 0.8):  # P waves at 75/min: 0.25 mV, 50 ms wide
        x += 250.0 * np.exp(-0.5 * ((t - tp) / 0.025) ** 2)
    x = np.round(x + 10.0 * rng.standard_normal(x.size))
    peaks = ecg_peaks(x, FS)
    assert peaks.max() < 20.0 * FS, peaks[peaks >= 20.0 * FS] / FS
    assert ecg_rate(peaks, FS, end=x.size - 1).pause_s >= pause_s - 0.5


def test_detection_recovers_after_the_amplitude_drops(rng: np.random.Generator) -> None:
    # synthetic: an electrode moves and the QRS shrinks to a fifth; after a while the detector
    # follows (the QRS level decays only after 3 s without beats)
    beats = regular_beats(70, 60.0)
    x = synth_ecg(beats, 60.0, FS)
    x[20 * FS :] /= 5.0
    x = np.round(x + 10.0 * rng.standard_normal(x.size))
    peaks = ecg_peaks(x, FS)
    late = np.round(beats[beats > 32.0] * FS).astype(np.int64)
    score = score_beats(late, peaks[peaks > 31.9 * FS], FS, start_s=0.0)
    assert score.se_pct == 100.0 and score.ppv_pct == 100.0, score


def test_start_up_artefact_does_not_block_detection(rng: np.random.Generator) -> None:
    # synthetic: a 20 mV, 40 ms electrode-contact transient 1 s after start, during learning
    beats = regular_beats(70, 40.0)
    x = _noisy_ecg(beats, 40.0, rng)
    x[FS : FS + 10] += 20_000.0
    peaks = ecg_peaks(x, FS)
    late = np.round(beats[beats > 10.0] * FS).astype(np.int64)
    score = score_beats(late, peaks[peaks > 9.9 * FS], FS, start_s=0.0)
    assert score.se_pct == 100.0 and score.ppv_pct == 100.0, score


def test_flat_and_railed_leads_score_zero(rng: np.random.Generator) -> None:
    # synthetic leads-off: a flat line (quantised, with 1 µV of dither) and an amplifier at the rail
    flat = np.round(350.0 + 0.5 * rng.standard_normal(10 * FS))
    railed = np.full(10 * FS, 32767.0)
    assert ecg_sqi(flat, FS) < 0.2
    assert ecg_sqi(railed, FS) < 0.2
    assert ecg_peaks(flat, FS).size == 0
    assert ecg_peaks(railed, FS).size == 0
    assert ecg_rate(ecg_peaks(flat, FS), FS, end=flat.size - 1).hr_bpm is None


def test_half_the_window_off_halves_the_quality(rng: np.random.Generator) -> None:
    # synthetic: 5 s of clean ECG then 5 s of flat line
    x = _noisy_ecg(regular_beats(75, 10.0), 10.0, rng)
    x[5 * FS :] = 0.0
    assert 0.3 < ecg_sqi(x, FS) <= 0.5


def test_noise_without_beats_is_low_quality(rng: np.random.Generator) -> None:
    # synthetic: 150 µV of EMG-like noise and no ECG at all
    x = np.round(150.0 * ecg_noise("muscle", 10 * FS, FS, rng))
    assert ecg_sqi(x, FS) < 0.2


def test_rate_averages_the_last_twelve_intervals() -> None:
    peaks = np.cumsum(np.r_[0, [250] * 20, [125] * 6])  # 60 bpm then 120 bpm, at 250 Hz
    rate = ecg_rate(peaks, FS)
    assert rate.hr_bpm == pytest.approx(60_000 / ((6 * 500 + 6 * 1000) / 12))  # 12 RR, mean RR
    assert rate.rr_ms[-1] == 500.0
    assert rate.pause_s == 1.0


def test_rate_falls_during_a_pause_and_needs_beats() -> None:
    peaks = np.arange(10) * 250  # 60 bpm, last beat at 9 s
    assert ecg_rate(peaks, FS, end=9 * FS + 100).hr_bpm == pytest.approx(60.0)  # 0.4 s open: no effect
    falling = ecg_rate(peaks, FS, end=15 * FS)
    assert falling.pause_s == 6.0
    assert falling.hr_bpm is not None and falling.hr_bpm < 40.0
    assert ecg_rate(peaks[:2], FS).hr_bpm is None  # one interval is not a rate
    assert ecg_rate([], FS, end=5 * FS).pause_s == 5.0


def test_clean_removes_wander_and_mains(rng: np.random.Generator) -> None:
    # synthetic: ECG + 1 mV wander + 200 µV of 50 Hz hum
    beats = regular_beats(70, 20.0)
    ecg = synth_ecg(beats, 20.0, FS)
    t = np.arange(ecg.size) / FS
    dirty = ecg + 1000.0 * ecg_noise("baseline", ecg.size, FS, rng) + 200.0 * np.sin(2 * np.pi * 50 * t)
    cleaned = ecg_clean(dirty, FS)
    reference = ecg_clean(ecg, FS)
    inner = slice(2 * FS, -2 * FS)
    residual = np.sqrt(np.mean((cleaned[inner] - reference[inner]) ** 2))
    disturbance = np.sqrt(np.mean((dirty[inner] - ecg[inner]) ** 2))
    assert residual < 0.05 * disturbance  # over 26 dB less (wander reaches 0.5 Hz, the corner)
