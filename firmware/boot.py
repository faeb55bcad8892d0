# Runs first at every reset, before main.py. Keep it small: a mistake here needs a reflash.
import gc

import micropython

if hasattr(micropython, "alloc_emergency_exception_buf"):  # every board port; not the wasm one
    micropython.alloc_emergency_exception_buf(100)  # tracebacks from interrupt callbacks
gc.collect()
# Collect when a quarter of the free heap has been used: more, shorter collections, so the ECG
# timer callback is never held up long (each late callback is counted in the jitter statistics).
gc.threshold(gc.mem_free() // 4 + gc.mem_alloc())
