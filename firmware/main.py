# Nabz wearable entry point. Hold the BOOT button (GPIO0) during reset to stay at the REPL
# (safe mode: nothing starts, for mpremote and maintenance).
import machine

if machine.Pin(0, machine.Pin.IN, machine.Pin.PULL_UP).value() == 0:
    print("nabz: safe mode (BOOT held): not starting")
else:
    import nabz_main

    nabz_main.run()
