# On-device pulse rate, SpO2 and perfusion for PLX Continuous Measurement 0x2A5F, from the
# MAX30102's red and infrared counts at 100 Hz (or 50 Hz on low battery), with the status bits.
#
# Method (ratio of ratios, as in Webster JG (ed.), "Design of Pulse Oximeters", IOP 1997, ch. 4):
#   finger      the infrared level: at least finger_on counts for 0.5 s is a finger, below it
#               for 0.2 s is none (the per-sample "sensor off" frame flag uses the level alone)
#   pulses      infrared minus its 1.3 s running mean, inverted (blood absorbs: systole is a dip
#               in counts), smoothed over 40 ms; feet and peaks found with hysteresis at a quarter
#               of the running pulse amplitude; a beat is where the upstroke crosses half its
#               height (interpolated to 1/16 sample), and lasts to the next one
#   per beat    AC = max - min and DC = (max + min) / 2 of each raw channel over the beat;
#               R = (AC_red / DC_red) / (AC_ir / DC_ir); PI = 100 AC_ir / DC_ir
#   values      SpO2 = 110 - 25 R from the median R of the last 5 beats; pulse rate from the
#               mean of the last 4 beat intervals; PAI from the median PI
# 110 - 25 R is the common *uncalibrated* empirical line (the same one hardware/ppg.py and the
# server use). It is not a calibration: a Nabz oximeter must be calibrated against a reference
# oximeter on people (ISO 80601-2-61) before its SpO2 means anything clinically, which is why the
# "validated" and "fully qualified" measurement-status bits are never set.
#
# Rules of this file:
# - update() runs once per sample in the oximeter's read loop; between beats it does small-int
#   work only. At a beat it stores three floats (allocates a few dozen bytes).
# - Sample counts are kept small: n (samples seen) is moved back by whatever is over 2**24 once
#   it reaches 2**25 (3.9 days at 100 Hz), with every value measured in it (the last beat, the
#   last foot in 1/16 samples, the interference deadline), so a beat time (n << 4) stays under
#   2**30 and nothing becomes a long int however long the oximeter runs. The run lengths
#   (finger debounce, since_reset) are capped at the same time: they are only compared with
#   a few seconds' worth of samples.
# - status() (once a second) returns the PLX fields; it allocates freely. Given the time, it
#   says "unavailable" when no sample arrived for over a second (the sampler sets sample_us at
#   each read that brings samples): values are never repeated from a sensor that went quiet.

from array import array

from micropython import const

# PLX Measurement Status bits (PLXS 1.0.1 3.1.1.3)
MEAS_ONGOING = const(1 << 5)
MEAS_EARLY_ESTIMATE = const(1 << 6)
MEAS_UNAVAILABLE = const(1 << 13)
MEAS_QUESTIONABLE = const(1 << 14)
# PLX Device and Sensor Status bits (PLXS 1.0.1 3.1.1.4)
DEV_EQUIPMENT_MALFUNCTION = const(1 << 1)
DEV_LOW_PERFUSION = const(1 << 5)
DEV_ERRATIC_SIGNAL = const(1 << 6)
DEV_NONPULSATILE = const(1 << 7)
DEV_SIGNAL_ANALYSIS_ONGOING = const(1 << 9)
DEV_SENSOR_INTERFERENCE = const(1 << 10)
DEV_SENSOR_UNCONNECTED = const(1 << 11)
DEV_SENSOR_MALFUNCTIONING = const(1 << 14)
MEAS_SUPPORTED = MEAS_ONGOING | MEAS_EARLY_ESTIMATE | MEAS_UNAVAILABLE | MEAS_QUESTIONABLE
DEV_SUPPORTED = (
    DEV_EQUIPMENT_MALFUNCTION
    | DEV_LOW_PERFUSION
    | DEV_ERRATIC_SIGNAL
    | DEV_NONPULSATILE
    | DEV_SIGNAL_ANALYSIS_ONGOING
    | DEV_SENSOR_INTERFERENCE
    | DEV_SENSOR_UNCONNECTED
    | DEV_SENSOR_MALFUNCTIONING
)

_DC_SHIFT = const(7)  # running mean over 128 samples
_SMOOTH_N = const(4)
_BEATS = const(8)
_FULL_BEATS = const(5)  # beats in the SpO2 median before it stops being an "early estimate"
_STALE_US = const(1000000)  # no sample for this long (real time): no values
_N_REBASE = const(0x2000000)  # n is moved back when it reaches 2**25 ...
_N_KEEP = const(0x1000000)  # ... to 2**24 (more than any interval measured in it)


