"""A virtual patient: true vital signs, a scenario of events, a battery model and a heart.

Rules of this file:
- Everything random about a patient (ECG amplitudes, perfusion, breathing, device clocks, noise)
  derives from its seed through numpy SeedSequences, one child per purpose keyed by a fixed tag,
  so the same seed gives the same patient and the same bytes on every run and platform.
- Times are patient seconds since the wearables started.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hardware.heart import Heart
from hardware.scenario import Scenario

__all__ = ["Patient", "Physiology", "LOW_BATTERY_PCT"]

LOW_BATTERY_PCT = 15  # below this reported level the wearables set the low-battery flag


@dataclass(frozen=True, slots=True)
class Physiology:
    """Per-patient constants of the signal models (drawn from the seed)."""

    resp_hz: float  # breathing rate
    resp_phase: float
    ecg_amp_uv: tuple[float, float, float, float, float]  # P, Q, R, S, T wave amplitudes at rest
    wander_uv: float  # respiratory baseline wander amplitude
    drift_uv: float  # slow electrode drift amplitude (0.05 Hz)
    drift_phase: float
    ecg_noise_uv: float  # white noise SD
    mains_uv: float  # 50 Hz pickup amplitude
    ppg_dc_ir: float  # infrared DC level, counts
    ppg_dc_red: float  # red DC level, counts
    perfusion: float  # infrared AC/DC (perfusion index as a fraction, 0.01-0.03)
    ptt_s: float  # R-peak to pulse foot at 60 bpm
    ambient_counts: float  # what the photodiode sees with no finger
    motion_hz: tuple[float, float, float]
    motion_phase: tuple[float, float, float]

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Physiology:
        u = rng.random(20).tolist()
        return cls(
            resp_hz=0.2 + 0.1 * u[0],
            resp_phase=2 * math.pi * u[1],
            ecg_amp_uv=(
                100 + 80 * u[2],
                -(80 + 80 * u[3]),
                1000 + 400 * u[4],
                -(200 + 200 * u[5]),
                200 + 200 * u[6],
            ),
            wander_uv=40 + 60 * u[7],
            drift_uv=50 + 100 * u[8],
            drift_phase=2 * math.pi * u[9],
            ecg_noise_uv=6 + 6 * u[10],
            mains_uv=2 + 4 * u[11],
            ppg_dc_ir=100_000 + 50_000 * u[12],
            ppg_dc_red=80_000 + 40_000 * u[13],
            perfusion=0.01 + 0.02 * u[14],
            ptt_s=0.22 + 0.06 * u[15],
            ambient_counts=300 + 900 * u[16],
            motion_hz=(0.6 + 0.6 * u[17], 1.6 + 1.0 * u[18], 3.0 + 2.0 * u[19]),
            motion_phase=(0.3, 2.1, 4.4),
        )


def _seed_words(seed: int | Sequence[int]) -> list[int]:
    words = [seed] if isinstance(seed, int) else list(seed)
    if not words or any(w < 0 for w in words):
        raise ValueError("a patient seed is a non-negative int or a non-empty sequence of them")
    return words


class Patient:
    """The person wearing the ECG patch and the oximeter.

    hr_bpm and spo2_pct are the baseline true values that scenario events move away from and back
    to; battery_pct is the wearables' charge at t = 0, draining by battery_drain_pct_per_h (the
    scenario may override both).
    """

    def __init__(
        self,
        patient_id: str = "p-0001",
        *,
        seed: int | Sequence[int] = 0,
        hr_bpm: float = 72.0,
        spo2_pct: float = 98.0,
        battery_pct: float = 90.0,
        battery_drain_pct_per_h: float = 2.0,
        scenario: Scenario | None = None,
    ) -> None:
        if not 25.0 <= hr_bpm <= 250.0:
            raise ValueError(f"baseline heart rate {hr_bpm} bpm outside 25..250")
        if not 50.0 <= spo2_pct <= 100.0:
            raise ValueError(f"baseline SpO2 {spo2_pct} % outside 50..100")
        self.patient_id = patient_id
        self._seed_words = _seed_words(seed)
        self.hr_bpm = float(hr_bpm)
        self.spo2_pct = float(spo2_pct)
        self.scenario = scenario if scenario is not None else Scenario()
        sc = self.scenario
        self.battery_pct = float(sc.battery_pct if sc.battery_pct is not None else battery_pct)
        self.battery_drain_pct_per_h = float(
            sc.battery_drain_pct_per_h if sc.battery_drain_pct_per_h is not None else battery_drain_pct_per_h
        )
        if not 0.0 <= self.battery_pct <= 100.0 or self.battery_drain_pct_per_h < 0:
            raise ValueError("battery_pct must be 0..100 and the drain non-negative")
        self.physiology = Physiology.draw(self.rng_for("physiology"))
        ph = self.physiology
        self.heart = Heart(sc, self.hr_bpm, ph.resp_hz, ph.resp_phase, self.seed_for("heart"))

    def __repr__(self) -> str:
        return (
            f"Patient({self.patient_id!r}, hr={self.hr_bpm:g}, spo2={self.spo2_pct:g}, "
            f"scenario={self.scenario.name!r})"
        )

    # -- randomness ---------------------------------------------------------------------------
    def seed_for(self, tag: str) -> np.random.SeedSequence:
        """The seed of one random stream of this patient (e.g. 'heart', 'ecg-0001/noise')."""
        return np.random.SeedSequence([*self._seed_words, zlib.crc32(tag.encode())])

    def rng_for(self, tag: str) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(self.seed_for(tag)))

    # -- true values ----------------------------------------------------------------------------
    def true_hr(self, t: float) -> float:
        """The scripted heart rate at t (bpm); 0 during an asystole."""
        if self.scenario.active("asystole", t):
            return 0.0
        return self.heart.hr_at(t)

    def true_spo2(self, t: float) -> float:
        """The scripted SpO2 at t (%)."""
        return min(100.0, max(0.0, self.scenario.value("spo2", self.spo2_pct, t)))

    def battery_at(self, t: float) -> float:
        """Battery charge at t, percent (the wearables share one battery model)."""
        return min(100.0, max(0.0, self.battery_pct - self.battery_drain_pct_per_h * t / 3600.0))

    def battery_level(self, t: float) -> int:
        """The Battery Level 0x2A19 value at t: the charge rounded to the nearest whole percent."""
        return int(math.floor(self.battery_at(t) + 0.5))

    @property
    def low_battery_from_s(self) -> float:
        """The reported level is below LOW_BATTERY_PCT after this time (-inf: from the start)."""
        threshold = LOW_BATTERY_PCT - 0.5  # the charge at which the rounded level drops to 14
        if self.battery_pct < threshold:
            return -math.inf
        if self.battery_drain_pct_per_h == 0:
            return math.inf
        return (self.battery_pct - threshold) * 3600.0 / self.battery_drain_pct_per_h
