# The wearable: sensors, ring, BLE and battery wired together, and everything that happens on a
# schedule. One step() does what is due; the asyncio shell (nabz_main) calls it every ~20 ms.
#
# Rules of this file:
# - Time is read once per step from the injected clock, so the interpreter tests drive a whole
#   wearable, minutes of it, with a fake clock and fake radio, sensors and watchdog.
# - Order inside a step: BLE events, sensor reads, live frames and resends, vitals, battery,
#   watchdog. Live data always goes before resends (nabz_stream).
# - The watchdog is fed only while samples keep arriving (or sampling is stopped on purpose, or
#   the sensor is being recovered): a hung loop or a dead sample timer resets the board.
# - The status (control 0x82) goes out on connection, on every change, with each battery
#   notification, and every vitals period while it is not "ok" and for 10 s after a connection;
#   the control characteristic's value is the current status too. A notification sent before
#   the gateway subscribed (a second or more after connecting) is lost: the repeats, and the
#   value it reads in its setup, are what make the state at connection known.
# - Low battery: frames carry the low-battery flag, the oximeter samples at 50 Hz, vitals go out
#   every 2 s, advertising slows down, and a status notification says so. Critical: the sensors
#   are stopped, the last frames, battery level and a "battery critical" status go out, the
#   gateway gets a grace period to fetch what it lacks, then the board sleeps and wakes now and
#   then to look at the battery again.

import random

import nabz_codec as codec
from nabz_battery import STATE_CRITICAL, STATE_LOW, STATE_OK
from nabz_ble import CHAR_CONTROL
from nabz_ring import WaveRing
from nabz_stream import Sender

FIRMWARE_REV = "0.1.0"
_MTU_WAIT_US = 1000000  # after connecting, wait this long for the MTU exchange before streaming
_STALL_US = 2000000  # no new samples for this long (while sampling) and the watchdog starves
_PPG_POLL_US = 100000  # FIFO read without an interrupt at least this often (17 samples = 170 ms)
# After a connection the status goes out with every vitals notification for this long, whatever
# it is: the gateway subscribes only after discovery and its reads (BlueZ: a second or more), and
# a notification sent before that is lost. Later it is repeated while not "ok", and with the
# battery notification (at least every battery_notify_s).
_STATUS_AFTER_CONNECT_US = 10000000


