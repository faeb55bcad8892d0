"""The synthetic signals look like what they claim to be (all signals here are synthetic).

Heart rate is recovered from the ECG by peak detection, SpO2 from the PPG by the ratio of ratios
with the uncalibrated line SpO2 = 110 - 25 R that the simulator shares with the server's estimator
(so these tests prove self-consistency, not clinical accuracy).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from hardware import (
    ECG_RATE_HZ,
    PPG_MAX_COUNTS,
    PPG_RATE_HZ,
    EcgSynth,
    Patient,
    PpgSynth,
    scenario,
    spo2_from_ratio,
)


def ecg(patient: Patient, seconds: float) -> np.ndarray:
    """Rendered 10 s at a time (the same samples as at once; the synthesiser's memory grows with
    the block's length times its beats)."""
    synth = EcgSynth(patient, patient.seed_for("test-ecg"))
    n, block = int(seconds * ECG_RATE_HZ), 10 * ECG_RATE_HZ
    return np.concatenate([synth.render(k, min(block, n - k))[0] for k in range(0, n, block)]).astype(float)


def ppg(patient: Patient, seconds: float) -> np.ndarray:
    synth = PpgSynth(patient, patient.seed_for("test-ppg"))
    x, _ = synth.render(0, int(seconds * PPG_RATE_HZ))
    return x.astype(float)


def r_peaks(x: np.ndarray) -> np.ndarray:
    """R-peak sample indices: scipy.signal.find_peaks on the QRS band (5-30 Hz) of the ECG."""
    b, a = signal.butter(2, [5.0, 30.0], btype="bandpass", fs=ECG_RATE_HZ)
    y = signal.filtfilt(b, a, x)
    peaks, _ = signal.find_peaks(y, height=0.4 * np.percentile(y, 99.9), distance=int(0.15 * ECG_RATE_HZ))
    # the band-passed peak sits within a sample or two of the R peak; take the raw maximum near it
    w = 3
    return np.array([p - w + int(np.argmax(x[max(p - w, 0) : p + w + 1])) for p in peaks if p >= w])


def ratio_of_ratios(x: np.ndarray) -> float:
    b, a = signal.butter(3, [0.5, 5.0], btype="bandpass", fs=PPG_RATE_HZ)
    ac = signal.filtfilt(b, a, x, axis=0).std(axis=0)
    dc = x.mean(axis=0)
    red, ir = ac / dc
    return float(red / ir)


@pytest.mark.parametrize("hr", [40, 72, 150, 220])
def test_ecg_heart_rate_matches_the_set_rate(hr: int) -> None:
    x = ecg(Patient(seed=11, hr_bpm=hr), 60.0)
    peaks = r_peaks(x)
    measured = 60.0 / np.mean(np.diff(peaks) / ECG_RATE_HZ)
    assert measured == pytest.approx(hr, abs=2.0)
    # and every beat is there: about hr beats in the minute
    assert abs(len(peaks) - hr) <= 2


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_ecg_amplitudes_and_rr_variability(seed: int) -> None:
    x = ecg(Patient(seed=seed, hr_bpm=65), 60.0)
    peaks = r_peaks(x)
    qrs = x[peaks] - np.median(x)
    assert 900 < np.median(qrs) < 1600  # QRS about 1-1.5 mV
    rr = np.diff(peaks) / ECG_RATE_HZ
    assert 0.005 < rr.std() < 0.08  # breathing and jitter, but a sinus rhythm
    assert np.abs(x).max() < 5000


def _t_wave_delay_s(hr: int) -> float:
    x = ecg(Patient(seed=5, hr_bpm=hr), 30.0)
    rr = 60.0 / hr
    lo, hi = int(0.08 * ECG_RATE_HZ), int(0.55 * rr * ECG_RATE_HZ)
    peaks = r_peaks(x)[1:-1]
    template = np.mean([x[p + lo : p + hi] for p in peaks], axis=0)
    return (lo + int(np.argmax(template))) / ECG_RATE_HZ


def test_qt_shortens_at_high_rates() -> None:
    assert _t_wave_delay_s(150) < _t_wave_delay_s(60) - 0.05


def test_asystole_has_no_beats_during_the_pause() -> None:
    p = Patient(seed=4, hr_bpm=80, scenario=scenario("asystole", start_s=10.0, duration_s=6.0))
    x = ecg(p, 30.0)
    t = r_peaks(x) / ECG_RATE_HZ
    assert not np.any((t > 10.2) & (t < 15.9))
    assert np.sum(t < 10.0) >= 12 and np.sum(t > 16.0) >= 18
    pause = x[int(10.5 * ECG_RATE_HZ) : int(15.8 * ECG_RATE_HZ)]
    assert np.ptp(pause) < 600  # baseline wander and noise only


def test_atrial_fibrillation_is_irregularly_irregular_without_p_waves() -> None:
    """Sinus rhythm, then 60 s of AF at 110/min, then sinus again (all synthetic)."""
    p = Patient(seed=6, hr_bpm=70, scenario=scenario("af", start_s=30.0, duration_s=60.0, rate_bpm=110.0))
    x = ecg(p, 120.0)
    t = r_peaks(x) / ECG_RATE_HZ
    rr = np.diff(t)
    sinus, af = rr[(t[1:] > 2) & (t[1:] < 29)], rr[(t[1:] > 31) & (t[1:] < 89)]
    assert 60.0 / af.mean() == pytest.approx(110, abs=8) and 60.0 / sinus.mean() == pytest.approx(70, abs=3)
    assert af.std() / af.mean() > 0.15 > 0.05 > sinus.std() / sinus.mean()
    # irregular without pattern: successive intervals hardly correlated (sinus rhythm's breathing
    # makes neighbours alike)
    assert abs(np.corrcoef(af[:-1], af[1:])[0, 1]) < 0.3 < np.corrcoef(sinus[:-1], sinus[1:])[0, 1]

    def before_r(peaks: np.ndarray) -> np.ndarray:  # 250-100 ms before each R: the P wave, if any
        return np.mean([x[p - 62 : p - 25] - np.median(x[p - 80 : p + 80]) for p in peaks], axis=0)

    peaks = r_peaks(x)
    p_sinus = before_r(peaks[(peaks > 3 * 250) & (peaks < 28 * 250)])
    p_af = before_r(peaks[(peaks > 32 * 250) & (peaks < 88 * 250)])
    assert p_sinus.max() > 2 * max(p_af.max(), 40.0)  # the P wave is gone in AF
    assert p.true_hr(60.0) == 110.0 and p.true_hr(100.0) == 70.0

    # fibrillatory waves, seen where no beat hides them: an asystole inside the AF, against the same
    # asystole in sinus rhythm (4-9 Hz: above breathing and drift, below the 50 Hz pickup)
    def f_band_power(sc: object) -> float:
        y = ecg(Patient(seed=6, hr_bpm=70, scenario=sc), 60.0)  # type: ignore[arg-type]
        b, a = signal.butter(2, [4.0, 9.0], btype="bandpass", fs=ECG_RATE_HZ)
        return float(np.var(signal.filtfilt(b, a, y)[51 * ECG_RATE_HZ : 57 * ECG_RATE_HZ]))

    stop = scenario("asystole", start_s=50.0, duration_s=8.0)
    assert f_band_power(scenario("af", start_s=30.0, duration_s=30.0) + stop) > 5 * f_band_power(stop)


def test_an_af_rate_outside_what_the_model_holds_is_refused() -> None:
    with pytest.raises(ValueError, match="rate_bpm between 40 and 200"):
        scenario("af", rate_bpm=0.0)


@pytest.mark.parametrize("spo2", [99, 95, 90, 84, 75])
def test_ppg_ratio_of_ratios_gives_back_the_set_spo2(spo2: int) -> None:
    x = ppg(Patient(seed=spo2, hr_bpm=72, spo2_pct=spo2), 30.0)
    assert float(spo2_from_ratio(ratio_of_ratios(x))) == pytest.approx(spo2, abs=1.0)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_ppg_levels_like_a_max30102(seed: int) -> None:
    p = Patient(seed=seed)
    x = ppg(p, 20.0)
    assert x.min() >= 0 and x.max() <= PPG_MAX_COUNTS
    dc = x.mean(axis=0)
    assert np.all((dc > 75_000) & (dc < 155_000))
    ir = x[:, 1]
    # perfusion index: pulsatile swing over DC of the infrared channel, 1-3 % (+ breathing, noise)
    swings = [np.ptp(ir[i : i + PPG_RATE_HZ * 2]) for i in range(0, ir.size - 200, 200)]
    pi = np.median(swings) / dc[1]
    assert 0.008 < pi < 0.036
    assert pi == pytest.approx(p.physiology.perfusion, rel=0.25)


def test_ppg_pulse_follows_the_r_peak_by_the_transit_time() -> None:
    p = Patient(seed=8, hr_bpm=70)
    e = ecg(p, 30.0)
    ir = ppg(p, 30.0)[:, 1]
    slope = -np.gradient(ir)  # absorption rises at the pulse upstroke: counts fall
    delays = []
    for r in r_peaks(e)[1:-1] / ECG_RATE_HZ:
        k0, k1 = int(r * PPG_RATE_HZ), int((r + 0.6) * PPG_RATE_HZ)
        s = slope[k0:k1]
        foot = int(np.argmax(s > 0.1 * s.max()))  # first 10 % of the steepest upstroke
        delays.append((k0 + foot) / PPG_RATE_HZ - r)
    assert 0.18 < float(np.median(delays)) < 0.35


def test_ppg_has_one_pulse_per_beat_at_high_rate() -> None:
    p = Patient(seed=9, hr_bpm=180)
    ir = ppg(p, 30.0)[:, 1]
    peaks, _ = signal.find_peaks(-ir, prominence=0.3 * np.ptp(ir[200:]), distance=int(0.2 * PPG_RATE_HZ))
    rate = 60.0 / np.mean(np.diff(peaks) / PPG_RATE_HZ)
    assert rate == pytest.approx(180, abs=3)
