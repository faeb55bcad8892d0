# Pulse oximeter sampling: MAX30102 FIFO -> waveform ring and SpO2 estimator, with the chip's own
# clock tracked against the ESP32's, overflows turned into flagged gaps, and I2C recovery.
#
# Rules of this file:
# - poll() is called when the chip's INT pin reports "FIFO almost full" (17 samples), and by a
#   slower poll in case an edge is missed. It reads every unread sample; nothing is dropped on
#   the ESP32 side. Samples the chip itself dropped (overflow counter) become a gap in the ring.
# - Time: the MAX30102 samples on its own oscillator. Sample k's time comes from the ring's
#   anchor; each read compares the newest sample's predicted time with the ESP32 clock. When the
#   two drift more than two sample periods apart, the period is re-estimated from the whole run
#   and the anchor moved (frames carry their own t0, so the gateway sees at most a step of two
#   periods between frames, never a gap in the samples).
# - The fit runs from a start point (_fit_k, _fit_us) measured at start() or after an unknown
#   loss. Its span is a signed 30-bit difference, negative after 2**29 samples (62 days at
#   100 Hz): rebase(), from the wearable's loop with the ring's, moves the start up along the
#   run once it is 2**28 behind, keeping 2**27 samples (15.5 days) of run to fit over.
# - I2C errors: each failed read is counted; after three in a row the bus is recovered (nine SCL
#   clocks and a STOP free a slave holding SDA, then a new I2C object), the chip is reset and
#   configured again, and the samples lost meanwhile become one flagged gap. While the sensor
#   fails, the PLX status says "sensor malfunctioning".
# - A chip that answers but does not sample is a failed sensor too: after a power-on reset (a
#   supply dip or ESD sets PWR_RDY and every register to its default: not sampling) or with no
#   sample for 0.5 s while running, it is reset and configured again the same way. Without this
#   the estimator would keep its last values and the watchdog would be fed for empty reads.

import nabz_codec as codec
from max30102 import INT_ALC_OVF, INT_PWR_RDY, MAX30102
from micropython import const
from nabz_ring import kdiff
from nabz_spo2 import DEV_EQUIPMENT_MALFUNCTION, DEV_SENSOR_MALFUNCTIONING

_RETRY_US = 1000000  # at most one recovery attempt a second
_FAULT_AFTER = 3  # failed reads in a row before the bus is recovered
_NO_SAMPLES_US = 500000  # running, and no sample for this long: the chip stopped (17 = 170 ms at 100 Hz)
_K_MASK = const(0x3FFFFFFF)  # the ring's sample index wraps at 2**30
_FIT_REBASE = const(0x10000000)  # the fit's start moves up once it is 2**28 samples behind ...
_FIT_KEEP = const(0x8000000)  # ... to 2**27 behind the newest sample