class Wearable:
    kind = 0
    rate_hz = 0

    def __init__(self, cfg, periph, battery, clock, wdt=None, deepsleep=None):
        self.cfg = cfg
        self.periph = periph
        self.battery = battery
        self.clock = clock
        self.wdt = wdt
        self.deepsleep = deepsleep
        self.ring = WaveRing(
            self.kind,
            self.rate_hz,
            cfg["ring_seconds"],
            cfg["ring_frames"],
            codec.wave_max_samples(self.kind, cfg["mtu"]),
            # A random first sequence number at each boot: the device clock starts again at 0
            # too, so from 0 the new boot's first frames would look to the gateway like frames
            # it already has (dropped as duplicates); from anywhere else it sees a restart.
            random.getrandbits(32),
        )
        # Frames are cut for the configured MTU at most (nabz_config keeps it within one ATT value).
        self.sender = Sender(self.ring, periph, cfg["mtu"] - 3)
        self.state = codec.DEVICE_STATE_OK
        self.vitals_period_us = cfg["vitals_period_s"] * 1000000
        self.adv_interval_ms = cfg["adv_interval_ms"]
        self.next_vitals_us = 0
        self.next_battery_us = 0
        self.battery_notified = -1
        self.battery_notified_us = 0
        self.mtu_ready = False
        self.mtu_deadline_us = 0
        self.streaming = True  # whether a waveform frame fits the link's MTU
        self.critical_at_us = None
        self.sleeping = False
        self.progress = -1
        self.progress_us = 0
        self.feeds = 0
        self.status_sent = []  # (state, battery) notified, for the log and tests
        self.status_until_us = 0  # the status goes with every vitals notification until then

    # -- life cycle -------------------------------------------------------------------------------
    def begin(self):
        """Look at the battery, then start sampling and advertising (or sleep if critical)."""
        now = self.clock.now_us()
        for _ in range(4):  # settle the smoothed reading and confirm the state
            self.battery.update()
        self.periph.set_value(self.periph.h_battery, codec.battery_encode(self.battery.level))
        if self.battery.level <= self.cfg["battery_critical_pct"]:
            self.battery.state = STATE_CRITICAL
            self.sleeping = True
            self._sleep()
            return
        if self.battery.state == STATE_LOW or self.battery.level < self.cfg["battery_low_pct"]:
            self.battery.state = STATE_LOW
            self.state = codec.DEVICE_STATE_LOW_BATTERY  # said on connection
            self._low_battery(True)
        self._status_value()
        self.start_sensor()
        self.periph.advertise(self.adv_interval_ms)
        self.next_vitals_us = now + self.vitals_period_us
        self.next_battery_us = now + self.cfg["battery_period_s"] * 1000000
        self.progress_us = now

    def step(self):
        """Do whatever is due now. Returns False once the wearable has shut down."""
        if self.sleeping:
            return False
        now = self.clock.now_us()
        for ev in self.periph.take_events():
            self._event(ev, now)
        self.poll_sensor(now)
        self.rebase()  # frame times and sequence numbers stay right past 2**29 (24.8 days)
        if self.periph.conn is not None and self.critical_at_us is None:
            if not self.mtu_ready and now >= self.mtu_deadline_us:
                self._mtu_known(self.periph.mtu)
            if self.mtu_ready and self.streaming:
                self.sender.pump()
            elif self.mtu_ready:
                self.sender.ring.stamp()
        if now >= self.next_vitals_us and self.critical_at_us is None:
            self.next_vitals_us += self.vitals_period_us
            if self.next_vitals_us <= now:
                self.next_vitals_us = now + self.vitals_period_us
            self.send_vitals()
            if self.state != codec.DEVICE_STATE_OK or now < self.status_until_us:
                self._notify_status()  # a fault is said again until it is gone
        if now >= self.next_battery_us:
            self.next_battery_us = now + self.cfg["battery_period_s"] * 1000000
            self._battery(now)
        if self.critical_at_us is not None:
            if self.periph.conn is not None:
                self.sender.pump()
            if now - self.critical_at_us >= self.cfg["critical_grace_s"] * 1000000:
                self._sleep()
                return False
        self._watchdog(now)
        return True

    # -- BLE ----------------------------------------------------------------------------------------
    def _event(self, ev, now):
        what = ev[0]
        if what == "connect":
            self.mtu_ready = False
            self.mtu_deadline_us = now + _MTU_WAIT_US
            self.sender.connected()
            self.periph.exchange_mtu()
            self._notify_status()
            self.status_until_us = now + _STATUS_AFTER_CONNECT_US
        elif what == "disconnect":
            if self.critical_at_us is None:
                self.periph.advertise(self.adv_interval_ms)
        elif what == "mtu":
            self._mtu_known(ev[1])
        elif what == "control":
            self._status_value()  # the write replaced the value a read returns: the status again
            try:
                req = codec.control_decode(ev[1])
            except ValueError:
                return  # a bad write is ignored (the gateway's problem, nothing to stream)
            if req["kind"] == self.kind:
                self.sender.request_resend(req["first_seq"], req["last_seq"])

    def _mtu_known(self, mtu):
        self.mtu_ready = True
        try:
            n = codec.wave_max_samples(self.kind, mtu)
        except ValueError:
            self.streaming = False  # e.g. PPG at MTU 23: vitals only; the ring keeps everything
            return
        self.streaming = True
        self.set_frame_samples(n)
        self.sender.connected()  # live sending starts at the newest frame

    def set_frame_samples(self, n):
        self.ring.set_frame_samples(n)

    def _status_value(self):
        """The control characteristic's value, what a read returns: the current status."""
        data = codec.control_status_encode(self.state, self.battery.level)
        self.periph.set_value(self.periph.h_control, data)
        return data

    def _notify_status(self):
        data = self._status_value()
        if self.periph.notify(CHAR_CONTROL, data):
            self.status_sent.append((self.state, self.battery.level))
            if len(self.status_sent) > 16:
                del self.status_sent[0]  # repeated now: keep the log's memory bounded

    def _set_state(self, state):
        if state != self.state:
            self.state = state
            self._notify_status()

    # -- battery ----------------------------------------------------------------------------------
    def _battery(self, now):
        change = self.battery.update()
        level = self.battery.level
        self.periph.set_value(self.periph.h_battery, codec.battery_encode(level))
        if (
            level != self.battery_notified
            or now - self.battery_notified_us >= self.cfg["battery_notify_s"] * 1000000
        ):
            if self.periph.notify_handle(self.periph.h_battery, codec.battery_encode(level)):
                self.battery_notified = level
                self.battery_notified_us = now
                if change is None:
                    self._notify_status()  # the status with it (a change below says it anyway)
        if change == STATE_LOW:
            self._low_battery(True)
            self._set_state(codec.DEVICE_STATE_LOW_BATTERY)
        elif change == STATE_OK:
            self._low_battery(False)
            self._set_state(codec.DEVICE_STATE_OK)
        elif change == STATE_CRITICAL:
            self._critical(now)

    def _low_battery(self, low):
        cfg = self.cfg
        self.set_extra_flags(codec.WAVE_FLAG_LOW_BATTERY if low else 0)
        self.vitals_period_us = (
            cfg["vitals_period_low_battery_s"] if low else cfg["vitals_period_s"]
        ) * 1000000
        self.adv_interval_ms = cfg["adv_interval_low_battery_ms"] if low else cfg["adv_interval_ms"]
        if self.periph.conn is None and self.critical_at_us is None:
            self.periph.advertise(self.adv_interval_ms)

    def _critical(self, now):
        """The last status: stop the sensors, send what is left, say so, then sleep after a grace."""
        self.stop_sensor()
        self.ring.close()
        self.critical_at_us = now
        level = codec.battery_encode(self.battery.level)
        self.periph.set_value(self.periph.h_battery, level)
        if self.periph.conn is not None:
            self.sender.pump()
            self.periph.notify_handle(self.periph.h_battery, level)
        self._set_state(codec.DEVICE_STATE_BATTERY_CRITICAL)

    def _sleep(self):
        self.sleeping = True
        self.periph.stop_advertising()
        self.periph.disconnect()
        if self.deepsleep is not None:
            self.deepsleep(self.cfg["critical_sleep_s"] * 1000)

    # -- watchdog ---------------------------------------------------------------------------------
    def _watchdog(self, now):
        p = self.progress_count()
        if p != self.progress:
            self.progress = p
            self.progress_us = now
        if self.sampling_expected() and now - self.progress_us > _STALL_US:
            return  # starve the watchdog: the board resets
        if self.wdt is not None:
            self.wdt.feed()
        self.feeds += 1

    # -- per sensor -------------------------------------------------------------------------------
    def rebase(self):
        """Move the anchors of 30-bit differences up before they turn negative (each step)."""
        self.ring.rebase()

    def start_sensor(self):
        raise NotImplementedError

    def stop_sensor(self):
        raise NotImplementedError

    def poll_sensor(self, now):
        pass

    def set_extra_flags(self, flags):
        raise NotImplementedError

    def progress_count(self):
        return 0

    def sampling_expected(self):
        return False

    def send_vitals(self):
        raise NotImplementedError


