# The asyncio shell around the wearable: load /device.json, build the board, start the watchdog,
# and call step() every 20 ms (sooner when the oximeter's INT pin fires). A crash is written to
# /last_error.txt and the board restarts (the watchdog would restart it anyway).

import asyncio
import gc
import sys

import machine

_STEP_MS = 20
_GC_EVERY = 50  # steps: a collection every second keeps each one short (a few ms)


async def _loop(wearable):
    flag = None
    if getattr(wearable, "int_pin", None) is not None and hasattr(asyncio, "ThreadSafeFlag"):
        flag = asyncio.ThreadSafeFlag()
        irq = wearable._irq

        def on_int(pin):
            irq(pin)
            flag.set()

        wearable.int_pin.irq(handler=on_int, trigger=machine.Pin.IRQ_FALLING)
    steps = 0
    while wearable.step():
        steps += 1
        if steps % _GC_EVERY == 0:
            gc.collect()
        if flag is not None:
            try:
                await asyncio.wait_for_ms(flag.wait(), _STEP_MS)
            except TimeoutError:
                pass
        else:
            await asyncio.sleep_ms(_STEP_MS)


def run(config_path="/device.json"):
    import nabz_config
    from nabz_board import build
    from nabz_clock import Clock

    try:
        cfg = nabz_config.load(config_path)
        wdt = machine.WDT(timeout=cfg["watchdog_ms"])
        wearable = build(cfg, Clock(), wdt)
        print("nabz: %s %s starting" % (cfg["sensor"], cfg["device_id"]))
        wearable.begin()
        asyncio.run(_loop(wearable))
    except Exception as e:  # noqa: BLE001 - the last resort: log, then restart clean
        sys.print_exception(e)
        try:
            with open("/last_error.txt", "w") as f:
                sys.print_exception(e, f)
        except OSError:
            pass
        machine.reset()
