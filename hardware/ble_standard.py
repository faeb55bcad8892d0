"""Off-the-shelf style BLE devices for the gateway's tests: standard services only.

`HeartRateStrap` (Heart Rate Service, as chest straps implement it) and `StandardOximeter` (Pulse
Oximeter Service) send the layouts such devices use - uint16 heart rate, energy expended, RR
intervals, sensor contact; PLX Continuous with fast and slow values and status fields, SFLOAT
special values, Spot-Check by indication with a timestamp - and keep what they sent in `sent`, so
a test can compare it with what the gateway published. Synthetic values, scripted per second.
"""

from __future__ import annotations

import math
import struct

from bumble import core, gatt
from bumble.link import LocalLink

from firmware import nabz_codec as codec
from hardware.ble_peripherals import Peripheral, characteristic, device_information

__all__ = ["HeartRateStrap", "StandardOximeter"]

_U = core.UUID.from_16_bits
_P = gatt.Characteristic.Properties
_NONE = gatt.Characteristic.Permissions(0)


class HeartRateStrap(Peripheral):
    """An off-the-shelf chest strap: Heart Rate Service only (plus Battery and Device Information).

    Once a second: heart rate (uint16 format from time to time, as some straps always use), sensor
    contact (lost for a while), energy expended every 10 s, RR intervals in 1/1024 s.
    """

    def __init__(self, link: LocalLink, device_id: str, address: str, name: str = "HRM-Pro 4821") -> None:
        super().__init__(link, name, address, device_id)
        self.hrm = characteristic(_U(codec.UUID_HEART_RATE_MEASUREMENT), _P.NOTIFY, b"", _NONE)
        self.t = 0.0
        self.second = 0
        self.energy_kj = 0
        self.sent: list[tuple[str, bytes]] = []

    def advertised_uuids(self) -> list[core.UUID]:
        return [_U(codec.UUID_HEART_RATE_SERVICE)]

    def services(self) -> list[gatt.Service]:
        return [
            gatt.Service(
                _U(codec.UUID_HEART_RATE_SERVICE),
                [self.hrm, characteristic(_U(codec.UUID_BODY_SENSOR_LOCATION), _P.READ, bytes([1]))],
            ),
            gatt.Service(_U(codec.UUID_BATTERY_SERVICE), [self.battery]),
            device_information("HRM-Pro", "4821-7781", "12.40", "3", "Generic Sports"),
        ]

    def measurement(self, second: int) -> bytes:
        hr = round(68 + 12 * math.sin(second / 9.0))
        contact = not 20 <= second % 60 < 24  # the strap slips for four seconds a minute
        flags = 0x04 | (0x02 if contact else 0)  # contact supported; detected
        wide = second % 7 == 0
        body = struct.pack("<H", hr) if wide else bytes([hr])
        flags |= 0x01 if wide else 0
        self.energy_kj += 1
        if second % 10 == 0:
            flags |= 0x08
            body += struct.pack("<H", self.energy_kj)
        if contact:
            flags |= 0x10
            body += struct.pack("<H", round(60.0 / hr * 1024)) * (1 if second % 3 else 2)
        return bytes([flags]) + body

    async def pump(self, seconds: float) -> None:
        self.t += seconds
        while self.second < int(self.t):
            self.second += 1
            value = self.measurement(self.second)
            if await self.notify(self.hrm, value):
                self.sent.append(("2a37", value))
            if self.second % 30 == 1:
                level = max(5, 95 - self.second // 60)
                if await self.notify(self.battery, bytes([level])):
                    self.sent.append(("2a19", bytes([level])))


class StandardOximeter(Peripheral):
    """An off-the-shelf pulse oximeter: Pulse Oximeter Service (PLX Continuous with fast and slow
    values, measurement and sensor status, pulse amplitude index; Spot-Check by indication with a
    timestamp; PLX Features), Battery and Device Information. The finger comes out for a few
    seconds each minute (NaN values, "unavailable", "sensor unconnected to user"), and the device
    sends NRes while it settles after that."""

    def __init__(self, link: LocalLink, device_id: str, address: str, name: str = "PO-60 1187") -> None:
        super().__init__(link, name, address, device_id)
        self.continuous = characteristic(_U(codec.UUID_PLX_CONTINUOUS), _P.NOTIFY, b"", _NONE)
        self.spot = characteristic(_U(codec.UUID_PLX_SPOT_CHECK), _P.INDICATE, b"", _NONE)
        # Features: measurement status, sensor status, timestamp support (bits 0, 1, 3).
        self.features = characteristic(
            _U(codec.UUID_PLX_FEATURES), _P.READ, struct.pack("<HHHB", 0x000B, 0xE000, 0x0FFE, 0)
        )
        self.t = 0.0
        self.second = 0
        self.sent: list[tuple[str, bytes]] = []

    def advertised_uuids(self) -> list[core.UUID]:
        return [_U(codec.UUID_PULSE_OXIMETER_SERVICE)]

    def services(self) -> list[gatt.Service]:
        return [
            gatt.Service(_U(codec.UUID_PULSE_OXIMETER_SERVICE), [self.continuous, self.spot, self.features]),
            gatt.Service(_U(codec.UUID_BATTERY_SERVICE), [self.battery]),
            device_information("PO-60", "1187-0042", "2.1", "A", "Generic Medical"),
        ]

    def measurement(self, second: int) -> bytes:
        phase = second % 60
        if 40 <= phase < 44:  # finger out
            return codec.plx_continuous_encode(None, None, 1 << 13, 1 << 11)
        if phase == 44:  # settling: "no result yet"
            raw = struct.pack("<BHH", 0x04, codec.SFLOAT_NRES, codec.SFLOAT_NRES) + struct.pack("<H", 1 << 5)
            return raw
        spo2 = 97.0 - (1.5 if 10 <= phase < 20 else 0.0) + (0.5 if second % 2 else 0.0)
        pr = 70.0 + (second % 5)
        meas = (1 << 14) if phase == 5 else 0  # one questionable reading a minute
        return codec.plx_continuous_encode(
            spo2, pr, meas, 0, round(4.2 + (second % 3) / 10, 1), fast=(spo2, pr + 1), slow=(spo2, pr)
        )

    async def pump(self, seconds: float) -> None:
        self.t += seconds
        while self.second < int(self.t):
            self.second += 1
            value = self.measurement(self.second)
            if await self.notify(self.continuous, value):
                self.sent.append(("2a5f", value))
            if self.second % 5 == 0:
                stamp = (2026, 11, 25, 9, self.second // 60 % 60, self.second % 60)
                spot = codec.plx_spot_check_encode(96.5, 71.0, timestamp=stamp, meas_status=1 << 7)
                if await self.indicate(self.spot, spot):
                    self.sent.append(("2a5e", spot))
            if self.second % 30 == 1:
                if await self.notify(self.battery, bytes([88])):
                    self.sent.append(("2a19", bytes([88])))
