"""Helpers for the virtual-wearable tests: decode what a device sent with the shared codec."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from firmware import nabz_codec as codec
from hardware import (
    CHAR_BATTERY_LEVEL,
    CHAR_ECG_WAVEFORM,
    CHAR_HEART_RATE,
    CHAR_PLX_CONTINUOUS,
    CHAR_PPG_WAVEFORM,
    Notification,
    VirtualDevice,
)


@dataclass
class Decoded:
    """Everything one device sent, decoded; times are device seconds since the run started."""

    boot_us: int
    frames: list[dict[str, Any]] = field(default_factory=list)
    hrm: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    plx: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    battery: list[tuple[float, int]] = field(default_factory=list)
    raw: list[Notification] = field(default_factory=list)

    def samples(self) -> np.ndarray:
        """ECG: (N,) microvolts; PPG: (N, 2) red, IR."""
        flat = [s for f in self.frames for s in f["samples"]]
        arr = np.array(flat)
        if self.frames and self.frames[0]["kind"] == codec.WAVE_KIND_PPG:
            return arr.reshape(-1, 2)
        return arr

    def frame_t(self, f: dict[str, Any]) -> tuple[float, float]:
        """(first, last) sample time of a frame, seconds since the run started."""
        t0 = (f["t0_us"] - self.boot_us) / 1e6
        return t0, t0 + (f["n"] - 1) / f["rate_hz"]


def decode(device: VirtualDevice, notifications: list[Notification], into: Decoded | None = None) -> Decoded:
    out = into if into is not None else Decoded(device.boot_us)
    for n in notifications:
        assert n.device_id == device.device_id
        out.raw.append(n)
        t = (n.device_t_us - device.boot_us) / 1e6
        if n.char_uuid in (CHAR_ECG_WAVEFORM, CHAR_PPG_WAVEFORM):
            out.frames.append(codec.wave_decode(n.data))
        elif n.char_uuid == CHAR_HEART_RATE:
            out.hrm.append((t, codec.hrm_decode(n.data)))
        elif n.char_uuid == CHAR_PLX_CONTINUOUS:
            out.plx.append((t, codec.plx_continuous_decode(n.data)))
        elif n.char_uuid == CHAR_BATTERY_LEVEL:
            out.battery.append((t, codec.battery_decode(n.data)))
        else:
            raise AssertionError(f"unexpected characteristic {n.char_uuid}")
    return out


def run(device: VirtualDevice, seconds: float, step: float = 1.0) -> Decoded:
    """Advance a device `seconds` in steps of `step` and decode everything it sent."""
    out = Decoded(device.boot_us)
    steps = round(seconds / step)
    for _ in range(steps):
        decode(device, device.advance(step), out)
    return out


def has(flags: int, bit: int) -> bool:
    return bool(flags & bit)
