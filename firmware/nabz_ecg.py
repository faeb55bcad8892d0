# ECG patch sampling: AD8232 analogue front end, ESP32 ADC, 250 Hz from a hardware timer.
#
# Rules of this file:
# - tick() is the timer callback: it reads the ADC and the two leads-off pins, converts to
#   microvolts, and feeds the waveform ring and the QRS detector. It allocates nothing (tests
#   measure it), so it could run as a hard interrupt; on the ESP32 it is a soft (scheduled)
#   callback because the ADC driver is not interrupt-safe, and so it can run late.
# - Jitter is accounted for, not hidden: sample k belongs to the time slot start + k x 4 ms. A
#   callback up to one period late still fills its own slot (the lateness is recorded: the
#   worst, and a histogram); a callback later than that means slots were missed, and the ring
#   closes the frame and flags a gap before the next one. A callback that comes early (two
#   queued callbacks run back to back) is dropped and counted.
# - Leads off (LO+ or LO- high, AD8232 DC leads-off detection) flags the samples and silences
#   the detector; saturation (the output at the ADC's usable limits) flags them too.
# - Every counter wraps at 2**30 (_MASK): past it a count is a long int, allocated at each sample
#   (2**30 samples are 49.7 days at 250 Hz). The watchdog only needs `samples` to change, and
#   the statistics are read over minutes (tests, the board's jitter check): modulo 2**30 is exact
#   for them; over longer, take differences mod 2**30.

import nabz_codec as codec
from micropython import const

try:
    from typing import TYPE_CHECKING
except ImportError:  # MicroPython has no typing module; annotations are never evaluated there
    TYPE_CHECKING = False
if TYPE_CHECKING:
    import machine

_LATE_BUCKETS_US = (250, 1000, 2000)  # histogram edges: <250 us, <1 ms, <2 ms, >= 2 ms
_MASK = const(0x3FFFFFFF)  # counters wrap at 2**30: small ints on the ESP32


class EcgSampler:
    """Timer-driven sampler. adc: machine.ADC (read_uv); lo_plus/lo_minus: machine.Pin inputs;
    clock: nabz_clock.Clock; ring: nabz_ring.WaveRing (ECG); detector: nabz_qrs.QrsDetector.

    Conversion: ECG microvolts = (ADC microvolts - ref_uv) / gain, with gain the front end's
    total gain (1100 on the common AD8232 boards); gain_x16 is that gain times 16, rounded.
    Samples at or beyond adc_min_uv / adc_max_uv are flagged saturated.
    """

    def __init__(
        self,
        adc: "machine.ADC",
        lo_plus: "machine.Pin",
        lo_minus: "machine.Pin",
        ring,
        detector,
        clock,
        ref_uv: int,
        gain_x16: int,
        adc_min_uv: int,
        adc_max_uv: int,
        rate_hz: int = 250,
        sdn: "machine.Pin | None" = None,
    ) -> None:
        self.adc = adc
        self.lo_plus = lo_plus
        self.lo_minus = lo_minus
        self.ring = ring
        self.detector = detector
        self.clock = clock
        self.ref_uv = ref_uv
        self.gain_x16 = gain_x16
        self.adc_min_uv = adc_min_uv
        self.adc_max_uv = adc_max_uv
        self.rate_hz = rate_hz
        self.period_us = 1000000 // rate_hz
        self.sdn = sdn  # AD8232 SDN (shutdown, active low), or None
        self.extra_flags = 0  # set by the wearable (low battery)
        self.timer: machine.Timer | None = None
        self.due = 0
        self.leads_off = False
        self.last_uv = 0
        # Jitter accounting.
        self.samples = 0
        self.max_late_us = 0
        self.late_hist = [0, 0, 0, 0]
        self.missed = 0  # slots no callback came for (gaps)
        self.early = 0  # callbacks dropped for coming early
        self.leads_off_samples = 0
        self.saturated_samples = 0

    def start(self, timer: "machine.Timer") -> None:
        """Power the front end and start sampling; the first sample is due one period from now."""
        if self.sdn is not None:
            self.sdn.value(1)
        clock = self.clock
        now_ticks = clock.ticks()
        now_us = clock.now_us()
        self.due = clock.ticks_add(now_ticks, self.period_us)
        self.ring.stamp()
        self.ring.set_time(self.ring.k, now_us + self.period_us, self.period_us * 1000)
        self.timer = timer
        timer.init(mode=timer.PERIODIC, freq=self.rate_hz, callback=self.tick, hard=False)

    def stop(self):
        """Stop sampling and shut the front end down (AD8232 SDN low: about 40 nA)."""
        if self.timer is not None:
            self.timer.deinit()
            self.timer = None
        if self.sdn is not None:
            self.sdn.value(0)

    def tick(self, _timer=None):
        """The timer callback: one sample. No allocation."""
        clock = self.clock
        late = clock.ticks_diff(clock.ticks(), self.due)
        period = self.period_us
        if late < -(period >> 1):
            self.early = (self.early + 1) & _MASK
            return
        if late >= period:
            missed = late // period
            self.due = clock.ticks_add(self.due, missed * period)
            late -= missed * period
            self.missed = (self.missed + missed) & _MASK
            self.ring.skip(missed)
            self.detector.skip(missed)
        self.due = clock.ticks_add(self.due, period)
        if late > self.max_late_us:
            self.max_late_us = late
        h = self.late_hist
        if late < 250:
            h[0] = (h[0] + 1) & _MASK
        elif late < 1000:
            h[1] = (h[1] + 1) & _MASK
        elif late < 2000:
            h[2] = (h[2] + 1) & _MASK
        else:
            h[3] = (h[3] + 1) & _MASK
        self.samples = (self.samples + 1) & _MASK  # the watchdog's progress: it needs a change only
        v = self.adc.read_uv()
        self.last_uv = v
        uv = ((v - self.ref_uv) * 16 + (self.gain_x16 >> 1)) // self.gain_x16
        if self.lo_plus.value() or self.lo_minus.value():
            flags = codec.WAVE_FLAG_LEADS_OFF
            self.leads_off_samples = (self.leads_off_samples + 1) & _MASK
            if not self.leads_off:
                self.leads_off = True
            self.detector.skip(1)
        else:
            flags = 0
            if v <= self.adc_min_uv or v >= self.adc_max_uv:
                flags = codec.WAVE_FLAG_SATURATED
                self.saturated_samples = (self.saturated_samples + 1) & _MASK
            if self.leads_off:
                self.leads_off = False
                self.detector.reset()
            self.detector.update(uv)
        self.ring.put_ecg(uv, flags | self.extra_flags)

    def jitter(self):
        """Timing statistics since start (for the device log and docs/firmware.md); the counts
        are modulo 2**30 (49.7 days of samples)."""
        return {
            "samples": self.samples,
            "max_late_us": self.max_late_us,
            "late_hist": list(self.late_hist),
            "late_edges_us": _LATE_BUCKETS_US,
            "missed": self.missed,
            "early": self.early,
        }
