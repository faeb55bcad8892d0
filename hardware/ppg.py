"""Synthetic red and infrared PPG at 100 Hz in raw MAX30102 counts (18-bit, 0..262143).

Model: each R peak of the patient's `Heart` launches one arterial pulse whose foot arrives a
pulse-transit time (PTT, 0.22-0.28 s at 60 bpm, a little shorter at high rates) later. The pulse
shape is a fast asymmetric systolic wave, a reflected diastolic wave with a dicrotic notch before
it, and a slow diastolic run-off; it narrows with sqrt(RR). Blood volume absorbs light, so each
channel is DC x (1 - AC/DC x pulse): the infrared AC/DC is the patient's perfusion index (1-3 %).

SpO2 enters through the ratio of ratios R = (AC_red/DC_red) / (AC_ir/DC_ir), set per beat from the
true SpO2 with the commonly used *uncalibrated empirical* line

    SpO2 = 110 - 25 R      so      R = (110 - SpO2) / 25.

The server's uncalibrated estimator uses the same line, so closed-loop tests with this simulator
prove that the pipeline (framing, transport, DSP, alarms) carries the value through; they say
nothing about clinical accuracy, which needs a calibration table measured against a reference
oximeter on real people.

Events: finger out drops both channels to ambient-light counts with tiny noise and sets the
sensor-off flag; motion adds large artefacts; values clipped at the ADC limits set the saturated
flag; an asystole has no pulses.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from hardware._codec import WAVE_FLAG_SATURATED, WAVE_FLAG_SENSOR_OFF
from hardware.patient import Patient

__all__ = ["PpgSynth", "PPG_RATE_HZ", "PPG_MAX_COUNTS", "ratio_from_spo2", "spo2_from_ratio"]

PPG_RATE_HZ = 100
PPG_MAX_COUNTS = (1 << 18) - 1

# Pulse shape in units of tau = (t - foot) / scale, scale = sqrt(RR) (RR clipped to 0.3..1.5 s).
_SYS_MU, _SYS_SD_UP, _SYS_SD_DOWN = 0.16, 0.045, 0.075
_DIA_A, _DIA_MU, _DIA_SD = 0.30, 0.38, 0.055
_RUN_A, _RUN_MU, _RUN_SD = 0.12, 0.52, 0.10
_TAU_END = 1.1  # the shape is exactly zero outside [0, _TAU_END]
_RR_CLIP = (0.3, 1.5)
_PTT_MAX_FACTOR = 1.0 + 0.2 * (_RR_CLIP[1] - 1.0)
_BEFORE_S = _TAU_END * math.sqrt(_RR_CLIP[1]) + 0.28 * _PTT_MAX_FACTOR + 0.01
_RESP_DC_MOD = 0.001
_RESP_AC_MOD = 0.08
_NOISE_COUNTS = 10.0
_AMBIENT_NOISE_COUNTS = 2.0
_MOTION_FRACTION = 0.06  # artefact amplitude, fraction of DC, at motion level 1
_MOTION_NOISE_COUNTS = 150.0
_RED_AMBIENT = 0.8  # red sees a little less ambient light than IR

_F64 = npt.NDArray[np.float64]


def ratio_from_spo2(spo2_pct: _F64 | float) -> _F64:
    """The ratio of ratios R for a true SpO2, by the uncalibrated line SpO2 = 110 - 25 R."""
    return np.asarray((110.0 - np.asarray(spo2_pct, dtype=np.float64)) / 25.0, dtype=np.float64)


def spo2_from_ratio(r: _F64 | float) -> _F64:
    """Inverse of `ratio_from_spo2` (the same uncalibrated line the server's estimator uses)."""
    return np.asarray(110.0 - 25.0 * np.asarray(r, dtype=np.float64), dtype=np.float64)


def _pulse_shape(tau: _F64) -> _F64:
    sd = np.where(tau < _SYS_MU, _SYS_SD_UP, _SYS_SD_DOWN)
    p: _F64 = np.exp(-0.5 * np.square((tau - _SYS_MU) / sd))
    p += _DIA_A * np.exp(-0.5 * np.square((tau - _DIA_MU) * (1.0 / _DIA_SD)))
    p += _RUN_A * np.exp(-0.5 * np.square((tau - _RUN_MU) * (1.0 / _RUN_SD)))
    p[(tau < 0.0) | (tau > _TAU_END)] = 0.0
    return p


class PpgSynth:
    """Renders the PPG of one patient by sample index (sample k is at k / 100 s)."""

    rate_hz = PPG_RATE_HZ

    def __init__(self, patient: Patient, noise_seed: np.random.SeedSequence, reader: str = "ppg") -> None:
        self.patient = patient
        self._reader = reader
        self._rng = np.random.Generator(np.random.PCG64(noise_seed))
        self._next_k = 0
        patient.heart.register(reader)
        ph = patient.physiology
        self._dc = np.array([ph.ppg_dc_red, ph.ppg_dc_ir])
        self._ambient = np.array([_RED_AMBIENT * ph.ambient_counts, ph.ambient_counts])
        self._w_resp = 2 * math.pi * ph.resp_hz
        self._w_motion = 2 * math.pi * np.array(ph.motion_hz)

    def render(self, k0: int, n: int) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.uint8]]:
        """Samples k0 .. k0+n-1: (counts, shape (n, 2): red, IR), per-sample status flags).

        Calls must be consecutive: the noise is one continuous stream.
        """
        if k0 != self._next_k:
            raise ValueError(f"PPG render must continue at sample {self._next_k}, not {k0}")
        self._next_k = k0 + n
        ph = self.patient.physiology
        sc = self.patient.scenario
        t = (k0 + np.arange(n)) / PPG_RATE_HZ
        z = self._rng.standard_normal((n, 2))
        pulse = self._pulses(t)  # (n, 2): red, IR fractional absorption
        dc = 1.0 + _RESP_DC_MOD * np.sin(self._w_resp * t + ph.resp_phase)
        x = (dc[:, None] * self._dc) * (1.0 - pulse)
        motion = sc.level("motion", t)
        if motion is None:
            x += _NOISE_COUNTS * z
        else:
            mix = np.sin(self._w_motion[:, None] * t + np.array(ph.motion_phase)[:, None])
            art = motion * _MOTION_FRACTION * (0.7 * mix[0] - 0.4 * mix[1] + 0.2 * mix[2])
            x *= (1.0 + art)[:, None]
            x += (_NOISE_COUNTS + _MOTION_NOISE_COUNTS * motion)[:, None] * z
        flags = np.zeros(n, dtype=np.uint8)
        off = sc.mask("sensor_off", t)
        if off is not None:
            x[off] = self._ambient + _AMBIENT_NOISE_COUNTS * z[off]
            flags[off] = WAVE_FLAG_SENSOR_OFF
        clipped = (x < 0.0) | (x > PPG_MAX_COUNTS)
        if clipped.any():
            flags[clipped.any(axis=1)] |= WAVE_FLAG_SATURATED
            np.clip(x, 0.0, PPG_MAX_COUNTS, out=x)
        return np.rint(x).astype(np.int32), flags

    def _pulses(self, t: _F64) -> _F64:
        """Fractional absorption per channel: perfusion x sum of pulses, red scaled by R per beat."""
        p = self.patient
        r, rr = p.heart.window(self._reader, float(t[0]) - _BEFORE_S, float(t[-1]))
        out = np.zeros((t.size, 2))
        if r.size == 0:
            return out
        rr_c = np.clip(rr, *_RR_CLIP)
        scale = np.sqrt(rr_c)
        foot = r + p.physiology.ptt_s * (0.8 + 0.2 * rr_c)
        tau = (t[:, None] - foot) * (1.0 / scale)
        shape = _pulse_shape(tau)  # (n, m)
        ph = p.physiology
        amp = ph.perfusion * (1.0 + _RESP_AC_MOD * np.sin(self._w_resp * r + ph.resp_phase))
        spo2 = np.clip(p.scenario.values("spo2", p.spo2_pct, r), 0.0, 100.0)
        weights = np.stack([amp * ratio_from_spo2(spo2), amp], axis=1)  # (m, 2)
        res: _F64 = shape @ weights
        return res
