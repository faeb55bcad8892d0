"""Whole wearables in MicroPython 1.27 (mp/mp_app.py, fakes/fake_rig.py): nabz_board.build() on the
fake machine and bluetooth modules, a synthetic patient (hardware/, labelled synthetic) on the
sensors, and the test as the gateway, decoding every notification with the shared codec.
"""

from __future__ import annotations

import subprocess
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from firmware import nabz_codec as codec
from hardware import EcgSynth, Patient, PpgSynth
from tests.firmware.fw import DEVICE_MODULES, FAKES, SCRIPTS, RunMicroPython, run_script

MEAS_ONGOING, MEAS_UNAVAILABLE = 1 << 5, 1 << 13
DEV_MALFUNCTION, DEV_SENSOR_MALFUNCTIONING = 1 << 1, 1 << 14


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("patient")
    p = Patient(hr_bpm=72, spo2_pct=97, seed=7)
    ecg, _ = EcgSynth(p, p.seed_for("ecg")).render(0, 250 * 60)
    ppg, _ = PpgSynth(p, p.seed_for("ppg")).render(0, 100 * 60)
    (d / "ecg.bin").write_bytes(ecg.astype("<i2").tobytes())
    (d / "ppg.bin").write_bytes(ppg.astype("<i4").tobytes())
    return d


@pytest.fixture(scope="module")
def scenario(run_micropython_module: RunMicroPython, data: Path) -> Any:
    cache: dict[str, dict[str, Any]] = {}

    def run(name: str) -> dict[str, Any]:
        if name not in cache:
            cache[name] = run_script(run_micropython_module, "mp_app.py", files={"/data": data}, args=[name])
        return cache[name]

    return run


def states(control: list[Any]) -> list[tuple[str, int]]:
    """The status notifications a gateway heard, as (state, battery %) with repeats folded: the
    wearable says its state again now and then (after connecting, while not ok, with the battery)."""
    out: list[tuple[str, int]] = []
    for _t, msg in control:
        if msg["op"] == 0x82 and (not out or out[-1][0] != msg["state"]):
            out.append((msg["state"], msg["battery_pct"]))
    return out


def ad_fields(adv: bytes) -> dict[int, bytes]:
    out, i = {}, 0
    while i < len(adv):
        n = adv[i]
        out[adv[i + 1]] = adv[i + 2 : i + 1 + n]
        i += 1 + n
    return out


def test_advertising_names_the_device_and_its_service(scenario: Any) -> None:
    got = scenario("ecg")["advertising"]
    adv = bytes.fromhex(got["adv"])
    assert len(adv) <= 31
    fields = ad_fields(adv)
    assert fields[0x09] == b"Nabz ecg-0001"  # complete local name, as the virtual patch advertises
    assert fields[0x01] == b"\x06"  # LE general discoverable, no BR/EDR
    assert fields[0x03] == b"\x0d\x18"  # Heart Rate service 0x180D
    assert fields[0x19] == b"\x41\x03"  # appearance: heart rate belt
    resp = ad_fields(bytes.fromhex(got["resp"]))
    assert resp[0x07] == bytes(reversed(bytes.fromhex(codec.NABZ_WAVEFORM_SERVICE.replace("-", ""))))
    assert got["name"] == "Nabz ecg-0001" and got["preferred_mtu"] == 247
    assert got["interval_us"] == 100_000


def test_the_ecg_gatt_table(scenario: Any) -> None:
    gatt = scenario("ecg")["gatt"]
    assert gatt["2a37"]["flags"] == 0x10 and gatt["2a38"]["value"] == "01"  # notify; chest
    assert gatt["2a19"]["flags"] == 0x12 and 0 <= int(gatt["2a19"]["value"], 16) <= 100
    text = {u: bytes.fromhex(gatt[u]["value"]).decode() for u in ("2a24", "2a25", "2a26", "2a27", "2a29")}
    assert text == {
        "2a24": "Nabz ECG patch",
        "2a25": "246f281a2b3c",
        "2a26": "0.1.0",
        "2a27": "A",
        "2a29": "Nabz",
    }
    assert gatt[codec.NABZ_ECG_WAVEFORM]["flags"] == 0x10
    assert gatt[codec.NABZ_CONTROL]["flags"] == 0x1A  # read (the status) + write + notify
    assert codec.NABZ_PPG_WAVEFORM not in gatt and "2a5f" not in gatt


