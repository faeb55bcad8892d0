"""Two-wavelength PPG (red + infrared, raw ADC counts): pulses, rate, SpO2, perfusion, quality.

Rules of this file:
- Pure functions of arrays (a window of about 8 s); `sampling_rate` is always explicit.
- Input is raw counts of a MAX30102-like sensor: more blood absorbs more light, so the counts
  *fall* at each systole. `ppg_clean` flips the sign so that pulses point up.
- SpO2 is uncalibrated unless a calibration table for the exact sensor and enclosure is given;
  the result always says which (ISO 80601-2-61 requires calibration against arterial blood).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from scipy.signal import butter

from ._filt import sosfiltfilt_odd
from ._kernels import ppg_peaks_k, ppg_pi_k, ppg_rate_k, ppg_rows_k

__all__ = [
    "Calibration",
    "Spo2Estimate",
    "PpgResult",
    "ppg_clean",
    "ppg_peaks",
    "ppg_rate",
    "ppg_spo2",
    "ppg_perfusion_index",
    "ppg_sqi",
    "ppg_process",
    "ppg_process_many",
]

#: SpO2 calibration table: (R, SpO2 %) points, R increasing; interpolated linearly, clamped at ends.
Calibration = Sequence[tuple[float, float]]

FULL_SCALE_COUNTS = 2**18 - 1  # MAX30102: 18-bit ADC
_AC_BAND_HZ = (0.5, 5.0)  # pulsatile component for SpO2 and perfusion
_PEAK_BAND_HZ = (0.5, 8.0)  # Elgendi et al. 2013
_MIN_DC = 20_000.0  # IR counts below this: no finger (ambient light alone gives a few thousand)
_MAX_DC = 0.97 * FULL_SCALE_COUNTS  # above this: saturated
_PI_RANGE = (0.05, 0.2, 25.0)  # PI %: 0 below 0.05, full from 0.2, 0 above 25 (not a finger)
_SIMILAR = (0.75, 0.92)  # pulse likeness mapped onto 0..1 (Orphanidou: accept from 0.86)
_RED_IR = (0.5, 0.85)  # red/IR correlation mapped onto 0..1
# the SQI's limits, in the order `_kernels.ppg_rows_k` takes them
_LIMITS = np.array((_MIN_DC, _MAX_DC, *_PI_RANGE, *_SIMILAR, *_RED_IR), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class Spo2Estimate:
    """SpO2 by the ratio of ratios; NaN when the window has no pulsatile infrared signal."""

    spo2_pct: float
    r: float  # (AC_red / DC_red) / (AC_ir / DC_ir)
    calibrated: bool  # False: the generic textbook curve 110 - 25 R, not this sensor's


@dataclass(frozen=True, slots=True)
class PpgResult:
    """Everything `ppg_process` derives from one window; None where quality is too low."""

    pr_bpm: float | None
    spo2: Spo2Estimate | None
    pi_pct: float | None
    sqi: float
    peaks: npt.NDArray[np.int64]


@lru_cache(maxsize=16)
def _design(fs: float, lo: float, hi: float) -> npt.NDArray[np.float64]:
    """Butterworth band-pass, order 2 each side (designing one costs more than filtering 8 s)."""
    sos = np.asarray(butter(2, (lo, min(hi, 0.45 * fs)), btype="bandpass", fs=fs, output="sos"))
    return sos  # shared by callers: never modified


def _bandpass(
    x: npt.NDArray[np.float64],
    fs: float,
    band: tuple[float, float],
    means: npt.NDArray[np.float64] | None = None,
) -> npt.NDArray[np.float64]:
    """Zero-phase Butterworth band-pass (order 2 each side) along the last axis, 2 s odd padding,
    of each row less its mean (`means`, if the caller has them already)."""
    sos = _design(fs, band[0], band[1])
    n = x.shape[-1]
    if n < 4:
        return np.zeros_like(x, dtype=np.float64)
    if means is None:
        means = np.mean(x, axis=-1)
    return sosfiltfilt_odd(sos, x, min(n - 1, round(2 * fs)), np.atleast_1d(means))


def ppg_clean(signal: npt.ArrayLike, sampling_rate: float) -> npt.NDArray[np.float64]:
    """Pulsatile component of a raw PPG channel, pulses pointing up (zero-phase 0.5-5 Hz).

    Parameters
    ----------
    signal : array_like
        Raw counts (falling at systole).
    sampling_rate : float
        Sampling rate in Hz.

    Returns
    -------
    ndarray of float64
        ``-bandpass(signal)`` in counts.
    """
    return -_bandpass(np.asarray(signal, dtype=np.float64), float(sampling_rate), _AC_BAND_HZ)


def _peaks_from_filtered(s: npt.NDArray[np.float64], fs: float) -> npt.NDArray[np.int64]:
    """Elgendi's two-moving-average systolic peak detector on an upward band-passed PPG."""
    return ppg_peaks_k(np.ascontiguousarray(s, dtype=np.float64), *_peak_params(fs))


