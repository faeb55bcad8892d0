# On a real ESP32 with a MAX30102 (mpremote run): part ID, then 20 s of FIFO reads on the INT pin,
# counting samples against the ESP32 clock (the chip's oscillator error) and overflows.
import json
import time

import machine
import nabz_config
from max30102 import MAX30102

cfg = nabz_config.load()
Pin = machine.Pin
i2c = machine.I2C(
    cfg["ppg_i2c_id"], scl=Pin(cfg["ppg_scl_pin"]), sda=Pin(cfg["ppg_sda_pin"]), freq=cfg["ppg_i2c_freq"]
)
s = MAX30102(i2c)
s.reset(time.sleep_ms)
rev = s.check()
s.configure(sample_rate_hz=100, led_red_ma=cfg["ppg_led_red_ma"], led_ir_ma=cfg["ppg_led_ir_ma"])
ready = [False]
Pin(cfg["ppg_int_pin"], Pin.IN, Pin.PULL_UP).irq(
    lambda p: ready.__setitem__(0, True), trigger=Pin.IRQ_FALLING
)
t0 = time.ticks_us()
total = 0
lost = 0
ir_sum = 0
while time.ticks_diff(time.ticks_us(), t0) < 20000000:
    if ready[0]:
        ready[0] = False
        n = s.read_fifo()
        total += n
        lost += s.lost
        for i in range(n):
            ir_sum += s.ir(i)
    time.sleep_ms(5)
elapsed = time.ticks_diff(time.ticks_us(), t0)
s.shutdown()
print(
    "RESULT "
    + json.dumps(
        {
            "rev": rev,
            "samples": total,
            "lost": lost,
            "elapsed_us": elapsed,
            "rate_hz": total * 1000000 / elapsed,
            "ir_mean": ir_sum // max(1, total),
        }
    )
)