def test_the_oximeter_gatt_table(scenario: Any) -> None:
    gatt = scenario("oximeter")["gatt"]
    assert gatt["2a5f"]["flags"] == 0x10
    features = bytes.fromhex(gatt["2a60"]["value"])
    supported, meas = int.from_bytes(features[:2], "little"), int.from_bytes(features[2:4], "little")
    dev = int.from_bytes(features[4:7], "little")
    assert supported == 0x0043 and len(features) == 7  # measurement status, device status, PAI
    assert meas & MEAS_UNAVAILABLE and dev & (1 << 11)  # "sensor unconnected to user" is supported
    assert bytes.fromhex(gatt["2a24"]["value"]) == b"Nabz pulse oximeter"
    assert codec.NABZ_PPG_WAVEFORM in gatt and "2a37" not in gatt
    fields = ad_fields(bytes.fromhex(scenario("oximeter")["advertising"]["adv"]))
    assert fields[0x09] == b"Nabz oxi-0001" and fields[0x03] == b"\x22\x18"


def test_an_ecg_session_with_a_dropout_loses_nothing(scenario: Any) -> None:
    got = scenario("ecg")["ecg session"]
    assert got["mtu_requests"] >= 1
    seq, n, flags, rate, t0, size, _ = got["frames"][0]
    assert (n, flags, rate, size) == (113, 0, 250, 244)  # MTU 247: 113 samples, 244 bytes
    assert got["frames"][1][4] - t0 == 113 * 4000  # device time moves with the samples
    first, last, count = got["hole"]
    assert count >= 20 * 250 // 113 - 1  # 20 s of drop-out
    assert got["resent"] == list(range(first, last + 1))
    report = [c[1] for c in got["control"] if c[1]["op"] == 0x81][-1]
    assert report == {"op": 0x81, "kind": 1, "first_seq": first, "last_seq": last,
                      "resent_first_seq": first, "resent_count": count}  # fmt: skip
    seqs = got["all_seqs"]
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "every frame from the first live one on arrived"
    assert got["adv_after_disconnect"]
    assert {c[1]["state"] for c in got["control"] if c[1]["op"] == 0x82} == {"ok"}
    assert got["jitter"]["missed"] == 0 and got["jitter"]["early"] == 0
    assert got["feeds"] == got["wdt_feeds"] > 0


def test_each_boot_numbers_its_frames_from_a_random_start(scenario: Any) -> None:
    """From 0 at every boot, a wearable that reboots would send numbers its gateway already has."""
    first, second = scenario("ecg")["first seq of two boots"]
    assert first != second and 0 <= first < 1 << 32 and 0 <= second < 1 << 32


def test_heart_rate_measurements_once_a_second(scenario: Any) -> None:
    vitals = scenario("ecg")["ecg session"]["vitals"]
    steady = [v for v in vitals if v[1]]
    assert len(steady) >= 10
    for _, hr, contact, rr in steady:
        assert contact is True
        assert 68 <= hr <= 76
        assert 1 <= len(rr) <= 2 and all(780 <= x <= 940 for x in rr)  # 72 bpm: RR ~ 853/1024 s
    assert all(b[1] == 78 for b in scenario("ecg")["ecg session"]["battery"])  # 4000 mV


def test_ecg_at_the_default_mtu(scenario: Any) -> None:
    got = scenario("ecg_mtu23")["ecg mtu 23"]
    assert got["sizes"] == [20] and got["n"] == [1]
    assert got["frames"] >= 2 * 250  # one sample per notification, 250 a second


def test_ecg_at_the_largest_mtu(scenario: Any) -> None:
    """MTU 515: 247 samples in a 512-byte frame, the largest ATT value; the sender's buffer is
    sized from the configured MTU (it was a fixed 512 bytes, which a 517 MTU overflowed)."""
    got = scenario("ecg_mtu515")["ecg mtu 515"]
    assert got["sizes"] == [512] and got["frames"] >= 2 * 250 // 247
    assert got["sender_buffer"] == 512


