# ruff: noqa: F821 - include() and module() are provided by MicroPython's makemanifest.py
# Frozen-module manifest for a Nabz firmware image (MicroPython 1.27, ports/esp32):
#   make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/nabz/firmware/manifest.py
# Freezing moves the bytecode into flash, so it costs no heap (docs/firmware.md has the numbers).
# The per-device /device.json stays a file on the board's filesystem.

include("$(PORT_DIR)/boards/manifest.py")

# Shared by both wearables
module("nabz_codec.py")
module("nabz_clock.py")
module("nabz_config.py")
module("nabz_ring.py")
module("nabz_stream.py")
module("nabz_battery.py")
module("nabz_ble.py")
module("nabz_app.py")
module("nabz_board.py")
module("nabz_main.py")
# ECG patch
module("nabz_ecg.py")
module("nabz_qrs.py")
# Pulse oximeter
module("max30102.py")
module("nabz_ppg.py")
module("nabz_spo2.py")
# boot.py and main.py stay on the filesystem, so a board can be put in safe mode and updated.