@lru_cache(maxsize=16)
def _peak_params(fs: float) -> tuple[int, int, int]:
    """Short and long averaging windows (111 ms, 667 ms) and the shortest pulse interval (240 bpm)."""
    return max(1, round(0.111 * fs)), max(1, round(0.667 * fs)), round(0.25 * fs)


def ppg_peaks(signal: npt.ArrayLike, sampling_rate: float) -> npt.NDArray[np.int64]:
    """Systolic peaks of a raw PPG channel (the count minima of each pulse).

    Elgendi et al., "Systolic peak detection in acceleration photoplethysmograms measured from
    emergency responders in tropical conditions", PLoS ONE 8(10):e76585, 2013: zero-phase
    0.5-8 Hz band-pass, clipping and squaring, then blocks where a 111 ms moving average exceeds
    a 667 ms one plus 2 % of the mean; the largest sample of each block at least 111 ms wide is a
    peak. Peaks closer than 250 ms (240 bpm) keep the larger.

    Parameters
    ----------
    signal : array_like
        Raw counts (falling at systole).
    sampling_rate : float
        Sampling rate in Hz.

    Returns
    -------
    ndarray of int64
        Peak sample indices, increasing.
    """
    fs = float(sampling_rate)
    return _peaks_from_filtered(-_bandpass(np.asarray(signal, dtype=np.float64), fs, _PEAK_BAND_HZ), fs)


def ppg_rate(peaks: npt.ArrayLike, sampling_rate: float, *, min_intervals: int = 2) -> float | None:
    """Pulse rate (bpm) from systolic peaks: 60 / mean of the typical pulse intervals.

    Intervals more than 30 % away from the median are left out, because a missed or extra pulse
    is common in PPG and would pull a plain mean by a whole beat; the mean of the rest avoids the
    one-sample steps of a median at 100 Hz.

    Parameters
    ----------
    peaks : array_like of int
        Peak sample indices, increasing.
    sampling_rate : float
        Sampling rate in Hz.
    min_intervals : int
        Intervals needed for a rate.

    Returns
    -------
    float or None
        Rate in bpm, or None with too few intervals.
    """
    rate = ppg_rate_k(np.ascontiguousarray(peaks, dtype=np.int64), float(sampling_rate), min_intervals)
    return None if np.isnan(rate) else rate


