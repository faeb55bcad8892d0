# Fake `machine` module for running the firmware in the MicroPython interpreter (WebAssembly port,
# which has no machine module). The API follows MicroPython 1.27's machine for the ESP32 as far
# as the firmware uses it; the extras (fire(), sources, registries) are for tests to drive it.
#
# - Pins are registered by number: pin(n) gives the last Pin made for n. An input's level is
#   `level` (or `source()` if set); transitions of an output are counted (`edges`), which the I2C
#   bus-recovery test uses to see nine SCL clocks.
# - ADC(pin).read_uv() returns `source()` if set, else `uv`; read_u16() scales 0..3.3 V.
# - Timer.fire() runs the callback as the timer would; tests advance a fake clock in between.
# - I2C talks to device models registered with add_i2c_device(addr, model); a model has
#   read(reg, n) -> bytes and write(reg, data), and may raise OSError like a NACKing chip.
# - WDT counts feeds; deepsleep() and reset() raise DeepSleep / Reset so a test sees them.

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

_pins = {}
_edges = {}  # pin number -> level changes driven on it, over every Pin object made for it
_adcs = {}
_i2c_devices = {}
_timers = {}
wdt = None
events = []  # (what, detail) for things a test may want to see happen: freq, deepsleep, reset
_freq = 160000000
_reset_cause = PWRON_RESET
preset_levels = {}  # pin number -> the level an input reads when made (a button held at reset)
preset_uv = {}  # pin number -> what an ADC made on it reads (a battery voltage through its divider)


class DeepSleep(Exception):
    pass


class StopRun(BaseException):
    """Raised by WDT.feed() after WDT.stop_after feeds: ends a test of the endless main loop."""


class Reset(Exception):
    pass


def pin(n):
    return _pins[n]


def edges(n):
    return _edges.get(n, 0)


def adc(n):
    return _adcs[n]


def timer(n):
    return _timers[n]


def add_i2c_device(addr, model):
    _i2c_devices[addr] = model


def clear():
    _pins.clear()
    _edges.clear()
    _adcs.clear()
    _i2c_devices.clear()
    _timers.clear()
    del events[:]
    global wdt
    wdt = None


def set_reset_cause(cause):
    global _reset_cause
    _reset_cause = cause


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self.id = id
        self.mode = mode
        self.pull = pull
        self.level = 1 if pull == Pin.PULL_UP else 0
        self.source = None
        self.edges = 0
        self.handler = None
        self.trigger = 0
        if value is not None:
            self.level = 1 if value else 0
        elif id in preset_levels:
            self.level = preset_levels[id]
        _pins[id] = self

    def init(self, mode=-1, pull=-1, value=None):
        if mode != -1:
            self.mode = mode
        if pull != -1:
            self.pull = pull
        if value is not None:
            self.value(value)

    def value(self, v=None):
        if v is None:
            if self.source is not None:
                return 1 if self.source() else 0
            return self.level
        v = 1 if v else 0
        if v != self.level:
            self.edges += 1
            _edges[self.id] = _edges.get(self.id, 0) + 1
        self.level = v
        return None

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def __call__(self, v=None):
        return self.value(v)

    def irq(self, handler=None, trigger=3, hard=False):
        self.handler = handler
        self.trigger = trigger
        return None

    def fire(self):
        """The pin's interrupt, as the level change the test just made would cause."""
        if self.handler is not None:
            self.handler(self)


class ADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3
    WIDTH_12BIT = 3

    def __init__(self, pin, atten=0):
        self.pin = pin
        self.attenuation = atten
        self.uv = preset_uv.get(pin.id if isinstance(pin, Pin) else pin, 1650000)
        self.source = None
        self.reads = 0
        _adcs[pin.id if isinstance(pin, Pin) else pin] = self

    def read_uv(self):
        self.reads += 1
        if self.source is not None:
            return self.source()
        return self.uv

    def read_u16(self):
        return min(65535, max(0, self.read_uv() * 65535 // 3300000))

    def atten(self, a):
        self.attenuation = a


class Timer:
    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, id, **kwargs):
        self.id = id
        self.callback = None
        self.freq = None
        self.period = None
        self.mode = None
        self.hard = None
        self.running = False
        _timers[id] = self
        if kwargs:
            self.init(**kwargs)

    def init(self, mode=1, freq=None, period=None, callback=None, hard=None, tick_hz=None):
        self.mode = mode
        self.freq = freq
        self.period = period
        self.callback = callback
        self.hard = hard
        self.running = True

    def deinit(self):
        self.running = False

    def fire(self):
        if self.running and self.callback is not None:
            self.callback(self)


class I2C:
    def __init__(self, id=0, scl=None, sda=None, freq=400000, timeout=50000):
        self.id = id
        self.scl = scl
        self.sda = sda
        self.freq = freq
        self.transactions = 0

    def _dev(self, addr):
        dev = _i2c_devices.get(addr)
        if dev is None:
            raise OSError(19)  # ENODEV: no ACK
        return dev

    def scan(self):
        out = []
        for addr, dev in _i2c_devices.items():
            try:
                dev.read(0xFF, 1)
                out.append(addr)
            except OSError:
                pass
        return sorted(out)

    def readfrom_mem_into(self, addr, memaddr, buf, addrsize=8):
        self.transactions += 1
        data = self._dev(addr).read(memaddr, len(buf))
        for i in range(len(buf)):
            buf[i] = data[i]

    def readfrom_mem(self, addr, memaddr, nbytes, addrsize=8):
        self.transactions += 1
        return bytes(self._dev(addr).read(memaddr, nbytes))

    def writeto_mem(self, addr, memaddr, buf, addrsize=8):
        self.transactions += 1
        self._dev(addr).write(memaddr, bytes(buf))


class SoftI2C(I2C):
    pass


class WDT:
    stop_after = None

    def __init__(self, id=0, timeout=5000):
        global wdt
        self.timeout = timeout
        self.feeds = 0
        wdt = self

    def feed(self):
        self.feeds += 1
        if WDT.stop_after is not None and self.feeds >= WDT.stop_after:
            raise StopRun()


def freq(hz=None):
    global _freq
    if hz is None:
        return _freq
    _freq = hz
    events.append(("freq", hz))


def deepsleep(ms=0):
    events.append(("deepsleep", ms))
    raise DeepSleep(ms)


def lightsleep(ms=0):
    events.append(("lightsleep", ms))


def reset():
    events.append(("reset", None))
    raise Reset()


def soft_reset():
    events.append(("soft_reset", None))
    raise Reset()


def reset_cause():
    return _reset_cause


def unique_id():
    return b"\x24\x6f\x28\x1a\x2b\x3c"


def disable_irq():
    return 0


def enable_irq(state=0):
    return None
