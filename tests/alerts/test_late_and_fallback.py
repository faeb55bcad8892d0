"""Two faults a review found (synthetic vitals on an injected clock, shaped like what ingest
publishes; the reviewer's harness drove simulated patients through the gateway decoder and ingest):

- the ECG patch's heart rate without skin contact counted as "the oximeter reported", which held
  back the raw-PPG SpO2 estimate standing in for an oximeter that reports no SpO2;
- alarms raised from data replayed after a gateway outage read like fresh events in the SMS.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import msgspec

from alerts.smstext import compose, late_note, split
from nabz import contract
from nabz.config import EscalationConfig
from nabz.contract import AlarmEvent, Vitals
from tests.alerts.helpers import T0, Rig, config, v
from tests.alerts.test_smstext import line

# A gateway outage from 60 s to 660 s; at reconnect its spool drains in order, 100 times faster
# than real time, and live data queue behind it (the reviewer's `backlog_sms.py`).
OUT0, OUT1 = 60.0, 660.0


def arrival(t: float) -> float:
    rel = t - T0
    if OUT0 <= rel < OUT1:
        return T0 + OUT1 + (rel - OUT0) / 100.0
    if rel >= OUT1:
        return t + (OUT1 - OUT0) / 100.0
    return t + 1.0  # live: a second on the way


def replay(rig: Rig, seq: list[Vitals], end: float, at: object = arrival) -> list[AlarmEvent]:
    """The runner: each vitals message handled when it arrives, the clock ticking every second."""
    arrive = at if callable(at) else arrival
    out: list[AlarmEvent] = []
    tick = T0
    for now, x in sorted(((arrive(x.t.timestamp()), x) for x in seq), key=lambda p: p[0]):
        while tick <= now:
            out += rig.at(tick)
            tick += 1.0
        out += rig.engine.observe(x, now)
    while tick <= end:
        out += rig.at(tick)
        tick += 1.0
    return out


def spo2_alarms(events: list[AlarmEvent]) -> list[tuple[str, str]]:
    return [(e.state, e.priority) for e in events if e.kind == "spo2_low"]


# --- 1. the raw-PPG SpO2 estimate stands in for an oximeter that reports no SpO2 ----------------
def patch_without_contact(t: float) -> Vitals:
    """The ECG patch's Heart Rate Measurement while its electrodes are off."""
    return v(t, source="device", device="ecg-0001", hr_bpm=0.0, flags=["no_contact"])


