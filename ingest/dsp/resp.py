"""Respiration rate derived from the ECG (EDR): breathing modulates each beat. Pure.

Rules of this file:
- Beat times (s) and per-beat features in, a rate or None out; None whenever the breathing
  rhythm is not clearly the strongest thing in the band. A wrong respiration rate feeds NEWS2, so
  this abstains rather than guesses.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from ._kernels import resp_peak_k, resp_series_k

__all__ = ["ecg_resp_rate"]

_BAND_HZ = (0.1, 0.75)  # 6 to 45 breaths per minute
_GRID_HZ = 4.0
_NFFT = 512  # at 4 Hz: 0.0078 Hz bins (0.47 /min), refined by parabolic interpolation
_MIN_SPAN_S = 24.0
_MIN_BEATS = 16
_PEAK_HZ = 0.03  # power within this of the peak counts as the breathing peak
_MIN_SHARE = 0.5  # ... and must be at least half of the band's power in both features combined
# Beats sample the breathing: breathing faster than half the heart rate aliases to a false slower
# rate that no check can tell from a real one. Below 50 bpm, rates of 25 /min and more (NEWS2's
# highest score) cannot be represented, so no rate is given at all.
_MIN_BEAT_HZ = 50.0 / 60.0


@lru_cache(maxsize=64)
def _hann(n: int) -> npt.NDArray[np.float64]:
    return np.hanning(n)  # shared: never modified


# the spectrum's frequencies and the band's first and last bins
_F = np.fft.rfftfreq(_NFFT, 1.0 / _GRID_HZ).astype(np.float64)
_B0, _B1 = (int(i) for i in np.flatnonzero((_F >= _BAND_HZ[0]) & (_F <= _BAND_HZ[1]))[[0, -1]])


def _series(t: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """`y` at `t` resampled at 4 Hz, detrended and windowed; empty if it does not vary."""
    grid = np.arange(t[0], t[-1], 1.0 / _GRID_HZ)
    return resp_series_k(grid, t, y, _hann(grid.size))


def ecg_resp_rate(
    beat_times_s: npt.ArrayLike, amplitudes: npt.ArrayLike, *, window_s: float = 32.0
) -> float | None:
    """Breaths per minute from the beat-to-beat modulation of R amplitude and RR interval.

    Breathing changes the heart's electrical axis and the chest impedance (R-wave amplitude
    modulation) and the heart rate (respiratory sinus arrhythmia). Both beat series are resampled
    at 4 Hz over the last `window_s` seconds, detrended and Hann-windowed; their normalised power
    spectra are averaged and the highest peak in 0.1-0.75 Hz is the breathing rate, if it holds at
    least half of the band's power and lies below half the heart rate (a beat series cannot show a
    faster rhythm). Breathing faster than half the heart rate aliases to a false, slower rate that
    cannot be detected; below 50 bpm nothing is reported for that reason. Moody GB, Mark RG, Zoccola A, Mantero S. "Derivation of respiratory signals
    from multi-lead ECGs", Computers in Cardiology 12:113-116, 1985; Charlton PH et al., "Breathing
    rate estimation from the electrocardiogram and photoplethysmogram: a review", IEEE Rev Biomed
    Eng 11:2-20, 2018.

    Parameters
    ----------
    beat_times_s : array_like
        R-peak times in seconds, increasing.
    amplitudes : array_like
        A per-beat amplitude (e.g. QRS peak-to-peak, µV), same length.
    window_s : float
        Analysis window, seconds before the last beat.

    Returns
    -------
    float or None
        Breaths per minute, or None (too few beats, or no clear breathing peak).
    """
    t = np.asarray(beat_times_s, dtype=np.float64)
    a = np.asarray(amplitudes, dtype=np.float64)
    if t.size != a.size or t.size < _MIN_BEATS:
        return None
    keep = t >= t[-1] - window_s
    t, a = t[keep], a[keep]
    if t.size < _MIN_BEATS or t[-1] - t[0] < _MIN_SPAN_S:
        return None
    rr = np.diff(t)
    series = [v for v in (_series(t, a), _series(t[1:], rr)) if v.size]
    if not series:
        return None
    padded = np.zeros((len(series), _NFFT))  # as rfft(v, _NFFT) would: zeros after, or cut
    for row, v in zip(padded, series, strict=True):
        row[: v.size] = v[:_NFFT]
    power = np.abs(np.fft.rfft(padded)) ** 2
    hz = resp_peak_k(power, power.sum(axis=1), _F, _B0, _B1, _PEAK_HZ, _MIN_SHARE)
    if math.isnan(hz):
        return None
    beat_hz = 1.0 / float(np.mean(rr))
    if hz >= 0.5 * beat_hz or beat_hz < _MIN_BEAT_HZ:
        return None
    return 60.0 * hz