def test_an_oximeter_session(scenario: Any) -> None:
    got = scenario("oximeter")["oximeter session"]
    assert got["registers"] == {"mode": 3, "spo2": 0x27}
    seq, n, flags, rate, t0, size, _ = got["frames"][0]
    assert (n, flags, rate, size) == (37, 0, 100, 240)
    assert got["seqs_contiguous"] and got["count"] >= 14 * 100 // 37
    values = [v for v in got["vitals"] if v[1] is not None]
    assert len(values) >= 8
    for _, spo2, pr, meas, dev, pai in values[3:]:
        assert abs(spo2 - 97) <= 1 and abs(pr - 72) <= 3
        assert meas == MEAS_ONGOING and dev == 0 and 1.0 <= pai <= 3.0


def test_an_oximeter_at_mtu_23_sends_vitals_only(scenario: Any) -> None:
    got = scenario("oximeter_mtu23")["oximeter mtu 23"]
    assert got["frames"] == 0 and not got["streaming"]
    assert got["vitals"] >= 6
    assert got["ring_frames"] >= 20, "the ring keeps the samples for a better link"


def test_an_oximeter_sensor_fault_is_reported_and_recovered(scenario: Any) -> None:
    got = scenario("oximeter_fault")["oximeter fault"]
    assert [s for s, _ in states(got["control"])] == ["ok", "sensor_fault", "ok"]
    for _, spo2, pr, meas, dev, _pai in got["during"]:
        assert spo2 is None and pr is None and meas == MEAS_UNAVAILABLE
        assert dev == DEV_SENSOR_MALFUNCTIONING | DEV_MALFUNCTION
    assert got["recoveries"] == 1 and len(got["gap_frames"]) == 1
    assert got["after"][1] is not None, "values again after recovery"
    assert got["wdt_feeds_during_fault"] > 0, "a sensor fault is reported, not a reason to reset"


def test_low_then_critical_battery_on_the_ecg_patch(scenario: Any) -> None:
    got = scenario("ecg_battery")["ecg battery"]
    heard = states(got["control"])
    assert [s for s, _ in heard] == ["ok", "low_battery", "battery_critical"]
    assert heard[1][1] < 15 and heard[2][1] <= 3
    assert got["low_frames"] > 0 and got["last_frame_flags"] & codec.WAVE_FLAG_LOW_BATTERY
    times = got["vitals_times"]
    gaps = [b - a for a, b in pairwise(times)]
    assert set(gaps[:10]) == {1} and set(gaps[-5:]) == {2}  # vitals every 2 s once low
    assert got["timer_running"] is False and got["sdn"] == 0  # sampling stopped, AD8232 shut down
    assert got["slept_ms"] == 600_000  # deep sleep after the grace period, to look again later
    assert got["adv"] is None


def test_low_battery_halves_the_oximeter_rate(scenario: Any) -> None:
    got = scenario("oximeter_battery")["oximeter battery"]
    assert got["rates"] == [50, 100] and got["low_frames_rate"] == [50]
    assert (got["chip_spo2_config"] >> 2) & 0x07 == 0  # SPO2_SR: 50 Hz
    assert [s for s, _ in states(got["control"])] == ["ok", "low_battery"]
    assert abs(got["last_vitals"][2] - 72) <= 3, "the pulse rate is still right at 50 Hz"
    times = got["vitals_after_low"]
    assert all(b - a == 2 for a, b in pairwise(times))


def test_a_critical_battery_at_boot_sleeps_at_once(scenario: Any) -> None:
    got = scenario("ecg_critical_at_boot")["critical at boot"]
    assert got == {"slept": 600_000, "timer": False, "adv": None}


def test_the_watchdog_starves_when_sampling_stops(scenario: Any) -> None:
    got = scenario("ecg_watchdog")["watchdog"]
    assert got["fed_while_sampling"] >= 140  # every 20 ms step
    assert got["fed_1s_after_stall"] > 0  # a short stall is tolerated (2 s)
    assert got["fed_after"] == 0, "a dead sample timer must lead to a watchdog reset"
    assert got["timeout_ms"] == 8000


