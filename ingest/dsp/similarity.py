"""Beat-to-beat likeness, a template-matching signal quality feature shared by ECG and PPG."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ._kernels import beat_similarity_k

__all__ = ["beat_similarity"]


def beat_similarity(
    signal: npt.NDArray[np.float64], peaks: npt.NDArray[np.int64], before: int, after: int
) -> float | None:
    """Mean over beats of the correlation each reaches with at least a quarter of the other beats.

    Template matching (Orphanidou et al., "Signal-quality indices for the electrocardiogram and
    photoplethysmogram: derivation and applications to wireless monitoring", IEEE J Biomed Health
    Inform 19(3):832-838, 2015) compares each beat with one average template, which scores bigeminy
    as noise. Here each beat only has to resemble a quarter of the others, so two (or three)
    consistent morphologies still score about 1, while "beats" picked out of noise resemble few
    others (about 0.4-0.5).

    Parameters
    ----------
    signal : ndarray
        Filtered signal (no baseline).
    peaks : ndarray of int64
        Fiducial point of each beat; beats too near the ends are skipped.
    before, after : int
        Samples taken before and after each fiducial point.

    Returns
    -------
    float or None
        Mean correlation in [-1, 1], or None with fewer than 3 complete beats.
    """
    value = beat_similarity_k(
        np.ascontiguousarray(signal, dtype=np.float64), np.ascontiguousarray(peaks, dtype=np.int64),
        int(before), int(after),
    )  # fmt: skip
    return None if np.isnan(value) else float(value)
