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


def _spectrum(t: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    grid = np.arange(t[0], t[-1], 1.0 / _GRID_HZ)
    v = np.interp(grid, t, y)
    dx = grid - grid.mean()  # no trend: the least-squares line, in closed form
    vm = v.mean()
    slope = float(np.dot(dx, v - vm)) / max(float(np.dot(dx, dx)), 1e-300)
    v = (v - vm - slope * dx) * _hann(v.size)
    power = np.abs(np.fft.rfft(v, _NFFT)) ** 2
    total = float(power.sum())
    return power / total if total > 0 else power


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
    tm = t[1:]
    # a feature that does not vary at all (a paced rhythm's RR) carries no breathing: left out
    spectra = [
        _spectrum(x, y) for x, y in ((t, a), (tm, rr)) if float(np.std(y)) > 1e-6 * abs(float(np.mean(y)))
    ]
    if not spectra:
        return None
    power = np.mean(spectra, axis=0)
    f = np.fft.rfftfreq(_NFFT, 1.0 / _GRID_HZ)
    band = (f >= _BAND_HZ[0]) & (f <= _BAND_HZ[1])
    if not band.any() or float(power[band].sum()) <= 0:
        return None
    k = int(np.flatnonzero(band)[np.argmax(power[band])])
    near = band & (np.abs(f - f[k]) <= _PEAK_HZ)
    if float(power[near].sum()) < _MIN_SHARE * float(power[band].sum()):
        return None
    if 0 < k < f.size - 1:  # parabolic interpolation of the peak
        y0, y1, y2 = (
            math.log(power[k - 1] + 1e-20),
            math.log(power[k] + 1e-20),
            math.log(power[k + 1] + 1e-20),
        )
        den = y0 - 2 * y1 + y2
        shift = 0.5 * (y0 - y2) / den if den != 0 else 0.0
    else:
        shift = 0.0
    hz = float(f[k] + max(-0.5, min(0.5, shift)) * (f[1] - f[0]))
    beat_hz = 1.0 / float(np.mean(rr))
    if hz >= 0.5 * beat_hz or beat_hz < _MIN_BEAT_HZ:
        return None
    return 60.0 * hz
