# boot.py and main.py as a board runs them: /device.json from the test, the fake hardware, the real
# asyncio loop of nabz_main in real time, ended after a number of watchdog feeds.
import sys

import bluetooth
import machine
from mptest import emit

MODE = sys.argv[1]  # run | safe | bad_config
FEEDS = int(sys.argv[2]) if len(sys.argv) > 2 else 25

machine.clear()
bluetooth.BLE.reset()
machine.WDT.stop_after = FEEDS
chip = None
if MODE == "safe":
    machine.preset_levels[0] = 0  # BOOT held down at reset
cfg = open("/device.json").read()
if '"oximeter"' in cfg:
    from fake_max30102 import FakeMax30102
    from nabz_clock import Clock

    chip = FakeMax30102(lambda i: (120000 + (i % 90) * 20, 150000 + (i % 90) * 30), int_pin=19, clock=Clock())
    machine.add_i2c_device(0x57, chip)
machine.preset_uv[35] = 2000000  # the battery: 4.0 V through the 2:1 divider


def run_file(path):
    # As the board does: run boot.py, then main.py, each as a script of its own. (The runner's
    # script folder is /main, so `import main` would find that folder instead.)
    exec(open(path).read(), {"__name__": "__main__"})


run_file("/lib/boot.py")

# nabz_main ends with asyncio.run(loop): keep that coroutine and run it here, under our watch.
import asyncio  # noqa: E402

_runner_run = asyncio.run
started = []
asyncio.run = started.append
outcome = "returned"
try:
    run_file("/lib/main.py")
except machine.Reset:
    outcome = "reset"


def report(outcome):
    ble = bluetooth.BLE()
    try:
        err = open("/last_error.txt").read()
    except OSError:
        err = None
    emit(
        "main",
        {
            "outcome": outcome,
            "feeds": machine.wdt.feeds if machine.wdt else None,
            "wdt_timeout": machine.wdt.timeout if machine.wdt else None,
            "advertising": ble.adv is not None,
            "name": ble.config("gap_name"),
            "events": machine.events,
            "chip_mode": chip.regs[9] if chip else None,
            "chip_reads": chip.reads if chip else None,
            "last_error": err,
        },
    )


async def watch():
    result = outcome
    if started:
        try:
            await started[0]
            result = "loop ended"
        except machine.StopRun:
            result = "stopped by the test"
    report(result)


asyncio.run = _runner_run
asyncio.run(watch())