class EcgWearable(Wearable):
    """The ECG patch: AD8232 at 250 Hz, Heart Rate Measurement with RR intervals."""

    kind = codec.WAVE_KIND_ECG

    def __init__(
        self, cfg, periph, battery, clock, adc, lo_plus, lo_minus, sdn, timer, wdt=None, deepsleep=None
    ):
        from nabz_ecg import EcgSampler
        from nabz_qrs import QrsDetector

        self.rate_hz = cfg["ecg_rate_hz"]
        Wearable.__init__(self, cfg, periph, battery, clock, wdt, deepsleep)
        self.detector = QrsDetector()
        self.sampler = EcgSampler(
            adc,
            lo_plus,
            lo_minus,
            self.ring,
            self.detector,
            clock,
            cfg["ecg_ref_uv"],
            int(cfg["ecg_gain"] * 16 + 0.5),
            cfg["ecg_adc_min_uv"],
            cfg["ecg_adc_max_uv"],
            rate_hz=self.rate_hz,
            sdn=sdn,
        )
        self.timer = timer
        self.rr = []

    def start_sensor(self):
        self.sampler.start(self.timer)

    def stop_sensor(self):
        self.sampler.stop()

    def set_frame_samples(self, n):
        if n != self.ring.frame_samples:
            self.ring.set_frame_samples(n)
            self.ring.request_close()  # the timer callback closes the open frame (no race)

    def set_extra_flags(self, flags):
        self.sampler.extra_flags = flags

    def progress_count(self):
        return self.sampler.samples

    def sampling_expected(self):
        return self.sampler.timer is not None

    def send_vitals(self):
        from nabz_qrs import rr_1024

        rr = self.detector.take(self.rr)
        if self.sampler.leads_off:
            del rr[:]
            data = codec.hrm_encode(0, contact=False)
        else:
            room = (self.periph.mtu - 3 - 2) // 2  # flags + uint8 rate, then uint16 RR each
            values = [rr_1024(x) for x in rr if x > 0]
            if len(values) > room:
                values = values[-room:]  # the newest that fit
            del rr[:]
            data = codec.hrm_encode(self.detector.hr_bpm(), contact=True, rr_1024=values)
        self.periph.notify_handle(self.periph.h_vitals, data)


