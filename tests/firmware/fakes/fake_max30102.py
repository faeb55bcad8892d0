# A model of the MAX30102 as the firmware sees it over I2C: the register file, the 32-sample FIFO
# with its write/read pointers (5 bits, wrapping), the overflow counter (saturating at 31, cleared
# when a sample is popped), FIFO rollover, the almost-full interrupt on the INT pin (active low),
# reset, shutdown, part ID; and faults: a chip that does not answer, one that holds SDA low
# until the bus is clocked nine times (the I2C bus-recovery case), a power-on reset (por(): a
# supply dip or ESD; it still answers), and one that answers but never samples (dead).
#
# Samples come from source(i) -> (red, ir) at the configured rate, in time given by sync(now_us).

import machine

_RATES = (50, 100, 200, 400, 800, 1000, 1600, 3200)
_AVG = (1, 2, 4, 8, 16, 32, 32, 32)
_RES_BITS = (15, 16, 17, 18)


class FakeMax30102:
    def __init__(self, source, int_pin=None, scl_pin=None, clock=None):
        self.source = source
        self.clock = clock  # if given, sampling starts the moment MODE is written
        self.int_pin = int_pin  # pin number of INT (the model drives the fake Pin's level)
        self.scl_pin = scl_pin
        self.nack = False  # no ACK at all: OSError(ENODEV)
        self.stuck = False  # holds SDA: OSError(ETIMEDOUT) until nine SCL clocks are seen
        self._stuck_edges = 0
        self.reads = 0
        self.writes = []  # (reg, value) in order, for tests of the configuration
        self.origin_us = None  # when sampling first started: source(i) is the sample i/rate later
        self.total_samples = 0
        self.clock_ppm = 0  # the chip's oscillator error: +20000 is 2 % fast
        self.source_hz = 100  # source(i) is the signal at time i / source_hz after sampling began
        self.dead = False  # answers on I2C, takes every setting, never samples (a damaged chip)
        self.por()

    def por(self):
        self.regs = bytearray(256)
        self.regs[0xFF] = 0x15
        self.regs[0xFE] = 0x03
        self.regs[0x00] = 0x01  # PWR_RDY
        self.fifo = [(0, 0)] * 32
        self.wr = 0
        self.rd = 0
        self.ovf = 0
        self.unread = 0
        self.produced = 0
        self.start_us = None
        self.lost = 0  # samples the chip dropped or overwrote (truth for tests)
        self.pop_partial = 0
        self._level(1)

    # -- faults -----------------------------------------------------------------------------------
    def hold_sda(self):
        self.stuck = True
        if self.scl_pin is not None:
            self._stuck_edges = machine.edges(self.scl_pin)

    def _bus(self):
        if self.nack:
            raise OSError(19)
        if self.stuck:
            edges = 0
            if self.scl_pin is not None:
                edges = machine.edges(self.scl_pin) - self._stuck_edges
            if edges >= 18:  # nine full clock pulses (two edges each)
                self.stuck = False
            else:
                raise OSError(116)  # ETIMEDOUT

    # -- time -------------------------------------------------------------------------------------
    def mode(self):
        return self.regs[0x09] & 0x07

    def running(self):
        return not self.dead and self.mode() in (2, 3, 7) and not self.regs[0x09] & 0x80

    def rate_hz(self):
        sr = _RATES[(self.regs[0x0A] >> 2) & 0x07]
        return sr // _AVG[(self.regs[0x08] >> 5) & 0x07]

    def sync(self, now_us):
        """Produce every sample due by now_us since sampling started."""
        if not self.running():
            self.start_us = None
            return
        rate = self.rate_hz()
        ppm = self.clock_ppm
        if self.start_us is None:
            self.start_us = now_us
            self.produced = 0
            if self.origin_us is None:
                self.origin_us = now_us
        offset_us = self.start_us - self.origin_us
        due = (now_us - self.start_us) * rate * (1000000 + ppm) // 1000000000000
        while self.produced < due:
            # The source is a signal in time, sampled at source_hz: whatever rate the chip runs
            # at, it sees the same finger.
            t_us = offset_us + self.produced * 1000000 // rate
            self._push(self.source(t_us * self.source_hz // 1000000))
            self.produced += 1

    def _push(self, sample):
        bits = _RES_BITS[self.regs[0x0A] & 0x03]
        mask = (0x3FFFF >> (18 - bits)) << (18 - bits)
        red, ir = sample
        red = max(0, min(0x3FFFF, red)) & mask
        ir = max(0, min(0x3FFFF, ir)) & mask
        self.total_samples += 1
        rollover = self.regs[0x08] & 0x10
        if self.unread == 32:
            self.lost += 1
            self.ovf = min(31, self.ovf + 1)
            if not rollover:
                return
            self.fifo[self.wr] = (red, ir)
            self.wr = (self.wr + 1) & 31
            self.rd = (self.rd + 1) & 31
        else:
            self.fifo[self.wr] = (red, ir)
            self.wr = (self.wr + 1) & 31
            self.unread += 1
        threshold = 32 - (self.regs[0x08] & 0x0F)
        if self.unread >= threshold:
            self.regs[0x00] |= 0x80
            if self.regs[0x02] & 0x80:
                self._level(0)

    def _level(self, v):
        if self.int_pin is None or self.int_pin not in machine._pins:
            return
        p = machine.pin(self.int_pin)
        fall = p.level == 1 and v == 0
        p.level = v
        if fall:
            p.fire()

    # -- the I2C interface used by fakes/machine.py -------------------------------------------------
    def read(self, reg, n):
        self._bus()
        if self.clock is not None and self.start_us is not None:
            self.sync(self.clock.now_us())  # a chip in real time: samples appear as time passes
        self.reads += 1
        out = bytearray(n)
        if reg == 0x07:
            for i in range(n):
                out[i] = self._fifo_byte()
            return out
        for i in range(n):
            r = (reg + i) & 0xFF
            if r == 0x04:
                out[i] = self.wr
            elif r == 0x05:
                out[i] = self.ovf
            elif r == 0x06:
                out[i] = self.rd
            else:
                out[i] = self.regs[r]
            if r == 0x00:
                self.regs[0x00] = 0  # reading the status clears it and releases INT
                self._level(1)
        return out

    def _fifo_byte(self):
        red, ir = self.fifo[self.rd]
        words = (
            (red >> 16) & 0xFF,
            (red >> 8) & 0xFF,
            red & 0xFF,
            (ir >> 16) & 0xFF,
            (ir >> 8) & 0xFF,
            ir & 0xFF,
        )
        b = words[self.pop_partial]
        self.pop_partial += 1
        if self.pop_partial == 6:
            self.pop_partial = 0
            if self.unread > 0:
                self.unread -= 1
                self.rd = (self.rd + 1) & 31
            self.ovf = 0
            self.regs[0x00] &= ~0x80
        return b

    def write(self, reg, data):
        self._bus()
        for i in range(len(data)):
            r = (reg + i) & 0xFF
            v = data[i]
            self.writes.append((r, v))
            if r == 0x09 and v & 0x40:
                self.por()
                continue
            if r == 0x04:
                self.wr = v & 31
                self._recount()
            elif r == 0x05:
                self.ovf = v & 31
            elif r == 0x06:
                self.rd = v & 31
                self._recount()
            else:
                self.regs[r] = v
                if r == 0x09:
                    if not self.running():
                        self.start_us = None
                    elif self.clock is not None and self.start_us is None:
                        self.sync(self.clock.now_us())

    def _recount(self):
        self.unread = (self.wr - self.rd) & 31
        self.pop_partial = 0
