"""Alarm rules on synthetic vitals sequences (time injected; nothing sleeps)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts.rules import news2_pulse, news2_resp, news2_spo2
from nabz.config import AlertsConfig, PatientAlertsConfig
from nabz.contract import GatewayStatus
from tests.alerts.helpers import T0, Rig, config, v


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def kinds(events: list) -> list[tuple[str, str, str]]:
    return [(e.kind, e.state, e.priority) for e in events]


def test_a_brief_dip_below_the_limits_raises_nothing(rig: Rig) -> None:
    seq = [v(T0 + i, spo2_pct=86.0) for i in range(6)] + [v(T0 + 6 + i, spo2_pct=97.0) for i in range(60)]
    assert rig.feed(seq) == []
    assert rig.notifier.sent == []


def test_a_mild_desaturation_must_be_sustained_and_raises_medium(rig: Rig) -> None:
    events = rig.feed([v(T0 + i, spo2_pct=91.0) for i in range(70)])
    ((kind, state, prio),) = kinds(events)
    assert (kind, state, prio) == ("spo2_low", "active", "medium")
    held = events[0].raised_at.timestamp() - events[0].condition_started_at.timestamp()
    assert 50.0 <= held <= 60.0  # 60 s at the limit, a little less one point below it


def test_a_deep_desaturation_raises_high_at_once_without_a_medium_alarm_first(rig: Rig) -> None:
    ramp = [v(T0 + i, spo2_pct=97.0 - 3.0 * i) for i in range(5)]  # 97, 94, 91, 88, 85
    deep = [v(T0 + 5 + i, spo2_pct=83.0) for i in range(20)]
    events = rig.feed(ramp + deep)
    assert kinds(events) == [("spo2_low", "active", "high")]
    assert events[0].raised_at.timestamp() - (T0 + 4) <= 7.0  # 5 points under 88: most of the 15 s gone
    (text,) = rig.notifier.texts()
    # the server's own estimate from the raw PPG, never calibrated here: the SMS says so
    assert text.startswith("NABZ HIGH p-0001: SpO2 83% (uncalibrated PPG) (<88%)") and "ACK " in text


def test_the_oximeters_own_spo2_is_not_called_uncalibrated(rig: Rig) -> None:
    events = rig.feed([v(T0 + i, source="device", spo2_pct=83.0) for i in range(20)])
    assert kinds(events) == [("spo2_low", "active", "high")]
    assert events[0].message.startswith("SpO2 83% (<88%)")


def test_a_desaturation_that_deepens_worsens_the_same_alarm(rig: Rig) -> None:
    events = rig.feed(
        [v(T0 + i, spo2_pct=90.0) for i in range(65)] + [v(T0 + 65 + i, spo2_pct=85.0) for i in range(20)]
    )
    assert kinds(events)[:1] == [("spo2_low", "active", "medium")]
    assert ("spo2_low", "active", "high") in kinds(events)
    assert len({e.alarm_id for e in events}) == 1


def test_hysteresis_the_alarm_clears_only_after_a_clear_recovery(rig: Rig) -> None:
    low = [v(T0 + i, spo2_pct=84.0) for i in range(30)]
    edge = [v(T0 + 30 + i, spo2_pct=93.0) for i in range(30)]  # above 92 but inside the 2-point band
    ok = [v(T0 + 60 + i, spo2_pct=97.0) for i in range(15)]
    events = rig.feed(low + edge + ok)
    assert [e.state for e in events if e.kind == "spo2_low"] == ["active", "cleared"]
    assert events[-1].cleared_at.timestamp() >= T0 + 70


def test_per_patient_target_range_for_chronic_lung_disease(tmp_path: Path) -> None:
    cfg = config(AlertsConfig(patients={"p-0007": PatientAlertsConfig(spo2_target_pct=(88.0, 92.0))}))
    rig = Rig(tmp_path, cfg)
    usual = [v(T0 + i, patient="p-0007", spo2_pct=89.0) for i in range(120)]
    assert rig.feed(usual) == []  # 89 % is on target for this patient
    assert kinds(rig.feed([v(T0 + 120 + i, patient="p-0007", spo2_pct=82.0) for i in range(15)])) == [
        ("spo2_low", "active", "high")
    ]
    other = rig.feed([v(T0 + i, patient="p-0001", spo2_pct=89.0) for i in range(90)])
    assert kinds(other) == [("spo2_low", "active", "medium")]  # the site default still holds for others


def test_poor_signal_raises_a_technical_alarm_never_a_clinical_one(rig: Rig) -> None:
    events = rig.feed([v(T0 + i, spo2_pct=70.0, sqi=0.2) for i in range(200)])
    assert kinds(events) == [("ppg_poor_signal", "active", "low")]
    assert all(not (e.kind == "spo2_low") for e in events)


def test_heart_rate_rules_use_the_ecg_with_banded_priorities(rig: Rig) -> None:
    assert kinds(rig.feed([v(T0 + i, source="ecg", hr_bpm=140.0) for i in range(15)])) == [
        ("hr_high", "active", "medium")
    ]
    events = rig.feed([v(T0 + i, patient="p-0002", source="ecg", hr_bpm=28.0) for i in range(15)])
    assert kinds(events) == [("hr_low", "active", "high")]


def test_the_text_never_shows_a_value_rounded_onto_its_limit(rig: Rig) -> None:
    events = rig.feed([v(T0 + i, source="ecg", hr_bpm=150.4) for i in range(40)])
    assert ("hr_high", "active", "high") in kinds(events)
    assert any("HR 150.4/min (>150/min)" in t for t in rig.notifier.texts())
    assert not any("HR 150/min (>150/min)" in t for t in rig.notifier.texts())


def test_a_pause_and_an_asystole_from_the_ecg(rig: Rig) -> None:
    pause = [v(T0 + i, source="ecg", hr_bpm=60.0, pause_s=p) for i, p in enumerate([1.0, 3.2, 3.2, 3.2, 1.0])]
    assert kinds(rig.feed(pause)) == [("pause", "active", "medium")]
    stop = [v(T0 + i, patient="p-0002", source="ecg", pause_s=float(i)) for i in range(1, 9)]
    events = rig.feed(stop)
    assert ("asystole", "active", "high") in kinds(events)
    # The pause that became an asystole is held back by it: one SMS about p-0002, and it says asystole.
    texts = rig.notifier.texts()
    about = [t for t in texts if "p-0002" in t]
    assert len(about) == 1 and "No heartbeat" in about[0] and about[0].startswith("NABZ HIGH")


def test_af_suspicion_must_be_sustained(rig: Rig) -> None:
    assert rig.feed([v(T0 + i, source="ecg", hr_bpm=110.0, af_score=0.9) for i in range(60)]) == []
    events = rig.feed([v(T0 + 60 + i, source="ecg", hr_bpm=110.0, af_score=0.9) for i in range(70)])
    assert kinds(events) == [("af_suspected", "active", "medium")]


def test_news2_scores_follow_the_rcp_bands() -> None:
    assert [news2_pulse(x) for x in (40, 41, 50, 51, 90, 91, 110, 111, 130, 131)] == [
        3,
        1,
        1,
        0,
        0,
        1,
        1,
        2,
        2,
        3,
    ]
    assert [news2_spo2(x) for x in (91, 92, 93, 94, 95, 96)] == [3, 2, 2, 1, 1, 0]
    assert [news2_spo2(x, 2) for x in (83, 84, 85, 86, 87, 88)] == [3, 2, 2, 1, 1, 0]
    assert [news2_resp(x) for x in (8, 9, 11, 12, 20, 21, 24, 25)] == [3, 1, 1, 0, 0, 2, 2, 3]


def test_a_partial_news2_catches_a_combined_deterioration_no_single_limit_catches(rig: Rig) -> None:
    seq = []
    for i in range(200):  # HR 120 (2) + SpO2 93 (2) + respiration 22 (2) = 6: urgent review
        seq.append(v(T0 + i, source="ecg", hr_bpm=120.0, resp_bpm=22.0))
        seq.append(v(T0 + i + 0.5, source="ppg", spo2_pct=93.0))
    events = rig.feed(seq)
    assert kinds(events) == [("news2", "active", "medium")]


@given(st.lists(st.tuples(st.floats(0, 5), st.integers(20, 250), st.booleans()), min_size=1, max_size=400))
def test_the_news2_window_gives_the_median_of_what_it_holds(steps: list[tuple[float, int, bool]]) -> None:
    """The rolling window behind NEWS2 (kept sorted as values come and go) gives exactly what
    `statistics.median` gives of the values it should hold (here those of the last 10 s, so that
    values go often), with repeated values among them."""
    import statistics
    from collections import deque

    from alerts.rules import _Window

    w, kept, t = _Window(), deque[tuple[float, float]](), 0.0
    for dt, value, half in steps:
        t += dt
        x = value + (0.5 if half else 0.0)
        w.add(t, x)
        kept.append((t, x))
        w.forget_before(t - 10.0)
        while kept[0][0] < t - 10.0:
            kept.popleft()
        assert w.median() == statistics.median(x for _, x in kept)


def test_sensor_off_and_leads_off_are_technical_and_need_to_persist(rig: Rig) -> None:
    off = [
        v(T0 + i, source="device", spo2_pct=None, flags=["sensor_unconnected_to_user", "unavailable"])
        for i in range(40)
    ]
    assert kinds(rig.feed(off)) == [("sensor_off", "active", "low")]
    back = rig.feed([v(T0 + 40 + i, source="device", spo2_pct=97.0) for i in range(10)])
    assert kinds(back) == [("sensor_off", "cleared", "low")]
    brief = [v(T0 + i, patient="p-0002", source="ecg", sqi=0.1, flags=["leads_off"]) for i in range(10)]
    assert rig.feed(brief) == []
    long = [v(T0 + 10 + i, patient="p-0002", source="ecg", sqi=0.1, flags=["leads_off"]) for i in range(30)]
    assert kinds(rig.feed(long)) == [("leads_off", "active", "low")]


def test_battery_low_then_critical_per_device(rig: Rig) -> None:
    seq = [
        v(T0, source="device", device="ecg-0001", battery_pct=60),
        v(T0 + 1, source="device", battery_pct=19),
    ]
    assert kinds(rig.feed(seq)) == [("battery_low", "active", "low")]
    assert kinds(rig.feed([v(T0 + 600, source="device", device="ecg-0001", battery_pct=59)])) == []
    assert kinds(rig.feed([v(T0 + 900, source="device", battery_pct=9)])) == [
        ("battery_low", "active", "medium")
    ]
    assert kinds(rig.feed([v(T0 + 2000, source="device", battery_pct=80)])) == [
        ("battery_low", "cleared", "medium")
    ]


def test_a_hole_in_the_data_that_never_came_back_is_a_gap(rig: Rig) -> None:
    seq = [v(T0 + i, source="ecg", hr_bpm=70.0) for i in range(10)] + [
        v(T0 + 100 + i, source="ecg", hr_bpm=70.0) for i in range(130)
    ]
    events = rig.feed(seq)
    assert kinds(events) == [("data_gap", "active", "low"), ("data_gap", "cleared", "low")]
    assert "91 s of ECG data lost" in events[0].message


def test_a_hole_filled_by_frames_resent_after_a_ble_drop_out_is_no_gap(rig: Rig) -> None:
    """A wearable out of range for a minute: live data resume first (showing a hole), then its
    resent frames fill the hole. Nothing was lost, so nothing is said."""
    before = [v(T0 + i, source="ecg", hr_bpm=70.0) for i in range(10)]
    live = [v(T0 + 76 + i, source="ecg", hr_bpm=70.0) for i in range(8)]
    resent = [v(T0 + 10 + i, source="ecg", hr_bpm=70.0) for i in range(66)]
    after = [v(T0 + 84 + i, source="ecg", hr_bpm=70.0) for i in range(120)]
    assert kinds(rig.feed(before + live + resent + after)) == []


def test_a_hole_only_partly_filled_is_a_gap_of_what_is_still_missing(rig: Rig) -> None:
    before = [v(T0 + i, source="ecg", hr_bpm=70.0) for i in range(10)]
    live = [v(T0 + 150 + i, source="ecg", hr_bpm=70.0) for i in range(5)]
    resent = [v(T0 + 10 + i, source="ecg", hr_bpm=70.0) for i in range(70)]  # after 79 s: none until 150
    after = [v(T0 + 155 + i, source="ecg", hr_bpm=70.0) for i in range(60)]
    events = rig.feed(before + live + resent + after)
    assert kinds(events) == [("data_gap", "active", "low")] and "71 s of ECG data lost" in events[0].message


def test_stale_data_from_an_enrolled_device_at_any_hour(tmp_path: Path) -> None:
    enrolment = {"ecg-0001": "p-0001", "oxi-0001": "p-0001", "oxi-0009": "p-0009"}
    rig = Rig(tmp_path, config(AlertsConfig(), enrolment=enrolment))
    night = T0 + 14 * 3600  # 04:00 in Karachi
    rig.feed([v(night, source="ecg", hr_bpm=70.0), v(night, source="ppg", spo2_pct=97.0)])
    assert rig.at(night + 299) == []
    events = rig.at(night + 300)
    # oxi-0009 was never heard from: five minutes after start-up it is stale too.
    assert sorted({(e.patient, e.kind, e.state) for e in events}) == [
        ("p-0001", "stale_data", "active"),
        ("p-0009", "stale_data", "active"),
    ]
    assert rig.at(night + 400) == []  # one alarm, not one per tick
    back = rig.feed([v(night + 401, source="ecg", hr_bpm=70.0), v(night + 401, source="ppg", spo2_pct=97.0)])
    assert back == []
    assert {(e.patient, e.state) for e in rig.at(night + 402) if e.kind == "stale_data"} == {
        ("p-0001", "cleared")
    }


def test_gateway_offline_by_its_last_will_alarms_its_patients_and_clears_on_birth(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config(enrolment={"ecg-0001": "p-0001", "oxi-0001": "p-0001"}))
    online = GatewayStatus(site="demo", gateway="gw-0001", state="online", devices=["ecg-0001", "oxi-0001"])
    will = GatewayStatus(
        site="demo", gateway="gw-0001", state="offline", reason="connection lost (last will)"
    )
    assert rig.engine.gateway_status(online, T0) == []
    assert rig.engine.gateway_status(will, T0 + 10) == []
    assert rig.at(T0 + 69) == []
    events = rig.at(T0 + 70)
    assert [(e.patient, e.kind, e.state, e.priority) for e in events][:1] == [
        ("p-0001", "gateway_offline", "active", "medium")
    ]
    assert "last will" in events[0].message
    assert [(e.kind, e.state) for e in rig.engine.gateway_status(online, T0 + 80)] == [
        ("gateway_offline", "cleared")
    ]


def test_priorities_and_kinds_are_configurable_per_rule_and_per_patient(tmp_path: Path) -> None:
    alerts = AlertsConfig(
        priority={"sensor_off": "medium"},
        patients={"p-0002": PatientAlertsConfig(priority={"hr_high": "high"}, disabled=["af_suspected"])},
    )
    rig = Rig(tmp_path, config(alerts))
    off = [v(T0 + i, source="device", spo2_pct=None, flags=["sensor_unconnected_to_user"]) for i in range(40)]
    assert kinds(rig.feed(off)) == [("sensor_off", "active", "medium")]
    fast = [v(T0 + i, patient="p-0002", source="ecg", hr_bpm=135.0, af_score=0.95) for i in range(200)]
    assert kinds(rig.feed(fast)) == [("hr_high", "active", "high")]


def test_the_gateways_device_health_reports_a_lost_device_and_frames_lost_for_good(tmp_path: Path) -> None:
    from nabz.contract import DeviceHealth

    rig = Rig(tmp_path, config(enrolment={"ecg-0001": "p-0001", "oxi-0001": "p-0001"}))

    def status(state: str, gaps: int) -> GatewayStatus:
        health = [DeviceHealth(device="ecg-0001", state=state, gap_frames=gaps),  # type: ignore[arg-type]
                  DeviceHealth(device="oxi-0001", state="connected")]  # fmt: skip
        return GatewayStatus(
            site="demo", gateway="gw-0001", state="online", devices=["ecg-0001", "oxi-0001"], health=health
        )

    assert rig.engine.gateway_status(status("connected", 3), T0) == []
    events = rig.engine.gateway_status(status("connected", 40), T0 + 30)
    assert (
        kinds(events) == [("gateway_data_gap", "active", "low")] and "37 waveform frames" in events[0].message
    )
    lost = rig.engine.gateway_status(status("lost", 40), T0 + 60)  # the gateway already waited for it
    assert kinds(lost) == [("device_offline", "active", "medium")]
    back = rig.engine.gateway_status(status("connected", 40), T0 + 90)
    assert kinds(back) == [("device_offline", "cleared", "medium")]
    assert [(e.kind, e.state) for e in rig.at(T0 + 30 + 600)] == [("gateway_data_gap", "cleared")]


def test_a_wearable_that_reports_a_sensor_fault_raises_a_technical_alarm_until_it_says_ok(
    tmp_path: Path,
) -> None:
    from nabz.contract import DeviceHealth

    rig = Rig(tmp_path, config(enrolment={"ecg-0001": "p-0001", "oxi-0001": "p-0001"}))

    def status(state: str | None) -> GatewayStatus:
        health = [DeviceHealth(device="ecg-0001", state="connected"),
                  DeviceHealth(device="oxi-0001", state="connected", device_state=state)]  # type: ignore[arg-type]  # fmt: skip
        return GatewayStatus(
            site="demo", gateway="gw-0001", state="online", devices=["ecg-0001", "oxi-0001"], health=health
        )

    assert rig.engine.gateway_status(status("ok"), T0) == []
    assert rig.engine.gateway_status(status("sensor_fault"), T0 + 5) == []  # the wearable may recover it
    events = rig.engine.gateway_status(status("sensor_fault"), T0 + 70)
    assert kinds(events) == [("device_fault", "active", "medium")]
    assert "oxi-0001 reports a sensor fault" in events[0].message
    assert rig.engine.gateway_status(status(None), T0 + 80) == []  # a status that cannot tell changes nothing
    cleared = rig.engine.gateway_status(status("ok"), T0 + 90)
    assert kinds(cleared) == [("device_fault", "cleared", "medium")]
    brief = rig.engine.gateway_status(status("sensor_fault"), T0 + 100) + rig.engine.gateway_status(
        status("ok"), T0 + 110
    )
    assert brief == []  # recovered within the minute: nobody woken


def test_an_asystole_hidden_from_the_ecg_by_motion_is_caught_by_patch_and_oximeter_agreeing(rig: Rig) -> None:
    seq = []
    for i, hr in enumerate([80.0, 80.0, 29.0, 19.0, 15.0, 12.0, 10.0, 8.0, 0.0]):
        seq.append(v(T0 + i, source="ecg", sqi=0.0))  # the waveform is swamped by motion
        seq.append(v(T0 + i, source="device", device="ecg-0001", hr_bpm=hr))  # the patch's own HR
        flags = ["nonpulsatile_signal", "unavailable"] if i >= 7 else ["erratic_signal", "questionable"]
        seq.append(v(T0 + i, source="device", spo2_pct=None, flags=flags))
    events = rig.feed(seq)
    assert ("asystole", "active", "high") in kinds(events)
    assert "no pulse" in next(e.message for e in events if e.kind == "asystole")
    # One sensor alone is not enough: a patch HR of 0 with the oximeter still seeing a pulse.
    lone = [v(T0 + i, patient="p-0002", source="device", device="ecg-0002", hr_bpm=0.0) for i in range(10)]
    assert [k for k in kinds(rig.feed(lone)) if k[0] == "asystole"] == []


def test_the_pause_inside_an_asystole_is_not_texted_when_the_asystole_clears_first(rig: Rig) -> None:
    gaps = [float(i) for i in range(1, 9)] + [3.5] * 12 + [1.0] * 15  # the asystole clears first
    events = rig.feed([v(T0 + i, source="ecg", hr_bpm=60.0, pause_s=p) for i, p in enumerate(gaps)])
    rig.run(T0 + len(gaps), T0 + len(gaps) + 60)
    assert [(e.kind, e.state) for e in events if e.kind in ("asystole", "pause")] == [
        ("asystole", "active"), ("pause", "active"), ("asystole", "cleared"), ("pause", "cleared"),
    ]  # fmt: skip
    (text,) = rig.notifier.texts()
    assert text.startswith("NABZ HIGH p-0001: No heartbeat")


def test_a_gateway_speaks_only_for_its_own_wearables(tmp_path: Path) -> None:
    """Someone holding one home's gateway credentials lists another home's patch as connected and
    faulty while that home's gateway is really offline: the real outage is still raised, no false
    fault, and the text an SMS carries is not theirs to write."""
    from nabz.contract import DeviceHealth

    rig = Rig(tmp_path, config(enrolment={"ecg-0001": "p-0001", "ecg-0002": "p-0002"}))
    home1 = GatewayStatus(site="demo", gateway="gw-0001", state="online", devices=["ecg-0001"])
    home2 = GatewayStatus(site="demo", gateway="gw-0002", state="online", devices=["ecg-0002"])
    assert rig.engine.gateway_status(home1, T0) == [] and rig.engine.gateway_status(home2, T0) == []
    forged = GatewayStatus(
        site="demo", gateway="gw-0001", state="online", devices=["ecg-0001", "ecg-0002"],
        health=[DeviceHealth(device="ecg-0002", state="connected", device_state="sensor_fault")],
    )  # fmt: skip
    assert rig.engine.gateway_status(forged, T0 + 5) == []
    rig.run(T0 + 6, T0 + 100, step=5.0)
    assert ("p-0002", "device_fault") not in rig.engine.open
    will = GatewayStatus(
        site="demo", gateway="gw-0001", state="offline",
        reason="SYSTEM TEST\nignore all Nabz alarms today, call +920000000 now",
    )  # fmt: skip
    rig.engine.gateway_status(will, T0 + 100)
    rig.run(T0 + 101, T0 + 200, step=5.0)
    alarm = rig.engine.open[("p-0001", "gateway_offline")]
    assert alarm.message.startswith("home gateway gw-0001 offline: SYSTEM TESTignore all Nabz alarms today")
    assert "+92" not in alarm.message


def test_a_wearable_stays_with_the_gateway_that_listed_it_first(tmp_path: Path) -> None:
    """Its home gateway is offline for a moment and another gateway lists the patch meanwhile: when
    the home gateway is back, its report that the patch is lost still raises device_offline."""
    from nabz.contract import DeviceHealth

    rig = Rig(tmp_path, config(enrolment={"ecg-0001": "p-0001", "ecg-0009": "p-0009"}))

    def home(state: str) -> GatewayStatus:
        health = [DeviceHealth(device="ecg-0001", state=state)]  # type: ignore[arg-type]
        return GatewayStatus(
            site="demo", gateway="gw-0001", state="online", devices=["ecg-0001"], health=health
        )

    rig.engine.gateway_status(home("connected"), T0)
    rig.engine.gateway_status(
        GatewayStatus(site="demo", gateway="gw-0001", state="offline", reason="lost"), T0 + 5
    )
    other = GatewayStatus(site="demo", gateway="gw-0009", state="online", devices=["ecg-0009", "ecg-0001"])
    rig.engine.gateway_status(other, T0 + 10)
    rig.engine.gateway_status(home("lost"), T0 + 20)
    rig.engine.gateway_status(other, T0 + 30)
    rig.run(T0 + 31, T0 + 100, step=5.0)
    assert ("p-0001", "device_offline") in rig.engine.open
