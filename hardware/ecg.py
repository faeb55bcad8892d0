"""Synthetic single-lead ECG at 250 Hz in microvolts, as the AD8232 patch digitises it.

Model: each beat is a sum of five Gaussians (P, Q, R, S, T) centred on the R-peak times of the
patient's `Heart`, in the spirit of ECGSYN (McSharry, Clifford, Tarassenko and Smith, "A dynamical
model for generating synthetic electrocardiogram signals", IEEE Trans. Biomed. Eng. 50(3), 2003),
but written directly in time rather than as a phase ODE so that it vectorises. As in ECGSYN the
QRS keeps its width while the P and T waves move and narrow with the preceding RR interval: T by
sqrt(RR) (Bazett: QT shortens at high rates), P by RR^0.3 (PR shortens a little). On top: breathing
(baseline wander and a 5 % amplitude modulation), slow electrode drift, 50 Hz pickup, white noise.

Events: leads off drives the output to the positive rail (as the AD8232 does) and sets the
leads-off flag; motion adds large low-frequency artefacts and noise; anything beyond the front
end's +-ECG_RANGE_UV clips and sets the saturated flag. An asystole simply has no beats. In atrial
fibrillation the beats have no P wave and the baseline carries fibrillatory waves (two sinusoids
near 6 and 7 Hz, at most ~55 µV peak to peak, about where "fine" f waves end and "coarse" begin).

Each Gaussian is cut to exactly zero beyond 6 SD and the beat window covers every beat that can
reach the block, so a sample's value does not depend on how the stream is chunked.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from hardware._codec import WAVE_FLAG_LEADS_OFF, WAVE_FLAG_SATURATED
from hardware.patient import Patient

__all__ = ["EcgSynth", "ECG_RATE_HZ", "ECG_RANGE_UV"]

ECG_RATE_HZ = 250
ECG_RANGE_UV = 5000  # front-end input range: +-5 mV (rails)

# P, Q, R, S, T at RR = 1 s: centre relative to the R peak (s), SD (s), and RR exponent of both.
_MU_S = np.array([-0.17, -0.028, 0.0, 0.030, 0.26])
_SD_S = np.array([0.022, 0.008, 0.0095, 0.010, 0.045])
_RR_EXP = np.array([0.3, 0.0, 0.0, 0.0, 0.5])
_RR_CLIP = (0.24, 2.4)  # RR range the shape scaling follows (250..25 bpm)
_CUT_SD = 6.0
_RR_HI = _RR_CLIP[1] ** _RR_EXP
# Beats that can touch [t0, t1): R peaks in [t0 - _BEFORE_S, t1 + _AFTER_S).
_BEFORE_S = float(np.max((_MU_S + _CUT_SD * _SD_S) * _RR_HI)) + 0.01
_AFTER_S = float(np.max((-_MU_S + _CUT_SD * _SD_S) * _RR_HI)) + 0.01
_RESP_AMP_MOD = 0.05
_MOTION_UV = 1800.0  # artefact amplitude at motion level 1
_MOTION_NOISE_UV = 120.0
_DRIFT_HZ = 0.05
_MAINS_HZ = 50.0
_F_WAVES = ((5.8, 17.0, 0.3), (7.3, 10.0, 1.9))  # AF f waves: (Hz, µV amplitude, phase)

_F64 = npt.NDArray[np.float64]


class EcgSynth:
    """Renders the ECG of one patient sample by sample index (sample k is at k / 250 s)."""

    rate_hz = ECG_RATE_HZ

    def __init__(self, patient: Patient, noise_seed: np.random.SeedSequence, reader: str = "ecg") -> None:
        self.patient = patient
        self._reader = reader
        self._rng = np.random.Generator(np.random.PCG64(noise_seed))
        self._next_k = 0
        patient.heart.register(reader)
        ph = patient.physiology
        self._amp = np.array(ph.ecg_amp_uv)
        self._w_resp = 2 * math.pi * ph.resp_hz
        self._w_motion = 2 * math.pi * np.array(ph.motion_hz)

    def render(self, k0: int, n: int) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.uint8]]:
        """Samples k0 .. k0+n-1: (microvolts as int16, per-sample status flags).

        Calls must be consecutive (k0 = the previous k0 + n): the noise is one continuous stream.
        """
        if k0 != self._next_k:
            raise ValueError(f"ECG render must continue at sample {self._next_k}, not {k0}")
        self._next_k = k0 + n
        t = (k0 + np.arange(n)) / ECG_RATE_HZ
        z = self._rng.standard_normal(n)
        x = self._beats(t)
        x += self._baseline(t)
        af = self.patient.scenario.mask("af", t)
        if af is not None:
            x[af] += sum(a * np.sin(2 * math.pi * hz * t[af] + ph) for hz, a, ph in _F_WAVES)
        ph = self.patient.physiology
        sc = self.patient.scenario
        motion = sc.level("motion", t)
        if motion is None:
            x += ph.ecg_noise_uv * z
        else:
            mix = np.sin(self._w_motion[:, None] * t + np.array(ph.motion_phase)[:, None])
            x += motion * (_MOTION_UV * (0.6 * mix[0] + 0.3 * mix[1] + 0.25 * mix[2]))
            x += (ph.ecg_noise_uv + _MOTION_NOISE_UV * motion) * z
        flags = np.zeros(n, dtype=np.uint8)
        clipped = np.abs(x) > ECG_RANGE_UV
        if clipped.any():
            flags[clipped] = WAVE_FLAG_SATURATED
            np.clip(x, -ECG_RANGE_UV, ECG_RANGE_UV, out=x)
        leads_off = sc.mask("leads_off", t)
        if leads_off is not None:
            x[leads_off] = ECG_RANGE_UV
            flags[leads_off] = WAVE_FLAG_LEADS_OFF
        return np.rint(x).astype(np.int16), flags

    def _beats(self, t: _F64) -> _F64:
        r, rr = self.patient.heart.window(self._reader, float(t[0]) - _BEFORE_S, float(t[-1]) + _AFTER_S)
        if r.size == 0:
            return np.zeros(t.shape)
        scale = np.clip(rr, *_RR_CLIP)[:, None] ** _RR_EXP  # (m, 5)
        centre = (r[:, None] + _MU_S * scale).ravel()
        inv_sd = (1.0 / (_SD_S * scale)).ravel()
        breath = 1.0 + _RESP_AMP_MOD * np.sin(self._w_resp * r + self.patient.physiology.resp_phase)
        amp = breath[:, None] * self._amp  # (m, 5)
        af = self.patient.scenario.mask("af", r - rr)  # the beat before it was in AF (as the heart's RR)
        if af is not None:
            amp[af, 0] = 0.0  # no P wave: the atria fibrillate
        amp = amp.ravel()
        z2 = np.square((t[:, None] - centre) * inv_sd)
        g = np.exp(-0.5 * z2)
        g[z2 > _CUT_SD * _CUT_SD] = 0.0
        out: _F64 = g @ amp
        return out

    def _baseline(self, t: _F64) -> _F64:
        ph = self.patient.physiology
        out: _F64 = ph.wander_uv * np.sin(self._w_resp * t + ph.resp_phase)
        out += ph.drift_uv * np.sin(2 * math.pi * _DRIFT_HZ * t + ph.drift_phase)
        out += ph.mains_uv * np.sin(2 * math.pi * _MAINS_HZ * t)
        return out
