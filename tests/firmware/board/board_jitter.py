# On a real ESP32 (mpremote run): the ECG sampler on the real timer and ADC for 60 s, with the
# firmware's own modules installed on the board. Prints one JSON line: the jitter statistics and
# how long the timer callback takes (time.ticks_us around it).
import json
import time

import machine
import nabz_codec as codec
import nabz_config
from nabz_clock import Clock
from nabz_ecg import EcgSampler
from nabz_qrs import QrsDetector
from nabz_ring import WaveRing

cfg = nabz_config.load()
clock = Clock()
ring = WaveRing(codec.WAVE_KIND_ECG, 250, 64, 512, 113)
det = QrsDetector()
Pin = machine.Pin
s = EcgSampler(
    machine.ADC(Pin(cfg["ecg_adc_pin"]), atten=machine.ADC.ATTN_11DB),
    Pin(cfg["ecg_lo_plus_pin"], Pin.IN),
    Pin(cfg["ecg_lo_minus_pin"], Pin.IN),
    ring,
    det,
    clock,
    cfg["ecg_ref_uv"],
    int(cfg["ecg_gain"] * 16 + 0.5),
    cfg["ecg_adc_min_uv"],
    cfg["ecg_adc_max_uv"],
    sdn=Pin(cfg["ecg_sdn_pin"], Pin.OUT, value=0),
)
longest = [0]
inner = s.tick


def timed(t):
    a = time.ticks_us()
    inner(t)
    d = time.ticks_diff(time.ticks_us(), a)
    if d > longest[0]:
        longest[0] = d


s.tick = timed
s.start(machine.Timer(cfg["ecg_timer_id"]))
t_end = time.ticks_add(time.ticks_ms(), 60000)
while time.ticks_diff(t_end, time.ticks_ms()) > 0:
    ring.stamp()
    time.sleep_ms(50)
s.stop()
out = s.jitter()
out["callback_max_us"] = longest[0]
out["beats"] = det.beats_total
out["hr_bpm"] = det.hr_bpm()
print("RESULT " + json.dumps(out))
