# MAX30102 pulse oximetry and heart-rate sensor (Maxim/Analog Devices), I2C address 0x57.
#
# Register map and behaviour from the MAX30102 datasheet (19-7740 Rev 1): interrupt status and
# enable (0x00-0x03), FIFO write pointer, overflow counter and read pointer (0x04-0x06, five bits
# each), FIFO data (0x07: the address does not advance on a burst read, each 3-byte word pops in
# turn), FIFO configuration (0x08: SMP_AVE[7:5], FIFO_ROLLOVER_EN[4], FIFO_A_FULL[3:0]), mode
# (0x09: SHDN[7], RESET[6], MODE[2:0], 3 = SpO2: red and IR), SpO2 configuration (0x0A:
# SPO2_ADC_RGE[6:5], SPO2_SR[4:2], LED_PW[1:0]), LED pulse amplitudes (0x0C red, 0x0D IR,
# 0.2 mA per step), part ID 0x15 at 0xFF.
#
# Rules of this file:
# - The driver owns no timing: read_fifo() is called when the INT pin reports "almost full" (or
#   by a poll), returns how many samples it read into a preallocated buffer, and reports overflow.
# - Samples are 18-bit, left-justified whatever the ADC resolution (a 16-bit pulse width leaves the
#   two low bits 0). In SpO2 mode each sample is red (LED1) then IR (LED2), 3 bytes each, MSB first.
# - No allocation on the read path: the pointer registers are read in one burst into a 3-byte
#   buffer, the FIFO into one of 32 preallocated memoryviews. I2C failures raise OSError to the
#   caller, which owns recovery (nabz_ppg).

from micropython import const

try:
    from typing import TYPE_CHECKING
except ImportError:  # MicroPython has no typing module; annotations are never evaluated there
    TYPE_CHECKING = False
if TYPE_CHECKING:
    import machine

ADDRESS = const(0x57)
PART_ID = const(0x15)

REG_INTR_STATUS_1 = const(0x00)
REG_INTR_STATUS_2 = const(0x01)
REG_INTR_ENABLE_1 = const(0x02)
REG_INTR_ENABLE_2 = const(0x03)
REG_FIFO_WR_PTR = const(0x04)
REG_OVF_COUNTER = const(0x05)
REG_FIFO_RD_PTR = const(0x06)
REG_FIFO_DATA = const(0x07)
REG_FIFO_CONFIG = const(0x08)
REG_MODE_CONFIG = const(0x09)
REG_SPO2_CONFIG = const(0x0A)
REG_LED1_PA = const(0x0C)  # red
REG_LED2_PA = const(0x0D)  # infrared
REG_TEMP_INT = const(0x1F)
REG_TEMP_FRAC = const(0x20)
REG_TEMP_CONFIG = const(0x21)
REG_REV_ID = const(0xFE)
REG_PART_ID = const(0xFF)

INT_A_FULL = const(0x80)  # FIFO almost full
INT_PPG_RDY = const(0x40)
INT_ALC_OVF = const(0x20)  # ambient light cancellation overflowed: too much ambient light
INT_PWR_RDY = const(0x01)

MODE_SHDN = const(0x80)
MODE_RESET = const(0x40)
MODE_HR = const(0x02)  # red only
MODE_SPO2 = const(0x03)  # red and IR
FIFO_ROLLOVER = const(0x10)

FIFO_DEPTH = const(32)
_SAMPLE_BYTES = const(6)  # SpO2 mode: red 3 bytes, IR 3 bytes
_DATA_MASK = const(0x3FFFF)

# Settings: value -> register field (datasheet tables 7-10).
SAMPLE_RATES_HZ = (50, 100, 200, 400, 800, 1000, 1600, 3200)
PULSE_WIDTHS_US = (69, 118, 215, 411)  # ADC resolution 15, 16, 17, 18 bits
ADC_RANGES_NA = (2048, 4096, 8192, 16384)
SAMPLE_AVERAGES = (1, 2, 4, 8, 16, 32)
# SpO2 mode: the fastest sample rate each pulse width allows (datasheet table 11).
_MAX_RATE_FOR_PW = {69: 3200, 118: 1600, 215: 800, 411: 400}


