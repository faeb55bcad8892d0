"""Per-patient streaming state held by the ingest worker: samples in, vitals about once a second.

Rules of this file:
- Pure: time comes in as data (``t0``, UTC epoch seconds of the chunk's first sample); nothing
  here reads a clock, a file or a socket. The worker keeps one processor per patient and stream.
- Output depends only on the samples and their times, not on how they were cut into chunks:
  chunks are split at emission boundaries, and the detector is itself chunk-invariant.
- Timeline: a chunk that starts within ``gap_tolerance_s`` of where the previous one ended
  continues the stream (its ``t0`` re-anchors the clock, so device clock drift never builds up).
  A later start is missing data. A hole of up to `BRIDGE_S` (a BLE drop-out, whose frames the
  gateway asks the wearable for again and publishes after the live ones that followed) is
  bridged: a straight line from the last sample to the next stands in for it, no beat is found
  in it, no vitals are emitted at its emission boundaries, an RR interval across it is not one
  (HRV and AF never see it), and a pause across it is its longest stretch seen on one side (the
  hole may have hidden a beat: a pause is never made up of samples nobody saw, and one that
  spans a drop-out is not forgotten either). The frames that
  fill the hole arrive after it was bridged and are dropped as seen. A longer hole resets the
  state, and the processor warms up again rather than splice signal across it. An earlier start
  is a resend (MQTT QoS 1 delivers duplicates): the samples already seen are dropped. A start
  more than 60 s early is a new session: reset.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ._kernels import peak_to_peak_k
from .ecg import _MAX_INTERVALS, _MIN_INTERVALS, _rate_and_pause, _sqi_core
from .hrv import Hrv, af_score, hrv_time_domain
from .ppg import Calibration, _check_calibration, ppg_process_many
from .qrs import EcgPeakStream
from .resp import ecg_resp_rate

__all__ = ["EcgVitals", "EcgProcessor", "PpgVitals", "PpgProcessor", "PpgWindow", "analyse_many", "BRIDGE_S"]

_NEW_SESSION_S = 60.0
# The longest hole bridged rather than reset: the gateway's default `resend_timeout_s`, after
# which a drop-out's frames that did not come back are a gap for good (docs/gateway.md).
BRIDGE_S = 10.0
# A new chunk this far behind its stream is a clock step, not jitter (the gateway steps its
# estimate of a device's clock only for changes over 2 s; smaller mismatches are skipped over).
STEP_BACK_S = 1.0


@dataclass(frozen=True, slots=True)
class EcgVitals:
    """ECG-derived vitals of one analysis window."""

    t: float  # UTC epoch seconds of the last sample of the analysis window
    hr_bpm: float | None  # None with too few beats or SQI below the processor's min_sqi
    rr_ms: list[float]  # RR intervals of the beats confirmed since the previous emission
    sqi: float  # 0..1, see ecg.ecg_sqi
    pause_s: float  # longest gap between beats in the window, including one still open at its end
    hrv_sdnn_ms: float | None = None  # over the last RR intervals (about a minute); None if too few
    hrv_rmssd_ms: float | None = None
    af_score: float | None = None  # 0..1 AF suspicion from RR irregularity (hrv.af_score); None: too few
    resp_bpm: float | None = None  # ECG-derived respiration (resp.ecg_resp_rate); None: not clear enough


@dataclass(frozen=True, slots=True)
class PpgVitals:
    """PPG-derived vitals of one analysis window; values are None when the SQI is too low."""

    t: float  # UTC epoch seconds of the last sample of the window
    pr_bpm: float | None
    spo2_pct: float | None
    spo2_calibrated: bool  # False: generic curve 110 - 25 R, not a calibration of this sensor
    pi_pct: float | None
    sqi: float


class _Timeline:
    """Sample count since the last reset and the UTC time of each sample."""

    def __init__(self, sampling_rate: float, tolerance_s: float) -> None:
        self.fs = sampling_rate
        self.tolerance_s = tolerance_s
        self.n = 0
        self._t_ref = 0.0
        self._n_ref = 0

    def time_of(self, index: int) -> float:
        return self._t_ref + (index - self._n_ref) / self.fs

    def place(self, t0: float, size: int, fresh: bool = False) -> tuple[bool, int, int]:
        """Where a chunk goes: (reset first?, samples to skip at its start, samples of a hole
        to bridge before it). A `fresh` chunk (the caller knows it is new signal, by its frame
        numbers) starting more than `STEP_BACK_S` early is a device time stepped back (a gateway
        clock set back by NTP), not a resend: a new session, rather than every chunk skipped
        until the time has caught up."""
        if self.n == 0:
            self._t_ref, self._n_ref = t0, 0
            return False, 0, 0
        delta = t0 - self.time_of(self.n)
        if abs(delta) <= self.tolerance_s:
            self._t_ref, self._n_ref = t0, self.n
            return False, 0, 0
        if 0 < delta <= BRIDGE_S + 1e-6:  # (a hole of exactly BRIDGE_S, whatever the rounding)
            hole = round(delta * self.fs)
            self._t_ref, self._n_ref = t0, self.n + hole
            return False, 0, hole
        if delta > 0 or -delta > _NEW_SESSION_S or (fresh and -delta > STEP_BACK_S):
            self.n = 0
            self._t_ref, self._n_ref = t0, 0
            return True, 0, 0
        skip = round(-delta * self.fs)
        if skip < size:
            self._t_ref, self._n_ref = t0 + skip / self.fs, self.n
        return False, skip, 0


def _line(first: float, last: float, n: int) -> npt.NDArray[np.float64]:
    """`n` samples on the straight line strictly between `first` and `last`."""
    return np.linspace(first, last, n + 2)[1:-1]


class EcgProcessor:
    """Heart rate, RR intervals, pause and SQI from a live single-lead ECG.

    Parameters
    ----------
    sampling_rate : float
        Sampling rate in Hz.
    window_s : float
        Analysis window for the rate, pause and SQI.
    emit_every_s : float
        Emission period in seconds of signal.
    min_sqi : float
        Below this SQI, ``hr_bpm`` is None and ``rr_ms`` is empty.
    warmup_s : float
        Signal needed after a (re)start before the first emission (the detector learns for 3 s).
    gap_tolerance_s : float
        Largest timing mismatch between chunks still treated as continuous.

    Notes
    -----
    The analysis window ends ``lag`` samples before the newest sample, where ``lag`` is the
    detector's confirmation delay (0.37 s at 250 Hz), so the beats in it have been decided.
    Cost: about 0.1 ms of CPU per second of 250 Hz signal (record 100; one Xeon core, CPython 3.11,
    the compiled kernels of `_kernels`), with the respiration rate every 5 s.
    """

    def __init__(
        self,
        sampling_rate: float,
        *,
        window_s: float = 10.0,
        emit_every_s: float = 1.0,
        min_sqi: float = 0.5,
        warmup_s: float = 5.0,
        gap_tolerance_s: float = 0.1,
    ) -> None:
        self._fs = float(sampling_rate)
        self._win = round(window_s * self._fs)
        self._every = max(1, round(emit_every_s * self._fs))
        self._min_sqi = min_sqi
        self._warmup = round(warmup_s * self._fs)
        self._clock = _Timeline(self._fs, gap_tolerance_s)
        self._reset()

    def _reset(self) -> None:
        # the detector keeps the raw and band-passed signal of the analysis window for us (its
        # confirmation delay is under 0.4 s: 2 s more is plenty)
        self._stream = EcgPeakStream(self._fs, history=self._win + 2 * round(self._fs))
        self._lag = int(np.ceil(self._stream.max_delay_s * self._fs))
        self._keep = self._win + self._lag
        self._qrs_half = max(1, round(0.06 * self._fs))
        self._peaks: list[int] = []
        self._last_peak: int | None = None
        self._holes: list[tuple[int, int]] = []  # bridged holes [from, to) in samples, oldest first
        self._new_rr: list[float] = []
        # RR history for HRV and AF suspicion: the last 64 intervals (about a minute at 60 bpm)
        self._rr_hist: deque[float] = deque(maxlen=64)
        self._rr_seen = 0  # intervals appended to _rr_hist since the reset
        self._rhythm_at = 0
        self._rhythm: tuple[Hrv | None, float | None] | None = None
        # per beat (time in s since the reset, QRS peak-to-peak µV) for the ECG-derived respiration
        self._beats: deque[tuple[float, float]] = deque(maxlen=160)
        self._resp: float | None = None
        self._resp_due = 0

    def push(self, samples: npt.ArrayLike, t0: float, fresh: bool = False) -> list[EcgVitals]:
        """Feed a chunk of ECG (µV) whose first sample was taken at `t0` (UTC epoch seconds);
        `fresh`: new signal, never seen (see `_Timeline.place`).

        Returns
        -------
        list of EcgVitals
            One per emission boundary crossed by this chunk (usually zero or one).
        """
        x = np.asarray(samples, dtype=np.float64).ravel()
        if x.size == 0:
            return []
        reset, skip, hole = self._clock.place(float(t0), x.size, fresh)
        if reset:
            self._reset()
        if hole:
            self._bridge(hole, float(x[0]))
        x = x[skip:]
        out: list[EcgVitals] = []
        i = 0
        while i < x.size:
            n = self._clock.n
            take = min(x.size - i, (n // self._every + 1) * self._every - n)
            self._feed(x[i : i + take])
            i += take
            if self._clock.n % self._every == 0 and self._clock.n >= self._warmup:
                out.append(self._emit())
        return out

    def _bridge(self, hole: int, next_uv: float) -> None:
        """A straight line across a hole of `hole` samples, to the next chunk's first sample."""
        n = self._clock.n
        last = float(self._stream.window(n - 1, n)[0][0])
        self._holes.append((n, n + hole))
        self._feed(_line(last, next_uv, hole))  # no emission inside: nobody saw these samples

    def _across_hole(self, a: int, b: int) -> int:
        """Samples of bridged holes between sample indices a and b."""
        return sum(max(0, min(b, hi) - max(a, lo)) for lo, hi in self._holes)

    def _longest_seen(self, a: int, b: int) -> int:
        """The longest stretch between sample indices a and b outside bridged holes: all of a
        beat-free interval that is certain (a hole may have hidden a beat)."""
        longest, at = 0, a
        for lo, hi in self._holes:
            if hi <= at or lo >= b:
                continue
            longest = max(longest, lo - at)
            at = max(at, hi)
        return max(longest, b - at)

    def _feed(self, x: npt.NDArray[np.float64]) -> None:
        peaks = self._stream.push(x)
        for p in peaks.tolist():
            if self._last_peak is not None and self._holes and self._across_hole(self._last_peak, p):
                pass  # two beats either side of a hole: not an RR interval
            elif self._last_peak is not None:
                rr_ms = (p - self._last_peak) * 1000.0 / self._fs
                self._new_rr.append(rr_ms)
                self._rr_hist.append(rr_ms)
                self._rr_seen += 1
            self._last_peak = p
            self._peaks.append(p)
        self._clock.n += x.size
        first = max(0, self._clock.n - self._keep)  # the analysis window's signal starts here
        half = self._qrs_half
        for p in peaks.tolist():  # QRS peak-to-peak around each new beat
            if p - half >= first and p + half < self._clock.n:
                raw = self._stream.window(p - half, p + half + 1)[0]
                self._beats.append((p / self._fs, float(peak_to_peak_k(raw))))
        start = self._clock.n - self._keep
        while len(self._peaks) > 1 and self._peaks[1] < start:  # keep one beat before the window
            self._peaks.pop(0)
        oldest = self._peaks[0] if self._peaks else 0
        while self._holes and (self._holes[0][1] <= oldest or len(self._holes) > 64):
            self._holes.pop(0)  # before every interval the window can still measure

    def _rate_and_pause_seen(self, peaks: npt.NDArray[np.int64], stop: int) -> tuple[float | None, float]:
        """`_rate_and_pause` (the kernel `ecg_rate_k`, explained in `ecg.ecg_rate`) with bridged
        holes in or before the window: an interval across a hole is no RR interval for the rate,
        and a pause across one is its longest stretch outside holes, the part certain to have had
        no beat (counting both sides of a hole that had hidden a beat made pauses of sinus rhythm
        at 35/min, and a lossy link at 66/min made 48 s of false asystole: found by review)."""
        before = [int(p) for p in peaks if p <= stop]
        if not before:
            return None, self._longest_seen(0, stop) / self._fs
        first = stop - self._win  # as the kernel counts the window
        spans = [(a, b) for a, b in zip(before, before[1:], strict=False) if b > first]
        open_ = (before[-1], stop)
        seen = [self._longest_seen(a, b) for a, b in ([open_, *spans] if before[-1] > first else [open_])]
        pause_s = max(seen) / self._fs
        rr = [b - a for a, b in spans if not self._across_hole(a, b)][-_MAX_INTERVALS:]
        if len(rr) < _MIN_INTERVALS:
            return None, pause_s
        mean_rr = sum(rr) / len(rr)
        open_seen = seen[0]
        if open_seen > 1.5 * mean_rr:
            mean_rr = (sum(rr) + open_seen) / (len(rr) + 1)
        return 60.0 * self._fs / mean_rr, pause_s

    def _emit(self) -> EcgVitals:
        end = self._clock.n - self._lag  # exclusive: beats before `end` are decided
        start = max(0, end - self._win)
        raw, bp = self._stream.window(start, end)
        peaks = np.asarray(self._peaks, dtype=np.int64)
        inside = peaks[(peaks >= start) & (peaks < end)] - start
        sqi = _sqi_core(raw, bp, inside, self._fs, self._stream.group_delay_samples)
        hr_bpm, pause_s = _rate_and_pause(peaks, self._fs, end - 1, self._win / self._fs)
        if self._holes:
            hr_bpm, pause_s = self._rate_and_pause_seen(peaks, end - 1)
        ok = sqi >= self._min_sqi
        rr, self._new_rr = self._new_rr, []
        # HRV and AF look at the last ~64 beats: recomputed every 4 new beats, not every second
        if self._rr_seen - self._rhythm_at >= 4 or self._rhythm is None:
            self._rhythm_at = self._rr_seen
            self._rhythm = (hrv_time_domain(self._rr_hist), af_score(self._rr_hist))
        hrv, af = self._rhythm if ok else (None, None)
        self._resp_due -= 1
        if self._resp_due <= 0:  # breathing is slow: every 5 s is often enough
            self._resp_due = 5
            beats = np.asarray(self._beats, dtype=np.float64).reshape(-1, 2)
            self._resp = ecg_resp_rate(beats[:, 0], beats[:, 1]) if beats.shape[0] else None
        return EcgVitals(
            t=self._clock.time_of(end - 1),
            hr_bpm=hr_bpm if ok else None,
            rr_ms=rr if ok else [],
            sqi=sqi,
            pause_s=pause_s,
            hrv_sdnn_ms=hrv.sdnn_ms if hrv is not None else None,
            hrv_rmssd_ms=hrv.rmssd_ms if hrv is not None else None,
            af_score=af,
            resp_bpm=self._resp if ok else None,
        )


