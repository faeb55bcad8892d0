"""Beat-to-beat likeness, a template-matching signal quality feature shared by ECG and PPG."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

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
    p = peaks[(peaks - before >= 0) & (peaks + after <= signal.size)]
    if p.size < 3 or before + after < 3:
        return None
    seg = signal[p[:, None] + np.arange(-before, after)[None, :]]
    seg = seg - seg.mean(axis=1, keepdims=True)
    seg /= np.linalg.norm(seg, axis=1, keepdims=True) + 1e-12
    corr = seg @ seg.T
    np.fill_diagonal(corr, -np.inf)
    k = max(1, int(np.ceil(0.25 * (p.size - 1))))
    return float(np.mean(np.sort(corr, axis=1)[:, -k]))