def led_code(ma):
    """LED current in mA (0-51) -> the pulse amplitude register value (0.2 mA per step)."""
    code = int(ma * 5 + 0.5)
    if code < 0 or code > 255:
        raise ValueError("max30102: LED current %s mA outside 0..51" % ma)
    return code


class MAX30102:
    def __init__(self, i2c: "machine.I2C", address: int = ADDRESS) -> None:
        self.i2c = i2c
        self.address = address
        self._reg = bytearray(1)
        self._ptrs = bytearray(3)
        self.fifo = bytearray(FIFO_DEPTH * _SAMPLE_BYTES)
        mv = memoryview(self.fifo)
        # One view per possible count, made once: slicing at read time would allocate.
        self._views = [mv[: n * _SAMPLE_BYTES] for n in range(FIFO_DEPTH + 1)]
        self.sample_rate_hz = 100
        self.pulse_width_us = 411
        self.overflows = 0  # samples the chip dropped (OVF_COUNTER), in total
        self.status = 0  # INTR_STATUS_1 at the last read (A_FULL, ALC_OVF ...)
        self.lost = 0  # samples the chip overwrote before the last read's

    # -- registers --------------------------------------------------------------------------------
    def read_reg(self, reg):
        self.i2c.readfrom_mem_into(self.address, reg, self._reg)
        return self._reg[0]

    def write_reg(self, reg, value):
        self._reg[0] = value
        self.i2c.writeto_mem(self.address, reg, self._reg)

    # -- setup ------------------------------------------------------------------------------------
    def check(self):
        """Raise OSError if the chip is absent, ValueError if something else answers at 0x57."""
        part = self.read_reg(REG_PART_ID)
        if part != PART_ID:
            raise ValueError("max30102: part ID 0x%02x, expected 0x15" % part)
        return self.read_reg(REG_REV_ID)

    def reset(self, wait_ms=None):
        """Power-on reset of every register; waits (up to ~10 reads) for the RESET bit to clear."""
        self.write_reg(REG_MODE_CONFIG, MODE_RESET)
        for _ in range(10):
            if not self.read_reg(REG_MODE_CONFIG) & MODE_RESET:
                return
            if wait_ms is not None:
                wait_ms(1)
        raise OSError(110)  # ETIMEDOUT: the reset never completed

    def configure(
        self,
        sample_rate_hz=100,
        pulse_width_us=411,
        adc_range_na=4096,
        led_red_ma=7.2,
        led_ir_ma=7.2,
        average=1,
        a_full_free=15,
        rollover=True,
    ):
        """SpO2 mode at sample_rate_hz with the FIFO almost-full interrupt.

        a_full_free: free FIFO slots left when INT asserts (15: after 17 samples, 170 ms at
        100 Hz, leaving 150 ms to read before anything is lost). rollover: when full, new
        samples overwrite the oldest (the loss is then before the samples read, and counted).
        """
        if sample_rate_hz not in SAMPLE_RATES_HZ:
            raise ValueError("max30102: sample rate %d Hz not one of %s" % (sample_rate_hz, SAMPLE_RATES_HZ))
        if pulse_width_us not in PULSE_WIDTHS_US:
            raise ValueError("max30102: pulse width %d us not one of %s" % (pulse_width_us, PULSE_WIDTHS_US))
        if adc_range_na not in ADC_RANGES_NA:
            raise ValueError("max30102: ADC range %d nA not one of %s" % (adc_range_na, ADC_RANGES_NA))
        if average not in SAMPLE_AVERAGES:
            raise ValueError("max30102: sample average %d not one of %s" % (average, SAMPLE_AVERAGES))
        if sample_rate_hz > _MAX_RATE_FOR_PW[pulse_width_us]:
            raise ValueError(
                "max30102: %d us pulses allow at most %d Hz in SpO2 mode"
                % (pulse_width_us, _MAX_RATE_FOR_PW[pulse_width_us])
            )
        if not 0 <= a_full_free <= 15:
            raise ValueError("max30102: FIFO_A_FULL must be 0..15")
        self.write_reg(REG_MODE_CONFIG, MODE_SHDN)  # stop while reconfiguring
        fifo_cfg = (SAMPLE_AVERAGES.index(average) << 5) | a_full_free
        if rollover:
            fifo_cfg |= FIFO_ROLLOVER
        self.write_reg(REG_FIFO_CONFIG, fifo_cfg)
        spo2_cfg = (
            (ADC_RANGES_NA.index(adc_range_na) << 5)
            | (SAMPLE_RATES_HZ.index(sample_rate_hz) << 2)
            | PULSE_WIDTHS_US.index(pulse_width_us)
        )
        self.write_reg(REG_SPO2_CONFIG, spo2_cfg)
        self.write_reg(REG_LED1_PA, led_code(led_red_ma))
        self.write_reg(REG_LED2_PA, led_code(led_ir_ma))
        self.write_reg(REG_INTR_ENABLE_1, INT_A_FULL | INT_ALC_OVF)
        self.write_reg(REG_INTR_ENABLE_2, 0)
        self.clear_fifo()
        self.sample_rate_hz = sample_rate_hz // average
        self.pulse_width_us = pulse_width_us
        self.read_reg(REG_INTR_STATUS_1)  # clear anything pending (PWR_RDY after a reset)
        self.write_reg(REG_MODE_CONFIG, MODE_SPO2)  # sampling starts now

    def clear_fifo(self):
        """Empty the FIFO: write pointer, overflow counter and read pointer to 0."""
        self.write_reg(REG_FIFO_WR_PTR, 0)
        self.write_reg(REG_OVF_COUNTER, 0)
        self.write_reg(REG_FIFO_RD_PTR, 0)

    def shutdown(self):
        """Power-save mode (LEDs off, ~0.7 uA); registers keep their values."""
        self.write_reg(REG_MODE_CONFIG, MODE_SHDN | MODE_SPO2)

    def wake(self):
        self.write_reg(REG_MODE_CONFIG, MODE_SPO2)

    # -- reading ----------------------------------------------------------------------------------
    def read_fifo(self):
        """Read every unread sample into self.fifo; returns how many (0-32).

        self.lost is then the chip's overflow count: with rollover on, that many samples were
        overwritten before the ones returned (it saturates at 31: 31 means "31 or more").
        Reading INTR_STATUS_1 first clears the interrupt and tells a full FIFO (write pointer ==
        read pointer with 32 unread) from an empty one. No allocation.
        """
        self.status = self.read_reg(REG_INTR_STATUS_1)
        self.i2c.readfrom_mem_into(self.address, REG_FIFO_WR_PTR, self._ptrs)
        wr = self._ptrs[0] & 0x1F
        ovf = self._ptrs[1] & 0x1F
        rd = self._ptrs[2] & 0x1F
        count = (wr - rd) & 0x1F
        if count == 0 and (ovf or self.status & INT_A_FULL):
            # Equal pointers: empty, unless samples were lost or the almost-full interrupt fired
            # since the last read (it fires at 17 or more unread): then all 32 are unread.
            count = FIFO_DEPTH
        if count:
            self.i2c.readfrom_mem_into(self.address, REG_FIFO_DATA, self._views[count])
        self.overflows += ovf
        self.lost = ovf
        return count

    def red(self, i):
        """Red counts of sample i of the last read (18 bits)."""
        j = i * _SAMPLE_BYTES
        f = self.fifo
        return ((f[j] << 16) | (f[j + 1] << 8) | f[j + 2]) & _DATA_MASK

    def ir(self, i):
        """Infrared counts of sample i of the last read (18 bits)."""
        j = i * _SAMPLE_BYTES + 3
        f = self.fifo
        return ((f[j] << 16) | (f[j + 1] << 8) | f[j + 2]) & _DATA_MASK

    def temperature_c(self):
        """Die temperature, degrees C (a one-shot conversion; poll until it is ready)."""
        self.write_reg(REG_TEMP_CONFIG, 1)
        for _ in range(20):
            if not self.read_reg(REG_TEMP_CONFIG) & 1:
                break
        whole = self.read_reg(REG_TEMP_INT)
        if whole > 127:
            whole -= 256
        return whole + self.read_reg(REG_TEMP_FRAC) * 0.0625