class PpgProcessor:
    """Pulse rate, SpO2, perfusion index and SQI from a live red + infrared PPG.

    Parameters
    ----------
    sampling_rate : float
        Sampling rate in Hz.
    calibration : sequence of (R, SpO2) pairs, optional
        This sensor's SpO2 calibration (see `ppg.ppg_spo2`); without it SpO2 is flagged
        uncalibrated.
    window_s : float
        Analysis window; the first emission comes once a whole window has arrived.
    emit_every_s : float
        Emission period in seconds of signal.
    min_sqi : float
        Below this SQI the values are None.
    gap_tolerance_s : float
        Largest timing mismatch between chunks still treated as continuous.
    """

    def __init__(
        self,
        sampling_rate: float,
        *,
        calibration: Calibration | None = None,
        window_s: float = 8.0,
        emit_every_s: float = 1.0,
        min_sqi: float = 0.5,
        gap_tolerance_s: float = 0.1,
    ) -> None:
        if calibration is not None:
            _check_calibration(calibration)
        self._fs = float(sampling_rate)
        self._calibration = calibration
        self._win = round(window_s * self._fs)
        self._every = max(1, round(emit_every_s * self._fs))
        self._min_sqi = min_sqi
        self._clock = _Timeline(self._fs, gap_tolerance_s)
        self._new_buffer()

    def _new_buffer(self, keep: npt.NDArray[np.float64] | None = None) -> None:
        """Red and IR rows that chunks are appended to in place, so that a window is a view, not a
        copy; when full, the last window moves to a new buffer (views handed out never change)."""
        self._buf = np.empty((2, 2 * self._win + 4 * self._every))
        self._used = 0 if keep is None else keep.shape[1]
        if keep is not None:
            self._buf[:, : self._used] = keep

    def push(self, red: npt.ArrayLike, ir: npt.ArrayLike, t0: float) -> list[PpgVitals]:
        """Feed a chunk of both channels (raw counts); `t0` is the UTC time of the first sample.

        Returns
        -------
        list of PpgVitals
            One per emission boundary crossed by this chunk.
        """
        return self.finish(self.windows(red, ir, t0))

    def windows(
        self, red: npt.ArrayLike, ir: npt.ArrayLike, t0: float, fresh: bool = False
    ) -> list[PpgWindow]:
        """`push` without the analysis: the windows due for analysis, for `finish` (or for
        `analyse_many` together with other patients' windows)."""
        r_ = np.asarray(red, dtype=np.float64).ravel()
        i_ = np.asarray(ir, dtype=np.float64).ravel()
        if r_.shape != i_.shape:
            raise ValueError("red and ir chunks must have the same length")
        if r_.size == 0:
            return []
        reset, skip, hole = self._clock.place(float(t0), r_.size, fresh)
        if reset:
            self._new_buffer()
        if hole:  # a straight line across it, no window ending inside it (nobody saw it)
            last = self._buf[:, self._used - 1]
            self._append(_line(last[0], r_[0], hole), _line(last[1], i_[0], hole), emit=False)
        return self._append(r_[skip:], i_[skip:], emit=True)

    def _append(
        self, r_: npt.NDArray[np.float64], i_: npt.NDArray[np.float64], *, emit: bool
    ) -> list[PpgWindow]:
        out: list[PpgWindow] = []
        i = 0
        while i < r_.size:
            n = self._clock.n
            take = min(r_.size - i, (n // self._every + 1) * self._every - n)
            if self._used + take > self._buf.shape[1]:
                self._new_buffer(self._buf[:, max(0, self._used - self._win) : self._used])
            self._buf[0, self._used : self._used + take] = r_[i : i + take]
            self._buf[1, self._used : self._used + take] = i_[i : i + take]
            self._used += take
            self._clock.n += take
            i += take
            if emit and self._clock.n % self._every == 0 and self._clock.n >= self._win:
                lo, hi = self._used - self._win, self._used
                red, ir = self._buf[0, lo:hi], self._buf[1, lo:hi]
                out.append(PpgWindow(self, self._clock.time_of(self._clock.n - 1), red, ir))
        return out

    def finish(self, windows: list[PpgWindow]) -> list[PpgVitals]:
        """Analyse this processor's pending windows."""
        return analyse_many(windows)

    @property
    def key(self) -> tuple[float, tuple[tuple[float, float], ...] | None, float]:
        """Windows with equal keys can be analysed together."""
        cal = (
            tuple((float(a), float(b)) for a, b in self._calibration)
            if self._calibration is not None
            else None
        )
        return (self._fs, cal, self._min_sqi)


@dataclass(frozen=True, slots=True)
class PpgWindow:
    """A PPG window due for analysis (the arrays are the processor's, never modified in place)."""

    processor: PpgProcessor
    t: float
    red: npt.NDArray[np.float64]
    ir: npt.NDArray[np.float64]


def analyse_many(windows: list[PpgWindow]) -> list[PpgVitals]:
    """PpgVitals of windows from any processors, in order; windows of one kind share one pass."""
    groups: dict[tuple[float, tuple[tuple[float, float], ...] | None, float], list[int]] = {}
    for i, w in enumerate(windows):
        groups.setdefault(w.processor.key, []).append(i)
    out: list[PpgVitals | None] = [None] * len(windows)
    for (fs, cal, min_sqi), idx in groups.items():
        results = ppg_process_many(
            np.stack([windows[i].red for i in idx]),
            np.stack([windows[i].ir for i in idx]),
            fs,
            calibration=list(cal) if cal is not None else None,
            min_sqi=min_sqi,
        )
        for i, res in zip(idx, results, strict=True):
            spo2 = res.spo2.spo2_pct if res.spo2 is not None and np.isfinite(res.spo2.spo2_pct) else None
            out[i] = PpgVitals(
                t=windows[i].t,
                pr_bpm=res.pr_bpm,
                spo2_pct=spo2,
                spo2_calibrated=cal is not None,
                pi_pct=res.pi_pct,
                sqi=res.sqi,
            )
    return [v for v in out if v is not None]
