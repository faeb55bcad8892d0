# The oximeter under MicroPython: the MAX30102 driver against a model of the chip's registers and
# FIFO (pointer wrap-around, overflow, full FIFO), I2C faults and bus recovery, the chip's clock
# drifting, and the on-device SpO2/pulse rate on synthetic PPG (hardware/ppg.py) from /ppg files.
import json
from array import array

import machine
import nabz_codec as codec
from fake_clock import FakeClock
from fake_max30102 import FakeMax30102
from max30102 import MAX30102
from mptest import alloc_of, emit
from nabz_ppg import PpgSampler, i2c_bus_recover
from nabz_ring import WaveRing
from nabz_spo2 import Spo2Estimator

PPG = codec.WAVE_KIND_PPG
SETTINGS = {
    "sample_rate_hz": 100,
    "pulse_width_us": 411,
    "adc_range_na": 4096,
    "led_red_ma": 7.2,
    "led_ir_ma": 7.2,
}


class Ramp:
    """A test signal whose every sample says which it is: red = 100000 + i, ir = 150000 + 2 i."""

    def __call__(self, i):
        return (100000 + i, 150000 + 2 * i)


class Recorded:
    def __init__(self, data):
        self.data = data  # array('i'): red0, ir0, red1, ir1, ...

    def __call__(self, i):
        j = 2 * (i % (len(self.data) // 2))
        return (self.data[j], self.data[j + 1])


class Rig:
    def __init__(self, source, frame=37, recover=True, start_us=5000000):
        machine.clear()
        self.clock = FakeClock(start_us)
        self.chip = FakeMax30102(source, int_pin=19, scl_pin=22, clock=self.clock)
        machine.add_i2c_device(0x57, self.chip)
        self.int_pin = machine.Pin(19, machine.Pin.IN, machine.Pin.PULL_UP)
        self.int_pin.level = 1
        self.flag = [0]
        self.int_pin.irq(handler=self._irq, trigger=machine.Pin.IRQ_FALLING)
        self.ring = WaveRing(PPG, 100, 64, 512, frame)
        self.est = Spo2Estimator()
        rec = (lambda: i2c_bus_recover(22, 21)) if recover else None
        self.s = PpgSampler(
            lambda: machine.I2C(0, scl=machine.Pin(22), sda=machine.Pin(21)),
            self.ring,
            self.est,
            self.clock,
            dict(SETTINGS),
            bus_recover=rec,
        )
        self.s.start()
        self.chip.sync(self.clock.now_us())
        self.t_first = self.ring.time_of(0)

    def _irq(self, pin):
        self.flag[0] += 1

    def run(self, ms, on_int=True, poll_every_ms=0, step_ms=10, each_second=None):
        t = 0
        while t < ms:
            self.clock.advance(step_ms * 1000)
            t += step_ms
            self.chip.sync(self.clock.now_us())
            if on_int and self.flag[0]:
                self.flag[0] = 0
                self.s.poll()
            elif poll_every_ms and t % poll_every_ms == 0:
                self.s.poll()
            if each_second is not None and t % 1000 == 0:
                each_second(t)

    def frames(self):
        self.ring.stamp()
        buf = bytearray(300)
        out = []
        fc = self.ring.oldest_fc
        while self.ring.holds(fc):
            out.append(codec.wave_decode(bytes(buf[: self.ring.frame_into(buf, fc)])))
            fc += 1
        return out


# A. Configuration written to the chip, and settings it refuses.
rig = Rig(Ramp())
regs = rig.chip.regs
emit(
    "registers",
    {
        "fifo_config": regs[0x08],
        "mode": regs[0x09],
        "spo2_config": regs[0x0A],
        "led1": regs[0x0C],
        "led2": regs[0x0D],
        "int_enable_1": regs[0x02],
        "reset_written": (0x09, 0x40) in rig.chip.writes,
    },
)
refused = []
for bad in (
    {"sample_rate_hz": 800, "pulse_width_us": 411},
    {"sample_rate_hz": 120},
    {"led_red_ma": 60},
    {"adc_range_na": 3000},
):
    try:
        MAX30102(machine.I2C(0)).configure(**bad)
        refused.append(None)
    except ValueError as e:
        refused.append(str(e))
emit("refused", refused)

# B. Ten seconds read on the almost-full interrupt: pointers wrap ~30 times, nothing is lost.
rig = Rig(Ramp())
rig.run(10000)
fr = rig.frames()
flat = []
for f in fr:
    flat += f["samples"]
ok = all(flat[2 * i] == 100000 + i and flat[2 * i + 1] == 150000 + 2 * i for i in range(len(flat) // 2))
times_ok = all(f["t0_us"] == rig.t_first + 10000 * sum(g["n"] for g in fr[:j]) for j, f in enumerate(fr))
emit(
    "interrupt reads",
    {
        "samples": len(flat) // 2,
        "reads": rig.s.reads,
        "in_order": ok,
        "times_on_grid": times_ok,
        "flags": sorted(set(f["flags"] for f in fr)),
        "lost": rig.chip.lost,
        "wr_ptr": rig.chip.wr,
        "overflows": rig.s.overflows,
    },
)

# C. Reading stops for 600 ms: the chip overwrites 28 samples; the gap is flagged and timed.
rig = Rig(Ramp(), frame=10)
rig.run(1000)
before = rig.s.samples
rig.run(600, on_int=False)
rig.run(500)
fr = rig.frames()
gap_frames = [f for f in fr if f["flags"] & codec.WAVE_FLAG_GAP_BEFORE]
g = gap_frames[0] if gap_frames else None
first_index = (g["samples"][0] - 100000) if g else None
emit(
    "overflow",
    {
        "chip_lost": rig.chip.lost,
        "counted": rig.s.overflows,
        "gap_frames": len(gap_frames),
        "first_after_gap": first_index,
        "t0_matches_its_sample": g is not None and g["t0_us"] == rig.t_first + 10000 * first_index,
        "ring_lost": rig.ring.samples_lost,
    },
)

# D. A FIFO exactly full (32 unread, no overflow yet): equal pointers, and all 32 are read.
rig = Rig(Ramp())
rig.run(320, on_int=False)
n = rig.s.sensor.read_fifo()
emit("full fifo", {"count": n, "lost": rig.s.sensor.lost})

# E. The chip stops answering for 0.5 s, then holds SDA low until the bus is clocked.
rig = Rig(Ramp())
rig.run(1000)
rig.chip.nack = True
status_during = []
rig.run(500, poll_every_ms=50, each_second=None)
status_during.append(rig.est.status())
rig.chip.nack = False
rig.chip.hold_sda()
rig.run(300, poll_every_ms=50)
stuck_still = rig.chip.stuck
rig.run(3000, poll_every_ms=50)
fr = rig.frames()
gaps = [f for f in fr if f["flags"] & codec.WAVE_FLAG_GAP_BEFORE]
emit(
    "i2c recovery",
    {
        "errors": rig.s.errors,
        "recoveries": rig.s.recoveries,
        "faulty": rig.s.faulty,
        "status_during": status_during[0],
        "stuck_after": rig.chip.stuck,
        "gap_frames": len(gaps),
        "running": rig.s.running,
        "time_ok": all(f["t0_us"] == rig.t_first + 10000 * (f["samples"][0] - 100000) for f in gaps),
    },
)
rig2 = Rig(Ramp(), recover=False)
rig2.run(500)
rig2.chip.hold_sda()
rig2.run(3000, poll_every_ms=50)
emit("no bus recovery", {"stuck": rig2.chip.stuck, "faulty": rig2.s.faulty})

# F. The chip's oscillator runs 2 % slow: frame times follow it within two sample periods.
rig = Rig(Ramp())
rig.chip.clock_ppm = -20000
rig.run(30000)
fr = rig.frames()
worst = 0
for f in fr:
    i = f["samples"][0] - 100000
    true_t = rig.t_first + i * 1000000 * 1000000 // (100 * (1000000 - 20000))
    worst = max(worst, abs(f["t0_us"] - true_t))
emit(
    "drift",
    {
        "reanchors": rig.s.reanchors,
        "worst_t0_error_us": worst,
        "frames": len(fr),
        "samples_in_order": all(
            fr[j + 1]["samples"][0] - fr[j]["samples"][0] == fr[j]["n"] for j in range(len(fr) - 1)
        ),
    },
)

# G. SpO2, pulse rate and status on synthetic PPG.
cases = json.load(open("/ppg/cases.json"))
for name in cases:
    data = array("i", open("/ppg/%s.bin" % name, "rb").read())
    rig = Rig(Recorded(data))
    seconds = []

    def each_second(t, rig=rig, seconds=seconds):
        spo2, pr, pai, meas, dev = rig.est.status()
        seconds.append([spo2, pr, pai, meas, dev])

    rig.run(len(data) // 2 * 10, each_second=each_second)
    emit("spo2 " + name, seconds)

# G2. The chip goes quiet (no sample reaches the estimator): its last values are not repeated.
rig = Rig(Recorded(array("i", open("/ppg/hr72_spo2_97.bin", "rb").read())))
rig.run(10000)


def status_now(est, now_us):
    try:
        return est.status(now_us)
    except TypeError:  # an estimator that does not take the time: staleness in samples only
        return est.status()


measuring = status_now(rig.est, rig.clock.now_us())
rig.clock.advance(700000)  # reads are due (one every 170 ms); the chip has stopped
within_a_second = status_now(rig.est, rig.clock.now_us())
rig.clock.advance(500000)
quiet = status_now(rig.est, rig.clock.now_us())
emit("quiet sensor", {"measuring": list(measuring), "0.7 s": list(within_a_second), "1.2 s": list(quiet)})

# G3. The estimator moves its sample count back (at 2**25, 3.9 days at 100 Hz) with what is measured
# in it: one that does so 10 s into a recording reports what one that does not reports.
data = array("i", open("/ppg/hr72_spo2_97.bin", "rb").read())
plain = Spo2Estimator()
moved = Spo2Estimator()
moved.n = (1 << 25) - 1000  # 3.9 days in, as if the finger had been in only now
moved.reset()
seconds = {"plain": [], "moved": []}
for i in range(len(data) // 2):
    for est in (plain, moved):
        est.update(data[2 * i], data[2 * i + 1])
    if i % 100 == 99:
        seconds["plain"].append(list(plain.status()))
        seconds["moved"].append(list(moved.status()))
emit("estimator rebase", {"seconds": seconds, "n": moved.n, "beats": [plain.beats, moved.beats]})

# H. Allocation: the per-sample work (ring + estimator between beats), and the per-read time check.
rig = Rig(Recorded(array("i", open("/ppg/hr72_spo2_97.bin", "rb").read())), start_us=2 * 3600 * 1000000)
rig.run(5000)


def per_sample(_):
    rig.ring.put_ppg(120000, 150000, 0)
    rig.est.update(120000, 150000)


def time_check(_):
    rig.s._track_time(False)


rig.run(170, on_int=False)
rig.s.poll()  # a read just happened: now the time check on its own


time_check(None)  # the first call after a read also sizes some interpreter caches
per_read = alloc_of(time_check, None, 10) // 10
emit(
    "alloc",
    {"ring+estimator per flat sample x20": alloc_of(per_sample, None, 20), "time check per read": per_read},
)
