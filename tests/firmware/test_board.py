"""Real-board checks, opt-in: `pytest -m hardware tests/firmware/test_board.py`.

Only a board proves these (docs/firmware.md, "What only a real board can prove"). Set
NABZ_BOARD_PORT (e.g. /dev/ttyUSB0) to a flashed and deployed board (`make flash deploy`), and for
the BLE test NABZ_BOARD_NAME ("Nabz ecg-0001") with a BLE adapter on this machine (bleak). The
scripts run on the board from tests/firmware/board/ through mpremote.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from firmware import nabz_codec as codec

pytestmark = pytest.mark.hardware
BOARD = Path(__file__).resolve().parent / "board"


def port() -> str:
    p = os.environ.get("NABZ_BOARD_PORT")
    if not p:
        pytest.fail("set NABZ_BOARD_PORT to the serial port of a deployed board", pytrace=False)
    return p


def on_board(script: str, timeout: float = 120) -> dict[str, Any]:
    mpremote = shutil.which("mpremote") or str(Path(sys.executable).parent / "mpremote")
    proc = subprocess.run(
        [mpremote, "connect", port(), "run", str(BOARD / script)],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, proc.stdout
    out: dict[str, Any] = json.loads(line[-1][7:])
    return out


def test_ecg_timer_jitter_on_the_board() -> None:
    got = on_board("board_jitter.py")
    print(got)
    assert got["samples"] >= 60 * 250 - 5
    assert got["missed"] == 0, "slots without a sample in 60 s"
    assert got["max_late_us"] < 4000
    assert got["callback_max_us"] < 2000, "the sampling callback must leave the CPU to BLE"


def test_max30102_samples_at_100_hz_without_loss() -> None:
    got = on_board("board_max30102.py")
    print(got)
    assert got["lost"] == 0
    assert abs(got["rate_hz"] - 100.0) < 3.0, "the chip's oscillator is more than 3 % off"


def test_heap_left_with_the_wearable_running() -> None:
    got = on_board("board_heap.py")
    print(got)
    assert got["free_after"] > 20_000, "less than 20 kB left for the BLE stack's Python side and GC slack"


def test_ble_mtu_frames_and_no_sequence_gaps() -> None:
    name = os.environ.get("NABZ_BOARD_NAME")
    if not name:
        pytest.fail("set NABZ_BOARD_NAME (e.g. 'Nabz ecg-0001') to run the radio test", pytrace=False)
    from bleak import BleakClient, BleakScanner

    async def session() -> tuple[int, list[int], int]:
        device = await BleakScanner.find_device_by_name(name, timeout=20)
        assert device is not None, f"{name} is not advertising"
        seqs: list[int] = []
        async with BleakClient(device) as client:
            mtu = client.mtu_size
            char = codec.NABZ_ECG_WAVEFORM if "ecg" in name else codec.NABZ_PPG_WAVEFORM
            await client.start_notify(
                char, lambda _, data: seqs.append(codec.wave_decode(bytes(data))["seq"])
            )
            await asyncio.sleep(30)
            rssi = getattr(device, "rssi", 0) or 0
        return mtu, seqs, rssi

    mtu, seqs, rssi = asyncio.run(session())
    print(f"MTU {mtu}, {len(seqs)} frames, RSSI {rssi} dBm")
    assert mtu >= 100
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a frame was lost on the air"
