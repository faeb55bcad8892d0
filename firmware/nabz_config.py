# Per-device configuration: /device.json on the board's flash (examples in firmware/config/).
#
# Rules of this file:
# - Every key has a default here, and a file may only name keys that exist (a typo is an error at
#   boot, on the serial console, not a silently ignored setting). Types follow the defaults.
# - device_id and sensor have no default: a board without them does not start.
# - The pins are ESP32 GPIO numbers; analogue inputs must be on ADC1 (GPIO 32-39), which works
#   while the radio is on. hardware/WIRING.md has the tables.

import json

DEFAULTS = {
    "device_id": "",  # required: e.g. "ecg-0001"; advertised as "Nabz <device_id>"
    "sensor": "",  # required: "ecg" or "oximeter"
    "model": "",  # Device Information model string ("" -> by sensor)
    "manufacturer": "Nabz",
    "hardware_rev": "A",
    "serial": "",  # "" -> the chip's unique id in hex
    # BLE
    "mtu": 247,
    "adv_interval_ms": 100,
    "adv_interval_low_battery_ms": 1000,
    # Waveform ring (resend buffer)
    "ring_seconds": 64,
    "ring_frames": 512,
    # Timing
    "vitals_period_s": 1,
    "vitals_period_low_battery_s": 2,
    "battery_period_s": 10,
    "battery_notify_s": 60,
    "watchdog_ms": 8000,
    "critical_grace_s": 30,  # after "battery critical": time for the gateway to fetch what it lacks
    "critical_sleep_s": 600,  # then deep sleep, waking this often to look at the battery again
    # Battery: LiPo through a resistor divider into an ADC1 pin
    "battery_adc_pin": 35,
    "battery_divider": 2.0,  # battery voltage / pin voltage (100k over 100k: 2.0)
    "battery_low_pct": 15,  # below this: low-battery flag, reduced rates
    "battery_critical_pct": 3,  # at or below this: last status, sensors off, deep sleep
    # ECG patch: AD8232
    "ecg_rate_hz": 250,
    "ecg_adc_pin": 36,
    "ecg_lo_plus_pin": 34,
    "ecg_lo_minus_pin": 39,
    "ecg_sdn_pin": 25,
    "ecg_timer_id": 0,
    "ecg_gain": 1100.0,  # AD8232 total gain on the board (100 x 11 on the common breakouts)
    "ecg_ref_uv": 1650000,  # output at 0 mV (the AD8232 REFOUT, half the 3.3 V supply)
    "ecg_adc_min_uv": 150000,  # the ESP32 ADC's usable range at 11 dB attenuation
    "ecg_adc_max_uv": 2450000,
    # Pulse oximeter: MAX30102
    "ppg_rate_hz": 100,
    "ppg_rate_low_battery_hz": 50,
    "ppg_i2c_id": 0,
    "ppg_sda_pin": 21,
    "ppg_scl_pin": 22,
    "ppg_int_pin": 19,
    "ppg_i2c_freq": 400000,
    "ppg_led_red_ma": 7.2,
    "ppg_led_ir_ma": 7.2,
    "ppg_pulse_width_us": 411,
    "ppg_adc_range_na": 4096,
    "ppg_finger_on_counts": 50000,
    "ppg_low_pi_pct": 0.3,
}

SENSORS = ("ecg", "oximeter")
_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"
_ID_MAX = 13  # "Nabz " + id must fit the 31-byte advertising packet with flags, appearance, service


_MTU_MAX = 515  # 512-byte ATT value + 3 bytes of notification header
_RING_INSTANTS = 65535  # nabz_ring: sample positions are 16-bit
# What nabz_ring.WaveRing allocates: ring_seconds x rate x bytes a sample instant (ECG int16;
# PPG red + IR uint24), plus ring_frames x 18 bytes of index (start H, n B, flags B, k i, t0 q,
# rate H). tests/firmware/test_deploy.py checks these against a ring built in MicroPython.
_SAMPLE_BYTES = {"ecg": 2, "oximeter": 6}
_FRAME_SLOT_BYTES = 18
# The heap a ring may take on the board the firmware is built for, an ESP32-WROOM-32E (no PSRAM;
# hardware/BOM.md) with BLE on: the default oximeter's ring, 64 s x 100 Hz x 6 B + 512 x 18 B =
# 47,616 B. That is the largest ring whose wearable was measured (docs/firmware.md, Memory:
# 56,000 B live with it) and the one the board check test_heap_left_with_the_wearable_running
# (> 20 kB left) is run with; each byte more comes out of that headroom, and a ring the heap
# cannot hold is a MemoryError at every boot. Raise it only for a board that passes that check
# with the larger ring (a WROVER's PSRAM holds far more).
_RING_BUDGET_BYTES = 47616


