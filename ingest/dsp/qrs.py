"""Causal QRS detector: one implementation for streams and for whole recordings.

Rules of this file:
- Pure: samples in, R-peak sample indices out. No I/O, no clocks; time is the sample count.
- Chunk-size invariant: every decision is an event at a sample time (a peak is final ``PB`` samples
  after it, a search-back fires at its deadline) and events are handled in time order once the
  samples they depend on have arrived, so ``push`` over any chunking gives the same peaks.
  (The filters carry their state between calls, so their outputs are bit-identical too.)

Design: Pan & Tompkins (1985) front end -- 5-15 Hz band-pass, five-point derivative, squaring,
150 ms moving-window integration (MWI) -- with the decision rules of Hamilton & Tompkins (1986) as
in Hamilton's open-source OSEA detector (medians of the last 8 QRS and noise peak levels, 200 ms
refractory period, T-wave test within 360 ms, search-back at 1.5 RR at half the threshold).
Changes for home monitoring, where a missed asystole is worse than a missed beat:

- The threshold sits halfway between the noise and QRS levels (P&T: a quarter of the way). On
  record 100 with electrode-motion bursts at 12 dB SNR this lifts +P from 93 % to 98 % for a
  0.1 % loss of Se (`nabz bench dsp`); the search-back at half the threshold still recovers
  small beats.
- A peak is the largest MWI value within +-120 ms (OSEA: 200 ms after it), which merges the humps
  of one QRS yet separates beats 240 ms apart, so rates up to 300 bpm are detectable.
- Thresholds never fall below an absolute floor (the MWI response to a ``min_qrs_uv`` QRS) nor
  below ``_K_PAUSE`` times the MWI noise floor measured inside the current pause, and there is
  no OSEA-style re-learning from noise after 8 s: noise inside a pause is not counted as beats.
- The QRS level decays (half-life 2 s) only after ``max(3 s, 2 RR)`` without a beat, so a real
  drop in amplitude (electrode moved) is followed, while a pause keeps its thresholds; at a
  decayed or lowered threshold a QRS must also keep 15 % of the usual QRS slope, which P waves
  (a P-wave asystole) do not.

References
----------
Pan J, Tompkins WJ. A real-time QRS detection algorithm. IEEE Trans Biomed Eng 32(3):230-236, 1985.
Hamilton PS, Tompkins WJ. Quantitative investigation of QRS detection rules using the MIT/BIH
arrhythmia database. IEEE Trans Biomed Eng 33(12):1157-1165, 1986.
Hamilton P. Open source ECG analysis. Computers in Cardiology 29:101-104, 2002 (OSEA).
"""

from __future__ import annotations

from functools import lru_cache
from statistics import median

import numpy as np
import numpy.typing as npt
from scipy.signal import butter, group_delay, sos2tf, sosfilt_zi

from ._kernels import block_minima_k, qrs_candidates_k, qrs_front_k, qrs_measure_k

__all__ = ["EcgPeakStream"]

_BAND_HZ = (5.0, 15.0)  # QRS energy band (Pan & Tompkins 1985)
_MWI_S = 0.150  # integration window: about the widest normal QRS
_PEAK_WINDOW_S = 0.120  # a peak is the largest MWI value within +-120 ms (merges humps of one QRS)
_REFRACTORY_S = 0.200  # no QRS within 200 ms of the last: rates up to 300 bpm
_TWAVE_S = 0.360  # a peak this soon after a QRS must have at least half its slope (T-wave test)
_LEARN_S = 3.0  # initial learning period: at least one beat even at 30 bpm
_TH = 0.5  # threshold position between noise and QRS levels (P&T use 0.25; see the module docstring)
_SB_RR = 1.5  # search-back after this many median RR without a beat (OSEA)
_N_LEVELS = 8  # QRS / noise / RR levels are medians of the last 8 (OSEA)
_HOLD_S = 3.0  # no decay of the QRS level during shorter pauses
_HALF_LIFE_S = 2.0  # decay of the QRS level during longer ones
_MIN_SLOPE = 0.15  # at a lowered or decayed threshold, a QRS needs 15 % of the usual QRS slope
_ARMED = 4  # the last two guards need this many beats since the levels were (re)learnt
_UNARMED_HALF_LIFE_S = 0.5  # before that, the QRS level decays this fast
_K_PAUSE = 20.0  # inside a pause a beat needs 20x the MWI noise floor (4.5x in amplitude)
_PAUSE_NOISE_AFTER_S = 0.5  # pause noise is measured this long after the last QRS (past its T wave)
_BLOCK_S = 0.25  # noise-floor blocks
_PAUSE_WINDOW_S = 16.0  # ... over at most the last 16 s
_MAX_RR_S = 3.0  # RR intervals longer than this are pauses, not rhythm, for the search-back timer


