"""Synthetic ECG, PPG and noise for tests and benchmarks (all seeded; all clearly synthetic).

Nothing here runs in the ingest path. The signals are simple on purpose: they check behaviour a user
would notice (rates, pauses, leads off, calibration), while real recordings (`mitdb`) check accuracy.

References
----------
McSharry PE, Clifford GD, Tarassenko L, Smith LA. A dynamical model for generating synthetic
electrocardiogram signals. IEEE Trans Biomed Eng 50(3):289-294, 2003 (sum-of-Gaussians beat shape).
Moody GB, Muldrow WE, Mark RG. A noise stress test for arrhythmia detectors. Computers in
Cardiology 11:381-384, 1984 (SNR from QRS peak-to-peak amplitude, ``S = ptp**2 / 8``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy.signal import butter, sosfiltfilt

__all__ = [
    "regular_beats",
    "synth_ecg",
    "synth_ppg",
    "ecg_noise",
    "qrs_signal_power",
    "add_noise",
]

# (offset from R at 60 bpm in s, amplitude relative to R, width sigma in s) per wave: P Q R S T.
# Offsets of P and T scale with sqrt(RR) (Bazett), so beats stay beat-like up to 250 bpm.
_ECG_WAVES = (
    (-0.20, 0.12, 0.025),
    (-0.030, -0.10, 0.010),
    (0.0, 1.0, 0.011),
    (0.030, -0.25, 0.010),
    (0.28, 0.30, 0.045),
)


def regular_beats(hr_bpm: float, duration_s: float, *, start_s: float = 0.4) -> npt.NDArray[np.float64]:
    """Beat times (s) at a constant rate from `start_s` to `duration_s`."""
    return np.arange(start_s, duration_s, 60.0 / hr_bpm)


def synth_ecg(
    beat_times_s: Sequence[float] | npt.NDArray[np.float64],
    duration_s: float,
    sampling_rate: float,
    *,
    amplitude_uv: float = 1000.0,
) -> npt.NDArray[np.float64]:
    """Synthetic one-lead ECG (µV): a sum-of-Gaussians P-QRS-T at each beat time (McSharry 2003).

    Parameters
    ----------
    beat_times_s : sequence of float
        R-peak times in seconds, increasing.
    duration_s : float
        Length of the signal in seconds.
    sampling_rate : float
        Sampling rate in Hz.
    amplitude_uv : float
        R-wave amplitude in µV; negative for an inverted lead.

    Returns
    -------
    ndarray of float64
        Noise-free ECG in µV.
    """
    beats = np.asarray(beat_times_s, dtype=np.float64)
    t = np.arange(round(duration_s * sampling_rate)) / sampling_rate
    out = np.zeros_like(t)
    rr = np.diff(beats, prepend=beats[0] - 1.0) if beats.size else beats
    for tb, rr_s in zip(beats, rr, strict=True):
        scale = np.sqrt(min(max(rr_s, 0.2), 2.0))
        for offset, amp, width in _ECG_WAVES:
            centre = tb + (offset * scale if abs(offset) > 0.1 else offset)
            lo = np.searchsorted(t, centre - 5 * width)
            hi = np.searchsorted(t, centre + 5 * width)
            out[lo:hi] += amp * np.exp(-0.5 * ((t[lo:hi] - centre) / width) ** 2)
    return amplitude_uv * out


def _band_noise(
    n: int, sampling_rate: float, band: tuple[float, float], rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    hi = min(band[1], 0.45 * sampling_rate)
    sos = butter(2, (band[0], hi), btype="bandpass", fs=sampling_rate, output="sos")
    return np.asarray(sosfiltfilt(sos, rng.standard_normal(n)), dtype=np.float64)


def ecg_noise(kind: str, n: int, sampling_rate: float, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Unit-power synthetic noise of one kind, in the spirit of the MIT-BIH Noise Stress Test DB.

    Parameters
    ----------
    kind : {"white", "baseline", "muscle", "motion"}
        ``white``: Gaussian. ``baseline``: wander, sinusoids at 0.05-0.5 Hz plus a 0.25 Hz
        breathing component. ``muscle``: Gaussian noise band-limited to 5-100 Hz (EMG overlaps the
        QRS band). ``motion``: electrode-motion-like bursts (0.5-2.5 s, 0.5-15 Hz, in the QRS band)
        over about 30 % of the time; its power is averaged over the whole record, so the bursts
        themselves are about 5 dB louder than the nominal SNR.
    n : int
        Number of samples.
    sampling_rate : float
        Sampling rate in Hz.
    rng : numpy.random.Generator
        Source of randomness (seed it and print the seed in tests).

    Returns
    -------
    ndarray of float64
        Noise with mean square 1.
    """
    t = np.arange(n) / sampling_rate
    if kind == "white":
        x = rng.standard_normal(n)
    elif kind == "baseline":
        x = np.sin(2 * np.pi * 0.25 * t + rng.uniform(0, 2 * np.pi))
        for f in rng.uniform(0.05, 0.5, 3):
            x = x + rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    elif kind == "muscle":
        x = _band_noise(n, sampling_rate, (5.0, 100.0), rng)
    elif kind == "motion":
        base = _band_noise(n, sampling_rate, (0.5, 15.0), rng)
        envelope = np.zeros(n)
        pos = 0.0
        while True:
            pos += rng.exponential(3.0)
            length = rng.uniform(0.5, 2.5)
            lo, hi = int(pos * sampling_rate), int((pos + length) * sampling_rate)
            if lo >= n:
                break
            envelope[lo:hi] = (np.sin(np.linspace(0, np.pi, hi - lo)) ** 2)[: n - lo]
            pos += length
        x = base * envelope
    else:
        raise ValueError(f"unknown noise kind {kind!r}")
    power = float(np.mean(x * x))
    return np.asarray(x / np.sqrt(power), dtype=np.float64) if power > 0 else np.asarray(x)