class Spo2Estimator:
    def __init__(self, rate_hz=100, finger_on_counts=50000, low_pi_pct=0.3):
        self.finger_on_counts = finger_on_counts
        self.low_pi_pct = low_pi_pct
        self.r = array("f", [0.0] * _BEATS)
        self.pi = array("f", [0.0] * _BEATS)
        self.ibi = array("i", [0] * _BEATS)  # beat intervals, 1/16 samples
        self.sm = array("i", [0] * _SMOOTH_N)
        self.set_rate(rate_hz)
        self.faults = 0  # set by the sampler: DEV_* bits for sensor or bus trouble
        self.interference_until = 0
        self.finger = False
        self._finger_run = 0
        self.n = 0  # samples seen
        self.sample_us = 0  # device time of the newest samples (set by the sampler)
        self.reset()

    def set_rate(self, rate_hz):
        self.rate_hz = rate_hz
        self._on_debounce = rate_hz // 2
        self._off_debounce = rate_hz // 5
        self._min_ibi = (rate_hz * 3) // 10  # 200 bpm
        self._max_ibi = rate_hz * 2  # 30 bpm
        self._no_pulse = rate_hz * 8

    def reset(self):
        """Forget the pulse history (finger put back, rate changed)."""
        self.dc_ir = 0
        self.dc_red = 0
        self.primed = 0
        self.sm_i = 0
        self.sm_sum = 0
        self.rising = False
        self.ext = 0  # the running extreme of the smoothed pulse (min when falling, max when rising)
        self.foot_val = 0  # the last foot (running minimum) of the smoothed pulse
        self.mid = 0  # half way up the current upstroke
        self.crossed = False
        self.s_prev = 0
        self.amp = 0
        self.last_foot = -1  # the last beat's fiducial point, 1/16 samples (-1: none yet)
        self.since_reset = 0
        self.beats = 0  # valid beats stored (capped at _BEATS for the arrays)
        self.beat_i = 0
        self.irregular = 0  # beats rejected recently (decays with good ones)
        self.rejected_in_row = 0
        self._hi_ir = 0
        self._lo_ir = 0x3FFFF
        self._hi_red = 0
        self._lo_red = 0x3FFFF
        self.last_beat_n = self.n

    def gap(self):
        """Samples were lost: the beat in progress cannot be measured."""
        self.last_foot = -1

    # -- per sample -------------------------------------------------------------------------------
    def update(self, red, ir):
        """One sample (raw counts). Returns True when the finger is on the sensor."""
        n = self.n + 1
        if n >= _N_REBASE:
            n = self._rebase(n)
        self.n = n
        if ir >= self.finger_on_counts:
            self._finger_run = self._finger_run + 1 if self._finger_run >= 0 else 1
            if not self.finger and self._finger_run >= self._on_debounce:
                self.finger = True
                self.reset()
        else:
            self._finger_run = self._finger_run - 1 if self._finger_run <= 0 else -1
            if self.finger and -self._finger_run >= self._off_debounce:
                self.finger = False
        if not self.finger:
            return False
        self.since_reset += 1
        if self.primed == 0:
            self.dc_ir = ir << _DC_SHIFT
            self.dc_red = red << _DC_SHIFT
            self.primed = 1
        self.dc_ir += ir - (self.dc_ir >> _DC_SHIFT)
        self.dc_red += red - (self.dc_red >> _DC_SHIFT)
        ac = (self.dc_ir >> _DC_SHIFT) - ir  # pulse up
        i = self.sm_i
        self.sm_sum += ac - self.sm[i]
        self.sm[i] = ac
        self.sm_i = i + 1 if i + 1 < _SMOOTH_N else 0
        s = self.sm_sum
        if ir > self._hi_ir:
            self._hi_ir = ir
        if ir < self._lo_ir:
            self._lo_ir = ir
        if red > self._hi_red:
            self._hi_red = red
        if red < self._lo_red:
            self._lo_red = red
        if self.since_reset < self.rate_hz:
            self.ext = s
            return True  # let the running mean settle for a second
        hyst = self.amp >> 2
        if hyst < 4 * _SMOOTH_N:
            hyst = 4 * _SMOOTH_N
        prev = self.s_prev
        self.s_prev = s
        if self.rising:
            if not self.crossed and s >= self.mid:
                # The upstroke crosses half the pulse height: the beat's fiducial point, placed
                # to 1/16 sample by linear interpolation (the steepest, least noisy part).
                self.crossed = True
                frac = ((self.mid - prev) << 4) // (s - prev) if s > prev else 0
                self._beat(((self.n - 1) << 4) + frac)
            if s > self.ext:
                self.ext = s
            elif s < self.ext - hyst:
                a = self.ext - self.foot_val
                self.amp += (a - self.amp) >> 2 if self.amp else a
                self.rising = False
                self.ext = s
        else:
            if s < self.ext:
                self.ext = s
            elif s > self.ext + hyst:
                self.foot_val = self.ext
                half = (self.amp if self.amp > 2 * hyst else 2 * hyst) >> 1
                self.mid = self.ext + half
                self.crossed = False
                self.rising = True
                self.ext = s
                if s >= self.mid:
                    self.crossed = True
                    frac = ((self.mid - prev) << 4) // (s - prev) if s > prev else 0
                    self._beat(((self.n - 1) << 4) + frac)
        return True

    def _rebase(self, n):
        """Move sample time n back to _N_KEEP, and what is measured in it with it; returns the
        new n. Small-int work only (it runs in the per-sample path once every 2**24 samples)."""
        shift = n - _N_KEEP
        b = self.last_beat_n - shift
        self.last_beat_n = b if b > -_N_KEEP else -_N_KEEP  # no beat for days: still stale
        u = self.interference_until - shift
        self.interference_until = u if u > 0 else 0
        if self.last_foot >= 0:
            f = self.last_foot - (shift << 4)
            self.last_foot = f if f >= 0 else -1  # a foot days old begins no beat
        if self.since_reset > _N_KEEP:
            self.since_reset = _N_KEEP
        if self._finger_run > _N_KEEP:
            self._finger_run = _N_KEEP
        elif self._finger_run < -_N_KEEP:
            self._finger_run = -_N_KEEP
        return _N_KEEP

    def _beat(self, at16):
        """A beat's fiducial point at sample at16 / 16: close the beat since the previous one."""
        prev = self.last_foot
        self.last_foot = at16
        hi_ir = self._hi_ir
        lo_ir = self._lo_ir
        hi_red = self._hi_red
        lo_red = self._lo_red
        self._hi_ir = 0
        self._lo_ir = 0x3FFFF
        self._hi_red = 0
        self._lo_red = 0x3FFFF
        if prev < 0:
            return
        ibi = at16 - prev  # 1/16 samples
        ac_ir = hi_ir - lo_ir
        ac_red = hi_red - lo_red
        if ibi < self._min_ibi << 4 or ibi > self._max_ibi << 4 or ac_ir <= 0 or ac_red <= 0:
            self.irregular += 1
            return
        if self.beats >= 2:
            mean = self._mean_ibi(self.beats if self.beats < 4 else 4)
            if ibi * 10 < mean * 6 or ibi * 10 > mean * 16:
                self.irregular += 1  # a beat far from the recent rhythm: motion or a missed beat
                self.rejected_in_row += 1
                if self.rejected_in_row >= 3:
                    self.beats = 0  # the rhythm changed (or was learnt wrong): learn it again
                    self.rejected_in_row = 0
                return
        self.rejected_in_row = 0
        dc_ir = (hi_ir + lo_ir) / 2
        dc_red = (hi_red + lo_red) / 2
        j = self.beat_i
        self.r[j] = (ac_red / dc_red) / (ac_ir / dc_ir)
        self.pi[j] = 100.0 * ac_ir / dc_ir
        self.ibi[j] = ibi
        self.beat_i = j + 1 if j + 1 < _BEATS else 0
        self.beats += 1
        self.last_beat_n = self.n
        if self.irregular:
            self.irregular -= 1

    def _mean_ibi(self, count):
        total = 0
        j = self.beat_i
        for _ in range(count):
            j = j - 1 if j > 0 else _BEATS - 1
            total += self.ibi[j]
        return total // count

    def _recent(self, arr, count):
        out = []
        j = self.beat_i
        for _ in range(count):
            j = j - 1 if j > 0 else _BEATS - 1
            out.append(arr[j])
        return out

    # -- once a second ---------------------------------------------------------------------------
    def status(self, now_us=None):
        """(spo2 %, pulse rate /min, PAI %, measurement status, device and sensor status).

        Values are None when there are none; the statuses say why. now_us: the device time, to
        tell a sensor that stopped delivering samples (staleness in samples cannot: none come).
        """
        dev = self.faults
        if now_us is not None and now_us - self.sample_us > _STALE_US:
            return None, None, None, MEAS_UNAVAILABLE, dev | DEV_SENSOR_MALFUNCTIONING
        if self.interference_until > self.n:
            dev |= DEV_SENSOR_INTERFERENCE
        if not self.finger:
            return None, None, None, MEAS_UNAVAILABLE, dev | DEV_SENSOR_UNCONNECTED
        if self.faults:
            return None, None, None, MEAS_UNAVAILABLE, dev
        stale = self.n - self.last_beat_n
        if self.beats < 2 or stale > self._no_pulse:
            if self.since_reset > self._no_pulse and stale > self._no_pulse:
                return None, None, None, MEAS_UNAVAILABLE, dev | DEV_NONPULSATILE
            return None, None, None, MEAS_ONGOING | MEAS_UNAVAILABLE, dev | DEV_SIGNAL_ANALYSIS_ONGOING
        n = self.beats if self.beats < _FULL_BEATS else _FULL_BEATS
        rs = sorted(self._recent(self.r, n))
        r = rs[n // 2] if n % 2 else (rs[n // 2 - 1] + rs[n // 2]) / 2
        spo2 = 110.0 - 25.0 * r
        if spo2 > 100.0:
            spo2 = 100.0
        if spo2 < 0.0:
            spo2 = 0.0
        count = self.beats if self.beats < 4 else 4
        pr = 960.0 * self.rate_hz / self._mean_ibi(count)  # intervals are in 1/16 samples
        pis = sorted(self._recent(self.pi, n))
        pai = pis[n // 2]
        meas = MEAS_ONGOING
        if self.beats < _FULL_BEATS:
            meas |= MEAS_EARLY_ESTIMATE
        if self.irregular >= 2:
            meas |= MEAS_QUESTIONABLE
            dev |= DEV_ERRATIC_SIGNAL
        if pai < self.low_pi_pct:
            dev |= DEV_LOW_PERFUSION
        return spo2, pr, pai, meas, dev
