"""The ECG patch's sampler and on-device QRS detector in MicroPython 1.27 (mp/mp_ecg.py).

Inputs: synthetic ECG from the virtual patients (hardware/ecg.py, labelled synthetic) at 40, 72
and 150 bpm, and MIT-BIH Arrhythmia Database record 100 (real ECG, lead MLII, resampled to the
patch's 250 Hz), scored the ANSI/AAMI EC57 way by ingest.dsp.scoring.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hardware import EcgSynth, Patient
from ingest.dsp.mitdb import read_annotations, read_record, to_microvolts
from ingest.dsp.scoring import match_beats, score_beats
from tests.firmware.fw import REPO, RunMicroPython, run_script

FS = 250
RATES = (40, 72, 150)
SECONDS = 60
RECORD_100 = REPO / "tests" / "ingest" / "dsp" / "data" / "mitdb" / "100"


@pytest.fixture(scope="module")
def truth() -> dict[str, Any]:
    return {}


@pytest.fixture(scope="module")
def ecg(
    run_micropython_module: RunMicroPython, tmp_path_factory: pytest.TempPathFactory, truth: dict[str, Any]
) -> dict[str, Any]:
    d: Path = tmp_path_factory.mktemp("ecg")
    for hr in RATES:
        p = Patient(hr_bpm=hr, seed=3)
        x, _ = EcgSynth(p, p.seed_for("ecg")).render(0, FS * SECONDS)
        (d / f"hr{hr}.bin").write_bytes(x.astype("<i2").tobytes())
        r, _ = p.heart.window("truth", 0.0, SECONDS)
        seconds = np.arange(1, SECONDS + 1)
        truth[f"hr{hr}"] = {
            "beats": np.round(r * FS).astype(np.int64),
            "hr": np.array([p.heart.measured_hr("truth", float(t)) for t in seconds]),
        }
    (d / "cases.json").write_text(json.dumps([f"hr{hr}" for hr in RATES]))
    rec = read_record(RECORD_100)
    x100 = np.round(to_microvolts(rec.signal("MLII"), rec.sampling_rate, FS))
    (d / "rec100.bin").write_bytes(x100.astype("<i2").tobytes())
    ann = read_annotations(RECORD_100)
    truth["rec100"] = np.round(ann.beats() * (FS / rec.sampling_rate)).astype(np.int64)
    return run_script(run_micropython_module, "mp_ecg.py", files={"/ecg": d})


def test_a_late_callback_keeps_its_slot_and_missed_slots_become_a_flagged_gap(ecg: dict[str, Any]) -> None:
    got = ecg["jitter"]
    stats = got["stats"]
    assert stats["max_late_us"] == 1500
    assert stats["missed"] == 4  # 2 slots in the stall, 2 more behind the three queued callbacks
    assert stats["early"] == 2  # the queued callbacks that came too early for their slot
    assert stats["samples"] == got["values_read"] == 44
    start = got["start_us"]
    # [seq, n, flags, t0_us, first value]: times stay on the 4 ms grid across the gaps.
    assert got["frames"] == [
        [0, 12, 0, start + 4000, -3000],
        [1, 1, 0x20, start + 4000 + 14 * 4000, -2988],
        [2, 20, 0x20, start + 4000 + 17 * 4000, -2987],
    ]


def test_leads_off_and_saturation_are_flagged_per_frame(ecg: dict[str, Any]) -> None:
    got = ecg["flags"]
    assert [f[2] for f in got["frames"]] == [0, 0x01, 0x02, 0]
    assert got["leads_off_samples"] == 16
    assert got["saturated_samples"] == 2  # +-5 mV are the rails; 4999 uV is not
    assert ecg["stopped"] == {"timer_running": False, "sdn": 0}


def test_a_sample_allocates_nothing_even_when_a_beat_is_found(ecg: dict[str, Any]) -> None:
    got = ecg["alloc per tick"]
    assert got["beats"] >= 10
    assert got["bytes"] == 0


@pytest.mark.parametrize("hr", RATES)
def test_beats_and_heart_rate_on_synthetic_ecg(ecg: dict[str, Any], truth: dict[str, Any], hr: int) -> None:
    got = ecg[f"synthetic hr{hr}"]
    ref = truth[f"hr{hr}"]["beats"]
    # after the 2 s learning period; a beat in the last 0.5 s is still being detected when the data ends
    ref = ref[(ref >= 2 * FS) & (ref < SECONDS * FS - FS // 2)]
    det = np.array(got["beats"])
    det = det[(det >= 2 * FS) & (det < SECONDS * FS - FS // 2)]
    mr, md = match_beats(ref, det, int(0.15 * FS))
    assert len(mr) == len(ref), "missed beats"
    assert len(md) == len(det), "false beats"
    err = det[md] - ref[mr]
    assert np.abs(err).max() <= 2, f"R peak placed up to {np.abs(err).max()} samples off"
    reported = np.array(got["hr"][5:], dtype=float)  # from 6 s on
    expected = truth[f"hr{hr}"]["hr"][5:]
    assert np.abs(reported - expected).max() <= 3.0


def test_record_100_beats(ecg: dict[str, Any], truth: dict[str, Any]) -> None:
    got = ecg["record 100"]
    score = score_beats(truth["rec100"], np.array(got["beats"]), FS)
    print(f"record 100 on-device: TP {score.tp} FN {score.fn} FP {score.fp} "
          f"Se {score.se_pct:.2f} % +P {score.ppv_pct:.2f} %, {got['ms']} ms for 30 min in wasm")  # fmt: skip
    assert score.se_pct >= 99.5
    assert score.ppv_pct >= 99.5
    mr, md = match_beats(truth["rec100"], np.array(got["beats"]), int(0.15 * FS))
    err = np.array(got["beats"])[md] - truth["rec100"][mr]
    assert np.percentile(np.abs(err), 99) <= 2
    assert got["rr_1024_of_250"] == 1024


def test_the_detector_keeps_going_past_its_counter_rebase(ecg: dict[str, Any]) -> None:
    got = ecg["rebase"]
    assert got["n_after"] < got["limit"] // 2 + 5000, "the counters were moved back"
    assert got["beats"] >= 8 and got["alloc"] == 0
    assert all(190 <= rr <= 230 for rr in got["rr"][1:]), got["rr"]  # 72 bpm: ~208 samples
    assert all(68 <= hr <= 76 for hr in got["hr"])


def test_a_sample_allocates_nothing_after_49_7_days(ecg: dict[str, Any]) -> None:
    """After 2**30 samples (49.7 days) each count the timer callback kept was a long int, allocated
    at every sample (8,000 bytes per second with the ring's): the garbage collector ran inside the
    callback, making it late. Every counter wraps at 2**30 (its readers need a change, or counts
    over minutes); the detector's stream index stays small through weeks of leads off too."""
    got = ecg["counters past 2**30"]
    assert got["alloc 25 cycles"] == 0
    assert got["alloc 250 leads-off ticks"] == 0
    assert got["detector_k"] < 1 << 30
    # What a reader sees: the counts modulo 2**30, 20 cycles of 11 samples after 2**30 - 10.
    w = got["wrapped"]
    assert w["samples"] == 20 * 11 - 10
    assert w["late_hist"] == [20 * 8 - 10, 10, 10, 10]
    assert (w["missed"], w["early"], w["leads_off_samples"], w["saturated_samples"]) == (10, 10, 10, 10)
    assert w["ring"] == [20 * 11 - 10, 10, 10, 20 * 11 - 10]  # in, lost, gaps, frames dropped
