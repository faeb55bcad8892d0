# The device clock: microseconds since boot as one growing integer, from the wrapping tick counter.
#
# time.ticks_us() wraps every 2**30 us (17.9 minutes) on the ESP32; waveform frames carry 64-bit
# device times (docs/contract.md), so the wrap is unfolded here. now_us() must be called at least
# every 8 minutes (the service loop calls it many times a second) and it allocates once the
# value leaves the small-int range (after 17.9 minutes): call it from task code, never from the
# sampling path, which uses ticks()/ticks_diff()/ticks_add() on the raw wrapping counter.

import time


class Clock:
    def __init__(self):
        self._last = time.ticks_us()
        self._us = 0

    def ticks(self):
        """The raw wrapping microsecond counter (a small int)."""
        return time.ticks_us()

    def ticks_diff(self, a, b):
        return time.ticks_diff(a, b)

    def ticks_add(self, a, delta):
        return time.ticks_add(a, delta)

    def now_us(self):
        """Microseconds since this clock was made (at boot), never wrapping."""
        t = time.ticks_us()
        self._us += time.ticks_diff(t, self._last)
        self._last = t
        return self._us

    def now_ms(self):
        return self.now_us() // 1000
