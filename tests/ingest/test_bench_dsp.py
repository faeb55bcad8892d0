"""`nabz bench dsp --json` runs and prints the documented shape (docs/benchmarks.md).

Accuracy on record 100 is asserted in tests/ingest/dsp; this checks the command a user runs."""

from __future__ import annotations

import json

import pytest

from nabz.cli import main


def test_bench_dsp_prints_conditions_and_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "dsp", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["conditions"]) == {"clean", "snr24", "snr12", "snr6"}
    for c in result["conditions"].values():
        assert {"se", "ppv", "unusable_pct", "se_usable", "ppv_usable"} <= set(c)
        assert 0.0 <= c["unusable_pct"] <= 100.0
    assert result["conditions"]["clean"]["se"] >= 99.5 and result["conditions"]["clean"]["ppv"] >= 99.5
    scenarios = result["scenarios"]
    assert set(scenarios) == {"tachycardia_220", "bradycardia_35", "pause_8s", "af_110"}
    assert scenarios["tachycardia_220"]["peak_hr_scripted_bpm"] == 220.0
    assert scenarios["pause_8s"]["beats_counted_inside_pause"] == 0
    # AF is suspected within a minute of its start and all along it; sinus rhythm, however fast or
    # slow, never reaches the alarm's threshold (0.7)
    af = scenarios["af_110"]
    assert af["af_score_onset_s"] is not None and af["af_score_onset_s"] < 60.0
    assert af["af_score_above_threshold_pct"] is not None and af["af_score_above_threshold_pct"] >= 90.0
    assert af["af_score_above_threshold_until_s"] < 90.0
    assert all(s["af_score_max"] is not None and s["af_score_max"] < 0.7 for s in scenarios.values())
