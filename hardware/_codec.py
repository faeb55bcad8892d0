"""Typed facade over the shared wire codec `firmware.nabz_codec`, plus a fast CPython frame packer.

Rules of this file:
- The codec itself is the one truth for every byte the virtual wearables send. It is written in
  the MicroPython subset without annotations, so mypy --strict cannot check calls into it; it is
  imported through importlib and each function used here gets its typed signature once, here.
- `pack_wave_frames` is a vectorised equivalent of `wave_encode` for CPython (numpy builds the
  sample bytes of many frames at once). tests/hardware/test_packing.py proves it byte-identical.
"""

from __future__ import annotations

import importlib
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "NABZ_ECG_WAVEFORM",
    "NABZ_PPG_WAVEFORM",
    "NABZ_CONTROL",
    "WAVE_KIND_ECG",
    "WAVE_KIND_PPG",
    "WAVE_FLAG_LEADS_OFF",
    "WAVE_FLAG_SATURATED",
    "WAVE_FLAG_SENSOR_OFF",
    "WAVE_FLAG_LOW_BATTERY",
    "WAVE_FLAG_RESENT",
    "CTRL_OP_RESEND",
    "UUID_HEART_RATE_MEASUREMENT",
    "UUID_PLX_CONTINUOUS",
    "UUID_BATTERY_LEVEL",
    "hrm_encode",
    "plx_continuous_encode",
    "battery_encode",
    "wave_max_samples",
    "control_decode",
    "control_report_encode",
    "pack_wave_frames",
]

_codec: Any = importlib.import_module("firmware.nabz_codec")

NABZ_ECG_WAVEFORM: str = str(_codec.NABZ_ECG_WAVEFORM)
NABZ_PPG_WAVEFORM: str = str(_codec.NABZ_PPG_WAVEFORM)
NABZ_CONTROL: str = str(_codec.NABZ_CONTROL)
WAVE_KIND_ECG: int = int(_codec.WAVE_KIND_ECG)
WAVE_KIND_PPG: int = int(_codec.WAVE_KIND_PPG)
WAVE_FLAG_LEADS_OFF: int = int(_codec.WAVE_FLAG_LEADS_OFF)
WAVE_FLAG_SATURATED: int = int(_codec.WAVE_FLAG_SATURATED)
WAVE_FLAG_SENSOR_OFF: int = int(_codec.WAVE_FLAG_SENSOR_OFF)
WAVE_FLAG_LOW_BATTERY: int = int(_codec.WAVE_FLAG_LOW_BATTERY)
WAVE_FLAG_RESENT: int = int(_codec.WAVE_FLAG_RESENT)
CTRL_OP_RESEND: int = int(_codec.CTRL_OP_RESEND)
UUID_HEART_RATE_MEASUREMENT: int = int(_codec.UUID_HEART_RATE_MEASUREMENT)
UUID_PLX_CONTINUOUS: int = int(_codec.UUID_PLX_CONTINUOUS)
UUID_BATTERY_LEVEL: int = int(_codec.UUID_BATTERY_LEVEL)

_WAVE_VERSION: int = int(_codec.WAVE_VERSION)
_WAVE_HEADER = struct.Struct(str(_codec.WAVE_HEADER))
_U24_MAX = 0xFFFFFF


def hrm_encode(hr_bpm: int, contact: bool | None = None, rr_1024: Sequence[int] = ()) -> bytes:
    """Heart Rate Measurement 0x2A37 bytes (the codec's `hrm_encode`)."""
    return bytes(_codec.hrm_encode(hr_bpm, contact, None, tuple(rr_1024)))


def plx_continuous_encode(
    spo2: float | None,
    pr: float | None,
    meas_status: int | None = None,
    dev_status: int | None = None,
    pai: float | None = None,
) -> bytes:
    """PLX Continuous Measurement 0x2A5F bytes (the codec's `plx_continuous_encode`)."""
    return bytes(_codec.plx_continuous_encode(spo2, pr, meas_status, dev_status, pai))


def battery_encode(percent: int) -> bytes:
    """Battery Level 0x2A19 bytes."""
    return bytes(_codec.battery_encode(percent))


def wave_max_samples(kind: int, att_mtu: int) -> int:
    """Sample instants per waveform notification at this ATT MTU."""
    return int(_codec.wave_max_samples(kind, att_mtu))


def control_decode(data: bytes) -> dict[str, int]:
    """Control characteristic write -> dict(op, kind, first_seq, last_seq); ValueError if bad."""
    out: dict[str, int] = _codec.control_decode(data)
    return out


def control_report_encode(
    kind: int, first_seq: int, last_seq: int, resent_first: int, resent_count: int
) -> bytes:
    """The device's answer to a RESEND, on the control characteristic (docs/contract.md)."""
    return bytes(_codec.control_report_encode(kind, first_seq, last_seq, resent_first, resent_count))


def pack_wave_frames(
    kind: int,
    rate_hz: int,
    n: int,
    seq0: int,
    t0_us: int,
    period_us: int,
    flags: Sequence[int],
    samples: npt.NDArray[np.integer[Any]],
) -> list[bytes]:
    """Many consecutive full waveform frames at once, byte-identical to `wave_encode` per frame.

    samples: ECG shape (F*n,) microvolts; PPG shape (F*n, 2) red, IR counts. Frame i has `n`
    samples, sequence number seq0+i (mod 2**32), first-sample time t0_us + i*n*period_us and
    status flags flags[i].
    """
    if not 1 <= n <= 255:
        raise ValueError(f"waveform: {n} samples per frame, must be 1..255")
    frames = len(flags)
    if samples.shape[0] != frames * n:
        raise ValueError(f"waveform: {samples.shape[0]} samples for {frames} frames of {n}")
    if kind == WAVE_KIND_ECG:
        if samples.ndim != 1:
            raise ValueError("waveform: ECG samples must be one channel")
        if samples.size and (int(samples.min()) < -32768 or int(samples.max()) > 32767):
            raise ValueError("waveform: ECG sample outside int16")
        body = samples.astype("<i2").tobytes()
        size = 2 * n
    elif kind == WAVE_KIND_PPG:
        if samples.ndim != 2 or samples.shape[1] != 2:
            raise ValueError("waveform: PPG samples must be (n, 2) red, IR")
        if samples.size and (int(samples.min()) < 0 or int(samples.max()) > _U24_MAX):
            raise ValueError("waveform: PPG sample outside uint24")
        # Little-endian uint32 with its top byte dropped is little-endian uint24: red then IR.
        body = samples.astype("<u4").view(np.uint8).reshape(-1, 2, 4)[:, :, :3].tobytes()
        size = 6 * n
    else:
        raise ValueError(f"waveform: unknown stream kind {kind}")
    pack = _WAVE_HEADER.pack
    step_us = n * period_us
    return [
        pack(_WAVE_VERSION, kind, flags[i], n, rate_hz, (seq0 + i) & 0xFFFFFFFF, t0_us + i * step_us)
        + body[i * size : (i + 1) * size]
        for i in range(frames)
    ]