class PpgSampler:
    """make_i2c(): a new machine.I2C on the sensor's pins; bus_recover(): clocks the bus free.

    ring: nabz_ring.WaveRing (PPG); estimator: nabz_spo2.Spo2Estimator; clock: nabz_clock.Clock.
    settings: keyword arguments for MAX30102.configure (sample_rate_hz, led currents ...).
    """

    def __init__(self, make_i2c, ring, estimator, clock, settings, finger_on_counts=50000, bus_recover=None):
        self.make_i2c = make_i2c
        self.ring = ring
        self.estimator = estimator
        self.clock = clock
        self.settings = settings
        self.finger_on_counts = finger_on_counts
        self.bus_recover = bus_recover
        self.sensor = MAX30102(make_i2c())
        self.extra_flags = 0  # low battery, set by the wearable
        self.running = False
        self.faulty = False  # the sensor is not answering or not sampling (the wearable reports it)
        self.errors = 0
        self.errors_in_row = 0
        self.recoveries = 0
        self.next_try_us = 0
        self.reads = 0
        self.samples = 0
        self.overflows = 0
        self.reanchors = 0
        self.max_drift_us = 0
        self.full_scale = 0x3FFFF
        self._fit_k = 0
        self._fit_us = 0
        self.period_us = 10000
        self.stopped_us = None  # when the sensor failed: the time of the first sample missed
        self.last_sample_us = 0  # device time of the last read that brought samples (or of start)
        self.resets_seen = 0  # power-on resets of the chip noticed (PWR_RDY)
        self.stalls = 0  # times the chip answered but had stopped sampling

    # -- start and stop ---------------------------------------------------------------------------
    def start(self):
        """Reset and configure the chip; the first sample is one period from now. OSError if it
        does not answer (the caller keeps calling poll(), which retries)."""
        s = self.sensor
        s.reset()
        s.check()
        s.configure(**self.settings)
        rate = s.sample_rate_hz
        bits = (15, 16, 17, 18)[(69, 118, 215, 411).index(s.pulse_width_us)]
        self.full_scale = (0x3FFFF >> (18 - bits)) << (18 - bits)
        self.period_us = 1000000 // rate
        now = self.clock.now_us()
        ring = self.ring
        if ring.rate_hz != rate:
            ring.set_rate(rate, ring.k, now + self.period_us)
            self.estimator.set_rate(rate)
            self.estimator.reset()
        else:
            ring.stamp()
            ring.set_time(ring.k, now + self.period_us, self.period_us * 1000)
        self._fit_k = ring.k
        self._fit_us = now + self.period_us
        self.last_sample_us = now
        self.running = True
        self.errors_in_row = 0
        # `faulty` and the estimator's fault bits stay until samples arrive: a chip that takes
        # its settings but does not sample is not recovered (and its old values not current).

    def stop(self):
        """Power the sensor down (LEDs off). Errors are ignored: it may be what failed."""
        self.running = False
        try:
            self.sensor.shutdown()
        except OSError:
            pass

    def set_rate(self, rate_hz):
        """Change the sample rate (low battery: 50 Hz); the chip restarts its FIFO."""
        if self.settings.get("sample_rate_hz") == rate_hz:
            return
        self.settings["sample_rate_hz"] = rate_hz
        if self.running:
            self.poll()  # keep what the FIFO holds at the old rate
            try:
                self.start()
            except (OSError, ValueError):
                # The chip is left in shutdown (configure() stops it first): nothing is sampled
                # until poll() has recovered it.
                self._failed(True)

    # -- reading ----------------------------------------------------------------------------------
    def poll(self):
        """Read the FIFO into the ring and the estimator; returns samples read (-1 on an error)."""
        if not self.running:
            return self._retry()
        try:
            count = self.sensor.read_fifo()
        except OSError:
            self._failed()
            return -1
        s = self.sensor
        if s.status & INT_PWR_RDY:
            # The chip went through a power-on reset since it was configured: not sampling.
            self.resets_seen += 1
            self._failed(True)
            return -1
        if count == 0 and self.clock.now_us() - self.last_sample_us > _NO_SAMPLES_US:
            self.stalls += 1  # it answers, but nothing was sampled for too long
            self._failed(True)
            return -1
        self.errors_in_row = 0
        self.reads += 1
        lost = s.lost
        ring = self.ring
        est = self.estimator
        if lost:
            if lost >= 31:
                # The counter saturated ("31 or more"): count the loss from the clock instead.
                # The newest sample was taken less than a period before this read.
                t_newest = ring.time_of((ring.k + count - 1) & _K_MASK)
                by_time = (self.clock.now_us() - t_newest) // self.period_us
                if by_time > lost:
                    lost = by_time
            self.overflows = (self.overflows + lost) & _K_MASK  # a count modulo 2**30, like the ring's
            ring.skip(lost)  # rollover: the lost samples came before the ones read now
            est.gap()
        flags = self.extra_flags
        if s.status & INT_ALC_OVF:
            est.interference_until = est.n + 2 * ring.rate_hz
            flags |= codec.WAVE_FLAG_SATURATED
        full = self.full_scale
        off = self.finger_on_counts
        for i in range(count):
            red = s.red(i)
            ir = s.ir(i)
            f = flags
            if ir < off:
                f |= codec.WAVE_FLAG_SENSOR_OFF
            if red >= full or ir >= full or red == 0 or ir == 0:
                f |= codec.WAVE_FLAG_SATURATED
            ring.put_ppg(red, ir, f)
            est.update(red, ir)
        self.samples = (self.samples + count) & _K_MASK  # the watchdog's progress: a small int
        if count:
            self._track_time(False)
            if self.faulty or est.faults:
                self.faulty = False  # samples again: recovered
                est.faults = 0
        return count

    def _track_time(self, unknown_loss):
        """Compare the newest sample's predicted time with now; re-anchor on drift or loss."""
        ring = self.ring
        now = self.clock.now_us()
        self.last_sample_us = now
        self.estimator.sample_us = now
        newest = (ring.k - 1) & _K_MASK
        drift = now - ring.time_of(newest)
        if abs(drift) > self.max_drift_us:
            self.max_drift_us = abs(drift)
        if not unknown_loss and -self.period_us <= drift <= 2 * self.period_us:
            return
        ring.stamp()
        span = kdiff(newest, self._fit_k)
        period_ns = self.period_us * 1000
        if not unknown_loss and span > 5 * ring.rate_hz:
            fitted = ((now - self._fit_us) * 1000) // span
            if period_ns * 95 // 100 <= fitted <= period_ns * 105 // 100:
                period_ns = fitted
        ring.set_time(newest, now - self.period_us // 2, period_ns)
        self.reanchors += 1
        if unknown_loss:
            self._fit_k = newest
            self._fit_us = now

    def rebase(self):
        """Keep the clock fit's start within 2**28 samples of the newest (task side, from the
        wearable's loop after ring.rebase()). Returns True if it moved.

        Without it the span of the fit turns negative after 2**29 samples (62 days at 100 Hz)
        and the fitted period is never used again: the nominal one drifts from the chip's and
        frame times step by up to two periods every few seconds. The start moves to a point of
        the chord from the old start to the ring's time of the newest sample (both measured to
        within about two periods), 2**27 samples behind the newest, so the next fit still runs
        over 15.5 days and its period is as good as before.
        """
        ring = self.ring
        newest = (ring.k - 1) & _K_MASK
        span = kdiff(newest, self._fit_k)
        if span < _FIT_REBASE:
            return False
        move = span - _FIT_KEEP
        # Long ints (device times in us): task side, once every 2**27 samples.
        self._fit_us += ((ring.time_of(newest) - self._fit_us) * move) // span
        self._fit_k = (self._fit_k + move) & _K_MASK
        return True

    # -- faults -----------------------------------------------------------------------------------
    def _failed(self, at_once=False):
        """A failed read (or, at_once, a chip that certainly stopped sampling: recover it now)."""
        self.errors += 1
        self.errors_in_row += 1
        if at_once and self.errors_in_row < _FAULT_AFTER:
            self.errors_in_row = _FAULT_AFTER
        self.estimator.faults = DEV_SENSOR_MALFUNCTIONING
        if self.errors_in_row >= _FAULT_AFTER:
            self.faulty = True
            self.estimator.faults = DEV_SENSOR_MALFUNCTIONING | DEV_EQUIPMENT_MALFUNCTION
            if self.running:
                self.running = False
                self.stopped_k = self.ring.k
                self.stopped_us = self.ring.time_of(self.ring.k)

    def _retry(self):
        """While the sensor is down: recover the bus and restart, at most once a second."""
        now = self.clock.now_us()
        if now < self.next_try_us:
            return 0
        self.next_try_us = now + _RETRY_US
        if self.bus_recover is not None:
            self.bus_recover()
        self.sensor.i2c = self.make_i2c()
        stopped = self.stopped_us
        try:
            self.start()
        except (OSError, ValueError):
            self.errors += 1
            return -1
        self.recoveries += 1
        if stopped is not None:
            # The samples that would have been taken while the sensor was down: one gap.
            missed = (self.ring.time_of(self.ring.k) - stopped) // self.period_us
            if missed > 0:
                self.ring.skip(missed)
                self.estimator.gap()
                if missed > 2 * self.ring.rate_hz:
                    self.estimator.reset()  # beats from before a long outage are not current
            self.ring.stamp()
            self.ring.set_time(self.ring.k, now + self.period_us, self.period_us * 1000)
            self._fit_k = self.ring.k
            self._fit_us = now + self.period_us
            self.stopped_us = None
        return 0


def i2c_bus_recover(scl_pin, sda_pin, half_period_us=5):
    """Free an I2C bus whose slave holds SDA low (it stopped mid-byte): clock SCL nine times so it
    finishes the byte and releases SDA, then send a STOP (SDA rising while SCL is high)."""
    import time

    import machine

    scl = machine.Pin(scl_pin, machine.Pin.OPEN_DRAIN, value=1)
    sda = machine.Pin(sda_pin, machine.Pin.OPEN_DRAIN, value=1)
    for _ in range(9):
        scl.value(0)
        time.sleep_us(half_period_us)
        scl.value(1)
        time.sleep_us(half_period_us)
    sda.value(0)
    time.sleep_us(half_period_us)
    sda.value(1)
