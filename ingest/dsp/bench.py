"""`nabz bench dsp`: the ECG detector scored like a monitor, on real and simulated signals.

Two parts, both deterministic (seeded; the seeds are in the output):

- ``conditions``: EC57-style beat-by-beat scoring (`scoring.score_beats`: 150 ms match window,
  first 5 minutes skipped) of the live detector (`EcgProcessor`, 1 s chunks, which finds exactly
  the beats of `ecg_peaks`) on MIT-BIH record 100, lead MLII resampled 360 -> 250 Hz and rounded
  to whole µV as the wearables send it: clean, and with noise at 24, 12 and 6 dB SNR (NST
  definition, `synth.qrs_signal_power`). The noise is an equal-power mix of baseline wander,
  muscle (EMG-like) noise and electrode-motion bursts (`synth.ecg_noise`). For every condition the
  share of time the SQI marks unusable (an emission with SQI below the processor's 0.5 gate; each
  emission stands for its last second of signal) is reported, with Se and +P over all beats and
  over the usable seconds only (what the alarms see).
- ``scenarios``: heart-rate error of the emitted vitals on simulated patients (`hardware`
  simulator: tachycardia up to 220 bpm, bradycardia, a pause, atrial fibrillation), against the
  same monitor-style averaging applied to the simulator's true beat times, so the error is the
  detector's alone; and the AF suspicion score the processor emits (`af_score_max` in sinus
  rhythm; for the AF scenario how soon and how steadily it reaches the alarm threshold, 0.7).

Record 100 is one clean record: a development set. Passing on it proves little by itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .ecg import ecg_peaks, ecg_rate
from .mitdb import read_annotations, read_record, to_microvolts
from .scoring import score_beats
from .streams import EcgProcessor, EcgVitals
from .synth import add_noise, ecg_noise, qrs_signal_power

__all__ = ["run_dsp_bench", "find_mitdb", "SNRS_DB"]

FS = 250
SNRS_DB = (24.0, 12.0, 6.0)
NOISE_KINDS = ("baseline", "muscle", "motion")
_MIN_SQI = 0.5  # EcgProcessor's default gate; the alert rules gate on the same SQI
_AF_THRESHOLD = 0.7  # the af_suspected alarm's default threshold (nabz.config, [alerts] af_score)


def find_mitdb(explicit: str | None = None) -> Path:
    """Directory holding MIT-BIH record 100: `explicit`, else the copy in the tests, else ../shared."""
    root = Path(__file__).resolve().parents[2]
    candidates = [Path(explicit)] if explicit else []
    candidates += [root / "tests/ingest/dsp/data/mitdb", root.parent / "shared/data/mitdb"]
    for c in candidates:
        if (c / "100.hea").exists():
            return c
    raise FileNotFoundError(f"MIT-BIH record 100 not found in {', '.join(map(str, candidates))}")


@dataclass(frozen=True, slots=True)
class _Run:
    peaks: npt.NDArray[np.int64]
    vitals: list[EcgVitals]


def _stream(x: npt.NDArray[np.float64], t0: float = 0.0, chunk: int = FS) -> _Run:
    """The live path: 1 s chunks through EcgProcessor for the vitals and SQI; the beats are those
    of `ecg_peaks`, the same detector (tests/ingest/dsp prove stream and function agree)."""
    proc = EcgProcessor(FS)
    vitals: list[EcgVitals] = []
    for i in range(0, x.size, chunk):
        vitals += proc.push(x[i : i + chunk], t0 + i / FS)
    return _Run(ecg_peaks(x, FS), vitals)


def _usable_mask(vitals: list[EcgVitals], n: int, t0: float) -> npt.NDArray[np.bool_]:
    """Per sample: does the emission covering it (its last second) pass the SQI gate?"""
    ok = np.zeros(n, dtype=bool)
    for v in vitals:
        end = round((v.t - t0) * FS) + 1
        ok[max(0, end - FS) : min(n, end)] = v.sqi >= _MIN_SQI
    return ok


def _condition(x: npt.NDArray[np.float64], ref: npt.NDArray[np.int64]) -> dict[str, Any]:
    run = _stream(x)
    everything = score_beats(ref, run.peaks, FS)
    ok = _usable_mask(run.vitals, x.size, 0.0)
    scored_ok = ok[np.arange(x.size)] & (np.arange(x.size) >= 300 * FS)
    ref_ok = ref[(ref < x.size) & scored_ok[np.clip(ref, 0, x.size - 1)]]
    det_ok = run.peaks[scored_ok[np.clip(run.peaks, 0, x.size - 1)]]
    usable = score_beats(ref_ok, det_ok, FS)
    scored = np.arange(x.size) >= 300 * FS
    return {
        "se": round(everything.se_pct, 2),
        "ppv": round(everything.ppv_pct, 2),
        "tp": everything.tp,
        "fn": everything.fn,
        "fp": everything.fp,
        "unusable_pct": round(100.0 * float(np.count_nonzero(~ok & scored)) / max(1, int(scored.sum())), 2),
        "se_usable": round(usable.se_pct, 2),
        "ppv_usable": round(usable.ppv_pct, 2),
    }


def _mitdb_conditions(mitdb: Path, seed: int) -> dict[str, dict[str, Any]]:
    rec = read_record(mitdb / "100")
    ann = read_annotations(mitdb / "100")
    x = np.round(to_microvolts(rec.signal("MLII"), rec.sampling_rate, FS))
    ref = np.round(ann.beats() * (FS / rec.sampling_rate)).astype(np.int64)
    power = qrs_signal_power(x, ref, FS)
    rng = np.random.default_rng(seed)
    noise = sum((ecg_noise(k, x.size, FS, rng) for k in NOISE_KINDS), np.zeros(x.size))
    out = {"clean": _condition(x, ref)}
    for snr in SNRS_DB:
        out[f"snr{snr:g}"] = _condition(np.round(add_noise(x, noise, snr, power)), ref)
    return out


def _scenario(
    name: str,
    seconds: float,
    sc: Any,
    seed: int,
    true_hr_window: tuple[float, float],
    sinus: Callable[[float], bool] = lambda t: True,
) -> dict[str, Any]:
    """One simulated patient through the live detector; `sinus` says which emission times are in
    sinus rhythm (for `af_score_max`)."""
    from hardware.ecg import EcgSynth
    from hardware.patient import Patient

    patient = Patient(f"bench-{name}", seed=seed, hr_bpm=70.0, scenario=sc)
    patient.heart.register("truth")
    synth = EcgSynth(patient, patient.seed_for("ecg/noise"))
    n = round(seconds * FS)
    block = 10 * FS  # the synthesiser's work grows with block length x beats in it: render in parts
    x = np.concatenate([synth.render(k, min(block, n - k))[0] for k in range(0, n, block)])
    beats_s, _rr = patient.heart.window("truth", 0.0, seconds)
    truth = np.round(beats_s * FS).astype(np.int64)
    run = _stream(x.astype(np.float64))
    errors: list[float] = []
    missing = 0
    for v in run.vitals:
        end = round(v.t * FS)
        ref = ecg_rate(truth, FS, end=end)
        if ref.hr_bpm is None:
            continue
        if v.hr_bpm is None:
            missing += 1
        else:
            errors.append(abs(v.hr_bpm - ref.hr_bpm))
    lo, hi = true_hr_window
    hold = [v for v in run.vitals if lo <= v.t < hi and v.hr_bpm is not None]
    scripted = [abs(v.hr_bpm - patient.true_hr(v.t)) for v in hold if v.hr_bpm is not None]
    score = score_beats(truth, run.peaks, FS, start_s=5.0)
    err = np.asarray(errors) if errors else np.zeros(1)
    return {
        "hr_abs_err_median_bpm": round(float(np.median(err)), 2),
        "hr_abs_err_p95_bpm": round(float(np.percentile(err, 95)), 2),
        "hr_abs_err_max_bpm": round(float(np.max(err)), 2),
        "vs_scripted_hold_mean_bpm": round(float(np.mean(scripted)), 2) if scripted else None,
        "rate_missing_pct": round(100.0 * missing / max(1, missing + len(errors)), 2),
        "se": round(score.se_pct, 2),
        "ppv": round(score.ppv_pct, 2),
        "peak_hr_scripted_bpm": round(max(patient.true_hr(t) for t in np.arange(0.0, seconds, 0.5)), 1),
        "max_pause_reported_s": round(max(v.pause_s for v in run.vitals), 2),
        "af_score_max": _af_max(run.vitals, sinus),
        "_truth": truth,
        "_peaks": run.peaks,
        "_vitals": run.vitals,
    }


def _af_max(vitals: list[EcgVitals], when: Callable[[float], bool]) -> float | None:
    """The highest AF score emitted at the times `when` accepts (None: no score yet)."""
    scores = [v.af_score for v in vitals if v.af_score is not None and when(v.t)]
    return round(max(scores), 2) if scores else None


def _scenarios(seed: int) -> dict[str, dict[str, Any]]:
    from hardware.scenario import scenario

    out: dict[str, dict[str, Any]] = {}
    tachy = scenario("tachycardia", start_s=10.0, target_bpm=220.0, ramp_s=10.0, hold_s=30.0, recover_s=10.0)
    out["tachycardia_220"] = _scenario("tachy", 70.0, tachy, seed, (25.0, 50.0))
    brady = scenario("bradycardia", start_s=10.0, target_bpm=35.0, ramp_s=5.0, hold_s=40.0, recover_s=5.0)
    out["bradycardia_35"] = _scenario("brady", 70.0, brady, seed, (25.0, 55.0))
    pause_s = 8.0
    asys = scenario("asystole", start_s=20.0, duration_s=pause_s)
    res = _scenario("pause", 50.0, asys, seed, (5.0, 19.0))
    truth, peaks = res["_truth"], res["_peaks"]
    before = truth[truth < 20 * FS]
    last, nxt = int(before[-1]), int(truth[truth >= 20 * FS][0])
    res["pause_true_s"] = round((nxt - last) / FS, 2)
    res["beats_counted_inside_pause"] = int(
        np.count_nonzero((peaks > last + 0.15 * FS) & (peaks < nxt - 0.15 * FS))
    )
    out["pause_8s"] = res
    # AF between sinus rhythm; the score reads the last 64 RR intervals, so it is judged in sinus
    # rhythm before the AF and from 90 s after it (by then the window holds sinus beats only)
    af_on, af_off = 60.0, 300.0
    af = scenario("af", start_s=af_on, duration_s=af_off - af_on, rate_bpm=110.0)
    res = _scenario("af", 420.0, af, seed, (af_on + 30.0, af_off), lambda t: t < af_on or t >= af_off + 90.0)
    scores = [(v.t, v.af_score) for v in res["_vitals"] if v.af_score is not None]
    # from a minute in (110 beats at 110/min), the 64-interval window holds AF only
    in_af = [s for t, s in scores if af_on + 60.0 <= t < af_off]
    first = next((t for t, s in scores if t >= af_on and s >= _AF_THRESHOLD), None)
    last_high = max((t for t, s in scores if t >= af_off and s >= _AF_THRESHOLD), default=None)
    res["af_s"] = af_off - af_on
    res["af_score_onset_s"] = round(first - af_on, 1) if first is not None else None
    res["af_score_above_threshold_pct"] = (
        round(100.0 * sum(s >= _AF_THRESHOLD for s in in_af) / len(in_af), 1) if in_af else None
    )
    # the last emission at or above the threshold after the AF ended (0: none after it)
    res["af_score_above_threshold_until_s"] = round(last_high - af_off, 1) if last_high is not None else 0.0
    out["af_110"] = res
    for r in out.values():
        r.pop("_truth")
        r.pop("_peaks")
        r.pop("_vitals")
    return out


def run_dsp_bench(mitdb: str | None = None, seed: int = 20261125) -> dict[str, Any]:
    """Everything `nabz bench dsp --json` prints (see the module docstring)."""
    started = time.perf_counter()
    path = find_mitdb(mitdb)
    result: dict[str, Any] = {
        "record": "mitdb/100 MLII, 360 -> 250 Hz, integer µV",
        "noise": "+".join(NOISE_KINDS) + " (equal power), NST SNR",
        "seed": seed,
        "sqi_gate": _MIN_SQI,
        "conditions": _mitdb_conditions(path, seed),
        "scenarios": _scenarios(seed),
    }
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    return result
