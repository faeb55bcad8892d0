"""HRV and AF suspicion. RR series here are SYNTHETIC (seeded); record 100 is real (MIT-BIH)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from ingest.dsp import EcgProcessor, af_score, hrv_time_domain
from ingest.dsp.synth import synth_ecg

FS = 250
T0 = 1_767_225_600.0
Recording = tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]


def _sinus(n: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    # synthetic sinus rhythm at ~70 bpm: respiratory sinus arrhythmia (4 %) and 1.2 % jitter
    k = np.arange(n)
    return 850.0 * (1 + 0.04 * np.sin(2 * np.pi * k / 4.5)) * (1 + 0.012 * rng.standard_normal(n))


def test_hrv_of_known_series() -> None:
    rr = np.array([800.0, 810.0, 790.0, 800.0, 820.0, 780.0, 800.0, 800.0, 810.0])
    hrv = hrv_time_domain(rr)
    assert hrv is not None
    assert hrv.sdnn_ms == pytest.approx(float(np.std(rr, ddof=1)))
    assert hrv.rmssd_ms == pytest.approx(float(np.sqrt(np.mean(np.diff(rr) ** 2))))
    assert hrv_time_domain(rr[:5]) is None  # too few intervals: no number
    assert hrv_time_domain(np.r_[rr, 6000.0]) == hrv  # a pause is not rhythm


def test_irregularly_irregular_rhythm_scores_high_and_sinus_low(rng: np.random.Generator) -> None:
    af = rng.gamma(16.0, 700.0 / 16.0, 64)  # synthetic AF: independent RR, CV 0.25
    sinus = _sinus(64, rng)
    bigeminy = np.where(np.arange(64) % 2 == 0, 600.0, 1000.0) * (1 + 0.01 * rng.standard_normal(64))
    ectopics = sinus.copy()
    ectopics[[10, 30, 50]] *= 0.6  # premature beats with their compensatory pauses
    ectopics[[11, 31, 51]] *= 1.4
    assert af_score(af) == pytest.approx(1.0, abs=0.2)
    assert af_score(sinus) == pytest.approx(0.0, abs=0.1)
    assert (af_score(bigeminy) or 0.0) < 0.5  # irregular, but regularly so
    assert (af_score(ectopics) or 0.0) < 0.2  # isolated ectopics are trimmed away
    assert af_score(af[:20]) is None


def test_record_100_is_not_af(record_100: Recording) -> None:
    # real data: sinus rhythm with a few atrial premature beats
    rr = np.diff(record_100[1]) * 1000.0 / FS
    scores = [af_score(rr[i : i + 64]) for i in range(0, rr.size - 64, 32)]
    assert max(s or 0.0 for s in scores) < 0.3


def test_processor_reports_af_and_hrv_from_an_ecg(rng: np.random.Generator) -> None:
    # synthetic ECG whose beats follow an AF-like RR series, then one in sinus rhythm
    def run(rr_ms: npt.NDArray[np.float64]) -> list[float | None]:
        beats = 0.5 + np.cumsum(rr_ms) / 1000.0
        seconds = float(beats[-1]) + 1.0
        x = np.round(synth_ecg(beats, seconds, FS) + 15.0 * rng.standard_normal(round(seconds * FS)))
        proc = EcgProcessor(FS)
        out = []
        for i in range(0, x.size, 250):
            out += proc.push(x[i : i + 250], T0 + i / FS)
        assert out[-1].hrv_sdnn_ms is not None and out[-1].hrv_rmssd_ms is not None
        return [v.af_score for v in out]

    af = run(np.clip(rng.gamma(16.0, 700.0 / 16.0, 90), 350.0, 1500.0))
    sinus = run(_sinus(90, rng))
    assert af[5] is None  # not enough intervals yet
    assert (af[-1] or 0.0) > 0.7
    assert (sinus[-1] or 0.0) < 0.2