def _check_calibration(calibration: Calibration) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    table = np.asarray(calibration, dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != 2 or table.shape[0] < 2:
        raise ValueError("calibration needs at least two (R, SpO2) points")
    if not np.all(np.isfinite(table)) or np.any(np.diff(table[:, 0]) <= 0):
        raise ValueError("calibration R values must be finite and strictly increasing")
    if np.any((table[:, 1] < 0) | (table[:, 1] > 100)):
        raise ValueError("calibration SpO2 values must be within 0..100 %")
    return table[:, 0], table[:, 1]


def _spo2_from_r(r: float, calibration: Calibration | None) -> Spo2Estimate:
    """SpO2 from the ratio of ratios (NaN R: no pulsatile infrared signal)."""
    if calibration is not None:
        xs, ys = _check_calibration(calibration)
    if not np.isfinite(r):
        return Spo2Estimate(spo2_pct=float("nan"), r=float("nan"), calibrated=calibration is not None)
    spo2 = 110.0 - 25.0 * r if calibration is None else float(np.interp(r, xs, ys))
    return Spo2Estimate(spo2_pct=min(max(spo2, 0.0), 100.0), r=r, calibrated=calibration is not None)


def ppg_spo2(
    red: npt.ArrayLike, ir: npt.ArrayLike, sampling_rate: float, calibration: Calibration | None = None
) -> Spo2Estimate:
    """SpO2 by the ratio of ratios ``R = (AC_red / DC_red) / (AC_ir / DC_ir)``.

    AC is the RMS of the zero-phase 0.5-5 Hz band-passed channel (all samples count, so it is
    steadier than beat-by-beat peak-to-trough); DC is the mean of the window (its low-pass part).
    Without a calibration the common linear approximation ``SpO2 = 110 - 25 R`` of the empirical
    calibration curve is used (see Webster (ed.), "Design of Pulse Oximeters", IOP 1997, on why
    the curve is empirical) and the result is flagged ``calibrated=False``: the curve of a real
    sensor and enclosure differs by several percent and must be measured against arterial blood
    (ISO 80601-2-61 desaturation study).

    Parameters
    ----------
    red, ir : array_like
        Raw counts of the two channels, same length, same window.
    sampling_rate : float
        Sampling rate in Hz.
    calibration : sequence of (R, SpO2) pairs, optional
        This sensor's calibration; linearly interpolated, clamped beyond its ends.

    Returns
    -------
    Spo2Estimate
        SpO2 clipped to 0..100 %, R, and whether it is calibrated (NaN without IR pulsatility).

    Raises
    ------
    ValueError
        If the channels differ in length or the calibration table is malformed.
    """
    r_ = np.asarray(red, dtype=np.float64)
    i_ = np.asarray(ir, dtype=np.float64)
    if r_.shape != i_.shape or r_.ndim != 1:
        raise ValueError("red and ir must be 1-D and of the same length")
    spo2 = ppg_process(r_, i_, sampling_rate, calibration=calibration, min_sqi=0.0).spo2
    assert spo2 is not None  # min_sqi 0: always estimated
    return spo2


def ppg_perfusion_index(ir: npt.ArrayLike, sampling_rate: float) -> float:
    """Perfusion index (%): pulsatile over non-pulsatile infrared light, ``100 * AC / DC``.

    AC is a robust peak-to-trough amplitude, the 2.5-97.5 percentile range of the 0.5-5 Hz
    band-passed channel (within 2 % of the true peak-to-trough for a clean pulse, and not set by
    a single spike); DC is the window mean. Typical finger values are 0.2-20 % (Lima et al., Crit
    Care Med 30(6):1210-1213, 2002).

    Parameters
    ----------
    ir : array_like
        Raw infrared counts.
    sampling_rate : float
        Sampling rate in Hz.

    Returns
    -------
    float
        Perfusion index in %.
    """
    x = np.asarray(ir, dtype=np.float64)
    ac = np.ascontiguousarray(_bandpass(x, float(sampling_rate), _AC_BAND_HZ))
    return float(ppg_pi_k(ac, float(np.mean(x)) if x.size else 0.0))


def ppg_sqi(red: npt.ArrayLike, ir: npt.ArrayLike, sampling_rate: float) -> float:
    """Signal quality index of a PPG window (about 8 s), 0 (unusable) to 1 (clean).

    - Finger present: IR DC at least 20 000 counts (ambient light alone gives a few thousand;
      cf. the SparkFun MAX3010x finger test) and neither channel saturated; else 0.
    - Pulsatile: perfusion index from 0.05 % (0) to 0.2 % (1); above 25 % it is not a finger
      pulse (motion, a loose sensor), so 0.
    - Consistent pulses (at least 3), each like a quarter of the others (template matching as in
      Orphanidou et al., IEEE J Biomed Health Inform 19:832-838, 2015), mapped 0.75-0.92 onto 0-1.
    - Red and IR pulses in step: their 0.5-5 Hz correlation mapped 0.5-0.85 onto 0-1.

    The SQI is the pulsatility score times the smaller of the last two.

    Parameters
    ----------
    red, ir : array_like
        Raw counts, same length.
    sampling_rate : float
        Sampling rate in Hz.

    Returns
    -------
    float
        SQI in [0, 1].
    """
    return ppg_process(red, ir, sampling_rate).sqi


def ppg_process(
    red: npt.ArrayLike,
    ir: npt.ArrayLike,
    sampling_rate: float,
    *,
    calibration: Calibration | None = None,
    min_sqi: float = 0.5,
) -> PpgResult:
    """Pulse rate, SpO2, perfusion index and SQI of one window, filtering each channel once.

    Composes `ppg_peaks` (on IR), `ppg_rate`, `ppg_spo2`, `ppg_perfusion_index` and `ppg_sqi`;
    the three values are None when the SQI is below `min_sqi`.

    Parameters
    ----------
    red, ir : array_like
        Raw counts, same length (about 8 s).
    sampling_rate : float
        Sampling rate in Hz.
    calibration : sequence of (R, SpO2) pairs, optional
        See `ppg_spo2`.
    min_sqi : float
        Quality needed to report values.

    Returns
    -------
    PpgResult
        The values (or None), the SQI, and the IR peaks.
    """
    r_ = np.asarray(red, dtype=np.float64)
    i_ = np.asarray(ir, dtype=np.float64)
    if r_.shape != i_.shape or r_.ndim != 1:
        raise ValueError("red and ir must be 1-D and of the same length")
    return ppg_process_many(
        r_[None, :], i_[None, :], sampling_rate, calibration=calibration, min_sqi=min_sqi
    )[0]


def ppg_process_many(
    red: npt.NDArray[np.float64],
    ir: npt.NDArray[np.float64],
    sampling_rate: float,
    *,
    calibration: Calibration | None = None,
    min_sqi: float = 0.5,
) -> list[PpgResult]:
    """`ppg_process` of many windows at once, one per row (many patients' PPG in one ingest batch).

    The filters run over all rows in one call (row by row, the same arithmetic), so each result
    equals `ppg_process` of its row exactly; only the per-call overhead is shared.

    Parameters
    ----------
    red, ir : ndarray, shape (windows, samples)
        Raw counts; all windows of the same length.
    sampling_rate : float
        Sampling rate in Hz.
    calibration, min_sqi
        As for `ppg_process`.

    Returns
    -------
    list of PpgResult
        One per row.
    """
    fs = float(sampling_rate)
    r_ = np.asarray(red, dtype=np.float64)
    i_ = np.asarray(ir, dtype=np.float64)
    if r_.shape != i_.shape or r_.ndim != 2:
        raise ValueError("red and ir must be 2-D arrays of the same shape")
    if calibration is not None:
        _check_calibration(calibration)
    k, n = r_.shape
    if k == 0:
        return []
    dc_red = r_.mean(axis=1) if n else np.zeros(k)
    dc_ir = i_.mean(axis=1) if n else np.zeros(k)
    ac = _bandpass(np.concatenate((r_, i_)), fs, _AC_BAND_HZ, np.concatenate((dc_red, dc_ir)))
    up = -_bandpass(i_, fs, _PEAK_BAND_HZ, dc_ir)
    flat, ends, pi, sqi, rate, ratio = ppg_rows_k(
        ac, up, np.ascontiguousarray(dc_red), np.ascontiguousarray(dc_ir), fs, *_peak_params(fs), _LIMITS
    )
    out: list[PpgResult] = []
    start = 0
    for j in range(k):
        peaks, start = flat[start : ends[j]], int(ends[j])
        q = float(sqi[j])
        if q < min_sqi:
            out.append(PpgResult(pr_bpm=None, spo2=None, pi_pct=None, sqi=q, peaks=peaks))
            continue
        pr = float(rate[j])
        out.append(
            PpgResult(
                pr_bpm=None if np.isnan(pr) else pr,
                spo2=_spo2_from_r(float(ratio[j]), calibration),
                pi_pct=float(pi[j]),
                sqi=q,
                peaks=peaks,
            )
        )
    return out