def _qrs_response(
    sampling_rate: float,
    sos: npt.NDArray[np.float64],
    deriv: npt.NDArray[np.float64],
    mwi: npt.NDArray[np.float64],
    amplitude_uv: float,
) -> float:
    """Peak MWI value produced by a Gaussian QRS (sigma 12 ms) of the given amplitude."""
    t = np.arange(-0.5, 0.5, 1.0 / sampling_rate)
    qrs = amplitude_uv * np.exp(-0.5 * (t / 0.012) ** 2)
    zi, tail_d, tail_f = np.zeros((sos.shape[0], 2)), np.zeros(deriv.size - 1), np.zeros(mwi.size - 1)
    out = np.empty((4, qrs.size))
    qrs_front_k(qrs, sos, zi, deriv, tail_d, mwi, tail_f, out, 0)
    return float(np.max(out[3]))


_Arr = npt.NDArray[np.float64]


@lru_cache(maxsize=8)
def _design(fs: float, min_qrs_uv: float) -> tuple[_Arr, _Arr, _Arr, _Arr, int, float]:
    """Filters, band-pass delay and threshold floor for one rate (cached: a reset is cheap)."""
    sos = np.asarray(butter(2, _BAND_HZ, btype="bandpass", fs=fs, output="sos"), dtype=np.float64)
    zi_unit = np.asarray(sosfilt_zi(sos), dtype=np.float64)
    deriv = np.array([2.0, 1.0, 0.0, -1.0, -2.0]) * (fs / 8.0)
    n_mwi = max(1, round(_MWI_S * fs))
    mwi = np.full(n_mwi, 1.0 / n_mwi)
    b, a = sos2tf(sos)
    gd = round(float(group_delay((b, a), w=[10.0], fs=fs)[1][0]))
    floor = _qrs_response(fs, sos, deriv, mwi, min_qrs_uv)
    return sos, zi_unit, deriv, mwi, gd, floor  # shared by every stream: never modified


