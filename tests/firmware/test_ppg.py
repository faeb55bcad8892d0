"""The pulse oximeter in MicroPython 1.27 (mp/mp_ppg.py): the MAX30102 driver against a model of
the chip (tests/firmware/fakes/fake_max30102.py), I2C faults, clock drift, and the on-device SpO2,
pulse rate and status bits on synthetic PPG from the virtual patients (hardware/ppg.py; its SpO2
follows the same uncalibrated 110 - 25 R line as the firmware, so agreement proves the signal
path and arithmetic, not clinical accuracy).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hardware import Patient, PpgSynth
from hardware.scenario import Event, Scenario
from tests.firmware.fw import RunMicroPython, run_script

CASES = {"hr72_spo2_97": (72, 97, None), "hr110_spo2_88": (110, 88, None), "hr50_spo2_93": (50, 93, None),
         "finger_out": (80, 96, (12.0, 6.0)), "low_perfusion": (70, 95, None)}  # fmt: skip
SECONDS = 30
MEAS_ONGOING, MEAS_EARLY, MEAS_UNAVAILABLE = 1 << 5, 1 << 6, 1 << 13
DEV_LOW_PERF, DEV_ANALYSIS, DEV_UNCONNECTED = 1 << 5, 1 << 9, 1 << 11
DEV_MALFUNCTION, DEV_SENSOR_MALFUNCTIONING = 1 << 1, 1 << 14


@pytest.fixture(scope="module")
def truth() -> dict[str, Any]:
    return {}


@pytest.fixture(scope="module")
def ppg(
    run_micropython_module: RunMicroPython, tmp_path_factory: pytest.TempPathFactory, truth: dict[str, Any]
) -> dict[str, Any]:
    d: Path = tmp_path_factory.mktemp("ppg")
    for name, (hr, spo2, off) in CASES.items():
        sc = Scenario(name, (Event("sensor_off", off[0], off[1]),)) if off else Scenario()
        p = Patient(hr_bpm=hr, spo2_pct=spo2, seed=5, scenario=sc)
        x, _ = PpgSynth(p, p.seed_for("ppg")).render(0, 100 * SECONDS)
        if name == "low_perfusion":  # a cold finger: a tenth of the pulse on the same light level
            dc = x.mean(axis=0)
            x = np.round(dc + (x - dc) * 0.1).astype(np.int32)
        (d / f"{name}.bin").write_bytes(x.astype("<i4").tobytes())
        # The pulse reaches the finger ~0.25 s after the R wave and is known at the next upstroke:
        # the oximeter's rate at t is compared with the heart's at t - 0.5 s.
        truth[name] = [p.heart.measured_hr("truth", t - 0.5) for t in range(1, SECONDS + 1)]
    (d / "cases.json").write_text(json.dumps(list(CASES)))
    return run_script(run_micropython_module, "mp_ppg.py", files={"/ppg": d})


def test_the_chip_is_configured_for_spo2_at_100_hz(ppg: dict[str, Any]) -> None:
    regs = ppg["registers"]
    assert regs["reset_written"]
    assert regs["mode"] == 0x03  # SpO2 mode: red + IR
    assert regs["spo2_config"] == 0b0_01_001_11  # 4096 nA range, 100 Hz, 411 us (18 bit)
    assert regs["fifo_config"] == 0b000_1_1111  # no averaging, rollover, almost full at 17 unread
    assert regs["led1"] == regs["led2"] == 0x24  # 7.2 mA
    assert regs["int_enable_1"] == 0xA0  # FIFO almost full, ambient light overflow


def test_impossible_settings_are_refused(ppg: dict[str, Any]) -> None:
    assert all(ppg["refused"]), ppg["refused"]
    assert "at most 400 Hz" in ppg["refused"][0]


def test_interrupt_driven_reads_lose_nothing_across_pointer_wraps(ppg: dict[str, Any]) -> None:
    got = ppg["interrupt reads"]
    assert got["samples"] >= 950 and got["reads"] >= 55  # ~17 samples per read, 30 pointer wraps
    assert got["in_order"] and got["times_on_grid"]
    assert got["lost"] == got["overflows"] == 0
    assert got["flags"] == [0]


def test_a_late_read_becomes_a_counted_flagged_gap(ppg: dict[str, Any]) -> None:
    got = ppg["overflow"]
    assert got["chip_lost"] > 31, "the scenario must saturate the 5-bit overflow counter"
    assert got["counted"] == got["ring_lost"] == got["chip_lost"]
    assert got["gap_frames"] == 1
    assert got["t0_matches_its_sample"]


def test_a_full_fifo_is_not_mistaken_for_an_empty_one(ppg: dict[str, Any]) -> None:
    assert ppg["full fifo"] == {"count": 32, "lost": 0}


def test_the_sensor_comes_back_after_i2c_faults(ppg: dict[str, Any]) -> None:
    got = ppg["i2c recovery"]
    spo2, pr, _, meas, dev = got["status_during"]
    assert spo2 is None and pr is None and meas == MEAS_UNAVAILABLE
    assert dev == DEV_SENSOR_MALFUNCTIONING | DEV_MALFUNCTION
    assert got["recoveries"] == 1 and got["running"] and not got["faulty"]
    assert not got["stuck_after"], "nine SCL clocks must free the bus"
    assert got["gap_frames"] == 1 and got["time_ok"]
    assert ppg["no bus recovery"] == {"stuck": True, "faulty": True}


def test_frame_times_follow_a_drifting_chip_clock(ppg: dict[str, Any]) -> None:
    got = ppg["drift"]
    assert got["samples_in_order"]
    assert got["worst_t0_error_us"] <= 20000  # two sample periods
    assert 1 <= got["reanchors"] <= 10


@pytest.mark.parametrize("name", ["hr72_spo2_97", "hr110_spo2_88", "hr50_spo2_93"])
def test_spo2_and_pulse_rate(ppg: dict[str, Any], truth: dict[str, Any], name: str) -> None:
    hr, spo2, _ = CASES[name]
    seconds = ppg[f"spo2 {name}"]
    first = next(i for i, s in enumerate(seconds) if s[0] is not None)
    assert first <= 6, "a value within 6 s of the finger going in"
    assert seconds[0][3] == MEAS_ONGOING | MEAS_UNAVAILABLE and seconds[0][4] == DEV_ANALYSIS
    assert seconds[first][3] & MEAS_EARLY
    for t in range(10, SECONDS):
        s_pct, pr, pai, meas, dev = seconds[t - 1]
        assert abs(s_pct - spo2) <= 1.5, (t, s_pct)
        assert abs(pr - truth[name][t - 1]) <= 2.5, (t, pr)
        assert 1.0 <= pai <= 3.0
        assert (meas, dev) == (MEAS_ONGOING, 0)


def test_finger_out_and_back(ppg: dict[str, Any]) -> None:
    seconds = ppg["spo2 finger_out"]
    out = seconds[13:17]  # the finger is out 12-18 s
    assert all(
        s[:3] == [None, None, None] and s[3] == MEAS_UNAVAILABLE and s[4] == DEV_UNCONNECTED for s in out
    )
    assert seconds[10][0] is not None
    back = [s for s in seconds[19:] if s[0] is not None]
    assert back and abs(back[-1][0] - 96) <= 1.5


def test_low_perfusion_is_flagged(ppg: dict[str, Any]) -> None:
    seconds = ppg["spo2 low_perfusion"]
    late = [s for s in seconds[10:] if s[0] is not None]
    assert late, "a weak pulse still gives values"
    assert all(s[4] & DEV_LOW_PERF and s[2] < 0.3 for s in late)


def test_values_are_withdrawn_when_samples_stop_arriving(ppg: dict[str, Any]) -> None:
    """Staleness counted in samples cannot see a sensor that delivers none: in real time it can."""
    got = ppg["quiet sensor"]
    assert got["measuring"][0] is not None and got["0.7 s"][:2] == got["measuring"][:2]
    spo2, pr, pai, meas, dev = got["1.2 s"]
    assert (spo2, pr, pai, meas) == (None, None, None, MEAS_UNAVAILABLE)
    assert dev & DEV_SENSOR_MALFUNCTIONING


def test_no_allocation_per_sample(ppg: dict[str, Any]) -> None:
    got = ppg["alloc"]
    assert got["ring+estimator per flat sample x20"] == 0
    # Per FIFO read (about 6 a second), at two hours of uptime: 64-bit device times are long ints.
    print("oximeter per-read time check allocates", got["time check per read"], "bytes")
    assert got["time check per read"] <= 256


def test_the_estimator_moves_its_sample_count_back_without_a_change_in_values(ppg: dict[str, Any]) -> None:
    """Beat times are the sample count x 16: past 2**26 samples (7.8 days) a long int, past 2**30
    (124 days) the count itself, allocated at every sample. The estimator moves the count back,
    with the last beat and foot measured in it, and reports exactly what it would have."""
    got = ppg["estimator rebase"]
    assert got["n"] < 1 << 25, "the count was moved back"
    assert got["beats"][1] == got["beats"][0] >= 20
    assert got["seconds"]["moved"] == got["seconds"]["plain"]
    assert got["seconds"]["plain"][-1][0] is not None  # values throughout, not an idle estimator
