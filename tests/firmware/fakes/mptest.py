# Helpers for the scripts that tests/firmware runs inside MicroPython (fake-hardware fixtures).
# Results go to stdout as one "JSON {...}" line per name, which the pytest side parses.

import gc
import json


def emit(name, value):
    print("JSON " + json.dumps({"name": name, "value": value}))


def alloc_of(fn, arg=None, repeat=1):
    """Bytes the heap grew by while fn(arg) ran `repeat` times, with the collector off.

    0 means nothing was allocated (the smallest allocation is one 16-byte block).
    """
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    i = 0
    while i < repeat:
        fn(arg)
        i += 1
    after = gc.mem_alloc()
    gc.enable()
    return after - before


def hexs(data):
    return "".join("%02x" % b for b in data)