def qrs_signal_power(signal: npt.NDArray[np.float64], r_peaks: npt.ArrayLike, sampling_rate: float) -> float:
    """Signal power for an SNR, NST style: ``(median QRS peak-to-peak amplitude)**2 / 8``.

    The peak-to-peak amplitude is taken within 50 ms of each reference R peak (Moody et al. 1984).
    """
    half = round(0.05 * sampling_rate)
    peaks = np.asarray(r_peaks, dtype=np.int64)
    peaks = peaks[(peaks >= 0) & (peaks < signal.size)]
    ptp = [np.ptp(signal[max(0, r - half) : r + half + 1]) for r in peaks]
    return float(np.median(ptp)) ** 2 / 8.0


def add_noise(
    signal: npt.NDArray[np.float64], noise: npt.NDArray[np.float64], snr_db: float, signal_power: float
) -> npt.NDArray[np.float64]:
    """Return ``signal + noise`` with the noise scaled to ``snr_db`` relative to `signal_power`."""
    scale = np.sqrt(signal_power / 10.0 ** (snr_db / 10.0) / float(np.mean(noise * noise)))
    return np.asarray(signal + scale * noise, dtype=np.float64)


def synth_ppg(
    hr_bpm: float,
    duration_s: float,
    sampling_rate: float,
    *,
    r_ratio: float = 0.6,
    pi_pct: float = 2.0,
    dc_ir: float = 120_000.0,
    dc_red: float = 90_000.0,
    noise_counts: float = 5.0,
    rng: np.random.Generator | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Synthetic red and infrared PPG in raw ADC counts (MAX30102-like: more blood, fewer counts).

    Each beat is a systolic Gaussian plus a smaller, later diastolic one. The pulsatile fraction
    of the infrared channel is ``pi_pct / 100`` (peak to trough) and that of the red channel is
    ``r_ratio`` times it, so the ratio of ratios is `r_ratio` by construction. A 0.25 Hz breathing
    drift of 0.2 % of DC and white noise of `noise_counts` RMS are added.

    Returns
    -------
    (red, ir) : tuple of ndarray of float64
        Counts, not rounded.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    t = np.arange(round(duration_s * sampling_rate)) / sampling_rate
    rr = 60.0 / hr_bpm
    pulse = np.zeros_like(t)
    for tb in np.arange(0.3, duration_s + rr, rr):
        pulse += np.exp(-0.5 * ((t - tb) / (0.11 * np.sqrt(rr))) ** 2)
        pulse += 0.4 * np.exp(-0.5 * ((t - tb - 0.3 * np.sqrt(rr)) / (0.1 * np.sqrt(rr))) ** 2)
    steady = pulse[t > 2 * rr] if duration_s > 3 * rr else pulse
    pulse = (pulse - steady.min()) / (steady.max() - steady.min())
    drift = 1.0 + 0.002 * np.sin(2 * np.pi * 0.25 * t)
    m_ir = pi_pct / 100.0
    ir = dc_ir * drift * (1.0 - m_ir * (pulse - 0.5)) + noise_counts * rng.standard_normal(t.size)
    red = dc_red * drift * (1.0 - r_ratio * m_ir * (pulse - 0.5)) + noise_counts * rng.standard_normal(t.size)
    return red, ir
