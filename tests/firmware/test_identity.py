"""One patient, three implementations, the same bytes.

A virtual patient (hardware/, synthetic) with leads off, finger out and motion artefacts drives
the virtual wearables (CPython, hardware/wearables.py). The very same samples are played into the
real firmware running in MicroPython 1.27 (fake ADC and leads-off pins for the ECG patch, a model
of the MAX30102 for the oximeter). Every waveform notification must be byte-identical, and the
gateway's CPython decoder must turn the firmware's frames into the readings it expects.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from firmware import nabz_codec as codec
from gateway.decode import Decoder, Notification
from hardware import EcgSynth, Patient, PpgSynth, VirtualEcgPatch, VirtualOximeter
from hardware.scenario import Event, Scenario
from nabz.contract import EcgReading, PpgReading, Rejected
from tests.firmware.fw import RunMicroPython, run_script

SECONDS = 30


def patient() -> Patient:
    sc = Scenario(
        "identity",
        (
            Event("leads_off", 8.0, 3.0),
            Event("sensor_off", 9.0, 4.0),
            Event("motion", 17.0, 4.0, target=3.0),  # big enough to clip the ECG front end
        ),
    )
    return Patient("p-id", seed=11, hr_bpm=80, battery_pct=90, battery_drain_pct_per_h=0, scenario=sc)


def virtual_frames(kind: str) -> tuple[list[bytes], int]:
    p = patient()
    dev: VirtualEcgPatch | VirtualOximeter = VirtualEcgPatch(p) if kind == "ecg" else VirtualOximeter(p)
    char = codec.NABZ_ECG_WAVEFORM if kind == "ecg" else codec.NABZ_PPG_WAVEFORM
    sent = [n.data for n in dev.advance(float(SECONDS)) if n.char_uuid == char]
    return sent, dev.boot_us


def firmware_frames(
    run_micropython: RunMicroPython, tmp: Path, kind: str, boot_us: int
) -> tuple[list[bytes], list[list[object]]]:
    p = patient()
    if kind == "ecg":
        x, flags = EcgSynth(p, p.seed_for("ecg-0001/noise"), reader="ecg-0001").render(0, 250 * SECONDS)
        (tmp / "samples.bin").write_bytes(x.astype("<i2").tobytes())
        (tmp / "flags.bin").write_bytes(flags.astype(np.uint8).tobytes())
    else:
        y, _ = PpgSynth(p, p.seed_for("oxi-0001/noise"), reader="oxi-0001").render(0, 100 * SECONDS)
        (tmp / "samples.bin").write_bytes(y.astype("<i4").tobytes())
    out = run_script(
        run_micropython, "mp_identity.py", files={"/id": tmp}, args=[kind, str(boot_us), str(SECONDS)]
    )
    return [bytes.fromhex(h) for h in out["frames"]], out["vitals"]


@pytest.mark.parametrize("kind", ["ecg", "oximeter"])
def test_firmware_frames_are_the_virtual_wearables_frames(
    run_micropython: RunMicroPython, tmp_path: Path, kind: str
) -> None:
    expected, boot_us = virtual_frames(kind)
    got, _ = firmware_frames(run_micropython, tmp_path, kind, boot_us)
    flags_seen = 0
    for f in expected:
        flags_seen |= f[2]
    wanted = (
        codec.WAVE_FLAG_LEADS_OFF | codec.WAVE_FLAG_SATURATED if kind == "ecg" else codec.WAVE_FLAG_SENSOR_OFF
    )
    assert flags_seen & wanted == wanted, "the scenario must exercise the status flags"
    # The virtual device sends a frame the moment it is full; the firmware a step (20 ms) later:
    # the firmware may hold back the last one.
    print(
        f"{kind}: {len(got)} firmware frames, {len(expected)} virtual frames, flags seen 0x{flags_seen:02x}"
    )
    assert len(expected) - 1 <= len(got) <= len(expected)
    for i, (a, b) in enumerate(zip(got, expected, strict=False)):
        assert a == b, f"frame {i}: firmware {a[:24].hex()}... != virtual {b[:24].hex()}..."


@pytest.mark.parametrize("kind", ["ecg", "oximeter"])
def test_the_gateway_decodes_the_firmware_frames(
    run_micropython: RunMicroPython, tmp_path: Path, kind: str
) -> None:
    _, boot_us = virtual_frames(kind)
    got, vitals = firmware_frames(run_micropython, tmp_path, kind, boot_us)
    decoder = Decoder("demo", "gw-0001")
    char = codec.NABZ_ECG_WAVEFORM if kind == "ecg" else codec.NABZ_PPG_WAVEFORM
    device = "ecg-0001" if kind == "ecg" else "oxi-0001"
    rx = 1_795_597_200_000_000
    samples = 0
    for i, data in enumerate(got):
        reading = decoder.decode(Notification(device, char, data, rx + i * 400_000))
        assert not isinstance(reading, Rejected), reading
        assert isinstance(reading, EcgReading if kind == "ecg" else PpgReading)
        assert reading.seq == i and reading.rate_hz == (250 if kind == "ecg" else 100)
        samples += len(reading.signal_uv) if isinstance(reading, EcgReading) else len(reading.ir_counts)
    assert samples >= (SECONDS - 1) * (250 if kind == "ecg" else 100)
    assert len(vitals) >= SECONDS - 6
