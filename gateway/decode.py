"""BLE notification bytes -> contract readings (docs/contract.md section 2). Pure: no I/O, no clock.

Rules of this file:
- Bytes in, readings out: a `Notification` goes in, an `EcgReading`/`PpgReading`/... or a
  `Rejected` comes out. Nothing raises on bad bytes.
- Device time becomes UTC here, through a per-device clock offset (`ClockSync`). A standard
  characteristic carries no device time: it is as late as the waveform frame just before it from
  the same device (`_late_us`), so a backlog (a wired hub replaying after a gateway restart, a
  busy gateway reading many lines at once) keeps the times the values were measured at.
- Message ids are minted here, once; the spool keeps them, so a resend is recognisably the same.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NotRequired, TypedDict, cast

from firmware import nabz_codec as codec
from nabz import contract
from nabz.contract import (
    BatteryReading,
    EcgReading,
    HrReading,
    MeasStatus,
    PpgReading,
    Reading,
    Rejected,
    SensorStatus,
    Spo2Reading,
    WaveFlag,
)

__all__ = [
    "ATT_MAX_VALUE",
    "Notification",
    "ClockSync",
    "Decoder",
    "normalize_uuid",
    "utc_from_us",
]

_SIG_BASE_SUFFIX = "-0000-1000-8000-00805f9b34fb"


def normalize_uuid(uuid: str) -> str:
    """SIG UUIDs to their 16-bit form ('2a37'); vendor UUIDs lower-case in full."""
    u = uuid.lower()
    if u.startswith("0000") and u.endswith(_SIG_BASE_SUFFIX) and len(u) == 36:
        return u[4:8]
    if len(u) == 6 and u.startswith("0x"):
        return u[2:]
    return u


ATT_MAX_VALUE = 512  # Core spec Vol 3 Part F 3.2.9: an attribute value is at most 512 bytes
_HRM = f"{codec.UUID_HEART_RATE_MEASUREMENT:04x}"
_PLX_CONT = f"{codec.UUID_PLX_CONTINUOUS:04x}"
_PLX_SPOT = f"{codec.UUID_PLX_SPOT_CHECK:04x}"
_BATTERY = f"{codec.UUID_BATTERY_LEVEL:04x}"


@dataclass(frozen=True, slots=True)
class Notification:
    """One BLE notification as a transport delivered it. rx_us: gateway UTC clock, µs since epoch."""

    device: str
    char: str
    data: bytes
    rx_us: int


def utc_from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, UTC).replace(microsecond=us % 1_000_000)


@dataclass(slots=True)
class _DeviceClock:
    offset: int
    last_t0: int
    recent: deque[int]
    anchored: int = 0  # frames still to see while a restored offset holds (0: not anchored)


@dataclass(slots=True)
class ClockSync:
    """UTC minus device clock, per device, kept so that waveform timestamps never go backwards.

    Radio and queueing only ever delay a notification, so the smallest (receive time − device time
    of the frame's last sample) over recent frames estimates the offset plus the least latency. The
    offset in use moves towards that estimate by at most `SLEW_US` per frame: less than one sample
    period, so consecutive frames never overlap in time (an overlap would overwrite points in
    InfluxDB). An error beyond `STEP_US` (the gateway's clock was stepped) is corrected at once and
    counted in `steps`; forward only when the window's lateness is even (within `STEADY_US`), since
    a gateway that stalled and reads its backlog at once also sees every frame late, by less and
    less (found by the fault suite at 720× speed: a 5 s jump, then frames overlapping in time).
    Resent frames carry old samples: they use the offset but do not move it. A device clock that
    runs backwards means the wearable restarted: its estimate starts afresh.

    The estimate survives a restart of the gateway (`dump`/`restore`, kept in the spool with the
    readings). Without it the first frames after a restart - a wired sensor replaying what the
    gateway missed, late by the whole downtime - would set the offset, shifting the replayed data
    forward by the downtime and then stepping back over it (found by the fault suite: data 139 s
    ahead, then frames overlapping in time). A restored offset is held, and late frames do not move
    it, until a frame arrives on time again (within `STEP_US`) or `HOLD_FRAMES` have passed.
    """

    SLEW_US = 1_000
    STEP_US = 2_000_000
    STEADY_US = 1_500_000  # lateness this even over the window: a stepped clock, not a backlog
    WINDOW = 32
    HOLD_FRAMES = 8192  # about an hour of ECG frames: a restored offset is trusted this long at most

    devices: dict[str, _DeviceClock] = field(default_factory=dict)
    steps: int = 0
    changed: set[str] = field(default_factory=set)

    def observe(self, device: str, t0_us: int, t_end_us: int, rx_us: int, resent: bool = False) -> int:
        seen = rx_us - t_end_us
        st = self.devices.get(device)
        self.changed.add(device)
        if st is None or (not resent and t0_us < st.last_t0):
            st = self.devices[device] = _DeviceClock(seen, t0_us, deque([seen], maxlen=self.WINDOW))
            return st.offset
        if resent:
            return st.offset
        st.last_t0 = t0_us
        if st.anchored:
            # After a gateway restart: late frames (a replay of what it missed) keep the restored
            # offset; a frame on time, or one earlier than the offset allows, ends the hold.
            st.anchored -= 1
            if seen > st.offset + self.STEP_US and st.anchored:
                return st.offset
            st.anchored = 0
            st.recent.clear()
        st.recent.append(seen)
        least = min(st.recent)
        delta = least - st.offset
        # Earlier than the offset allows: data cannot come before it was measured, so the
        # gateway's clock went back: step at once. Later: a clock stepped forward leaves every
        # frame late by the same amount, but a stalled gateway reading its backlog at once sees
        # lateness fall from frame to frame as it catches up; only the first is a step.
        steady = max(st.recent) - least <= self.STEADY_US
        if delta < -self.STEP_US or (delta > self.STEP_US and steady):
            st.offset += delta
            self.steps += 1
        else:
            st.offset += max(-self.SLEW_US, min(self.SLEW_US, delta))
        return st.offset

    def reset(self, device: str) -> None:
        self.devices.pop(device, None)

    def dump(self, device: str) -> str:
        st = self.devices[device]
        return f"{st.offset}:{st.last_t0}"

    def restore(self, device: str, text: str) -> None:
        """A device's offset as `dump` wrote it before a restart; held as described above."""
        try:
            offset, last_t0 = (int(x) for x in text.split(":"))
        except ValueError:
            return
        self.devices[device] = _DeviceClock(
            offset, last_t0, deque([offset], maxlen=self.WINDOW), self.HOLD_FRAMES
        )

    def take_changed(self) -> dict[str, str]:
        out = {d: self.dump(d) for d in self.changed if d in self.devices}
        self.changed.clear()
        return out


def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


class _Envelope(TypedDict):
    v: Literal[1]
    id: str
    site: str
    gateway: str
    device: str
    t: datetime
    rx: datetime
    device_t_us: NotRequired[int]
    clock_offset_us: NotRequired[int]


class Decoder:
    """Decodes notifications for one gateway into contract readings."""

    LATE_FOR_US = 5_000_000  # a waveform frame this recent says how late what follows it is

    def __init__(self, site: str, gateway: str, new_id: Callable[[], str] = contract.new_id) -> None:
        self.site = site
        self.gateway = gateway
        self.new_id = new_id
        self.clock = ClockSync()
        self._wave_late: dict[str, tuple[int, int]] = {}  # device -> (rx_us, late_us) of its last live frame
        self._last_t: dict[tuple[str, str], int] = {}  # (device, characteristic) -> last `t` given, µs

    def decode(self, n: Notification) -> Reading | Rejected:
        char = normalize_uuid(n.char)
        if len(n.data) > ATT_MAX_VALUE:
            return Rejected(
                "ble_decode", f"{char}: {len(n.data)} bytes, more than a characteristic value holds"
            )
        if char == codec.NABZ_ECG_WAVEFORM or char == codec.NABZ_PPG_WAVEFORM:
            frame = self.parse_wave(n)
            assert frame is not None  # a waveform characteristic
            return frame if isinstance(frame, Rejected) else self.wave_reading(n, frame)
        try:
            if char == _HRM:
                return self._hrm(n)
            if char in (_PLX_CONT, _PLX_SPOT):
                return self._plx(n, char == _PLX_SPOT)
            if char == _BATTERY:
                pct = codec.battery_decode(n.data)
                return BatteryReading(**self._envelope(n, self._late_us(n, _BATTERY)), battery_pct=pct)
        except ValueError as exc:
            return Rejected("ble_decode", f"{char}: {exc}")
        return Rejected("unknown_characteristic", f"no decoder for characteristic {char}")

    def _envelope(self, n: Notification, t_us: int | None = None) -> _Envelope:
        rx = utc_from_us(n.rx_us)
        return {
            "v": 1,
            "id": self.new_id(),
            "site": self.site,
            "gateway": self.gateway,
            "device": n.device,
            "t": rx if t_us is None else utc_from_us(t_us),
            "rx": rx,
        }

    def _late_us(self, n: Notification, char: str) -> int:
        """When a standard characteristic's value was measured: its receive time, less the delay of
        the same device's last waveform frame when that frame arrived in the last few seconds
        (lines read in one burst, or replayed after a restart, share a receive time but not a
        measurement time). At least a microsecond after the last value of the same characteristic
        of the device, so that no two share a point in the time-series store."""
        t = n.rx_us
        wave = self._wave_late.get(n.device)
        if wave is not None and 0 <= n.rx_us - wave[0] <= self.LATE_FOR_US:
            t -= wave[1]
        key = (n.device, char)
        t = max(t, self._last_t.get(key, t - 1) + 1)
        self._last_t[key] = t
        return t

    def parse_wave(self, n: Notification) -> dict[str, Any] | Rejected | None:
        """A waveform frame's fields, checked whole (header, length, flags, its kind against its
        characteristic) and nothing else done: the gateway's gap tracker sees a frame only once it
        is known good (a malformed frame with a wrong sequence number must not move it), and the
        clock estimate and the message id only once the tracker kept it (`wave_reading`).
        None if `n` is not on a waveform characteristic."""
        char = normalize_uuid(n.char)
        if char != codec.NABZ_ECG_WAVEFORM and char != codec.NABZ_PPG_WAVEFORM:
            return None
        if len(n.data) > ATT_MAX_VALUE:
            return Rejected(
                "ble_decode", f"{char}: {len(n.data)} bytes, more than a characteristic value holds"
            )
        try:
            frame: dict[str, Any] = codec.wave_decode(n.data)
        except ValueError as exc:
            return Rejected("ble_decode", f"{char}: {exc}")
        want = codec.WAVE_KIND_ECG if char == codec.NABZ_ECG_WAVEFORM else codec.WAVE_KIND_PPG
        if frame["kind"] != want:
            return Rejected(
                "ble_decode", f"{char}: frame of kind {frame['kind']} on the wrong characteristic"
            )
        return frame

    def wave_reading(self, n: Notification, frame: dict[str, Any]) -> Reading | Rejected:
        """The reading of a frame `parse_wave` returned: its time from the device clock's offset."""
        try:
            return self._wave(n, frame)
        except ValueError as exc:
            return Rejected("ble_decode", f"{normalize_uuid(n.char)}: {exc}")

    def _wave(self, n: Notification, frame: dict[str, Any]) -> Reading:
        rate = frame["rate_hz"]
        count = frame["n"]
        t0_us = frame["t0_us"]
        t_end_us = t0_us + (count - 1) * 1_000_000 // rate
        resent = bool(frame["flags"] & codec.WAVE_FLAG_RESENT)
        offset = self.clock.observe(n.device, t0_us, t_end_us, n.rx_us, resent)
        if not resent:
            self._wave_late[n.device] = (n.rx_us, max(0, n.rx_us - (t_end_us + offset)))
        env = self._envelope(n)
        env["t"] = utc_from_us(t0_us + offset)
        env["device_t_us"] = t0_us
        env["clock_offset_us"] = offset
        flags = cast(list[WaveFlag], codec.bits_to_names(frame["flags"], codec.WAVE_FLAG_NAMES))
        samples = frame["samples"]
        if frame["kind"] == codec.WAVE_KIND_ECG:
            return EcgReading(**env, seq=frame["seq"], rate_hz=rate, flags=flags, signal_uv=samples)
        return PpgReading(
            **env,
            seq=frame["seq"],
            rate_hz=rate,
            flags=flags,
            red_counts=samples[0::2],
            ir_counts=samples[1::2],
        )

    def _hrm(self, n: Notification) -> Reading:
        m = codec.hrm_decode(n.data)
        return HrReading(
            **self._envelope(n, self._late_us(n, _HRM)),
            hr_bpm=m["hr_bpm"],
            contact=m["contact"],
            rr_ms=[rr * 1000 / 1024 for rr in m["rr_1024"]],
            energy_kj=m["energy_kj"],
        )

    def _plx(self, n: Notification, spot: bool) -> Reading:
        m = codec.plx_spot_check_decode(n.data) if spot else codec.plx_continuous_decode(n.data)
        meas = m["meas_status"] or 0
        dev = m["dev_status"] or 0
        return Spo2Reading(
            **self._envelope(n, self._late_us(n, _PLX_SPOT if spot else _PLX_CONT)),
            mode="spot" if spot else "continuous",
            spo2_pct=_finite_or_none(m["spo2_pct"]),
            pr_bpm=_finite_or_none(m["pr_bpm"]),
            pi_pct=_finite_or_none(m["pai_pct"]),
            meas_status=cast(list[MeasStatus], codec.bits_to_names(meas, codec.MEAS_STATUS_BITS)),
            sensor_status=cast(list[SensorStatus], codec.bits_to_names(dev, codec.DEV_STATUS_BITS)),
        )
