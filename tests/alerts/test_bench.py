"""`nabz bench alarms` on a small seeded set: one patient per scenario, through the real DSP."""

from __future__ import annotations

import json

import pytest

from nabz.cli import main


def test_every_scripted_event_is_caught_and_nothing_else_alarms(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "alarms", "--json", "--patients", "11", "--minutes", "10", "--seed", "3"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert {"events", "detected", "sensitivity", "false_alarms_per_patient_day", "latency_p99_s",
            "time_to_alarm_s"} <= set(r)  # fmt: skip
    assert r["events"] == 10 and r["missed"] == [] and r["sensitivity"] == 1.0
    assert r["false_alarms"] == {}, r["false_alarm_examples"]
    assert (
        r["time_to_alarm_s"]["asystole"]["max"] <= 10.0
        and r["time_to_alarm_s"]["desaturation"]["max"] <= 45.0
    )
    assert r["latency_p99_s"] <= 1.0


def test_alarm_latency_end_to_end_under_load_on_mosquitto(mosquitto: object) -> None:
    from alerts.loadbench import live_latency

    r = live_latency(mosquitto.url, patients=200, seconds=10, desaturations=5)  # type: ignore[attr-defined]
    assert r["load_vitals_per_s"] == 800.0 and r["bad_messages"] == 0
    assert r["alarmed"] == r["desaturations"] == 5
    assert 0.0 < r["live_latency_p99_s"] <= 1.0
