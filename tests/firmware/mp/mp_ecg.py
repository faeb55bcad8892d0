# The ECG patch's sampler and QRS detector under MicroPython, with a fake ADC, leads-off pins and
# timer: jitter accounting, gaps, leads off, saturation, no allocation per sample, and beats on
# synthetic (hardware/ecg.py) and real (MIT-BIH record 100) ECG given as int16 files.
import json
import time
from array import array

import machine
import nabz_codec as codec
from fake_clock import FakeClock
from mptest import alloc_of, emit
from nabz_ecg import EcgSampler
from nabz_qrs import QrsDetector, rr_1024
from nabz_ring import WaveRing

REF = 1650000
GAIN = 300  # +-5 mV -> +-1.5 V around REF
PERIOD = 4000


class Source:
    """ADC values from an int16 array of microvolts (no allocation per read)."""

    def __init__(self, uv):
        self.uv = uv
        self.i = 0

    def __call__(self):
        v = self.uv[self.i]
        self.i += 1
        return REF + v * GAIN


def make(start_us=1000000, frame=113):
    machine.clear()
    clock = FakeClock(start_us)
    adc = machine.ADC(machine.Pin(36), atten=machine.ADC.ATTN_11DB)
    lop = machine.Pin(34, machine.Pin.IN)
    lom = machine.Pin(39, machine.Pin.IN)
    ring = WaveRing(codec.WAVE_KIND_ECG, 250, 64, 512, frame)
    det = QrsDetector()
    s = EcgSampler(
        adc,
        lop,
        lom,
        ring,
        det,
        clock,
        REF,
        GAIN * 16,
        REF - 5000 * GAIN,
        REF + 5000 * GAIN,
        sdn=machine.Pin(25, machine.Pin.OUT),
    )
    tim = machine.Timer(0)
    s.start(tim)
    return s, clock, adc, lop, lom, ring, det, tim


def frames(ring):
    ring.stamp()
    out = []
    buf = bytearray(300)
    fc = ring.oldest_fc
    while ring.holds(fc):
        f = codec.wave_decode(bytes(buf[: ring.frame_into(buf, fc)]))
        out.append([f["seq"], f["n"], f["flags"], f["t0_us"], f["samples"][0]])
        fc += 1
    return out


# A. Jitter: on time, late within a period, a stall that loses slots, coalesced callbacks.
s, clock, adc, lop, lom, ring, det, tim = make(frame=20)
adc.source = Source(array("h", range(-3000, 3000)))
log = []
for _ in range(10):  # on time
    clock.advance(PERIOD)
    tim.fire()
clock.advance(PERIOD + 1500)  # 1.5 ms late
tim.fire()
clock.advance(PERIOD - 1500)  # and the next one on time again
tim.fire()
clock.advance(3 * PERIOD + 700)  # a stall: two slots have no callback at all
tim.fire()
clock.advance(PERIOD - 700 + 9000)  # 9 ms stall, then three queued callbacks back to back
tim.fire()
tim.fire()
tim.fire()
for _ in range(30):
    clock.advance(PERIOD)
    tim.fire()
emit(
    "jitter", {"stats": s.jitter(), "frames": frames(ring), "start_us": 1000000, "values_read": adc.source.i}
)

# B. Leads off and saturation.
s, clock, adc, lop, lom, ring, det, tim = make(frame=25)
vals = array("h", [0] * 100)
for i in range(100):
    vals[i] = 100 * (i % 7)
vals[60] = 5000
vals[61] = -5000
vals[62] = 4999
adc.source = Source(vals)
for i in range(100):
    lop.level = 1 if 25 <= i < 40 else 0
    lom.level = 1 if i == 45 else 0
    clock.advance(PERIOD)
    tim.fire()
emit(
    "flags",
    {
        "frames": frames(ring),
        "leads_off_samples": s.leads_off_samples,
        "saturated_samples": s.saturated_samples,
    },
)
s.stop()
emit("stopped", {"timer_running": tim.running, "sdn": machine.pin(25).level})

# C. No allocation per sample, beats included (synthetic ECG at 72 bpm from /ecg/hr72.bin).
data = array("h", open("/ecg/hr72.bin", "rb").read())
s, clock, adc, lop, lom, ring, det, tim = make()
adc.source = Source(data)


def one_tick(_):
    clock.advance(PERIOD)
    tim.fire()


alloc = alloc_of(one_tick, None, 3000)  # 12 s: learning, then beats
emit("alloc per tick", {"bytes": alloc, "beats": det.beats_total})

# D. Beats and heart rate on synthetic ECG at several rates, through the sampler.
cases = json.load(open("/ecg/cases.json"))
t_start = time.ticks_ms()
for name in cases:
    data = array("h", open("/ecg/%s.bin" % name, "rb").read())
    s, clock, adc, lop, lom, ring, det, tim = make()
    adc.source = Source(data)
    beats = []
    hr = []
    rr = []
    for i in range(len(data)):
        clock.advance(PERIOD)
        tim.fire()
        while det.beats_r != det.beats_w:
            beats.append(det.beat_k[det.beats_r])
            det.beats_r = (det.beats_r + 1) % len(det.beat_k)
        if i % 250 == 249:
            hr.append(det.hr_bpm())
    emit("synthetic " + name, {"beats": beats, "hr": hr})
