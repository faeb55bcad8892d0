"""The beat schedule of one virtual patient: R-peak times shared by the ECG patch and the oximeter.

Rules of this file:
- Beats are generated lazily, strictly in time order, one RR interval at a time from a dedicated
  random stream, so the schedule does not depend on who asks for which window: an ECG generated
  in 1 s chunks and one generated in 10 s chunks see the same heart.
- RR = 60 / HR(t) x (1 + respiratory sinus arrhythmia + small random jitter); HR(t) comes from the
  scenario. An asystole event suppresses beats: the first beat after it falls at its end.
- In atrial fibrillation the ventricles follow no rhythm: each RR is drawn independently around
  60 / the AF event's rate, SD 20 % of it, no shorter than 45 % of the mean (nor than the 0.2 s
  every beat keeps, which binds above ~130/min and then slows the mean rate a little). Whether a
  beat's interval is AF's is decided by the beat before it, as for the ECG's P waves.
- Per beat the work is a few float operations (1-4 beats per second); nothing here loops per sample.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right

import numpy as np
import numpy.typing as npt

from hardware.scenario import Event, Scenario

__all__ = ["Heart", "HR_MIN_BPM", "HR_MAX_BPM"]

HR_MIN_BPM = 20.0
HR_MAX_BPM = 300.0
_RSA_FRACTION = 0.035  # peak RR modulation by breathing at rest (about +-35 ms at 60 bpm)
_JITTER_FRACTION = 0.012  # beat-to-beat random RR variation (SD, fraction of RR)
_AF_CV = 0.20  # atrial fibrillation: SD of the independent RR intervals, fraction of their mean
_AF_MIN = 0.45  # ... and the shortest, as a fraction of the mean
_HISTORY_S = 12.0  # beats kept behind the slowest reader (covers the 8 s HR window)
_Z_BLOCK = 64


class Heart:
    """Lazily generated R-peak times (patient seconds) with the RR interval preceding each beat."""

    def __init__(
        self,
        scenario: Scenario,
        base_hr_bpm: float,
        resp_hz: float,
        resp_phase: float,
        seed: np.random.SeedSequence,
    ) -> None:
        self.scenario = scenario
        self.base_hr_bpm = base_hr_bpm
        self._resp_w = 2.0 * math.pi * resp_hz
        self._resp_phase = resp_phase
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._z: list[float] = []
        self._zi = 0
        rr0 = 60.0 / self.hr_at(0.0)
        # History starts a few seconds before t = 0 so the first samples already have beats behind them.
        first = -3.0 + float(self._rng.random()) * rr0
        self._r: list[float] = [first]
        self._rr: list[float] = [rr0]
        self._readers: dict[str, float] = {}
        self._asystole = scenario.of_kind("asystole")

    def hr_at(self, t: float) -> float:
        """The true (scripted) heart rate at t, bpm, clamped to what the model supports; in atrial
        fibrillation the mean ventricular rate."""
        return self._rate(t, self.scenario.at("af", t))

    def _rate(self, t: float, af: Event | None) -> float:
        hr = af.target if af is not None else self.scenario.value("hr", self.base_hr_bpm, t)
        return min(max(hr, HR_MIN_BPM), HR_MAX_BPM)

    def register(self, reader: str) -> None:
        """Declare a reader, so no beat it may still ask for is forgotten before it reads.

        Each reader's position is the oldest time it asked about last; beats more than
        `_HISTORY_S` before the slowest reader are dropped, keeping long runs in bounded memory.
        """
        self._readers.setdefault(reader, -math.inf)

    def _next_z(self) -> float:
        if self._zi >= len(self._z):
            self._z = self._rng.standard_normal(_Z_BLOCK).tolist()
            self._zi = 0
        z = self._z[self._zi]
        self._zi += 1
        return z

    def _extend_to(self, t: float) -> None:
        r = self._r[-1]
        while r < t:
            af = self.scenario.at("af", r)
            hr = self._rate(r, af)
            if af is not None:
                rr = 60.0 / hr * max(_AF_MIN, 1.0 + _AF_CV * self._next_z())
            else:
                rsa = _RSA_FRACTION * min(1.0, (70.0 / hr) ** 2)
                rr = 60.0 / hr * (1.0 + rsa * math.sin(self._resp_w * r + self._resp_phase))
                rr *= 1.0 + _JITTER_FRACTION * self._next_z()
            nxt = r + max(rr, 60.0 / HR_MAX_BPM)
            for e in self._asystole:
                if e.start_s <= nxt < e.end_s:
                    nxt = e.end_s
            self._rr.append(nxt - r)
            self._r.append(nxt)
            r = nxt

    def window(
        self, reader: str, a: float, b: float
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Beats with a <= R-peak time < b: (times, preceding RR intervals), seconds."""
        self._extend_to(b)
        i0 = bisect_left(self._r, a)
        i1 = bisect_left(self._r, b)
        out = np.array(self._r[i0:i1]), np.array(self._rr[i0:i1])
        self._readers[reader] = a
        self._forget()
        return out

    def beats(self, reader: str, a: float, b: float) -> list[tuple[float, float]]:
        """Beats with a < R-peak time <= b as (time, preceding RR) pairs, for RR reporting."""
        self._extend_to(b + 1e-9)
        self._readers[reader] = a
        i0 = bisect_right(self._r, a)
        i1 = bisect_right(self._r, b)
        return list(zip(self._r[i0:i1], self._rr[i0:i1], strict=True))

    def measured_hr(self, reader: str, t: float, window_s: float = 8.0) -> float:
        """Heart rate as a wearable reports it at t: from the last (up to 4) RR intervals, bpm.

        0 when fewer than two beats fell in the last `window_s`; during a pause the rate falls with
        the time since the last beat, as on a bedside monitor.
        """
        self._extend_to(t + 1e-9)
        self._readers[reader] = t - window_s
        i1 = bisect_right(self._r, t)
        i0 = max(bisect_right(self._r, t - window_s), i1 - 5)
        if i1 - i0 < 2:
            return 0.0
        mean_rr = (self._r[i1 - 1] - self._r[i0]) / (i1 - 1 - i0)
        gap = t - self._r[i1 - 1]
        if gap > 1.5 * mean_rr:
            mean_rr = gap
        return 60.0 / mean_rr

    def _forget(self) -> None:
        if len(self._r) < 512:
            return
        oldest = min(self._readers.values()) - _HISTORY_S
        cut = bisect_left(self._r, oldest) - 1
        if cut > 0:
            del self._r[:cut]
            del self._rr[:cut]
