# On a real ESP32 (mpremote run): the wearable of /device.json built and begun, then the heap.
import gc
import json

import machine
import nabz_config
from nabz_board import build
from nabz_clock import Clock

gc.collect()
before = gc.mem_free()
w = build(nabz_config.load(), Clock())
w.begin()
for _ in range(100):
    w.step()
gc.collect()
print(
    "RESULT "
    + json.dumps(
        {
            "free_before": before,
            "free_after": gc.mem_free(),
            "alloc": gc.mem_alloc(),
            "sensor": w.cfg["sensor"],
        }
    )
)
w.stop_sensor()
machine.soft_reset()