def test_an_oximeter_whose_chip_resets_itself_is_restarted_not_frozen(scenario: Any) -> None:
    """A supply dip or ESD resets the MAX30102 (not sampling) while it still answers on I2C: the
    nurse must not see the last SpO2 and pulse rate repeated over a sensor that measures nothing."""
    got = scenario("oximeter_por")["oximeter power-on reset"]
    assert got["frames_after"] >= 9 * 100 // 37 and got["last_seconds_of_frames"] >= 9  # the 10 s after
    assert got["mode"] == 3, "the chip is configured and sampling again"
    assert got["gap_frames_after"] == 1, "the samples it missed are one flagged gap"
    assert [s for s, _ in states(got["control"])] == ["ok", "sensor_fault", "ok"]
    assert got["last_vitals"][1] is not None
    assert got["resets_seen"] == 1 and got["recoveries"] == 1  # told by PWR_RDY, at once


def test_a_chip_that_answers_but_never_samples_is_a_sensor_fault(scenario: Any) -> None:
    got = scenario("oximeter_dead")["oximeter dead"]
    assert got["vitals_before"][1] is not None
    after = got["vitals_after"]
    assert len(after) >= 19
    for _, spo2, pr, meas, dev, _pai in after:
        assert spo2 is None and pr is None and meas == MEAS_UNAVAILABLE, "no value from a sensor that stopped"
        assert dev & DEV_SENSOR_MALFUNCTIONING
    assert [s for s, _ in states(got["control"])] == ["ok", "sensor_fault"], "raised once, no flapping"
    assert got["control"][-1][0] >= after[-1][0] - 1, "and said again while it lasts"
    assert got["frames_after"] <= 1 and got["stalls"] >= 10  # restarted once a second, in vain
    assert got["wdt_feeds"] > 0, "a sensor fault is reported, not a reason to reset"


def test_an_i2c_error_while_switching_to_50_hz_is_recovered(scenario: Any) -> None:
    """configure() puts the chip in shutdown first: an error after that left it shut down with the
    sampler believing it ran - no frames, no values, no fault, for good."""
    got = scenario("oximeter_set_rate_fault")["oximeter set rate fault"]
    assert got["injected"]
    assert got["mode"] == 3 and (got["spo2_config"] >> 2) & 0x07 == 0  # sampling, at 50 Hz
    assert got["recoveries"] == 1
    assert got["frames_at_50_hz"] >= 40 * 50 // 37, "the 44 s after the switch are streamed"
    assert [s for s, _ in states(got["control"])] == ["ok", "low_battery", "sensor_fault", "low_battery"]
    assert got["last_vitals"][1] is not None and abs(got["last_vitals"][2] - 72) <= 3


def test_a_gateway_that_subscribes_late_still_learns_the_state(scenario: Any) -> None:
    """The gateway subscribes after discovery and its reads; the status notified on connection is
    lost. A wearable already failing must still raise the technical alarm, and one that recovered
    while the gateway was away must clear it."""
    got = scenario("late_subscriber")
    failing = got["already failing"]
    assert failing["unheard"] > 0, "the model drops what is notified before the subscription"
    assert failing["read"]["state"] == "sensor_fault", "the control characteristic reads the status"
    heard = [c[1]["state"] for c in failing["control"] if c[1]["op"] == 0x82]
    assert heard and set(heard) == {"sensor_fault"} and failing["control"][0][0] <= 8  # within 1 s
    away = got["recovered while away"]
    assert away["heard_before"][-1] == "sensor_fault"
    assert away["read"]["state"] == "ok"
    assert [c[1]["state"] for c in away["control"] if c[1]["op"] == 0x82][:1] == ["ok"]
    assert got["read after a resend"]["state"] == "ok"


def test_frames_stay_right_past_24_8_and_49_7_days(scenario: Any) -> None:
    """Sample and frame counters are 30-bit; frame times and sequence numbers are worked out from
    differences to an anchor that turn negative after 2**29 (24.8 days at 250 Hz). Each frame's
    time must stay the device time of its first sample (the contract's DeviceTime) and the
    sequence numbers must run on (wrapping at 2**32 only), or the gateway dead-letters every frame
    or sees a false restart."""
    got = scenario("ecg_50_days")["ecg after 50 days"]
    assert got["uptime_days"] > 49.7
    for leap in got["leaps"]:
        assert leap["frames"] >= 240
        first, last = leap["t0_behind_now_us"]
        assert 0 <= last <= first <= 1_000_000, leap  # the last second's frames, at their true times
        assert leap["t0_steps_us"] == [4000] and leap["seq_steps"] == [1]
    assert got["seq_steps_over_a_leap"] == [(1 << 27) + 1]  # the frames of the leap, nothing else
    assert got["seq_advance"] == got["frames"] - 1 + 8 * (1 << 27)
    # The QRS detector's sample index stays a small int: no allocation per sample after 49.7 days.
    assert got["detector_k"] < 1 << 30 and got["alloc_per_250_samples"][1:] == [0, 0]
    # Nor the timer callback's (it allocated 8,000 bytes a second once its counts passed 2**30):
    # the counts of samples, on-time callbacks, samples and frames into the ring wrap at 2**30,
    # and the watchdog, which needs the sample count to change, is still fed.
    assert got["tick_alloc_per_250"][1:] == [0, 0]
    assert all(0 <= c < 1 << 30 for c in got["counters"]), got["counters"]
    assert got["wdt_fed_after"] >= 45


