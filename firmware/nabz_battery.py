# Battery: a single-cell LiPo measured through a resistor divider on an ADC1 pin, reported as the
# Battery Level 0x2A19 percentage, and the wearable's battery state (ok, low, critical).
#
# Rules of this file:
# - The percentage comes from the cell's open-circuit discharge curve (table below, typical for
#   3.7 V LiPo cells at room temperature; a real pack should be characterised). Under load the
#   voltage sags, so the reading is averaged (8 ADC reads) and smoothed (a quarter per update).
# - State changes need three updates in a row (no flapping on a noisy reading); leaving "low"
#   needs the level back above low + 3 %. "Critical" is final until the device restarts.

from micropython import const

try:
    from typing import TYPE_CHECKING
except ImportError:  # MicroPython has no typing module; annotations are never evaluated there
    TYPE_CHECKING = False
if TYPE_CHECKING:
    import machine

STATE_OK = const(0)
STATE_LOW = const(1)
STATE_CRITICAL = const(2)

_CURVE = (
    (4200, 100),
    (4150, 95),
    (4110, 90),
    (4080, 85),
    (4020, 80),
    (3980, 75),
    (3950, 70),
    (3910, 65),
    (3870, 60),
    (3850, 55),
    (3840, 50),
    (3820, 45),
    (3800, 40),
    (3790, 35),
    (3770, 30),
    (3750, 25),
    (3730, 20),
    (3710, 15),
    (3690, 10),
    (3610, 5),
    (3270, 0),
)
_READS = const(8)
_CONFIRM = const(3)
_HYSTERESIS_PCT = const(3)


def percent_from_mv(mv):
    """Cell voltage (mV) -> charge percent, linear between the curve's points, 0-100."""
    if mv >= _CURVE[0][0]:
        return 100
    for i in range(1, len(_CURVE)):
        v1, p1 = _CURVE[i]
        if mv >= v1:
            v0, p0 = _CURVE[i - 1]
            return p1 + ((mv - v1) * (p0 - p1) + (v0 - v1) // 2) // (v0 - v1)
    return 0


class Battery:
    def __init__(
        self, adc: "machine.ADC", divider: float = 2.0, low_pct: int = 15, critical_pct: int = 3
    ) -> None:
        self.adc = adc
        self.divider_x1000 = int(divider * 1000 + 0.5)
        self.low_pct = low_pct
        self.critical_pct = critical_pct
        self.mv = 0
        self.level = 100
        self.state = STATE_OK
        self._want = STATE_OK
        self._count = 0

    def read_mv(self):
        total = 0
        for _ in range(_READS):
            total += self.adc.read_uv()
        return (total // _READS) * self.divider_x1000 // 1000000

    def update(self):
        """Take a reading; returns the new state if it changed, else None."""
        mv = self.read_mv()
        self.mv = mv if self.mv == 0 else self.mv + (mv - self.mv) // 4
        self.level = percent_from_mv(self.mv)
        if self.state == STATE_CRITICAL:
            return None
        if self.level <= self.critical_pct:
            want = STATE_CRITICAL
        elif self.level < self.low_pct:
            want = STATE_LOW
        elif self.state == STATE_LOW and self.level < self.low_pct + _HYSTERESIS_PCT:
            want = STATE_LOW
        else:
            want = STATE_OK
        if want == self.state:
            self._count = 0
            return None
        if want != self._want:
            self._want = want
            self._count = 0
        self._count += 1
        if self._count < _CONFIRM:
            return None
        self.state = want
        self._count = 0
        return want