class ConfigError(ValueError):
    pass


def validate(raw):
    """A complete configuration dict from a partial one; ConfigError says what is wrong."""
    if not isinstance(raw, dict):
        raise ConfigError("device config: a JSON object is needed")
    unknown = [k for k in raw if k not in DEFAULTS]
    if unknown:
        raise ConfigError("device config: unknown keys %s" % ", ".join(sorted(unknown)))
    cfg: dict = {}
    for key, default in DEFAULTS.items():
        value = raw.get(key, default)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(default):
            raise ConfigError("device config: %s must be %s, not %r" % (key, type(default).__name__, value))
        cfg[key] = value
    did = cfg["device_id"]
    if not did or len(did) > _ID_MAX or did[0] in "_.-" or any(c not in _ID_CHARS for c in did):
        raise ConfigError(
            "device config: device_id %r must be 1-%d of A-Z a-z 0-9 _ . - (not starting with _ . -)"
            % (did, _ID_MAX)
        )
    if cfg["sensor"] not in SENSORS:
        raise ConfigError("device config: sensor must be one of %s" % ", ".join(SENSORS))
    if not 23 <= cfg["mtu"] <= _MTU_MAX:
        # A notification carries MTU - 3 bytes, and an attribute value is at most 512 bytes
        # (Core 5.3 Vol 3 Part F 3.2.9): a larger MTU would only cut frames no notification holds.
        raise ConfigError(
            "device config: mtu must be 23..%d (a frame is one ATT value, 512 bytes at most)" % _MTU_MAX
        )
    if cfg["ring_frames"] < 2 or cfg["ring_frames"] & (cfg["ring_frames"] - 1):
        raise ConfigError("device config: ring_frames must be a power of two")
    _check_ring(cfg)
    if not 0 <= cfg["battery_critical_pct"] < cfg["battery_low_pct"] <= 100:
        raise ConfigError("device config: need 0 <= battery_critical_pct < battery_low_pct <= 100")
    if cfg["ecg_gain"] <= 0 or cfg["battery_divider"] < 1.0:
        raise ConfigError("device config: ecg_gain must be > 0 and battery_divider >= 1")
    if not cfg["model"]:
        cfg["model"] = "Nabz ECG patch" if cfg["sensor"] == "ecg" else "Nabz pulse oximeter"
    return cfg


def ring_bytes(sensor, rate_hz, ring_seconds, ring_frames):
    """Bytes of heap the waveform ring of this configuration takes (samples and frame index)."""
    return ring_seconds * rate_hz * _SAMPLE_BYTES[sensor] + ring_frames * _FRAME_SLOT_BYTES


def _check_ring(cfg):
    """The ring must keep the contract's minute and fit both its 16-bit index and the heap budget."""
    sensor = cfg["sensor"]
    key = "ecg_rate_hz" if sensor == "ecg" else "ppg_rate_hz"
    rate = cfg[key]
    if rate <= 0:
        raise ConfigError("device config: %s must be > 0" % key)
    frames = cfg["ring_frames"]
    seconds = cfg["ring_seconds"]
    index = ring_bytes(sensor, rate, 0, frames)
    most = (_RING_BUDGET_BYTES - index) // (rate * _SAMPLE_BYTES[sensor])
    if most > _RING_INSTANTS // rate:
        most = _RING_INSTANTS // rate
    if most < 60:
        raise ConfigError(
            "device config: ring_frames %d take %d bytes of index: no room left for a minute of "
            "ring at %d Hz in the %d-byte heap budget" % (frames, index, rate, _RING_BUDGET_BYTES)
        )
    if not 60 <= seconds <= most:
        raise ConfigError(
            "device config: ring_seconds must be 60..%d at %d Hz with ring_frames %d (the contract "
            "promises a minute; %d s would take %d bytes of heap, and the ring may take %d "
            "on an ESP32-WROOM with BLE: docs/firmware.md, Memory)"
            % (most, rate, frames, seconds, ring_bytes(sensor, rate, seconds, frames), _RING_BUDGET_BYTES)
        )


def load(path="/device.json"):
    with open(path) as f:
        return validate(json.load(f))