def test_oximeter_frame_times_stay_on_the_device_clock_past_62_and_124_days(scenario: Any) -> None:
    """The oximeter fits its chip's period over the whole run from a start point; the span was a
    signed 30-bit difference, negative after 2**29 samples (62 days at 100 Hz): the fit was then
    dropped for good, and with the nominal period frame times stepped by up to two periods
    every second or so. Its SpO2 estimator counted samples in a plain int: beat times (n << 4)
    were long ints after 7.8 days, and after 124 days every sample allocated."""
    got = scenario("oximeter_124_days")["oximeter after 124 days"]
    assert got["uptime_days"] > 121  # 2**30 samples of a chip at 102 Hz
    period_us = 1e6 / 102
    for n, leap in enumerate(got["leaps"], 1):
        # after each leap of 15.2 days, one re-anchor (the whole-ns period drifted) and a new fit
        assert leap["frames"] >= 8 * 102 // 37 and leap["gap_frames"] == 1, leap
        assert leap["period_ns"] in (9_803_921, 9_803_922), (n, leap)  # the chip's, not 10 ms
        assert leap["reanchors_in_8_s"] == 0, (n, leap)
        assert set(leap["step_errors_us"]) <= {-1, 0, 1}, (n, leap)  # frame to frame: the chip's period
        lo, hi = leap["t0_error_us"]
        assert -period_us <= lo <= hi <= period_us, (n, leap)  # each frame within a period of its time
    spo2_pr = [(v[1], v[2]) for v in got["vitals"]]
    assert all(spo2 is not None and abs(spo2 - 97) <= 1.5 and abs(pr - 72) <= 3 for spo2, pr in spo2_pr)
    assert got["est_n"] < 1 << 26
    assert got["alloc_per_100_samples"] == [0, 0, 0]


# ---------------------------------------------------------------------------------------------
# Heap: measured by the runner after the script returned (see tests/tools/mpy_run.mjs --mem-report).
def mem_alloc(run_micropython: RunMicroPython, phase: str, data: Path) -> int:
    proc: subprocess.CompletedProcess[str] = run_micropython(
        SCRIPTS / "mp_heap.py",
        libs=[*DEVICE_MODULES, FAKES],
        files={"/data": data},
        args=[phase],
        mem_report=True,
    )
    assert proc.returncode == 0, proc.stderr
    line = [x for x in proc.stderr.splitlines() if x.startswith("mpy_run: mem_alloc ")]
    assert line, proc.stderr
    return int(line[0].split()[-1])


def test_heap_held_by_each_wearable(run_micropython_module: RunMicroPython, data: Path) -> None:
    base = mem_alloc(run_micropython_module, "base", data)
    imports = mem_alloc(run_micropython_module, "imports", data)
    rig = mem_alloc(run_micropython_module, "rig", data)
    ecg = mem_alloc(run_micropython_module, "ecg", data) - rig
    oxi = mem_alloc(run_micropython_module, "oximeter", data) - rig
    code = imports - base
    print(f"heap: firmware modules {code} B, ECG patch {ecg} B, oximeter {oxi} B (after 30 s running)")
    # The rings are 32 000 B (ECG, 64 s x 250 Hz x 2 B) and 38 400 B (PPG, 64 s x 100 Hz x 6 B).
    assert 32_000 < ecg < 64 * 1024
    assert 38_400 < oxi < 64 * 1024
    assert code < 80 * 1024
