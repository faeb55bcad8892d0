# A fake device clock for the interpreter tests: time moves only when the test says so, and the
# raw counter wraps at 2**30 us like the ESP32's time.ticks_us(). ticks()/ticks_diff()/ticks_add()
# use small ints only, like the real ones, so the sampling path can be measured for allocation.

_MASK = 0x3FFFFFFF
_HALF = 0x20000000


class FakeClock:
    def __init__(self, start_us=0):
        self.us = start_us  # true time since boot (may grow past the small-int range)
        self._ticks = start_us & _MASK

    def advance(self, us):
        self.us += us
        self._ticks = (self._ticks + us) & _MASK

    def set(self, us):
        self.advance(us - self.us)

    def ticks(self):
        return self._ticks

    def ticks_diff(self, a, b):
        return ((a - b + _HALF) & _MASK) - _HALF

    def ticks_add(self, a, delta):
        return (a + delta) & _MASK

    def now_us(self):
        return self.us

    def now_ms(self):
        return self.us // 1000