def test_a_patch_without_skin_contact_does_not_silence_the_ppg_spo2_alarm(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    seq: list[Vitals] = []
    for i in range(60):
        seq.append(patch_without_contact(T0 + i))
        if i % 10 == 0:
            seq.append(v(T0 + i, source="device", device="ecg-0001", battery_pct=15.0))
        seq.append(v(T0 + i, spo2_pct=82.0, pr_bpm=80.0, sqi=0.95))  # the oximeter's PPG, no PLX SpO2
    events = rig.feed(seq)
    assert spo2_alarms(events)[:1] == [("active", "high")]
    raised = next(e for e in events if e.kind == "spo2_low")
    assert raised.raised_at.timestamp() - T0 <= 10.0  # 6 points under 88 %: the 5 s minimum delay
    assert any("SpO2 82% (uncalibrated PPG) (<88%)" in t for t in rig.notifier.texts())


def test_while_the_oximeter_reports_its_own_spo2_the_ppg_estimate_raises_nothing(tmp_path: Path) -> None:
    """The rule's intent, kept: the oximeter's own SpO2 (valid or flagged) is preferred over the
    uncalibrated estimate, which motion artefact can pull down to 82 % at a good SQI."""
    for own in ({"spo2_pct": 97.0, "pr_bpm": 80.0}, {"flags": ["sensor_displaced", "unavailable"]}):
        rig = Rig(tmp_path / str(len(own)))
        seq: list[Vitals] = []
        for i in range(60):
            seq.append(v(T0 + i, source="device", **own))  # type: ignore[arg-type]
            seq.append(patch_without_contact(T0 + i))
            seq.append(v(T0 + i, spo2_pct=82.0, sqi=0.95))
        assert spo2_alarms(rig.feed(seq)) == [], own


# --- 2. alarms from data replayed after an outage say how late the data are ------------------------
def ecg(t: float, pause_s: float) -> Vitals:
    return v(t, source="ecg", hr_bpm=70.0 if pause_s < 1.0 else None, pause_s=pause_s)


def test_an_asystole_found_in_a_replayed_backlog_is_texted_with_its_real_start(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    # no beat from 400 s; ingest measures the longest gap over a 10 s window
    seq = [ecg(T0 + i, 0.9 if i <= 400 else min(i - 400.0, 9.9)) for i in range(700)]
    events = replay(rig, seq, T0 + 720)
    raised = next(e for e in events if e.kind == "asystole")
    # raised on the value of 14:06:46, which came 4.3 minutes late: 14:11:03
    assert raised.condition_started_at.timestamp() == T0 + 406
    assert raised.message == "No heartbeat 6.0 s (>5.0 s) for 0 s (data from 14:06:46, 4 min late)"
    assert raised.data_t is not None and raised.data_t.timestamp() == T0 + 406
    assert raised.late_s is not None and 255 < raised.late_s < 260
    (text,) = [t for t in rig.notifier.texts() if "No heartbeat" in t]
    assert text.startswith(
        "NABZ HIGH p-0001: No heartbeat 6.0 s (>5.0 s) for 0 s (data from 14:06:46, 4 min late), "
        "since 14:06:46 PKT. ACK "
    )
    assert split(text) == ("gsm7", [text])  # still one SMS


def test_a_desaturation_over_before_the_backlog_came_says_so_raised_and_cleared(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config(escalation=EscalationConfig(all_clear=True)))
    seq = [v(T0 + i, source="device", spo2_pct=84.0 if 200 <= i < 290 else 97.0) for i in range(700)]
    events = replay(rig, seq, T0 + 730)
    assert [s for s, _ in spo2_alarms(events)] == ["active", "active", "cleared"]  # raised, notified, cleared
    raised, _, cleared = [e for e in events if e.kind == "spo2_low"]
    assert raised.message == "SpO2 84% (<88%) for 9 s (data from 14:03:29, 8 min late)"
    assert cleared.message == raised.message + "; ended (data from 14:05:00, 6 min late)"
    assert cleared.data_t is not None and cleared.data_t.timestamp() == T0 + 300
    texts = rig.notifier.texts()
    assert texts[0].startswith("NABZ HIGH p-0001: SpO2 84% (<88%) for 9 s (data from 14:03:29, 8 min late)")
    assert "since 14:03:20 PKT" in texts[0]
    # the all-clear, once its group interval allows
    assert any(t.startswith("NABZ p-0001: CLEARED ") and "ended (data from 14:05:00" in t for t in texts)


def test_live_data_raise_alarms_that_say_nothing_of_lateness(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    seq = [v(T0 + i, source="device", spo2_pct=84.0 if 20 <= i < 60 else 97.0) for i in range(90)]
    events = replay(rig, seq, T0 + 100, at=lambda t: t + 3.0)  # 3 s on the way
    raised = next(e for e in events if e.kind == "spo2_low")
    assert "late" not in raised.message and raised.data_t is None and raised.late_s is None
    assert "since 14:00 PKT" in rig.notifier.texts()[0]


def test_the_late_note_and_the_sms_in_either_language() -> None:
    assert late_note(T0 + 17, 420.0) == " (data from 14:00:17, 7 min late)"
    assert late_note(T0 + 17, 45.4) == " (data from 14:00:17, 45 s late)"
    assert late_note(T0, 7300.0, ended=True) == "; ended (data from 14:00:00, 2.0 h late)"
    late = line(message="SpO2 84% (<88%) for 12 s" + late_note(T0 + 17, 420.0))
    text = compose([late])
    assert (
        text
        == "NABZ HIGH p-0002: SpO2 84% (<88%) for 12 s (data from 14:00:17, 7 min late), since 14:00:05 PKT. ACK 4821"
    )
    assert len(split(text)[1]) == 1
    urdu = compose([late], language="ur")
    assert "(ڈیٹا 7 min دیر سے)" in urdu and "14:00:05 PKT" in urdu
    assert all(len(p) <= 70 for p in split(urdu)[1])
    ended = line(message=late.message + late_note(T0 + 90, 380.0, ended=True), reason="cleared")
    assert "(ڈیٹا 6 min دیر سے)" in compose([ended], language="ur")  # the data that cleared it


def test_a_late_event_is_read_by_the_nurse_station_and_by_readers_without_the_new_fields() -> None:
    from dashboards.station.live import _alarm

    event = AlarmEvent(
        id="e" * 32, alarm_id="a" * 32, site="demo", patient="p-0001", kind="asystole", priority="high",
        state="active", message="No heartbeat 6.0 s (>5.0 s) for 0 s (data from 14:06:46, 4 min late)",
        condition_started_at=datetime.fromtimestamp(T0 + 406, UTC),
        raised_at=datetime.fromtimestamp(T0 + 663.5, UTC),
        data_t=datetime.fromtimestamp(T0 + 406, UTC), late_s=257.5,
    )  # fmt: skip
    body = contract.encode(event)
    assert _alarm.decode(body) == event

    class Before(msgspec.Struct, kw_only=True):  # an AlarmEvent reader from before these fields
        alarm_id: str
        message: str

    assert msgspec.json.decode(body, type=Before).message == event.message
