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
_SERIES = {_PLX_SPOT: _PLX_CONT}  # characteristics stored in one series (docs/storage.md)


@dataclass(frozen=True, slots=True)
class Notification:
    """One BLE notification as a transport delivered it. rx_us: gateway UTC clock, µs since epoch.
    mono_us: the gateway's monotonic clock at the same moment, from a transport that has one apart
    from its wall clock: a step of the wall clock (NTP on a Pi that booted without the time) shows
    as a change of rx_us - mono_us, and the device clocks' offsets follow it at once."""

    device: str
    char: str
    data: bytes
    rx_us: int
    mono_us: int | None = None


def utc_from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, UTC).replace(microsecond=us % 1_000_000)


@dataclass(slots=True)
class _DeviceClock:
    offset: int
    last_t0: int
    recent: deque[int]
    # While a restored offset holds: the receive time it holds until, µs (-1: from the first
    # frame after the restore; 0: not held)
    held_until: int = 0


@dataclass(slots=True)
class ClockSync:
    """UTC minus device clock, per device, kept so that waveform timestamps never go backwards.

    Radio and queueing only ever delay a notification, so the smallest (receive time − device time
    of the frame's last sample) over recent frames estimates the offset plus the least latency. The
    offset in use moves towards that estimate by at most `SLEW_US` per frame when it comes earlier
    (less latency than seen before): less than one sample period, so consecutive frames never
    overlap in time (an overlap would overwrite points in InfluxDB); and by at most `DRIFT_US` when
    it comes later, which follows a device clock slower than the gateway's by 200-300 ppm at the
    frames' rates (a crystal drifts by tens) but not the growth of a backlog. A frame earlier than
    the offset allows by more than `STEP_US` (data cannot arrive before it was measured: the
    offset was too large) steps it back at once. Resent frames carry old samples: they use the
    offset but do not move it. A device clock that runs backwards means the wearable restarted:
    its estimate starts afresh.

    Frames that come later and later never step the offset forward, however steadily: a backlog
    (a gateway or a serial line that fell behind, a radio link retrying) looks the same as a
    gateway clock stepped forward, and stepping over it left a hole in the data and an overlap when
    it drained (until 2026-11-28, when every recent frame was late by about the same amount; found
    by the six-hour outage fault test, whose sensor falls behind a clock running 720 times real
    time: 45 steps forward and 426 back in one run, and a desaturation split in two too short to
    alarm). A step of the gateway's own wall clock is seen as what it is, a change of wall minus
    monotonic time between notifications (`Notification.mono_us`), and every device's offset
    follows it at once, counted in `steps`.

    The estimate survives a restart of the gateway (`dump`/`restore`, kept in the spool with the
    readings). Without it the first frames after a restart - a wired sensor replaying what the
    gateway missed, late by the whole downtime - would set the offset, shifting the replayed data
    forward by the downtime and then stepping back over it (found by the fault suite: data 139 s
    ahead, then frames overlapping in time). A restored offset is held, and late frames do not move
    it, until a frame arrives on time again (within `STEP_US`) or `HOLD_US` have passed since the
    first frame after the restore (by the gateway's clock, not by frames: a replay read faster
    than real time ran a hold of 8,192 frames out before it had caught up, until 2026-11-28); then
    the estimate starts afresh from the frames (the wall clock may have been set while the gateway
    was down, which the monotonic clock cannot tell across a reboot).
    """

    SLEW_US = 1_000
    DRIFT_US = 100
    STEP_US = 2_000_000
    WINDOW = 32
    HOLD_US = 3_600_000_000  # a restored offset is trusted this long at most

    devices: dict[str, _DeviceClock] = field(default_factory=dict)
    steps: int = 0
    changed: set[str] = field(default_factory=set)
    wall_minus_mono: int | None = None  # µs, at the last notification that carried both clocks

    def observe(
        self,
        device: str,
        t0_us: int,
        t_end_us: int,
        rx_us: int,
        resent: bool = False,
        mono_us: int | None = None,
    ) -> int:
        if mono_us is not None:  # the offsets alone (`Decoder` follows the clock itself first)
            self.follow_wall_clock(rx_us - mono_us)
        seen = rx_us - t_end_us
        st = self.devices.get(device)
        self.changed.add(device)
        if st is None or (not resent and t0_us < st.last_t0):
            st = self.devices[device] = _DeviceClock(seen, t0_us, deque([seen], maxlen=self.WINDOW))
            return st.offset
        if resent:
            return st.offset
        st.last_t0 = t0_us
        if st.held_until:
            # After a gateway restart: late frames (a replay of what it missed) keep the restored
            # offset; a frame on time, or one earlier than the offset allows, ends the hold, and
            # a hold that runs out starts the estimate afresh.
            if st.held_until < 0:
                st.held_until = rx_us + self.HOLD_US
            if seen > st.offset + self.STEP_US:
                if rx_us < st.held_until:
                    return st.offset
                st.offset = seen
                self.steps += 1
            st.held_until = 0
            st.recent.clear()
        st.recent.append(seen)
        delta = min(st.recent) - st.offset
        if delta < -self.STEP_US:
            st.offset += delta
            self.steps += 1
        else:
            st.offset += max(-self.SLEW_US, min(self.DRIFT_US, delta))
        return st.offset

    def follow_wall_clock(self, wall_minus_mono: int) -> int:
        """The gateway's wall clock stepped when wall minus monotonic time changes by more than
        `STEP_US` (NTP slews it by parts per million otherwise): every offset moves with it.
        Returns the step, µs (0: none)."""
        last, self.wall_minus_mono = self.wall_minus_mono, wall_minus_mono
        if last is None or abs(wall_minus_mono - last) <= self.STEP_US:
            return 0
        shift = wall_minus_mono - last
        for name, st in self.devices.items():
            st.offset += shift
            st.recent = deque((x + shift for x in st.recent), maxlen=self.WINDOW)
            if st.held_until > 0:
                st.held_until += shift
            self.changed.add(name)
        self.steps += 1
        return shift

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
            offset, last_t0, deque([offset], maxlen=self.WINDOW), held_until=-1
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
    # Values of one characteristic are at least this far apart: the time-series server keeps
    # milliseconds (VictoriaMetrics deduplicates within 1 ms, docs/storage.md), so two values a
    # microsecond apart would be one point there.
    SPACING_US = 1_000

    def __init__(self, site: str, gateway: str, new_id: Callable[[], str] = contract.new_id) -> None:
        self.site = site
        self.gateway = gateway
        self.new_id = new_id
        self.clock = ClockSync()
        # device -> (rx_us, late_us, span_us) of its last live frame
        # device -> (rx_us, late_us, span_us, number) of its last live frame; numbered, since
        # frames read in one chunk of a serial line share a receive time
        self._wave_late: dict[str, tuple[int, int, int, int]] = {}
        self._frames = 0
        # (device, series) -> the last `t` given, µs, and the number of the frame it was stamped
        # from (None: stamped on arrival)
        self._last_t: dict[tuple[str, str], tuple[int, int | None]] = {}

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
        """When a standard characteristic's value was measured. After a waveform frame of the same
        device: the value came after the frame's last sample and before the next frame, which is
        due one frame's span later, so it is stamped that frame's end (its device time, as late as
        the frame came) plus the time between their receptions, at most one span: lines read in one
        burst, or replayed after a restart, share a receive time but not a measurement time, and
        a pause in reading between the frame and the value tells nothing of when it was measured
        (the six-hour outage fault test on CI: a value read a moment after its frame was stamped
        seconds ahead, and the next ones bunched after it, so a desaturation raised no alarm). This
        holds while the frame is recent: it arrived in the last few seconds or, if it came late,
        within as long as it was late (a backlog that deep, read in pieces, is still as late). A
        second value of the series after the same frame means the frames stopped and the values
        did not (a PPG sensor failing while the oximeter still reports): it is stamped on arrival,
        less as late as that frame came. Otherwise, or with no frame: its receive time. At least
        `SPACING_US` after the device's last value of the same series (spot-check and continuous
        SpO2 are one), so that each is a point of its own in the time-series store."""
        self._follow_wall_clock(n)
        key = (n.device, _SERIES.get(char, char))
        last_t, last_anchor = self._last_t.get(key, (None, None))
        t, anchor = n.rx_us, None
        wave = self._wave_late.get(n.device)
        if wave is not None:
            rx_us, late_us, span_us, number = wave
            since = n.rx_us - rx_us
            if 0 <= since <= max(self.LATE_FOR_US, late_us):
                anchor = number
                if anchor != last_anchor:
                    t = rx_us - late_us + min(since, span_us)
                else:  # a second value after one frame: the frames stopped, the values did not
                    t = n.rx_us - late_us
        if last_t is not None:
            t = max(t, last_t + self.SPACING_US)
        self._last_t[key] = (t, anchor)
        return t

    def _follow_wall_clock(self, n: Notification) -> None:
        """A step of the gateway's wall clock (`ClockSync.follow_wall_clock`) moves the times kept
        here with the device clocks' offsets: after a step back, vital signs would otherwise be
        stamped a millisecond apart after the last one until the clock passed it again."""
        if n.mono_us is None:
            return
        shift = self.clock.follow_wall_clock(n.rx_us - n.mono_us)
        if shift:
            self._wave_late = {d: (w[0] + shift, *w[1:]) for d, w in self._wave_late.items()}
            self._last_t = {k: (t + shift, a) for k, (t, a) in self._last_t.items()}

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
        self._follow_wall_clock(n)
        offset = self.clock.observe(n.device, t0_us, t_end_us, n.rx_us, resent)
        if not resent:
            span_us = count * 1_000_000 // rate  # the next frame is due this long after this one
            self._frames += 1
            late_us = max(0, n.rx_us - (t_end_us + offset))
            self._wave_late[n.device] = (n.rx_us, late_us, span_us, self._frames)
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