class OximeterWearable(Wearable):
    """The pulse oximeter: MAX30102 at 100 Hz (50 Hz on low battery), PLX Continuous."""

    kind = codec.WAVE_KIND_PPG

    def __init__(
        self, cfg, periph, battery, clock, make_i2c, int_pin=None, bus_recover=None, wdt=None, deepsleep=None
    ):
        from nabz_ppg import PpgSampler
        from nabz_spo2 import Spo2Estimator

        self.rate_hz = cfg["ppg_rate_hz"]
        Wearable.__init__(self, cfg, periph, battery, clock, wdt, deepsleep)
        self.estimator = Spo2Estimator(self.rate_hz, cfg["ppg_finger_on_counts"], cfg["ppg_low_pi_pct"])
        settings = {
            "sample_rate_hz": self.rate_hz,
            "pulse_width_us": cfg["ppg_pulse_width_us"],
            "adc_range_na": cfg["ppg_adc_range_na"],
            "led_red_ma": cfg["ppg_led_red_ma"],
            "led_ir_ma": cfg["ppg_led_ir_ma"],
        }
        self.sampler = PpgSampler(
            make_i2c, self.ring, self.estimator, clock, settings, cfg["ppg_finger_on_counts"], bus_recover
        )
        self.int_pin = int_pin
        self.int_pending = False
        self.last_poll_us = 0
        self.stopped = False
        if int_pin is not None:
            int_pin.irq(handler=self._irq, trigger=2)  # 2: Pin.IRQ_FALLING (INT is active low)

    def _irq(self, _pin):
        self.int_pending = True

    def rebase(self):
        self.ring.rebase()
        self.sampler.rebase()  # the clock fit's start too (62 days at 100 Hz)

    def start_sensor(self):
        self.stopped = False
        try:
            self.sampler.start()
        except (OSError, ValueError):
            self.sampler._failed()
            self.sampler.faulty = True  # retried from poll(); the status says so meanwhile

    def stop_sensor(self):
        self.stopped = True
        self.sampler.stop()

    def poll_sensor(self, now):
        if self.stopped:
            return
        if self.int_pending or now - self.last_poll_us >= _PPG_POLL_US:
            self.int_pending = False
            self.last_poll_us = now
            self.sampler.poll()
        if self.sampler.faulty and self.state != codec.DEVICE_STATE_SENSOR_FAULT:
            self._set_state(codec.DEVICE_STATE_SENSOR_FAULT)
        elif not self.sampler.faulty and self.state == codec.DEVICE_STATE_SENSOR_FAULT:
            low = self.battery.state == STATE_LOW
            self._set_state(codec.DEVICE_STATE_LOW_BATTERY if low else codec.DEVICE_STATE_OK)

    def set_extra_flags(self, flags):
        self.sampler.extra_flags = flags
        rate = (
            self.cfg["ppg_rate_low_battery_hz"]
            if flags & codec.WAVE_FLAG_LOW_BATTERY
            else self.cfg["ppg_rate_hz"]
        )
        self.sampler.set_rate(rate)

    def progress_count(self):
        return self.sampler.samples  # samples, not FIFO reads: a chip that stopped reads 0 each time

    def sampling_expected(self):
        return self.sampler.running and not self.stopped

    def send_vitals(self):
        spo2, pr, pai, meas, dev = self.estimator.status(self.clock.now_us())
        data = codec.plx_continuous_encode(
            None if spo2 is None else round(spo2),
            None if pr is None else round(pr),
            meas,
            dev,
            None if pai is None else round(pai, 1),
        )
        self.periph.notify_handle(self.periph.h_vitals, data)
