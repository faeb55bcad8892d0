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

from ._kernels import af_score_k, hrv_k

__all__ = ["Hrv", "RR_RANGE_MS", "hrv_time_domain", "af_score"]

RR_RANGE_MS = (200.0, 2500.0)  # 300 .. 24 bpm: anything else is a pause or a detection error
_MIN_HRV_RR = 8
_MIN_AF_RR = 32
_TRIM = 8  # Dash et al.: the 8 longest and 8 shortest of 128 intervals are left out (ectopics)
_NRMSSD = (0.05, 0.10)  # normalised RMSSD mapped onto 0..1 (sinus rhythm under 0.05)
_ENTROPY = (0.55, 0.75)  # Shannon entropy of the RR histogram mapped onto 0..1
_TPR_SD = 2.0  # a turning-point ratio within this many SD of a random series'
# in the order `_kernels.af_score_k` takes them
_AF_PARAMS = np.array((*RR_RANGE_MS, _MIN_AF_RR, _TRIM, *_NRMSSD, *_ENTROPY, _TPR_SD), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class Hrv:
    """Time-domain HRV of a run of RR intervals (Task Force of the ESC and NASPE, 1996)."""

    sdnn_ms: float  # standard deviation of the intervals
    rmssd_ms: float  # root mean square of successive differences
    n: int  # intervals used


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
    sdnn, rmssd, n = hrv_k(np.ascontiguousarray(rr_ms, dtype=np.float64).ravel(), *RR_RANGE_MS, _MIN_HRV_RR)
    return None if math.isnan(sdnn) else Hrv(sdnn_ms=sdnn, rmssd_ms=rmssd, n=n)


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
    score = af_score_k(np.ascontiguousarray(rr_ms, dtype=np.float64).ravel(), _AF_PARAMS)
    return None if math.isnan(score) else score
