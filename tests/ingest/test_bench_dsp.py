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
    assert set(result["scenarios"]) == {"tachycardia_220", "bradycardia_35", "pause_8s"}
    assert result["scenarios"]["tachycardia_220"]["peak_hr_scripted_bpm"] == 220.0
    assert result["scenarios"]["pause_8s"]["beats_counted_inside_pause"] == 0
