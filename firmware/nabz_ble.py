# The wearable's GATT server and advertising on MicroPython's `bluetooth` module (NimBLE on the
# ESP32): the services of docs/contract.md, MTU exchange, notifications with flow control, and
# writes to the control characteristic.
#
# Rules of this file:
# - The BLE IRQ handler only records events (connect, disconnect, MTU, control writes); the
#   wearable's service loop acts on them. Nothing here knows about sensors.
# - notify() returns False when the stack has no buffer left (NimBLE: ENOMEM) or the link is gone;
#   the caller keeps the frame and tries later, so congestion never loses a frame.
# - Stub bugs worked around (micropython-esp32-stubs 1.27.0.post1, docs/firmware.md): gatts_notify
#   is declared (value_handle, data) but the port's call is gatts_notify(conn_handle, value_handle,
#   data); connection handles are declared memoryview but are ints; gap_advertise(None), which
#   stops advertising, is declared to need an int.

import struct

import bluetooth
import nabz_codec as codec
from micropython import const

_IRQ_CENTRAL_CONNECT = const(1)
_IRQ_CENTRAL_DISCONNECT = const(2)
_IRQ_GATTS_WRITE = const(3)
_IRQ_MTU_EXCHANGED = const(21)

_FLAG_READ = const(0x0002)
_FLAG_WRITE = const(0x0008)
_FLAG_NOTIFY = const(0x0010)

_ADV_FLAGS = const(0x01)
_ADV_UUID16_COMPLETE = const(0x03)
_ADV_UUID128_COMPLETE = const(0x07)
_ADV_NAME_COMPLETE = const(0x09)
_ADV_APPEARANCE = const(0x19)
_ADV_MAX = const(31)

# GAP Appearance values (Bluetooth Assigned Numbers, 2.6.3)
APPEARANCE_HEART_RATE_BELT = const(0x0341)
APPEARANCE_PULSE_OXIMETER_FINGERTIP = const(0x0C41)

BODY_SENSOR_CHEST = const(1)
# PLX Features (PLXS 1.0.1 3.3): Measurement Status, Device and Sensor Status and PAI supported.
_PLX_FEATURE_BITS = const(0x0043)

CHAR_WAVE = const(0)  # the two characteristics nabz_stream.Sender notifies on
CHAR_CONTROL = const(1)


def _field(kind, data):
    return bytes((len(data) + 1, kind)) + data


def advertising(name, uuid16s, appearance):
    """Advertising data: flags (LE general discoverable, no BR/EDR), appearance, name, services."""
    payload = _field(_ADV_FLAGS, b"\x06")
    payload += _field(_ADV_APPEARANCE, struct.pack("<H", appearance))
    payload += _field(_ADV_NAME_COMPLETE, name.encode())
    payload += _field(_ADV_UUID16_COMPLETE, b"".join(struct.pack("<H", u) for u in uuid16s))
    if len(payload) > _ADV_MAX:
        raise ValueError("advertising: %d bytes, at most 31 (shorten the device id)" % len(payload))
    return payload


def scan_response(uuid128):
    """Scan response: the Nabz waveform service's 128-bit UUID (little-endian on air)."""
    raw = bytes.fromhex(uuid128.replace("-", ""))
    return _field(_ADV_UUID128_COMPLETE, bytes(reversed(raw)))


def plx_features():
    """PLX Features 0x2A60: supported features, Measurement Status and Device and Sensor Status
    support (the bits nabz_spo2 can set)."""
    import nabz_spo2

    dev = nabz_spo2.DEV_SUPPORTED
    return struct.pack("<HHHB", _PLX_FEATURE_BITS, nabz_spo2.MEAS_SUPPORTED, dev & 0xFFFF, dev >> 16)


