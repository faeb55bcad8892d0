# A whole wearable on the fake machine and bluetooth modules, built by nabz_board.build() from a
# device configuration, driven by a fake clock; and a "gateway" that decodes what it notifies with
# the shared codec. Used by tests/firmware/mp/mp_app.py, mp_heap.py and mp_identity.py.
from array import array

import bluetooth
import machine
import nabz_codec as codec
import nabz_config
from fake_clock import FakeClock
from fake_max30102 import FakeMax30102
from nabz_board import build

REF = 1650000
GAIN = 300


def battery_uv(mv):
    return mv * 1000 // 2  # through the 2:1 divider


class EcgSource:
    """The AD8232 output the ADC reads, from microvolts; flags (optional) drive the LO pins."""

    def __init__(self, data, flags=None):
        self.data = data
        self.flags = flags
        self.i = 0

    def __call__(self):
        v = self.data[self.i % len(self.data)]
        self.i += 1
        return REF + v * GAIN

    def leads_off(self):
        if self.flags is None or self.i == 0:
            return 0
        return self.flags[(self.i - 1) % len(self.flags)] & codec.WAVE_FLAG_LEADS_OFF


class PpgSource:
    def __init__(self, data):
        self.data = data

    def __call__(self, i):
        j = 2 * (i % (len(self.data) // 2))
        return (self.data[j], self.data[j + 1])


class Gateway:
    """What a central would see, decoded with the shared codec."""

    def __init__(self, ble):
        self.ble = ble
        self.frames = []
        self.raw_frames = []  # the waveform notifications' bytes, in order
        self.vitals = []
        self.battery = []
        self.control = []
        self.h = {}

    def collect(self, t_us):
        b = self.ble
        for _conn, handle, data in b.take():
            uuid = b.chars[handle][0]
            if uuid in (codec.NABZ_ECG_WAVEFORM, codec.NABZ_PPG_WAVEFORM):
                f = codec.wave_decode(data)
                self.raw_frames.append(data)
                self.frames.append(
                    [f["seq"], f["n"], f["flags"], f["rate_hz"], f["t0_us"], len(data), f["samples"][0]]
                )
            elif uuid == "2a37":
                d = codec.hrm_decode(data)
                self.vitals.append([t_us // 1000000, d["hr_bpm"], d["contact"], d["rr_1024"]])
            elif uuid == "2a5f":
                d = codec.plx_continuous_decode(data)
                spo2 = d["spo2_pct"]
                pr = d["pr_bpm"]
                self.vitals.append(
                    [
                        t_us // 1000000,
                        None if spo2 != spo2 else spo2,
                        None if pr != pr else pr,
                        d["meas_status"],
                        d["dev_status"],
                        d["pai_pct"],
                    ]
                )
            elif uuid == "2a19":
                self.battery.append([t_us // 1000000, codec.battery_decode(data)])
            elif uuid == codec.NABZ_CONTROL:
                self.control.append([t_us // 1000000, codec.control_notify_decode(data)])


class Rig:
    def __init__(
        self,
        sensor,
        mtu=247,
        battery_mv=4000,
        extra=None,
        start_us=3000000,
        ecg_flags=None,
        connect_first=False,
    ):
        machine.clear()
        bluetooth.BLE.reset()
        self.clock = FakeClock(start_us)
        raw = {"device_id": "ecg-0001" if sensor == "ecg" else "oxi-0001", "sensor": sensor, "mtu": 247}
        if sensor == "ecg":
            raw.update(
                {
                    "ecg_gain": float(GAIN),
                    "ecg_adc_min_uv": REF - 5000 * GAIN,
                    "ecg_adc_max_uv": REF + 5000 * GAIN,
                }
            )
        raw.update(extra or {})
        self.cfg = nabz_config.validate(raw)
        self.sensor = sensor
        self.mtu = mtu
        self.battery_mv = battery_mv
        self.chip = None
        if sensor == "oximeter":
            self.chip = FakeMax30102(PpgSource(PPG), int_pin=19, scl_pin=22, clock=self.clock)
            machine.add_i2c_device(0x57, self.chip)
        self.ble = bluetooth.BLE()
        self.wdt = machine.WDT(timeout=8000)
        self.w = build(self.cfg, self.clock, self.wdt)
        if sensor == "ecg":
            src = EcgSource(ECG, ecg_flags)
            machine.adc(36).source = src
            machine.pin(34).source = src.leads_off
        else:
            machine.pin(19).level = 1
        self.bat_adc = machine.adc(35)
        self.set_battery(battery_mv)
        self.gw = Gateway(self.ble)
        self.slept = None
        self.timer_alive = True
        if connect_first:
            self.connect()
        self.w.begin()

    def forget(self):
        """Drop the test's own records and signals, leaving what the wearable holds."""
        self.gw = Gateway(self.ble)
        self.ble.adv_history = []
        if self.sensor == "ecg":
            machine.adc(36).source = None
            machine.pin(34).source = None
        else:
            self.chip.source = None
        drop_data()

    def set_battery(self, mv):
        self.battery_mv = mv
        self.bat_adc.uv = battery_uv(mv)

    def connect(self, mtu=None, subscribe=True):
        """A central connects and exchanges the MTU; it subscribes at once unless told not to
        (a real gateway subscribes after discovery and its reads: see subscribe())."""
        self.ble.central_connect()
        self.ble.central_mtu(mtu or self.mtu)
        if subscribe:
            self.ble.central_subscribe()

    def subscribe(self):
        self.ble.central_subscribe()

    def read_status(self):
        """What a gateway reading the control characteristic gets, decoded (or the raw bytes)."""
        raw = self.ble.central_read(self.ble.handle_of(codec.NABZ_CONTROL))
        try:
            return codec.control_notify_decode(raw)
        except ValueError:
            return raw.hex()

    def run(self, seconds, each=None):
        """Advance device time; the ECG timer fires every 4 ms, the loop steps every 20 ms."""
        tick_us = 4000 if self.sensor == "ecg" else 10000
        steps = seconds * 1000000 // tick_us
        for i in range(steps):
            self.clock.advance(tick_us)
            if self.sensor == "ecg":
                if self.timer_alive:
                    machine.timer(self.cfg["ecg_timer_id"]).fire()
            else:
                self.chip.sync(self.clock.now_us())
            if (i * tick_us) % 20000 == 0:
                try:
                    self.w.step()
                except machine.DeepSleep as e:
                    self.slept = e.args[0]
                    return
                self.gw.collect(self.clock.now_us())
            if each is not None and (i + 1) * tick_us % 1000000 == 0:
                each((i + 1) * tick_us // 1000000)

    def gatt(self):
        out = {}
        for h, (uuid, flags) in sorted(self.ble.chars.items()):
            out[uuid] = {"handle": h, "flags": flags, "value": self.ble.values[h].hex()}
        return out


def load(path, typecode):
    return array(typecode, open(path, "rb").read())


ECG = None
PPG = None


def use_data(ecg_path="/data/ecg.bin", ppg_path="/data/ppg.bin"):
    """Load the synthetic signals the fake sensors play (hardware/ecg.py, hardware/ppg.py)."""
    global ECG, PPG
    ECG = load(ecg_path, "h")
    PPG = load(ppg_path, "i")


def drop_data():
    global ECG, PPG
    ECG = None
    PPG = None
