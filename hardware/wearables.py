"""Virtual wearables: the ECG patch and the pulse oximeter, emitting the firmware's exact frames.

Rules of this file:
- A device is a pure state machine over its own clock: `advance(seconds)` returns every
  notification the device would have sent in the next `seconds` of device time, in send order.
  No sleeping, no threads, no wall clock. The gateway's virtual transport drives it.
- Bytes come from the shared codec (`firmware.nabz_codec`), waveforms through the vectorised
  packer `hardware._codec.pack_wave_frames`, which is proven byte-identical to `wave_encode`.
- A waveform frame is sent as soon as it is full (`wave_max_samples(kind, mtu)` samples), like the
  firmware; vitals go out once per device second. Generation is chunk-invariant: the notifications
  of advance(10) equal those of ten advance(1) calls, byte for byte.

Characteristic ids in `Notification.char_uuid`: the Nabz waveform characteristics as their full
lower-case 128-bit UUID (`CHAR_ECG_WAVEFORM`, `CHAR_PPG_WAVEFORM`); Bluetooth SIG characteristics
in their 16-bit form as four lower-case hex digits (`CHAR_HEART_RATE` "2a37", `CHAR_PLX_CONTINUOUS`
"2a5f", `CHAR_BATTERY_LEVEL` "2a19"). `uuid128` gives the full form of either.

Counting, as docs/contract.md does: `readings_generated` is the number of waveform sample instants
sent in frames plus one per vitals notification (heart rate, PLX, battery); samples still waiting
to fill a frame are not counted until sent. `frames_sent` is the number of notifications sent of
any characteristic, resent frames included.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from hardware import _codec as codec
from hardware.ecg import ECG_RATE_HZ, EcgSynth
from hardware.patient import LOW_BATTERY_PCT, Patient
from hardware.ppg import PPG_RATE_HZ, PpgSynth

__all__ = [
    "Notification",
    "VirtualDevice",
    "VirtualEcgPatch",
    "VirtualOximeter",
    "DeviceKind",
    "CHAR_ECG_WAVEFORM",
    "CHAR_PPG_WAVEFORM",
    "CHAR_CONTROL",
    "CHAR_HEART_RATE",
    "CHAR_PLX_CONTINUOUS",
    "CHAR_BATTERY_LEVEL",
    "DEFAULT_MTU",
    "uuid128",
]

CHAR_ECG_WAVEFORM = codec.NABZ_ECG_WAVEFORM
CHAR_PPG_WAVEFORM = codec.NABZ_PPG_WAVEFORM
CHAR_CONTROL = codec.NABZ_CONTROL
CHAR_HEART_RATE = f"{codec.UUID_HEART_RATE_MEASUREMENT:04x}"
CHAR_PLX_CONTINUOUS = f"{codec.UUID_PLX_CONTINUOUS:04x}"
CHAR_BATTERY_LEVEL = f"{codec.UUID_BATTERY_LEVEL:04x}"
DEFAULT_MTU = 247

DeviceKind = Literal["ecg", "oximeter"]

_Samples = npt.NDArray[np.integer[Any]]
_Flags = npt.NDArray[np.uint8]
_Out = list[tuple[int, int, "Notification"]]
_SIG_BASE = "0000{}-0000-1000-8000-00805f9b34fb"
_BATTERY_EVERY_S = 60
_AHEAD_S = 1  # samples are rendered in whole device seconds, so tiny advance() steps stay cheap
_BLOCK_S = 10  # render at most this many seconds of samples per numpy pass (bounds memory)
RESEND_SECONDS = 60  # waveform kept for RESEND requests: the firmware's default `ring_seconds`
# Send order at equal device time: vitals before a waveform frame (keeps chunking invariant).
_ORDER_VITALS, _ORDER_WAVE = 0, 1

# PLX Measurement Status / Device and Sensor Status bits (PLXS 1.0.1).
_MEAS_UNAVAILABLE = 1 << 13
_MEAS_QUESTIONABLE = 1 << 14
_DEV_ERRATIC = 1 << 6
_DEV_NONPULSATILE = 1 << 7
_DEV_UNCONNECTED = 1 << 11


def uuid128(char_uuid: str) -> str:
    """The full lower-case 128-bit UUID of a characteristic id as used in `Notification`."""
    u = char_uuid.lower()
    return _SIG_BASE.format(u) if len(u) == 4 else u


@dataclass(frozen=True, slots=True)
class Notification:
    """One BLE notification a virtual wearable sent.

    char_uuid: see the module docstring. device_t_us: the device clock (µs since it booted) when it
    was sent; for a waveform frame, the time of its last sample.
    """

    device_id: str
    char_uuid: str
    data: bytes
    device_t_us: int


class VirtualDevice:
    """What both wearables share: clock, waveform framing, battery, counters, RESEND."""

    kind: DeviceKind
    _wave_kind: int
    _wave_char: str
    _rate_hz: int

    def __init__(
        self, patient: Patient, device_id: str, *, mtu: int = DEFAULT_MTU, seq_start: int = 0
    ) -> None:
        self.patient = patient
        self.device_id = device_id
        self.name = f"Nabz {device_id}"  # the advertised local name
        self.mtu = mtu
        self.frame_samples = codec.wave_max_samples(self._wave_kind, mtu)
        rng = patient.rng_for(f"{device_id}/clock")
        # The device booted a while before the simulation started; its clock counts from boot.
        self.boot_us = int(rng.integers(5_000_000, 3_600_000_000))
        self.readings_generated = 0
        self.frames_sent = 0
        self.frames_resent = 0
        self._period_us = 1_000_000 // self._rate_hz
        self._elapsed_us = 0
        # Rendered samples not yet sent in a frame: indices _buf_k0 .. _buf_k0 + len(_buf) - 1.
        # Rendering runs up to a second ahead of the device clock; only samples whose time has
        # come (index < _avail_k) are framed.
        self._buf: _Samples = np.zeros((0,) if self._wave_kind == codec.WAVE_KIND_ECG else (0, 2), np.int32)
        self._buf_flags: _Flags = np.zeros(0, np.uint8)
        self._buf_k0 = 0
        self._avail_k = 0
        self._seq = seq_start & 0xFFFFFFFF
        self._ticks = 0  # vitals seconds already sent
        self._started = False
        self._battery_sent: tuple[int, int] | None = None  # (level, second sent)
        self._low_battery_from_s = patient.low_battery_from_s
        held = -(-RESEND_SECONDS * self._rate_hz // self.frame_samples)  # whole frames, rounded up
        self._resend: deque[tuple[int, bytes]] = deque(maxlen=held)
        self._vitals_rng = patient.rng_for(f"{device_id}/vitals")

    # -- public --------------------------------------------------------------------------------
    @property
    def patient_id(self) -> str:
        return self.patient.patient_id

    @property
    def device_t_us(self) -> int:
        """The device clock now (µs since boot)."""
        return self.boot_us + self._elapsed_us

    @property
    def elapsed_s(self) -> float:
        """Device seconds simulated so far."""
        return self._elapsed_us / 1e6

    def advance(self, seconds: float) -> list[Notification]:
        """Everything the device sends in the next `seconds` of its own time, in send order."""
        if seconds < 0:
            raise ValueError("cannot advance a device backwards")
        out: _Out = []
        if not self._started:
            self._started = True
            self._battery(0, out)
        end_us = self._elapsed_us + round(seconds * 1_000_000)
        self._elapsed_us = end_us
        self._avail_k = -(-end_us // self._period_us)  # samples taken at times < end_us
        if self._avail_k > self._buf_k0 + self._buf.shape[0]:
            self._render_ahead()
        self._frame(out, flush=False)
        for second in range(self._ticks + 1, end_us // 1_000_000 + 1):
            self._vitals(second, out)
            self._battery(second, out)
        self._ticks = max(self._ticks, end_us // 1_000_000)
        out.sort(key=lambda item: (item[0], item[1]))
        return [item[2] for item in out]

    def flush(self) -> list[Notification]:
        """Send the partly filled frame now (e.g. before disconnecting), if there is one."""
        out: _Out = []
        self._frame(out, flush=True)
        return [item[2] for item in out]

    def write(self, char_uuid: str, data: bytes) -> list[Notification]:
        """A GATT write from the gateway. Control RESEND returns the frames still buffered, then the
        report the firmware sends on the control characteristic: which frames of the request are
        coming (the rest are older than the last `RESEND_SECONDS` or were never produced).
        ValueError for bad writes."""
        if uuid128(char_uuid) != CHAR_CONTROL:
            raise ValueError(f"{self.device_id}: characteristic {char_uuid} is not writable")
        req = codec.control_decode(data)
        if req["op"] != codec.CTRL_OP_RESEND or req["kind"] != self._wave_kind:
            return []
        first, last = req["first_seq"], req["last_seq"]
        span = (last - first) & 0xFFFFFFFF
        out: list[Notification] = []
        for seq, frame in self._resend:
            if (seq - first) & 0xFFFFFFFF <= span:
                data_resent = frame[:2] + bytes([frame[2] | codec.WAVE_FLAG_RESENT]) + frame[3:]
                out.append(Notification(self.device_id, self._wave_char, data_resent, self.device_t_us))
        self.frames_sent += len(out)
        self.frames_resent += len(out)
        resent_first = int.from_bytes(out[0].data[6:10], "little") if out else (last + 1) & 0xFFFFFFFF
        report = codec.control_report_encode(self._wave_kind, first, last, resent_first, len(out))
        out.append(Notification(self.device_id, CHAR_CONTROL, report, self.device_t_us))
        return out

    # -- framing ---------------------------------------------------------------------------------
    def _render(self, k0: int, n: int) -> tuple[_Samples, _Flags]:
        raise NotImplementedError

    def _render_ahead(self) -> None:
        """Render whole seconds of samples until every available sample is in the buffer."""
        ahead = _AHEAD_S * self._rate_hz
        k = self._buf_k0 + self._buf.shape[0]
        target = -(-self._avail_k // ahead) * ahead
        parts, part_flags = [self._buf], [self._buf_flags]
        while k < target:
            n = min(_BLOCK_S * self._rate_hz, target - k)
            samples, flags = self._render(k, n)
            if self._low_battery_from_s < (k + n - 1) / self._rate_hz:
                t = (k + np.arange(n)) / self._rate_hz
                flags = flags | np.where(t > self._low_battery_from_s, codec.WAVE_FLAG_LOW_BATTERY, 0).astype(
                    np.uint8
                )
            parts.append(samples)
            part_flags.append(flags)
            k += n
        self._buf = np.concatenate(parts)
        self._buf_flags = np.concatenate(part_flags)

    def _frame(self, out: _Out, flush: bool) -> None:
        """Send every full frame available (and, when flushing, the partial one after them)."""
        size = self.frame_samples
        count = self._avail_k - self._buf_k0
        if count < size and not (flush and count > 0):
            return
        samples, flags = self._buf, self._buf_flags
        full = count // size * size
        data: list[bytes] = []
        if full:
            frame_flags = np.bitwise_or.reduceat(flags[:full], np.arange(0, full, size)).tolist()
            data = self._pack(size, 0, frame_flags, samples[:full])
        if flush and full < count:
            rest_flags = [int(np.bitwise_or.reduce(flags[full:count]))]
            data += self._pack(count - full, full, rest_flags, samples[full:count])
            full = count
        k = self._buf_k0
        for frame in data:
            k += frame[3]  # n, samples in this frame
            sent_us = self.boot_us + (k - 1) * self._period_us
            out.append((sent_us, _ORDER_WAVE, Notification(self.device_id, self._wave_char, frame, sent_us)))
            self._resend.append((self._seq, frame))
            self._seq = (self._seq + 1) & 0xFFFFFFFF
        self._buf_k0 += full
        self._buf = samples[full:]
        self._buf_flags = flags[full:]
        self.readings_generated += full
        self.frames_sent += len(data)

    def _pack(self, n: int, offset: int, flags: list[int], samples: _Samples) -> list[bytes]:
        """Frames of n samples, the first starting `offset` samples after the pending start."""
        t0_us = self.boot_us + (self._buf_k0 + offset) * self._period_us
        seq = self._seq + offset // self.frame_samples
        return codec.pack_wave_frames(
            self._wave_kind, self._rate_hz, n, seq, t0_us, self._period_us, flags, samples
        )

    # -- vitals ----------------------------------------------------------------------------------
    def _vitals(self, second: int, out: _Out) -> None:
        raise NotImplementedError

    def _send(self, out: _Out, second: int, char: str, data: bytes) -> None:
        t_us = self.boot_us + second * 1_000_000
        out.append((t_us, _ORDER_VITALS, Notification(self.device_id, char, data, t_us)))
        self.readings_generated += 1
        self.frames_sent += 1

    def _battery(self, second: int, out: _Out) -> None:
        level = self.patient.battery_level(float(second))
        last = self._battery_sent
        if last is None or level != last[0] or second - last[1] >= _BATTERY_EVERY_S:
            self._battery_sent = (level, second)
            self._send(out, second, CHAR_BATTERY_LEVEL, codec.battery_encode(level))

    @property
    def low_battery(self) -> bool:
        """Whether the device currently reports a low battery (level under 15 %)."""
        return self.patient.battery_level(self.elapsed_s) < LOW_BATTERY_PCT


class VirtualEcgPatch(VirtualDevice):
    """ECG patch: ECG waveform (250 Hz), Heart Rate Measurement 1/s, Battery Level."""

    kind: DeviceKind = "ecg"
    _wave_kind = codec.WAVE_KIND_ECG
    _wave_char = CHAR_ECG_WAVEFORM
    _rate_hz = ECG_RATE_HZ

    def __init__(
        self, patient: Patient, device_id: str = "ecg-0001", *, mtu: int = DEFAULT_MTU, seq_start: int = 0
    ) -> None:
        super().__init__(patient, device_id, mtu=mtu, seq_start=seq_start)
        self._reader = f"{device_id}/hr"
        patient.heart.register(self._reader)
        self.synth = EcgSynth(patient, patient.seed_for(f"{device_id}/noise"), reader=device_id)

    def _render(self, k0: int, n: int) -> tuple[_Samples, _Flags]:
        return self.synth.render(k0, n)

    def _vitals(self, second: int, out: _Out) -> None:
        t = float(second)
        sc = self.patient.scenario
        heart = self.patient.heart
        if sc.active("leads_off", t):
            heart.measured_hr(self._reader, t)  # keeps this reader's place in the beat history
            data = codec.hrm_encode(0, contact=False)
        else:
            hr = round(heart.measured_hr(self._reader, t))
            rr = [
                min(0xFFFF, round(rr_s * 1024))
                for r_s, rr_s in heart.beats(self._reader, t - 1.0, t)
                if not sc.active("leads_off", r_s) and not sc.active("leads_off", r_s - rr_s)
            ]
            data = codec.hrm_encode(hr, contact=True, rr_1024=rr)
        self._send(out, second, CHAR_HEART_RATE, data)


class VirtualOximeter(VirtualDevice):
    """Pulse oximeter: PPG waveform (100 Hz, red + IR), PLX Continuous 1/s, Battery Level."""

    kind: DeviceKind = "oximeter"
    _wave_kind = codec.WAVE_KIND_PPG
    _wave_char = CHAR_PPG_WAVEFORM
    _rate_hz = PPG_RATE_HZ

    def __init__(
        self, patient: Patient, device_id: str = "oxi-0001", *, mtu: int = DEFAULT_MTU, seq_start: int = 0
    ) -> None:
        super().__init__(patient, device_id, mtu=mtu, seq_start=seq_start)
        self._reader = f"{device_id}/pr"
        patient.heart.register(self._reader)
        self.synth = PpgSynth(patient, patient.seed_for(f"{device_id}/noise"), reader=device_id)

    def _render(self, k0: int, n: int) -> tuple[_Samples, _Flags]:
        return self.synth.render(k0, n)

    def _vitals(self, second: int, out: _Out) -> None:
        t = float(second)
        p = self.patient
        sc = p.scenario
        z_spo2, z_pr, z_pai = self._vitals_rng.standard_normal(3).tolist()  # always 3: stable stream
        pr = p.heart.measured_hr(self._reader, t)
        if sc.active("sensor_off", t):
            data = codec.plx_continuous_encode(None, None, _MEAS_UNAVAILABLE, _DEV_UNCONNECTED)
        elif pr == 0.0:
            data = codec.plx_continuous_encode(None, None, _MEAS_UNAVAILABLE, _DEV_NONPULSATILE)
        else:
            # Oximeters average over a few seconds: the reading lags the true value.
            true_spo2 = sum(p.true_spo2(t - lag) for lag in (0.0, 1.0, 2.0, 3.0, 4.0)) / 5.0
            spo2 = min(100, max(0, round(true_spo2 + 0.4 * z_spo2)))
            pr_bpm = max(0, round(pr + 0.5 * z_pr))
            pai = max(0.1, round(100.0 * p.physiology.perfusion + 0.05 * z_pai, 1))
            meas = dev = 0
            if sc.active("motion", t):
                meas |= _MEAS_QUESTIONABLE
                dev |= _DEV_ERRATIC
            data = codec.plx_continuous_encode(float(spo2), float(pr_bpm), meas, dev, pai)
        self._send(out, second, CHAR_PLX_CONTINUOUS, data)