class Peripheral:
    """One wearable's GATT table on `ble` (bluetooth.BLE()), for sensor "ecg" or "oximeter"."""

    def __init__(self, ble: bluetooth.BLE, cfg: dict, firmware_rev: str, serial: str) -> None:
        self.ble = ble
        self.sensor = cfg["sensor"]
        self.name = "Nabz " + cfg["device_id"]
        self.preferred_mtu = cfg["mtu"]
        self.conn: int | None = None
        self.mtu = 23
        self.events: list = []  # ("connect",) ("disconnect",) ("mtu", n) ("control", bytes)
        self.notify_refused = 0
        U = bluetooth.UUID
        if self.sensor == "ecg":
            vitals = (U(codec.UUID_HEART_RATE_SERVICE), ((U(codec.UUID_HEART_RATE_MEASUREMENT), _FLAG_NOTIFY),
                                                         (U(codec.UUID_BODY_SENSOR_LOCATION), _FLAG_READ)))  # fmt: skip
            wave_uuid = codec.NABZ_ECG_WAVEFORM
            self.uuid16s = (codec.UUID_HEART_RATE_SERVICE,)
            self.appearance = APPEARANCE_HEART_RATE_BELT
        else:
            vitals = (U(codec.UUID_PULSE_OXIMETER_SERVICE), ((U(codec.UUID_PLX_CONTINUOUS), _FLAG_NOTIFY),
                                                             (U(codec.UUID_PLX_FEATURES), _FLAG_READ)))  # fmt: skip
            wave_uuid = codec.NABZ_PPG_WAVEFORM
            self.uuid16s = (codec.UUID_PULSE_OXIMETER_SERVICE,)
            self.appearance = APPEARANCE_PULSE_OXIMETER_FINGERTIP
        battery = (U(codec.UUID_BATTERY_SERVICE), ((U(codec.UUID_BATTERY_LEVEL), _FLAG_READ | _FLAG_NOTIFY),))
        info = (
            U(codec.UUID_DEVICE_INFORMATION),
            tuple((U(u), _FLAG_READ) for u in (0x2A24, 0x2A25, 0x2A26, 0x2A27, 0x2A29)),
        )
        wave = (
            U(codec.NABZ_WAVEFORM_SERVICE),
            # Control: RESEND written in; reports and the status notified; a read returns the
            # current status (the gateway reads it in its setup: a notification sent before it
            # subscribed is lost).
            ((U(wave_uuid), _FLAG_NOTIFY), (U(codec.NABZ_CONTROL), _FLAG_READ | _FLAG_WRITE | _FLAG_NOTIFY)),
        )
        ble.active(True)
        ble.config(gap_name=self.name)
        ble.config(mtu=self.preferred_mtu)
        ble.irq(self._irq)
        ((self.h_vitals, self.h_vitals_static), (self.h_battery,), info_h, (self.h_wave, self.h_control)) = (
            ble.gatts_register_services((vitals, battery, info, wave))
        )
        strings = (cfg["model"], serial, firmware_rev, cfg["hardware_rev"], cfg["manufacturer"])
        for i in range(len(strings)):
            ble.gatts_write(info_h[i], strings[i].encode())
        if self.sensor == "ecg":
            ble.gatts_write(self.h_vitals_static, bytes((BODY_SENSOR_CHEST,)))
        else:
            ble.gatts_write(self.h_vitals_static, plx_features())
        ble.gatts_set_buffer(self.h_control, 32)
        self.adv = advertising(self.name, self.uuid16s, self.appearance)
        self.resp = scan_response(codec.NABZ_WAVEFORM_SERVICE)
        self._handles = (self.h_wave, self.h_control)

    # -- events (IRQ context: record only) --------------------------------------------------------
    def _irq(self, event, data):
        if event == _IRQ_CENTRAL_CONNECT:
            self.conn = data[0]
            self.mtu = 23
            self.events.append(("connect",))
        elif event == _IRQ_CENTRAL_DISCONNECT:
            if data[0] == self.conn:
                self.conn = None
            self.events.append(("disconnect",))
        elif event == _IRQ_GATTS_WRITE:
            if data[1] == self.h_control:
                self.events.append(("control", bytes(self.ble.gatts_read(self.h_control))))
        elif event == _IRQ_MTU_EXCHANGED:
            if data[0] == self.conn:
                self.mtu = data[1]
                self.events.append(("mtu", data[1]))

    def take_events(self):
        out = self.events
        self.events = []
        return out

    # -- actions ----------------------------------------------------------------------------------
    def advertise(self, interval_ms):
        self.ble.gap_advertise(interval_ms * 1000, self.adv, resp_data=self.resp, connectable=True)

    def stop_advertising(self):
        # None stops advertising; the 1.27 stubs only allow an int here (docs/firmware.md).
        self.ble.gap_advertise(None)  # type: ignore[arg-type]

    def exchange_mtu(self):
        """Ask the central for our preferred MTU (the ESP32 may start the exchange itself)."""
        if self.conn is not None:
            try:
                self.ble.gattc_exchange_mtu(self.conn)  # type: ignore[arg-type]  # stubs: handles are ints
            except OSError:
                pass  # the central may already have started one

    def set_value(self, handle, data):
        """The value a central reads (battery level)."""
        self.ble.gatts_write(handle, data)

    def notify_handle(self, handle, data):
        if self.conn is None:
            return False
        try:
            # The 1.27 stubs declare gatts_notify(value_handle, data): the port's signature is
            # gatts_notify(conn_handle, value_handle, data=None) (docs/firmware.md, "Stub bugs").
            self.ble.gatts_notify(self.conn, handle, data)  # type: ignore[call-arg, arg-type]
        except OSError:
            self.notify_refused += 1  # ENOMEM: no buffer in the stack now; or the link just went
            return False
        return True

    def notify(self, char, data):
        """The interface nabz_stream.Sender uses: char is CHAR_WAVE or CHAR_CONTROL."""
        return self.notify_handle(self._handles[char], data)

    def disconnect(self):
        if self.conn is not None:
            try:
                self.ble.gap_disconnect(self.conn)  # type: ignore[arg-type]  # stubs: handles are ints
            except OSError:
                pass