emit("synthetic ms", time.ticks_diff(time.ticks_ms(), t_start))

# E. MIT-BIH record 100 (real ECG, lead MLII at 250 Hz), through the detector alone.
data = array("h", open("/ecg/rec100.bin", "rb").read())
det = QrsDetector()
beats = []
t_start = time.ticks_ms()
for v in data:
    det.update(v)
    while det.beats_r != det.beats_w:
        beats.append(det.beat_k[det.beats_r])
        det.beats_r = (det.beats_r + 1) % len(det.beat_k)
emit(
    "record 100",
    {"beats": beats, "ms": time.ticks_diff(time.ticks_ms(), t_start), "rr_1024_of_250": rr_1024(250)},
)

# F. Twelve days in: the detector's sample counters are moved back before they leave the small-int
# range. Jump them to just before that point (by a multiple of the history length) and go on.
data = array("h", open("/ecg/hr72.bin", "rb").read())
det = QrsDetector()
for i in range(2500):
    det.update(data[i])
shift = ((0x20000000 - 300 - det.n) // 512) * 512
det.n += shift
det.k += shift
det.peak_n += shift
det.sb_n += shift
det.last_qrs_n += shift
det.last_r_k += shift
before = det.beats_total
rr = []
hr = []
pos = [2500]


def feed_second(_):
    for _ in range(250):
        det.update(data[pos[0]])
        pos[0] += 1


alloc = alloc_of(feed_second, None, 4)
for _ in range(4):
    feed_second(None)
    det.take(rr)
    hr.append(det.hr_bpm())
emit(
    "rebase",
    {
        "n_after": det.n,
        "limit": 0x20000000,
        "beats": det.beats_total - before,
        "rr": rr,
        "hr": hr,
        "alloc": alloc,
    },
)

# G. 49.7 days in: every counter of the sampler and of its ring 10 short of 2**30 (2**30 samples
# at 250 Hz), at MTU 23 (one sample a frame: each sample also pushes a frame out of the full
# index). One cycle of callbacks moves every counter: on time, late into each histogram bucket,
# a missed slot, an early callback, a leads-off sample, a saturated one. The counters pass 2**30
# first (a wrap makes one 16-byte temporary, once in 2**30 samples); then the cycles are measured.
s, clock, adc, lop, lom, ring, det, tim = make(frame=1)
vals = array("h", [100 * (i % 7) for i in range(16000)])
for i in range(600 + 10, 16000, 11):
    vals[i] = 5000  # the positive rail, the last sample of each cycle below: flagged saturated
adc.source = Source(vals)
for _ in range(600):  # fill the 512-frame index
    clock.advance(PERIOD)
    tim.fire()
EDGE = (1 << 30) - 10
s.samples = s.missed = s.early = s.leads_off_samples = s.saturated_samples = EDGE
for b in range(4):
    s.late_hist[b] = EDGE
ring.samples_in = ring.samples_lost = ring.gaps = ring.frames_dropped = EDGE


def cycle(_):
    for late in (0, 500, 1500, 2500):  # one callback into each bucket, then back on the grid
        clock.advance(PERIOD + late)
        tim.fire()
        clock.advance(PERIOD - late)
        tim.fire()
    clock.advance(2 * PERIOD)  # a slot without a callback: missed, a gap in the ring
    tim.fire()
    tim.fire()  # a queued callback right behind it: early, dropped
    lop.level = 1
    clock.advance(PERIOD)
    tim.fire()  # leads off
    lop.level = 0
    clock.advance(PERIOD)
    tim.fire()


for _ in range(20):
    cycle(None)
wrapped = {
    "samples": s.samples,
    "late_hist": list(s.late_hist),
    "missed": s.missed,
    "early": s.early,
    "leads_off_samples": s.leads_off_samples,
    "saturated_samples": s.saturated_samples,
    "ring": [ring.samples_in, ring.samples_lost, ring.gaps, ring.frames_dropped],
}
per_cycle = alloc_of(cycle, None, 25)

# Leads off for 24.8 days: the detector only sees skip(1) per sample (as one skip here).
lop.level = 1
det.skip((1 << 30) - 10 - det.k)


def leads_off_tick(_):
    clock.advance(PERIOD)
    tim.fire()


for _ in range(20):
    leads_off_tick(None)
emit(
    "counters past 2**30",
    {
        "wrapped": wrapped,
        "alloc 25 cycles": per_cycle,
        "alloc 250 leads-off ticks": alloc_of(leads_off_tick, None, 250),
        "detector_k": det.k,
        "samples_read": adc.source.i,
    },
)
