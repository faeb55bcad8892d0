"""Virtual wearables: frames, counters, determinism and chunking (synthetic patients)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from firmware import nabz_codec as codec
from hardware import (
    CHAR_BATTERY_LEVEL,
    CHAR_CONTROL,
    CHAR_ECG_WAVEFORM,
    CHAR_HEART_RATE,
    CHAR_PLX_CONTINUOUS,
    CHAR_PPG_WAVEFORM,
    Notification,
    Patient,
    VirtualEcgPatch,
    VirtualOximeter,
    make_patients,
    scenario,
    uuid128,
)
from tests.hardware.hw_helpers import Decoded, decode, run

EVENTFUL = (
    scenario("desaturation", 3.0, ramp_s=2, hold_s=4, recover_s=2)
    + scenario("leads_off", 5.5, duration_s=2.2)
    + scenario("sensor_off", 12.3, duration_s=3.1)
    + scenario("motion", 16.0, duration_s=2.0, amplitude=3.0)
    + scenario("asystole", 20.0, duration_s=4.5)
    + scenario("tachycardia", 26.0, ramp_s=1, hold_s=3, recover_s=1)
    + scenario("af", 8.0, duration_s=4.0)
    + scenario("low_battery", 18.0)
)


def pair(seed: int = 7, **kw: object) -> tuple[VirtualEcgPatch, VirtualOximeter]:
    p = Patient("p-0042", seed=seed, scenario=EVENTFUL, **kw)  # type: ignore[arg-type]
    return VirtualEcgPatch(p, "ecg-0042"), VirtualOximeter(p, "oxi-0042")


def sent(device: VirtualEcgPatch | VirtualOximeter, chunks: list[float]) -> list[tuple[str, bytes, int]]:
    out: list[tuple[str, bytes, int]] = []
    for c in chunks:
        out += [(n.char_uuid, n.data, n.device_t_us) for n in device.advance(c)]
    return out


def test_characteristic_ids_and_names() -> None:
    assert CHAR_ECG_WAVEFORM == "6e61627a-0101-4000-8000-00805f9b34fb"
    assert CHAR_PPG_WAVEFORM == "6e61627a-0102-4000-8000-00805f9b34fb"
    assert (CHAR_HEART_RATE, CHAR_PLX_CONTINUOUS, CHAR_BATTERY_LEVEL) == ("2a37", "2a5f", "2a19")
    assert uuid128("2a37") == "00002a37-0000-1000-8000-00805f9b34fb"
    assert uuid128(CHAR_ECG_WAVEFORM) == CHAR_ECG_WAVEFORM
    ecg, oxi = pair()
    assert (ecg.kind, oxi.kind) == ("ecg", "oximeter")
    assert ecg.device_id in ecg.name and oxi.device_id in oxi.name
    assert len(ecg.name.encode()) <= 29  # fits a legacy advertisement
    n = Notification("ecg-0042", CHAR_HEART_RATE, b"\x00\x48", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        n.data = b""  # type: ignore[misc]
    assert not hasattr(n, "__dict__")


@pytest.mark.parametrize("which", [0, 1])
def test_frames_decode_with_consecutive_seq_and_time(which: int) -> None:
    device = pair()[which]
    d = run(device, 30.0)
    rate = 250 if which == 0 else 100
    per_frame = codec.wave_max_samples(codec.WAVE_KIND_ECG if which == 0 else codec.WAVE_KIND_PPG, 247)
    assert per_frame == (113 if which == 0 else 37)
    assert [f["seq"] for f in d.frames] == list(range(len(d.frames)))
    for a, b in zip(d.frames, d.frames[1:], strict=False):
        assert b["t0_us"] - a["t0_us"] == a["n"] * 1_000_000 // rate
    assert d.frames[0]["t0_us"] == device.boot_us
    assert all(f["n"] == per_frame and f["rate_hz"] == rate for f in d.frames)
    wave = [n for n in d.raw if n.char_uuid in (CHAR_ECG_WAVEFORM, CHAR_PPG_WAVEFORM)]
    for n, f in zip(wave, d.frames, strict=True):  # a frame is sent when its last sample is taken
        assert n.device_t_us == f["t0_us"] + (f["n"] - 1) * 1_000_000 // rate
    times = [n.device_t_us for n in d.raw]
    assert times == sorted(times)
    # all samples up to the last full frame were sent
    assert len(d.frames) == 30 * rate // per_frame


@pytest.mark.parametrize("which", [0, 1])
def test_readings_and_frames_are_counted_like_the_contract(which: int) -> None:
    device = pair()[which]
    d = run(device, 25.0, step=0.625)
    samples = sum(f["n"] for f in d.frames)
    vitals = len(d.hrm) + len(d.plx) + len(d.battery)
    assert device.readings_generated == samples + vitals
    assert device.frames_sent == len(d.raw)
    assert len(d.hrm if which == 0 else d.plx) == 25  # once per second (t = 1 .. 25 s)
    flushed = decode(device, device.flush())
    assert len(flushed.frames) == 1 and flushed.frames[0]["n"] < (113 if which == 0 else 37)
    assert flushed.frames[0]["seq"] == d.frames[-1]["seq"] + 1
    assert device.readings_generated == samples + vitals + flushed.frames[0]["n"]
    assert device.flush() == []


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    def all_bytes(seed: int) -> list[tuple[str, str, bytes, int]]:
        out = []
        for p in make_patients(3, seed=seed):
            for dev in p.devices:
                for _ in range(12):
                    out += [(n.device_id, n.char_uuid, n.data, n.device_t_us) for n in dev.advance(1.0)]
        return out

    a, b, c = all_bytes(5), all_bytes(5), all_bytes(6)
    assert a == b
    assert a != c


@pytest.mark.parametrize("which", [0, 1])
def test_stream_is_the_same_in_any_chunking(which: int) -> None:
    one_s = sent(pair()[which], [1.0] * 30)
    ten_s = sent(pair()[which], [10.0] * 3)
    rng = np.random.default_rng(3)
    ragged = list(rng.uniform(0.001, 2.5, size=200).round(6))
    total = 30.0 - sum(ragged[:20])
    odd = sent(pair()[which], ragged[:20] + [total])
    assert one_s == ten_s
    assert odd == one_s


def test_one_device_does_not_disturb_the_other() -> None:
    ecg_alone, _ = pair()
    ecg_busy, oxi_busy = pair()
    alone = sent(ecg_alone, [5.0] * 6)
    busy = []
    for _ in range(10):
        oxi_busy.advance(3.0)
        busy += sent(ecg_busy, [3.0])
    assert alone == busy


def test_long_runs_keep_bounded_beat_history() -> None:
    ecg, oxi = pair()
    for _ in range(90):
        ecg.advance(10.0)
        oxi.advance(10.0)
    assert len(ecg.patient.heart._r) < 600  # noqa: SLF001 - 15 min is ~1100 beats
    assert ecg.readings_generated > 15 * 60 * 250


def test_device_clock_and_mtu() -> None:
    p = Patient(seed=3)
    a = VirtualEcgPatch(p, "ecg-0001", mtu=100)
    b = VirtualOximeter(p, "oxi-0001", mtu=100, seq_start=0xFFFFFFFE)
    assert a.boot_us != b.boot_us and a.boot_us > 0
    da, db = run(a, 3.0), run(b, 3.0)
    assert {f["n"] for f in da.frames} == {codec.wave_max_samples(codec.WAVE_KIND_ECG, 100)}
    assert [f["seq"] for f in db.frames][:4] == [0xFFFFFFFE, 0xFFFFFFFF, 0, 1]
    assert a.device_t_us == a.boot_us + 3_000_000
    with pytest.raises(ValueError):
        a.advance(-1.0)
    assert a.advance(0.0) == []


def test_resend_returns_buffered_frames_flagged_resent() -> None:
    ecg, oxi = pair()
    d = run(ecg, 10.0)
    readings = ecg.readings_generated
    *again, report = ecg.write(CHAR_CONTROL, codec.control_resend_encode(codec.WAVE_KIND_ECG, 3, 5))
    frames = [codec.wave_decode(n.data) for n in again]
    assert [f["seq"] for f in frames] == [3, 4, 5]
    assert report.char_uuid == CHAR_CONTROL  # then, as the firmware does, what is coming
    assert codec.control_notify_decode(report.data) == {
        "op": codec.CTRL_OP_RESEND_REPORT, "kind": codec.WAVE_KIND_ECG, "first_seq": 3, "last_seq": 5,
        "resent_first_seq": 3, "resent_count": 3,
    }  # fmt: skip
    assert all(f["flags"] & codec.WAVE_FLAG_RESENT for f in frames)
    assert [f["samples"] for f in frames] == [f["samples"] for f in d.frames[3:6]]
    assert ecg.readings_generated == readings and ecg.frames_resent == 3
    # the other stream kind, and the oximeter asked for ECG frames, get nothing
    assert oxi.write(CHAR_CONTROL, codec.control_resend_encode(codec.WAVE_KIND_ECG, 0, 1)) == []
    run(ecg, 60.0)  # 70 s in: frames 0..5 are older than the 60 s the wearable keeps
    (report,) = ecg.write(CHAR_CONTROL, codec.control_resend_encode(codec.WAVE_KIND_ECG, 0, 5))
    assert codec.control_notify_decode(report.data)["resent_count"] == 0
    held = ecg.write(CHAR_CONTROL, codec.control_resend_encode(codec.WAVE_KIND_ECG, 0, 10**6))[:-1]
    assert 60.0 <= len(held) * ecg.frame_samples / 250 < 61.0
    with pytest.raises(ValueError):
        ecg.write(CHAR_HEART_RATE, b"\x01")
    with pytest.raises(ValueError):
        ecg.write(CHAR_CONTROL, b"\x07")


def test_battery_sent_at_start_on_change_and_every_minute() -> None:
    p = Patient(seed=1, battery_pct=80.0, battery_drain_pct_per_h=0.0)
    d = run(VirtualEcgPatch(p, "ecg-0001"), 130.0, step=10.0)
    assert [t for t, _ in d.battery] == [0.0, 60.0, 120.0]
    assert {v for _, v in d.battery} == {80}
    q = Patient(seed=1, battery_pct=50.0, battery_drain_pct_per_h=3600.0)  # 1 % per second
    e = run(VirtualOximeter(q, "oxi-0001"), 5.0)
    assert [v for _, v in e.battery] == [50, 49, 48, 47, 46, 45]


def test_hr_notification_carries_the_rr_intervals_of_the_second() -> None:
    p = Patient(seed=2, hr_bpm=90)
    d = run(VirtualEcgPatch(p, "ecg-0001"), 30.0)
    rr = [x for _, h in d.hrm for x in h["rr_1024"]]
    assert len(rr) == pytest.approx(45, abs=2)  # 90 bpm for 30 s
    assert np.mean(rr) / 1024 == pytest.approx(60 / 90, rel=0.03)
    assert all(h["contact"] is True for _, h in d.hrm)
    assert all(abs(h["hr_bpm"] - 90) <= 4 for t, h in d.hrm if t >= 5)


def test_plx_reports_true_values_with_small_noise() -> None:
    p = Patient(seed=2, hr_bpm=64, spo2_pct=97)
    d = run(VirtualOximeter(p, "oxi-0001"), 60.0)
    spo2 = np.array([x["spo2_pct"] for _, x in d.plx])
    pr = np.array([x["pr_bpm"] for _, x in d.plx[5:]])
    assert np.all(np.abs(spo2 - 97) <= 2) and spo2.std() > 0
    assert np.all(np.abs(pr - 64) <= 4)
    assert all(x["meas_status"] == 0 and x["dev_status"] == 0 for _, x in d.plx)
    pai = {x["pai_pct"] for _, x in d.plx}
    assert all(1.0 <= v <= 3.0 for v in pai)
    assert all(not math.isnan(v) for v in spo2)


def test_decoded_helpers_are_consistent() -> None:
    ecg, _ = pair()
    d: Decoded = run(ecg, 2.0)
    assert d.samples().shape == (sum(f["n"] for f in d.frames),)
