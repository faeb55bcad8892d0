"""Single-lead ECG: cleaning, R peaks, heart rate with pauses, and signal quality.

Rules of this file:
- Pure functions of arrays; `sampling_rate` is always explicit; signals are in µV.
- `ecg_peaks` is the streaming detector (`EcgPeakStream`, in `qrs.py`) run over the whole array,
  so offline and live results cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.signal import butter, iirnotch, sosfiltfilt, tf2sos

from ._kernels import ecg_rate_k, ecg_sqi_k
from .qrs import EcgPeakStream

__all__ = ["EcgPeakStream", "EcgRate", "ecg_clean", "ecg_peaks", "ecg_rate", "ecg_sqi"]

_FLAT_UV = 10.0  # a 1 s block whose peak-to-peak is below this is a flat line (leads off)
_RAIL_UV = 30_000.0  # |x| at or above this is a railed amplifier (the wire format is int16 µV)
_SNR_DB = (3.0, 8.0)  # QRS-to-rest power ratio (dB) mapped linearly onto 0..1
_SIMILAR = (0.6, 0.9)  # beat similarity (correlation) mapped linearly onto 0..1
_QUIET_UV = 25.0  # without beats, a line quieter than this (RMS in 5-15 Hz) may be an asystole
_QUIET_SQI = 0.5  # ... and gets this SQI: usable to say "no beats", not to give a rate


def ecg_clean(
    signal: npt.ArrayLike, sampling_rate: float, *, powerline_hz: float | None = 50.0
) -> npt.NDArray[np.float64]:
    """Clean an ECG for display and offline measurement (zero phase, not for streaming).

    A 0.5-40 Hz Butterworth band-pass (order 2 each side, applied forward and backward) removes
    baseline wander and EMG; a notch removes mains hum (50 Hz in Pakistan) when it is below Nyquist.
    The 0.5 Hz high-pass is NeuroKit2's ``ecg_clean`` default (Makowski et al., Behav Res
    Methods 53:1689-1696, 2021); 0.5-40 Hz is the usual "monitor mode" bandwidth of bedside
    monitors (narrower than the 0.05-150 Hz of diagnostic ECGs).

    Parameters
    ----------
    signal : array_like
        ECG in µV.
    sampling_rate : float
        Sampling rate in Hz.
    powerline_hz : float or None
        Mains frequency to notch out, or None.

    Returns
    -------
    ndarray of float64
        Cleaned ECG in µV, same length.
    """
    x = np.asarray(signal, dtype=np.float64)
    fs = float(sampling_rate)
    hi = min(40.0, 0.45 * fs)
    sos = butter(2, (0.5, hi), btype="bandpass", fs=fs, output="sos")
    if powerline_hz is not None and powerline_hz < 0.5 * fs:
        b, a = iirnotch(powerline_hz, 30.0, fs=fs)
        sos = np.vstack((sos, tf2sos(b, a)))
    if x.size <= 3 * (2 * len(sos) + 1):
        return x - np.mean(x) if x.size else x
    return np.asarray(sosfiltfilt(sos, x), dtype=np.float64)


def ecg_peaks(signal: npt.ArrayLike, sampling_rate: float) -> npt.NDArray[np.int64]:
    """R-peak sample indices of a whole single-lead ECG.

    This is `EcgPeakStream` pushed the whole signal and then flushed, so it finds exactly the
    beats the live stream finds, plus those in the last ``max_delay_s`` that a stream cannot yet
    confirm. Design and references: `ingest.dsp.qrs` (Pan & Tompkins 1985; Hamilton & Tompkins
    1986).

    Parameters
    ----------
    signal : ndarray
        ECG in µV (raw: the detector does its own filtering). Either polarity.
    sampling_rate : float
        Sampling rate in Hz.

    Returns
    -------
    ndarray of int64
        Indices of the R peaks (the largest deflection of each QRS), increasing.
    """
    stream = EcgPeakStream(sampling_rate)
    return np.concatenate((stream.push(signal), stream.flush()))


@dataclass(frozen=True, slots=True)
class EcgRate:
    """Heart rate, RR intervals and the longest pause of an analysis window."""

    hr_bpm: float | None  # None with fewer than `min_intervals` RR intervals in the window
    rr_ms: tuple[float, ...]  # RR intervals (ms) whose second beat is in the window, oldest first
    pause_s: float  # longest gap between beats in the window, including the one still open at its end


_MAX_INTERVALS, _MIN_INTERVALS = 12, 2  # RR intervals averaged for a rate: at most, at least


def ecg_rate(
    peaks: npt.ArrayLike,
    sampling_rate: float,
    *,
    end: int | None = None,
    window_s: float = 10.0,
    max_intervals: int = _MAX_INTERVALS,
    min_intervals: int = _MIN_INTERVALS,
) -> EcgRate:
    """Monitor-style heart rate from R peaks: the mean of the last RR intervals.

    The rate is ``60 / mean(RR)`` over the last `max_intervals` RR intervals that end within the
    `window_s` seconds before `end` (12 RR over at most 10 s, like bedside monitors; IEC 60601-2-27
    requires the averaging to be disclosed). During a pause the interval still open at `end` is
    added to the average once it is 1.5 times the mean RR, so the rate falls instead of holding its
    last value.

    Parameters
    ----------
    peaks : array_like of int
        R-peak sample indices, increasing. Beats before the window are used for the pause only.
    sampling_rate : float
        Sampling rate in Hz.
    end : int, optional
        Sample index where the analysis ends (defaults to the last peak, i.e. no open interval).
    window_s : float
        Length of the analysis window in seconds.
    max_intervals, min_intervals : int
        How many RR intervals are averaged at most, and needed at least for a rate.

    Returns
    -------
    EcgRate
        Rate (or None), the RR intervals in the window, and the longest pause in seconds. With no
        peak at all, the pause is the whole span ``end / sampling_rate``.
    """
    fs = float(sampling_rate)
    p = np.ascontiguousarray(peaks, dtype=np.int64)
    stop = int(end) if end is not None else (int(p[-1]) if p.size else 0)
    hr, pause_s, first = ecg_rate_k(p, fs, stop, window_s * fs, max_intervals, min_intervals)
    p = p[p <= stop]
    rr = tuple((np.diff(p[first - 1 :]) * (1000.0 / fs)).tolist()) if p.size else ()
    return EcgRate(hr_bpm=None if math.isnan(hr) else hr, rr_ms=rr, pause_s=pause_s)


def _rate_and_pause(
    peaks: npt.NDArray[np.int64], sampling_rate: float, end: int, window_s: float
) -> tuple[float | None, float]:
    """`ecg_rate`'s rate and pause without its list of RR intervals (the live processor keeps
    its own): (bpm or None, pause in s)."""
    hr, pause_s, _ = ecg_rate_k(
        peaks, sampling_rate, end, window_s * sampling_rate, _MAX_INTERVALS, _MIN_INTERVALS
    )
    return (None if math.isnan(hr) else hr), pause_s


def _sqi_core(
    raw: npt.NDArray[np.float64],
    bp: npt.NDArray[np.float64],
    peaks: npt.NDArray[np.int64],
    sampling_rate: float,
    delay: int,
) -> float:
    """SQI of a window: raw µV, its 5-15 Hz band-pass (lagging by `delay` samples), its R peaks."""
    fs = float(sampling_rate)
    return float(
        ecg_sqi_k(
            np.ascontiguousarray(raw, dtype=np.float64), np.ascontiguousarray(bp, dtype=np.float64),
            np.ascontiguousarray(peaks, dtype=np.int64), max(1, round(fs)),
            round(0.06 * fs) - delay, round(0.10 * fs) + delay,  # beats compared over 160 ms
            round(0.05 * fs), round(0.05 * fs) + 2 * delay,  # QRS: 50 ms each side, plus the delay
            _FLAT_UV, _RAIL_UV, _QUIET_UV, _QUIET_SQI, *_SNR_DB, *_SIMILAR,
        )
    )  # fmt: skip


def ecg_sqi(signal: npt.ArrayLike, sampling_rate: float) -> float:
    """Signal quality index of an ECG window (about 10 s), from 0 (unusable) to 1 (clean).

    Three questions: is a lead connected, do the detected beats stand out from the rest, and do
    they look like one another? The SQI is the usable fraction times the smaller of the two scores.

    - Leads off: 1 s blocks that are flat (peak-to-peak below 10 µV) or railed (over 10 % of
      samples at 30 mV or more) are unusable; a flat or railed window scores 0.
    - Prominence: the ratio of the mean 5-15 Hz power within the QRS complexes found by
      `ecg_peaks` to the mean power between them, mapped from 3 dB (0) to 8 dB (1): an in-band
      SNR, in the spirit of the pSQI/bSQI family (Li, Mark & Clifford, Physiol Meas 29:15-32,
      2008; Behar et al., IEEE Trans Biomed Eng 60:1660-1666, 2013).
    - Likeness: for each beat, the correlation it reaches with at least a quarter of the other
      beats (160 ms of band-passed QRS), averaged and mapped from 0.6 (0) to 0.9 (1): template
      matching as in Orphanidou et al. (IEEE J Biomed Health Inform 19:832-838, 2015), made
      tolerant of bigeminy (see `similarity.beat_similarity`). Noise "beats" do
      not resemble each other; motion artefacts that look alike can still pass (a known limit).
    - Fewer than 3 beats: a quiet, non-flat line (5-15 Hz RMS under 25 µV) scores 0.5, since an
      asystole looks like that; a noisy line without beats scores 0.

    Parameters
    ----------
    signal : array_like
        ECG in µV.
    sampling_rate : float
        Sampling rate in Hz.

    Returns
    -------
    float
        SQI in [0, 1].
    """
    x = np.asarray(signal, dtype=np.float64)
    if x.size == 0:
        return 0.0
    stream = EcgPeakStream(sampling_rate)
    peaks, bp = stream._push(x)  # the detector's own band-pass, as `EcgProcessor` uses it
    peaks = np.concatenate((peaks, stream.flush()))
    return _sqi_core(x, bp, peaks, sampling_rate, stream.group_delay_samples)
