"""Heart-rate variability and atrial-fibrillation suspicion from RR intervals. Pure.

Rules of this file:
- RR intervals in milliseconds in, numbers out; no sampling rate (the intervals carry it).
- Intervals outside `RR_RANGE_MS` (pauses, double counts) are not rhythm and are left out
  before anything is computed; too few intervals give None, never a guess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Hrv", "RR_RANGE_MS", "hrv_time_domain", "af_score"]

RR_RANGE_MS = (200.0, 2500.0)  # 300 .. 24 bpm: anything else is a pause or a detection error
_MIN_HRV_RR = 8
_MIN_AF_RR = 32
_TRIM = 8  # Dash et al.: the 8 longest and 8 shortest of 128 intervals are left out (ectopics)
_NRMSSD = (0.05, 0.10)  # normalised RMSSD mapped onto 0..1 (sinus rhythm under 0.05)
_ENTROPY = (0.55, 0.75)  # Shannon entropy of the RR histogram mapped onto 0..1
_TPR_SD = 2.0  # a turning-point ratio within this many SD of a random series'


@dataclass(frozen=True, slots=True)
class Hrv:
    """Time-domain HRV of a run of RR intervals (Task Force of the ESC and NASPE, 1996)."""

    sdnn_ms: float  # standard deviation of the intervals
    rmssd_ms: float  # root mean square of successive differences
    n: int  # intervals used


def _rhythm(rr_ms: npt.ArrayLike) -> npt.NDArray[np.float64]:
    rr = np.asarray(rr_ms, dtype=np.float64).ravel()
    return rr[(rr >= RR_RANGE_MS[0]) & (rr <= RR_RANGE_MS[1])]


def hrv_time_domain(rr_ms: npt.ArrayLike) -> Hrv | None:
    """SDNN and RMSSD of consecutive RR intervals.

    Task Force of the European Society of Cardiology and the North American Society of Pacing
    and Electrophysiology, "Heart rate variability: standards of measurement, physiological
    interpretation and clinical use", Circulation 93(5):1043-1065, 1996. Over the ~1 minute the
    ingest keeps these are "ultra-short-term" values: trend them, do not compare them with
    24-hour norms.

    Parameters
    ----------
    rr_ms : array_like
        Consecutive RR intervals in ms, oldest first.

    Returns
    -------
    Hrv or None
        None with fewer than 8 intervals in `RR_RANGE_MS`.
    """
    rr = _rhythm(rr_ms)
    if rr.size < _MIN_HRV_RR:
        return None
    d = np.diff(rr)
    return Hrv(
        sdnn_ms=float(np.std(rr, ddof=1)),
        rmssd_ms=float(math.sqrt(float(np.mean(d * d)))),
        n=int(rr.size),
    )


def _ramp(x: float, lo: float, hi: float) -> float:
    return min(max((x - lo) / (hi - lo), 0.0), 1.0)


def af_score(rr_ms: npt.ArrayLike) -> float | None:
    """Atrial-fibrillation suspicion (0..1) from the irregularity of the RR intervals.

    After Dash, Chon, Lu and Raeder, "Automatic real time detection of atrial fibrillation",
    Ann Biomed Eng 37(9):1701-1709, 2009, which combines three statistics of a window of RR
    intervals with the 8 longest and 8 shortest removed (so isolated ectopic beats do not count):

    - normalised RMSSD (RMSSD / mean RR): sinus rhythm stays under about 0.05, AF is above 0.1;
    - Shannon entropy of the 16-bin RR histogram (normalised by log 1/16): AF spreads the
      intervals, so it is above about 0.7;
    - turning-point ratio: an irregularly irregular series turns like a random one (2/3 of the
      points, with SD ``sqrt((16N - 29) / 90)`` turns).

    Here the two amplitude statistics are mapped onto 0..1 (nRMSSD 0.05-0.10, entropy 0.55-0.75)
    and the score is the smaller of them, times 1 when the turning points look random and 0.5
    when they do not (a regular alternation such as bigeminy is irregular but not random).
    It is a *suspicion* for a nurse to look at the strip, not a diagnosis.

    Parameters
    ----------
    rr_ms : array_like
        Consecutive RR intervals in ms, oldest first (the last minute or so; up to 128 are used).

    Returns
    -------
    float or None
        Score in [0, 1], or None with fewer than 32 intervals in `RR_RANGE_MS`.
    """
    rr = _rhythm(rr_ms)[-128:]
    if rr.size < _MIN_AF_RR:
        return None
    # Trim the extremes in proportion to the window (8 of 128 each side in the paper).
    k = max(1, round(_TRIM * rr.size / 128))
    order = np.argsort(rr, kind="stable")
    keep = np.sort(order[k:-k])
    trimmed = rr[keep]
    d = np.diff(trimmed)
    nrmssd = math.sqrt(float(np.mean(d * d))) / float(np.mean(trimmed))
    # 16 equal bins from min to max (np.histogram's, the last bin closed), counted without its overhead
    lo, span = float(trimmed.min()), float(trimmed.max() - trimmed.min())
    idx = (
        np.minimum((trimmed - lo) * (16.0 / span), 15).astype(np.int64) if span > 0 else np.zeros(1, np.int64)
    )
    hist = np.bincount(idx, minlength=16)
    p = hist[hist > 0] / trimmed.size
    entropy = float(-np.sum(p * np.log(p))) / math.log(16)
    n = trimmed.size - 2
    turns = int(np.count_nonzero(d[:-1] * d[1:] < 0))
    expected, sd = 2.0 * n / 3.0, math.sqrt((16.0 * trimmed.size - 29.0) / 90.0)
    random_like = abs(turns - expected) <= _TPR_SD * sd
    score = min(_ramp(nrmssd, *_NRMSSD), _ramp(entropy, *_ENTROPY))
    return score if random_like else 0.5 * score