class EcgPeakStream:
    """Streaming R-peak detector; ``push`` samples, get newly confirmed R peaks.

    Parameters
    ----------
    sampling_rate : float
        Sampling rate in Hz (60 Hz to 2 kHz; the wearables send 250 Hz).
    min_qrs_uv : float
        Smallest QRS amplitude (µV) that can be detected; the absolute threshold floor.

    Notes
    -----
    Delay: a beat found by the threshold is returned at most ``max_delay_s`` (0.37 s at 250 Hz,
    typically 0.25 s) after its R peak. A beat recovered by search-back is returned when the
    search-back fires, 1.5 median RR after the previous beat: for a beat on time about
    ``0.5 RR + 0.25 s`` after it (0.75 s at 60 bpm), at worst ``1.5 RR - 0.12 s``. The first
    beats are returned at the end of the 3 s learning period.
    Returned indices count samples from the first sample ever pushed, and only ever increase.
    """

    def __init__(self, sampling_rate: float, *, min_qrs_uv: float = 100.0, history: int = 0) -> None:
        fs = float(sampling_rate)
        if not 60.0 <= fs <= 2000.0:
            raise ValueError(f"sampling_rate {fs} Hz outside 60..2000 Hz")
        self._fs = fs
        self._sos, self._zi_unit, self._deriv, self._mwi, self._gd, self._floor = _design(fs, min_qrs_uv)
        self._n_mwi = self._mwi.size
        self._pb = round(_PEAK_WINDOW_S * fs)
        self._refr = round(_REFRACTORY_S * fs)
        self._tw = round(_TWAVE_S * fs)
        self._learn = round(_LEARN_S * fs)
        self._prefloor = 0.02 * self._floor  # smaller MWI bumps are not even noise peaks
        self._ref = round(0.040 * fs)  # refinement half-window on the raw signal
        # the band-pass QRS extremum lies within this many samples before the MWI peak
        self._look = self._n_mwi + 2
        self._blk = round(_BLOCK_S * fs)
        self._pause_win = round(_PAUSE_WINDOW_S * fs)
        self._keep = max(2 * self._pb + self._look + self._gd + 2 * self._ref + 4, self._blk + 1)
        # an R peak is at most look + gd + ref samples before its MWI peak, final pb samples later
        self._pad = self._look + self._gd + self._ref + self._pb + 2
        # filter state
        self._zi_bp: npt.NDArray[np.float64] | None = None
        self._tail_d = np.zeros(self._deriv.size - 1)
        self._tail_f = np.zeros(self._n_mwi - 1)
        # sample buffers: rows raw, band-passed, derivative, MWI; column 0 is absolute sample index
        # self._buf0, self._used columns are filled. Appended to in place; when full, what is still
        # needed moves to a new array (so arrays handed out earlier never change).
        self._history = max(0, int(history))  # samples kept for `window`
        self._buf = np.zeros((4, 4 * max(self._keep, round(fs))))
        self._used = 0
        self._buf0 = 0
        self._drop = 0  # leading columns no longer needed
        self._x, self._bp, self._d, self._f = self._buf[:, :0]
        self._n = 0  # samples pushed so far
        self._scan = 1  # next MWI index to test as a peak
        self._learn_max = 0.0
        self._ready = False
        self._flushed = False
        self._last_raw = 0.0
        # decision state (indices are MWI-peak indices unless named _r)
        self._q: list[float] = []
        self._noise: list[float] = []
        self._rr: list[int] = []
        self._rr_med = fs  # median RR in samples (1 s until two beats are known)
        self._last_c: int | None = None
        self._last_r = -1
        self._last_slope = 0.0
        self._slopes: list[float] = []  # slopes of the last 8 QRS
        self._n_beats = 0  # beats since the QRS level was (re)learnt
        self._deadline: int | None = None
        self._lowered = False
        self._since: list[tuple[int, float, float, int]] = []  # noise peaks since the last QRS
        self._blocks: list[tuple[int, float]] = []  # (end index, min MWI) of recent 0.25 s blocks
        self._blk_end = 0
        self._out: list[int] = []

    @property
    def sampling_rate(self) -> float:
        """Sampling rate in Hz."""
        return self._fs

    @property
    def n_samples(self) -> int:
        """Number of samples pushed so far."""
        return self._n

    @property
    def max_delay_s(self) -> float:
        """Longest delay, in seconds, between an R peak and its report (threshold detections)."""
        return self._pad / self._fs

    def push(self, samples: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Feed the next samples (µV); return R peaks confirmed by them, as absolute indices.

        Parameters
        ----------
        samples : array_like
            The next samples of the one-lead ECG in µV, in order, without gaps.

        Returns
        -------
        ndarray of int64
            Sample indices (counted from the first sample pushed) of newly confirmed R peaks.
        """
        return self._push(samples)[0]

    def flush(self) -> npt.NDArray[np.int64]:
        """End of the recording: confirm the last beats by holding the last sample value.

        Returns
        -------
        ndarray of int64
            R peaks (before the end of the data) still pending; the stream cannot be pushed again.
        """
        if self._flushed or self._n == 0:
            self._flushed = True
            return np.zeros(0, dtype=np.int64)
        end = self._n
        last = self._last_raw
        peaks = self._push(np.full(self._pad, last))[0]
        self._flushed = True
        return peaks[peaks < end]

    def _push(self, samples: npt.ArrayLike) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """`push`, also returning the band-passed chunk (delayed by `group_delay_samples`)."""
        if self._flushed:
            raise RuntimeError("EcgPeakStream was flushed")
        x = np.asarray(samples, dtype=np.float64).ravel()
        if x.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        if self._zi_bp is None:  # start the filter as if x[0] had always been there: no step transient
            self._zi_bp = self._zi_unit * x[0]
        self._last_raw = float(x[-1])
        n = x.size
        at = self._reserve(n)
        qrs_front_k(
            np.ascontiguousarray(x), self._sos, self._zi_bp, self._deriv, self._tail_d, self._mwi,
            self._tail_f, self._buf, at,
        )  # fmt: skip
        self._used = at + n
        self._x, self._bp, self._d, self._f = self._buf[:, : self._used]
        if not self._ready:
            head = self._f[at : at + max(0, self._learn - self._n)]
            if head.size:
                self._learn_max = max(self._learn_max, float(np.max(head)))
        self._n += n
        done = (self._n - self._blk_end) // self._blk  # noise-floor blocks completed by these samples
        if done > 0:
            minima = block_minima_k(self._f, self._blk_end - self._buf0, self._blk, done).tolist()
            for m in minima:
                self._blk_end += self._blk
                self._blocks.append((self._blk_end, m))
        self._run()
        # the pause floor at any later peak only looks at the 16 s before it
        old = 0
        while old < len(self._blocks) and self._blocks[old][0] <= self._scan - self._pause_win:
            old += 1
        del self._blocks[:old]
        # what the next scan and localisation can look back at, and the history, are kept
        keep = max(self._keep, self._history)
        self._drop = max(0, min(self._scan - self._keep, self._n - keep) - self._buf0)
        out = np.asarray(self._out, dtype=np.int64)
        self._out = []
        return out, self._buf[1, at : at + n]

    def _reserve(self, n: int) -> int:
        """Room for `n` more columns; returns the column they start at."""
        cap = self._buf.shape[1]
        if self._used + n <= cap:
            return self._used
        live = self._used - self._drop
        if live + n > cap // 2:
            cap = 2 * (live + n) if live + n < 1 << 16 else live + n + (1 << 16)
        buf = np.empty((4, cap))
        buf[:, :live] = self._buf[:, self._drop : self._used]
        self._buf, self._used, self._buf0, self._drop = buf, live, self._buf0 + self._drop, 0
        return live

    def window(self, start: int, end: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Raw and band-passed samples ``start..end-1`` (absolute indices); at least the last
        ``history`` samples pushed are available. The arrays must not be modified."""
        lo, hi = start - self._buf0, end - self._buf0
        if lo < 0 or hi > self._used or lo > hi:
            raise IndexError(f"samples {start}..{end} not kept (have {self._buf0}..{self._n})")
        return self._buf[0, lo:hi], self._buf[1, lo:hi]

    @property
    def group_delay_samples(self) -> int:
        """Delay of the band-passed signal returned by `_push`, in samples (at 10 Hz)."""
        return self._gd

    # --- events -------------------------------------------------------------------------------

    def _run(self) -> None:
        horizon = self._n - 1  # last available sample
        if not self._ready:
            if self._n < self._learn:
                return
            self._ready = True
            self._q = [max(self._learn_max, self._floor)]
        hi = horizon - self._pb
        if hi < self._scan:
            self._fire_until(horizon + 1)
            return
        o, pb = self._buf0, self._pb
        for i in qrs_candidates_k(self._f, self._scan - o, hi - o, pb, self._prefloor).tolist():
            self._fire_until(i + o + pb)
            self._classify(i + o)
        self._scan = hi + 1
        self._fire_until(horizon + 1)

    def _fire_until(self, t: int) -> None:
        """Fire every search-back deadline earlier than sample time `t`."""
        while self._deadline is not None and self._deadline < t:
            deadline = self._deadline
            self._deadline = None
            best: tuple[int, float, float, int] | None = None
            assert self._last_c is not None
            for peak in self._since:
                c, v = peak[0], peak[1]
                if c - self._last_c > self._tw and c + self._pb <= deadline and (best is None or v > best[1]):
                    best = peak
            if best is not None and best[1] > self._sb_threshold(best[0]) and self._steep(best[2]):
                c, v, s, r = best
                self._since = [p for p in self._since if p[0] > c]
                self._accept(c, v, s, r)
            else:
                self._lowered = True  # OSEA: after the deadline, half threshold until the next beat

    def _classify(self, c: int) -> None:
        # the R peak: the causal band-pass delays a QRS by a morphology-dependent 7-22 samples at
        # 250 Hz (its group delay over 5-15 Hz), so it is looked for in the raw signal within 40 ms
        # of the band-pass extremum moved back by that delay (see `qrs_measure_k`)
        v, s, r = qrs_measure_k(
            self._f, self._d, self._bp, self._x, c - self._buf0, self._n_mwi, self._look, self._gd, self._ref
        )
        r += self._buf0
        thr = self._sb_threshold(c) if self._lowered else self._threshold(c)
        is_qrs = v > thr and r > self._last_r
        if is_qrs and (self._lowered or self._decay(c) < 1.0):
            is_qrs = self._steep(s)
        if is_qrs and self._last_c is not None and r - self._last_r < self._tw:
            # refractory (on the refined R peaks: MWI peaks jitter between the humps of a QRS),
            # then the T-wave test of Pan & Tompkins: a T wave has a gentler slope
            is_qrs = r - self._last_r >= self._refr and s >= 0.5 * self._last_slope
        if is_qrs:
            self._accept(c, v, s, r)
        else:
            self._noise.append(v)
            del self._noise[:-_N_LEVELS]
            self._since.append((c, v, s, r))
            del self._since[:-64]

    def _accept(self, c: int, v: float, s: float, r: int) -> None:
        if self._last_c is not None and c - self._last_c <= _MAX_RR_S * self._fs:
            self._rr.append(c - self._last_c)
            del self._rr[:-_N_LEVELS]
            self._rr_med = float(median(self._rr))
        if self._decay(c) < 1.0:  # first beat after a long gap: relearn from it
            self._q, self._slopes, self._n_beats = [], [], 0
        self._q.append(v)
        del self._q[:-_N_LEVELS]
        self._slopes.append(s)
        del self._slopes[:-_N_LEVELS]
        self._n_beats += 1
        self._last_c, self._last_r, self._last_slope = c, r, s
        self._lowered = False
        self._since = []
        self._deadline = c + round(_SB_RR * self._rr_med) if self._rr else None
        self._out.append(max(r, 0))

    # --- thresholds ---------------------------------------------------------------------------

    def _steep(self, s: float) -> bool:
        """Slope guard at a lowered or decayed threshold (once armed by `_ARMED` beats).

        P waves -- a P-wave asystole, atria beating on -- have about 1/20 of the QRS slope,
        while a QRS that really got smaller keeps most of its slope. Not armed just after
        start-up, so that a level learnt from an artefact cannot block detection for good.
        """
        return self._n_beats < _ARMED or s >= _MIN_SLOPE * float(median(self._slopes))

    def _pause_floor(self, c: int) -> float:
        """`_K_PAUSE` x the noise floor of the current pause (0 if it is shorter than 1 s).

        The noise floor is the median, over the 0.25 s blocks between the last QRS's T wave and
        `c` (at most 16 s), of each block's minimum MWI value: between beats the MWI falls to the noise, so
        missed small beats hardly raise it, while in pure noise the largest MWI peaks stay below
        13x it (white or EMG-like noise, 7 s pauses, 30 trials).
        """
        start = -1 if self._last_c is None else self._last_c + round(_PAUSE_NOISE_AFTER_S * self._fs)
        lo = max(start, c - self._pause_win)
        mins = [m for end, m in self._blocks if end - self._blk > lo and end <= c]
        return _K_PAUSE * float(median(mins)) if len(mins) >= 4 else 0.0

    def _decay(self, c: int) -> float:
        """Factor applied to the QRS level at `c`: 1 until ``max(3 s, 2 RR)`` without a beat.

        Until `_ARMED` beats have confirmed the level it decays faster: a level learnt from a
        start-up artefact must not block detection for long (a 20 mV electrode transient at
        start-up delays the first beats by about 8 s). The floors hold whatever the decay.
        """
        since = c - (self._last_c if self._last_c is not None else self._learn)
        excess = since - max(_HOLD_S * self._fs, 2.0 * self._rr_med)
        if excess <= 0:
            return 1.0
        half_life = _UNARMED_HALF_LIFE_S if self._n_beats < _ARMED else _HALF_LIFE_S
        return float(0.5 ** (excess / (half_life * self._fs)))

    def _threshold(self, c: int) -> float:
        q = float(median(self._q))
        n = float(median(self._noise)) if self._noise else 0.0
        decay = self._decay(c)
        if decay < 1.0:
            return max(n + _TH * max(q * decay - n, 0.0), self._floor, self._pause_floor(c))
        return max(n + _TH * (q - n), self._floor)

    def _sb_threshold(self, c: int) -> float:
        return max(0.5 * self._threshold(c), self._floor, self._pause_floor(c))
