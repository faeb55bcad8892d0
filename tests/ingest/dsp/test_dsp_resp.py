"""ECG-derived respiration on SYNTHETIC signals: the `hardware` simulator breathes (baseline,
R-amplitude and sinus-arrhythmia modulation at a known rate); `ingest.dsp.synth` beats do not."""

from __future__ import annotations

import numpy as np
import pytest

from hardware.ecg import EcgSynth
from hardware.patient import Patient
from ingest.dsp import EcgProcessor
from ingest.dsp.resp import ecg_resp_rate
from ingest.dsp.synth import regular_beats, synth_ecg

FS = 250


@pytest.mark.parametrize("seed", [0, 3, 6])
def test_breathing_rate_of_simulated_patients(seed: int) -> None:
    patient = Patient("p-resp", seed=seed, hr_bpm=60 + 7 * seed)
    x, _ = EcgSynth(patient, patient.seed_for("ecg/noise")).render(0, 80 * FS)
    proc = EcgProcessor(FS)
    out = []
    for i in range(0, x.size, FS):
        out += proc.push(x[i : i + FS].astype(np.float64), 1_767_225_600.0 + i / FS)
    truth = 60.0 * patient.physiology.resp_hz
    late = [v.resp_bpm for v in out[-20:]]
    assert all(r is not None and r == pytest.approx(truth, abs=1.5) for r in late), (truth, late)
    assert out[10].resp_bpm is None  # not before 24 s of beats


def test_no_breathing_in_the_beats_gives_no_rate(rng: np.random.Generator) -> None:
    # regular beats of constant amplitude with white noise: nothing breathes, nothing is reported
    beats = regular_beats(72, 60.0) + 0.004 * rng.standard_normal(regular_beats(72, 60.0).size)
    amps = 1000.0 + 15.0 * rng.standard_normal(beats.size)
    assert ecg_resp_rate(beats, amps) is None
    x = np.round(synth_ecg(regular_beats(72, 60.0), 60.0, FS) + 15.0 * rng.standard_normal(60 * FS))
    proc = EcgProcessor(FS)
    out = []
    for i in range(0, x.size, FS):
        out += proc.push(x[i : i + FS], 1_767_225_600.0 + i / FS)
    assert sum(v.resp_bpm is not None for v in out) <= 0.1 * len(out)


def test_too_few_beats_or_a_rate_the_beats_cannot_carry() -> None:
    t = np.arange(10) * 1.0
    assert ecg_resp_rate(t, np.ones(10)) is None
    # 40 bpm beats modulated at 30 /min: it would alias to 10 /min, so below 50 bpm nothing is said
    t = np.arange(0, 60, 1.5)
    assert ecg_resp_rate(t, 1000 + 100 * np.sin(2 * np.pi * 0.5 * t)) is None
    slow = 1000 + 100 * np.sin(2 * np.pi * 0.2 * np.arange(0, 60, 0.8))
    assert ecg_resp_rate(np.arange(0, 60, 0.8), slow) == pytest.approx(12.0, abs=0.5)
