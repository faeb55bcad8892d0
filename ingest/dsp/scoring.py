"""Beat-by-beat scoring of a QRS detector against reference annotations, ANSI/AAMI EC57 style.

Used by tests and benchmarks, never by the ingest runtime.

Conventions (ANSI/AAMI EC57:2012 "Testing and reporting performance results of cardiac rhythm
and ST segment measurement algorithms", as implemented by PhysioNet's WFDB ``bxb`` tool):

- a detection matches a reference beat when they are at most 150 ms apart; each detection matches
  at most one beat and vice versa (closest pairs first);
- the first 5 minutes of a record are a learning period and are not scored;
- sensitivity ``Se = TP / (TP + FN)`` and positive predictivity ``+P = TP / (TP + FP)``, in percent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["BeatScore", "match_beats", "score_beats"]


@dataclass(frozen=True, slots=True)
class BeatScore:
    """Counts and statistics of one scoring run."""

    tp: int
    fn: int
    fp: int

    @property
    def se_pct(self) -> float:
        """Sensitivity in percent (100 when there are no reference beats)."""
        n = self.tp + self.fn
        return 100.0 * self.tp / n if n else 100.0

    @property
    def ppv_pct(self) -> float:
        """Positive predictivity (+P) in percent (100 when there are no detections)."""
        n = self.tp + self.fp
        return 100.0 * self.tp / n if n else 100.0

    def __add__(self, other: BeatScore) -> BeatScore:
        """Gross statistics over several records: add the counts."""
        return BeatScore(self.tp + other.tp, self.fn + other.fn, self.fp + other.fp)


def match_beats(
    reference: npt.ArrayLike, detected: npt.ArrayLike, tolerance: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Pair detections with reference beats one-to-one, closest pairs first.

    Parameters
    ----------
    reference, detected : array_like of int
        Sample indices (need not be sorted).
    tolerance : int
        Largest distance in samples for a match (150 ms in EC57).

    Returns
    -------
    (ref_index, det_index) : tuple of ndarray of int64
        Positions in `reference` and `detected` of each matched pair.
    """
    ref = np.asarray(reference, dtype=np.int64)
    det = np.asarray(detected, dtype=np.int64)
    order = np.argsort(det, kind="stable")
    det_sorted = det[order]
    lo = np.searchsorted(det_sorted, ref - tolerance, side="left")
    hi = np.searchsorted(det_sorted, ref + tolerance, side="right")
    pairs: list[tuple[int, int, int]] = []
    for i in np.flatnonzero(hi > lo).tolist():
        for j in range(int(lo[i]), int(hi[i])):
            pairs.append((abs(int(det_sorted[j]) - int(ref[i])), i, j))
    pairs.sort()
    used_ref: set[int] = set()
    used_det: set[int] = set()
    ref_idx: list[int] = []
    det_idx: list[int] = []
    for _, i, j in pairs:
        if i in used_ref or j in used_det:
            continue
        used_ref.add(i)
        used_det.add(j)
        ref_idx.append(i)
        det_idx.append(int(order[j]))
    return np.asarray(ref_idx, dtype=np.int64), np.asarray(det_idx, dtype=np.int64)


def score_beats(
    reference: npt.ArrayLike,
    detected: npt.ArrayLike,
    sampling_rate: float,
    *,
    tolerance_s: float = 0.150,
    start_s: float = 300.0,
) -> BeatScore:
    """Score detections against reference beats (EC57: 150 ms window, first 5 minutes skipped).

    Parameters
    ----------
    reference : array_like of int
        Reference beat sample indices (only beat annotations; see `mitdb.BEAT_SYMBOLS`).
    detected : array_like of int
        Detected beat sample indices, at the same sampling rate.
    sampling_rate : float
        Sampling rate in Hz of both index sets.
    tolerance_s : float
        Match window in seconds.
    start_s : float
        Beats and detections before this time are not scored (matching still uses them, so a
        detection just before the boundary can match a beat just after it).

    Returns
    -------
    BeatScore
        TP, FN, FP counts with `se_pct` and `ppv_pct`.
    """
    ref = np.asarray(reference, dtype=np.int64)
    det = np.asarray(detected, dtype=np.int64)
    ri, di = match_beats(ref, det, int(round(tolerance_s * sampling_rate)))
    start = start_s * sampling_rate
    ref_scored = ref >= start
    det_scored = det >= start
    matched_ref = np.zeros(ref.size, dtype=bool)
    matched_ref[ri] = True
    matched_det = np.zeros(det.size, dtype=bool)
    matched_det[di] = True
    tp = int(np.count_nonzero(matched_ref & ref_scored))
    fn = int(np.count_nonzero(~matched_ref & ref_scored))
    fp = int(np.count_nonzero(~matched_det & det_scored))
    return BeatScore(tp=tp, fn=fn, fp=fp)
