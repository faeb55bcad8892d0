"""Scripted events show up in the frames and vitals a nurse's system would see (synthetic patients)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from firmware import nabz_codec as codec
from hardware import (
    ECG_RANGE_UV,
    SCENARIO_NAMES,
    Patient,
    Scenario,
    VirtualEcgPatch,
    VirtualOximeter,
    default_scenario,
    make_patients,
    scenario,
)
from tests.hardware.hw_helpers import Decoded, run

LEADS_OFF = codec.WAVE_FLAG_LEADS_OFF
SATURATED = codec.WAVE_FLAG_SATURATED
SENSOR_OFF = codec.WAVE_FLAG_SENSOR_OFF
LOW_BATTERY = codec.WAVE_FLAG_LOW_BATTERY


def devices(sc: Scenario, seed: int = 1, **kw: float) -> tuple[VirtualEcgPatch, VirtualOximeter]:
    p = Patient("p-0001", seed=seed, scenario=sc, **kw)
    return VirtualEcgPatch(p, "ecg-0001"), VirtualOximeter(p, "oxi-0001")


def frames_in(d: Decoded, a: float, b: float, *, whole: bool) -> list[dict]:
    """Frames entirely inside [a, b) (whole) or touching it (not whole)."""
    out = []
    for f in d.frames:
        t0, t1 = d.frame_t(f)
        if (whole and a <= t0 and t1 < b) or (not whole and t1 >= a and t0 < b):
            out.append(f)
    return out


def test_presets_exist_and_reject_unknown_names_and_parameters() -> None:
    assert set(SCENARIO_NAMES) >= {
        "normal", "tachycardia", "bradycardia", "tachy_brady", "desaturation",
        "sensor_off", "leads_off", "motion", "asystole", "low_battery",
    }  # fmt: skip
    with pytest.raises(ValueError, match="unknown scenario"):
        scenario("fainting")
    with pytest.raises(ValueError, match="no parameter"):
        scenario("desaturation", target_bpm=40)
    desat = scenario("desaturation", start_s=2.0)
    assert [(e.kind, e.start_s, e.target) for e in desat.events] == [("spo2", 2.0, 84.0)]


def test_leads_off_sets_the_flag_rails_the_signal_and_drops_contact() -> None:
    ecg, _ = devices(scenario("leads_off", 5.0, duration_s=6.0))
    d = run(ecg, 20.0)
    inside = frames_in(d, 5.0, 11.0, whole=True)
    assert len(inside) >= 10
    assert all(f["flags"] & LEADS_OFF and set(f["samples"]) == {ECG_RANGE_UV} for f in inside)
    touching = frames_in(d, 5.0, 11.0, whole=False)
    assert all(f["flags"] & LEADS_OFF for f in touching)
    assert not any(f["flags"] & LEADS_OFF for f in d.frames if f not in touching)
    for t, h in d.hrm:
        if 5.0 <= t < 11.0:
            assert (h["contact"], h["hr_bpm"], h["rr_1024"]) == (False, 0, [])
        else:
            assert h["contact"] is True and h["hr_bpm"] > 0


def test_sensor_off_drops_to_ambient_and_reports_nan_with_status_bits() -> None:
    _, oxi = devices(scenario("sensor_off", 4.0, duration_s=8.0))
    d = run(oxi, 20.0)
    inside = frames_in(d, 4.0, 12.0, whole=True)
    assert len(inside) >= 15
    for f in inside:
        assert f["flags"] & SENSOR_OFF
        s = np.array(f["samples"])
        assert s.max() < 2_000 and s.reshape(-1, 2).std(axis=0).max() < 5
    assert not any(f["flags"] & SENSOR_OFF for f in d.frames if f not in frames_in(d, 4.0, 12.0, whole=False))
    off_bytes = bytes.fromhex("0c ff 07 ff 07 00 20 00 08 00")  # docs/contract.md finger-out vector
    plx_raw = [n.data for n in d.raw if n.char_uuid == "2a5f"]
    for (t, x), raw in zip(d.plx, plx_raw, strict=True):
        if 4.0 <= t < 12.0:
            assert raw == off_bytes
            assert math.isnan(x["spo2_pct"]) and math.isnan(x["pr_bpm"])
            assert x["meas_status"] & (1 << 13) and x["dev_status"] & (1 << 11)
        else:
            assert 90 <= x["spo2_pct"] <= 100 and x["pai_pct"] is not None


def test_low_battery_flag_and_level() -> None:
    ecg, oxi = devices(scenario("low_battery", 3.0))
    for dev in (ecg, oxi):
        d = run(dev, 10.0)
        assert [v for _, v in d.battery] == [15, 14]
        assert d.battery[1][0] == 4.0  # first whole second after the level dropped
        assert not any(f["flags"] & LOW_BATTERY for f in frames_in(d, 0.0, 3.0, whole=True))
        late = frames_in(d, 3.01, 10.0, whole=True)
        assert late and all(f["flags"] & LOW_BATTERY for f in late)
        assert dev.low_battery


def test_low_battery_from_the_start_and_drain() -> None:
    ecg, _ = devices(Scenario(), battery_pct=9.0)
    d = run(ecg, 3.0)
    assert all(f["flags"] & LOW_BATTERY for f in d.frames)
    healthy, _ = devices(Scenario(), battery_pct=90.0)
    assert not any(f["flags"] & LOW_BATTERY for f in run(healthy, 3.0).frames)


def test_motion_burst_makes_large_artefacts_and_questionable_readings() -> None:
    ecg, oxi = devices(scenario("motion", 5.0, duration_s=5.0, amplitude=3.0))
    de, do = run(ecg, 15.0), run(oxi, 15.0)
    x = de.samples()
    quiet, noisy = x[250:1250], x[1300:2450]
    assert noisy.std() > 4 * quiet.std()
    assert any(f["flags"] & SATURATED for f in frames_in(de, 5.0, 10.0, whole=False))
    assert not any(f["flags"] & SATURATED for f in frames_in(de, 0.0, 5.0, whole=True))
    ir = do.samples()[:, 1].astype(float)
    assert np.diff(ir[510:990]).std() > 4 * np.diff(ir[10:490]).std()
    for t, p in do.plx:
        motion = 5.0 <= t < 10.0
        assert bool(p["dev_status"] & (1 << 6)) == motion  # erratic signal
        assert bool(p["meas_status"] & (1 << 14)) == motion  # questionable


def test_asystole_heart_rate_falls_to_zero_and_oximeter_loses_the_pulse() -> None:
    ecg, oxi = devices(scenario("asystole", 5.0, duration_s=10.0), hr_bpm=75.0)
    de, do = run(ecg, 25.0), run(oxi, 25.0)
    hr = dict(de.hrm)
    assert hr[4.0]["hr_bpm"] == pytest.approx(75, abs=5)
    assert hr[8.0]["hr_bpm"] < 30 and hr[14.0]["hr_bpm"] == 0
    assert all(hr[float(t)]["rr_1024"] == [] for t in range(6, 15))
    assert hr[24.0]["hr_bpm"] == pytest.approx(75, abs=6)
    plx = dict(do.plx)
    assert math.isnan(plx[14.0]["spo2_pct"]) and plx[14.0]["dev_status"] & (1 << 7)  # nonpulsatile
    assert not math.isnan(plx[24.0]["spo2_pct"])


@pytest.mark.parametrize(("name", "target"), [("tachycardia", 150), ("bradycardia", 40)])
def test_rate_events_reach_their_target_and_recover(name: str, target: int) -> None:
    ecg, oxi = devices(scenario(name, 2.0, ramp_s=5, hold_s=20, recover_s=5), hr_bpm=72.0)
    de, do = run(ecg, 45.0), run(oxi, 45.0)
    hr = dict(de.hrm)
    pr = dict(do.plx)
    for t in (15.0, 20.0, 26.0):
        assert hr[t]["hr_bpm"] == pytest.approx(target, abs=4)
        assert pr[t]["pr_bpm"] == pytest.approx(target, abs=5)
    assert hr[45.0]["hr_bpm"] == pytest.approx(72, abs=5)


def test_tachy_then_brady_then_normal() -> None:
    ecg, _ = devices(scenario("tachy_brady", 2.0), hr_bpm=70.0)
    hr = dict(run(ecg, 60.0).hrm)
    assert hr[18.0]["hr_bpm"] == pytest.approx(150, abs=4)
    assert hr[38.0]["hr_bpm"] == pytest.approx(40, abs=3)
    assert hr[58.0]["hr_bpm"] == pytest.approx(70, abs=5)


def test_desaturation_ramps_down_holds_and_recovers() -> None:
    _, oxi = devices(scenario("desaturation", 2.0, target_pct=84.0), spo2_pct=97.0)
    d = run(oxi, 50.0)
    spo2 = dict((t, x["spo2_pct"]) for t, x in d.plx)
    assert spo2[1.0] == pytest.approx(97, abs=1.5)
    hold = [spo2[float(t)] for t in range(14, 28)]
    assert np.mean(hold) == pytest.approx(84, abs=1.0) and max(hold) <= 86
    assert spo2[50.0] == pytest.approx(97, abs=1.5)


def test_default_mix_for_the_demo() -> None:
    fleet = make_patients(3, seed=1)
    assert [p.patient_id for p in fleet] == ["p-0001", "p-0002", "p-0003"]
    assert [(p.ecg.device_id, p.oximeter.device_id) for p in fleet][1] == ("ecg-0002", "oxi-0002")
    assert [p.patient.scenario.name for p in fleet] == ["normal", "desaturation", "tachy_brady"]
    assert fleet[1].patient.scenario.events[0].start_s == 2.0
    oxi2 = dict(run(fleet[1].oximeter, 20.0).plx)
    assert oxi2[18.0]["spo2_pct"] == pytest.approx(84, abs=2)
    hr3 = dict(run(fleet[2].ecg, 15.0).hrm)
    assert hr3[15.0]["hr_bpm"] == pytest.approx(150, abs=4)
    names = [default_scenario(k).name for k in range(4, 1001)]
    assert 0.85 < names.count("normal") / len(names) < 0.95
    assert {n for n in names if n != "normal"} >= {"sensor_off", "leads_off", "motion", "asystole"}


def test_a_patient_does_not_depend_on_the_fleet_size_and_overrides_apply() -> None:
    small = make_patients(4, seed=9)[3]
    large = make_patients(12, seed=9)[3]
    a = [n.data for n in small.ecg.advance(5.0)]
    b = [n.data for n in large.ecg.advance(5.0)]
    assert a == b
    fleet = make_patients(3, seed=9, scenarios=["sensor_off", None, scenario("motion", 1.0)])
    assert [p.patient.scenario.name for p in fleet] == ["sensor_off", "desaturation", "motion"]
