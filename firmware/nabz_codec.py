# Nabz wire codec: the bytes that cross BLE between a wearable and the gateway.
#
# Rules of this file:
# - It runs unchanged on MicroPython (ESP32 firmware) and CPython (gateway), so it uses only
#   `struct`, `math` and builtins: no dataclasses, no typing at runtime, no `match`.
# - Every decoder treats its input as untrusted: lengths are checked before each slice and a
#   bad frame raises ValueError with a reason that names the field. Nothing else escapes.
# - Layouts follow the Bluetooth SIG specifications named at each function (little-endian);
#   the Nabz waveform frame is ours and is specified in docs/contract.md.
# - Encoders have `_into` variants that write into a caller's preallocated buffer, so the
#   firmware's sampling path does not allocate.

import struct

try:
    from micropython import const  # type: ignore[import-not-found]
except ImportError:  # CPython

    def const(x):  # type: ignore[no-redef]
        return x


# ---------------------------------------------------------------------------------------------
# UUIDs (16-bit SIG assigned numbers; the Nabz waveform service is a 128-bit vendor UUID)
UUID_HEART_RATE_SERVICE = const(0x180D)
UUID_HEART_RATE_MEASUREMENT = const(0x2A37)
UUID_BODY_SENSOR_LOCATION = const(0x2A38)
UUID_PULSE_OXIMETER_SERVICE = const(0x1822)
UUID_PLX_SPOT_CHECK = const(0x2A5E)
UUID_PLX_CONTINUOUS = const(0x2A5F)
UUID_PLX_FEATURES = const(0x2A60)
UUID_BATTERY_SERVICE = const(0x180F)
UUID_BATTERY_LEVEL = const(0x2A19)
UUID_DEVICE_INFORMATION = const(0x180A)

NABZ_WAVEFORM_SERVICE = "6e61627a-0100-4000-8000-00805f9b34fb"
NABZ_ECG_WAVEFORM = "6e61627a-0101-4000-8000-00805f9b34fb"
NABZ_PPG_WAVEFORM = "6e61627a-0102-4000-8000-00805f9b34fb"
NABZ_CONTROL = "6e61627a-0103-4000-8000-00805f9b34fb"

# ---------------------------------------------------------------------------------------------
# IEEE 11073-20601 16-bit SFLOAT: 4-bit signed exponent, 12-bit signed mantissa, value m * 10**e.
SFLOAT_NAN = const(0x07FF)
SFLOAT_NRES = const(0x0800)
SFLOAT_POS_INF = const(0x07FE)
SFLOAT_NEG_INF = const(0x0802)
SFLOAT_RESERVED = const(0x0801)
_SFLOAT_MANTISSA_MAX = const(2045)  # +-2046/2047/2048 collide with the special values at e=0

_INF = float("inf")
_NAN = float("nan")


def sfloat_decode(raw):
    """16-bit SFLOAT -> float. NaN, NRes and reserved give nan; +-INF give +-inf."""
    raw &= 0xFFFF
    if raw == SFLOAT_POS_INF:
        return _INF
    if raw == SFLOAT_NEG_INF:
        return -_INF
    if raw == SFLOAT_NAN or raw == SFLOAT_NRES or raw == SFLOAT_RESERVED:
        return _NAN
    mantissa = raw & 0x0FFF
    if mantissa >= 0x0800:
        mantissa -= 0x1000
    exponent = raw >> 12
    if exponent >= 0x8:
        exponent -= 0x10
    if exponent >= 0:
        return float(mantissa * (10**exponent))
    # Divide rather than multiply by 10**-e so that 975e-1 prints as 97.5, not 97.50000000000001.
    return mantissa / (10 ** (-exponent))


def sfloat_special(raw):
    """Name of a special SFLOAT value ('nan', 'nres', '+inf', '-inf', 'reserved') or None."""
    raw &= 0xFFFF
    if raw == SFLOAT_NAN:
        return "nan"
    if raw == SFLOAT_NRES:
        return "nres"
    if raw == SFLOAT_POS_INF:
        return "+inf"
    if raw == SFLOAT_NEG_INF:
        return "-inf"
    if raw == SFLOAT_RESERVED:
        return "reserved"
    return None


def sfloat_encode(value):
    """float (or None) -> 16-bit SFLOAT, keeping as many decimals (up to 3) as the value has.

    None and nan encode as NaN; values too large for the format encode as +-INF.
    """
    if value is None or value != value:
        return SFLOAT_NAN
    if value == _INF:
        return SFLOAT_POS_INF
    if value == -_INF:
        return SFLOAT_NEG_INF
    # Fewest decimals that represent the value exactly (98 -> e=0, 97.5 -> e=-1), at most 3.
    exponent = 0
    while exponent > -3:
        scaled = value * (10 ** (-exponent))
        # 1e-4, not less: on the ESP32 floats are single precision (1.23 * 100 = 123.0000019).
        if abs(scaled - round(scaled)) < 1e-4:
            break
        exponent -= 1
    mantissa = int(round(value * (10 ** (-exponent))))
    while abs(mantissa) > _SFLOAT_MANTISSA_MAX:
        exponent += 1
        if exponent > 7:
            return SFLOAT_POS_INF if value > 0 else SFLOAT_NEG_INF
        mantissa = int(round(value / (10**exponent)))
    return ((exponent & 0xF) << 12) | (mantissa & 0x0FFF)


# ---------------------------------------------------------------------------------------------
# Heart Rate Measurement 0x2A37 (Heart Rate Service v1.0 section 3.1)
HRM_FLAG_UINT16 = const(0x01)
HRM_FLAG_CONTACT_SUPPORTED = const(0x04)
HRM_FLAG_CONTACT_DETECTED = const(0x02)
HRM_FLAG_ENERGY = const(0x08)
HRM_FLAG_RR = const(0x10)


def hrm_encode(hr_bpm, contact=None, energy_kj=None, rr_1024=()):
    """Heart Rate Measurement bytes. contact: None (unsupported), False or True.

    rr_1024 are RR intervals in units of 1/1024 s, oldest first.
    """
    hr_bpm = int(hr_bpm)
    if hr_bpm < 0 or hr_bpm > 0xFFFF:
        raise ValueError("heart rate out of range: %d" % hr_bpm)
    flags = 0
    if hr_bpm > 0xFF:
        flags |= HRM_FLAG_UINT16
    if contact is not None:
        flags |= HRM_FLAG_CONTACT_SUPPORTED
        if contact:
            flags |= HRM_FLAG_CONTACT_DETECTED
    if energy_kj is not None:
        flags |= HRM_FLAG_ENERGY
    if rr_1024:
        flags |= HRM_FLAG_RR
    out = bytearray([flags])
    out += struct.pack("<H", hr_bpm) if flags & HRM_FLAG_UINT16 else bytes([hr_bpm])
    if energy_kj is not None:
        out += struct.pack("<H", int(energy_kj))
    for rr in rr_1024:
        out += struct.pack("<H", int(rr))
    return bytes(out)


def hrm_decode(data):
    """Heart Rate Measurement bytes -> dict(hr_bpm, contact, energy_kj, rr_1024)."""
    n = len(data)
    if n < 2:
        raise ValueError("heart rate measurement: %d bytes, need at least 2" % n)
    flags = data[0]
    pos = 1
    if flags & HRM_FLAG_UINT16:
        if n < 3:
            raise ValueError("heart rate measurement: uint16 heart rate truncated")
        hr = data[1] | (data[2] << 8)
        pos = 3
    else:
        hr = data[1]
        pos = 2
    contact = None
    if flags & HRM_FLAG_CONTACT_SUPPORTED:
        contact = bool(flags & HRM_FLAG_CONTACT_DETECTED)
    energy = None
    if flags & HRM_FLAG_ENERGY:
        if n < pos + 2:
            raise ValueError("heart rate measurement: energy expended truncated")
        energy = data[pos] | (data[pos + 1] << 8)
        pos += 2
    rr = []
    if flags & HRM_FLAG_RR:
        if (n - pos) % 2:
            raise ValueError("heart rate measurement: odd number of bytes in RR intervals")
        while pos < n:
            rr.append(data[pos] | (data[pos + 1] << 8))
            pos += 2
    elif pos != n:
        # Without the RR flag the layout ends here; extra bytes mean a misread flags byte.
        raise ValueError("heart rate measurement: %d unexpected trailing bytes" % (n - pos))
    return {"hr_bpm": hr, "contact": contact, "energy_kj": energy, "rr_1024": rr}


# ---------------------------------------------------------------------------------------------
# Pulse Oximeter Service 0x1822 (PLXS v1.0.1): PLX Continuous 0x2A5F and Spot-Check 0x2A5E
PLXC_FLAG_FAST = const(0x01)
PLXC_FLAG_SLOW = const(0x02)
PLXC_FLAG_MEAS_STATUS = const(0x04)
PLXC_FLAG_DEV_STATUS = const(0x08)
PLXC_FLAG_PAI = const(0x10)

PLXS_FLAG_TIMESTAMP = const(0x01)
PLXS_FLAG_MEAS_STATUS = const(0x02)
PLXS_FLAG_DEV_STATUS = const(0x04)
PLXS_FLAG_PAI = const(0x08)
PLXS_FLAG_CLOCK_NOT_SET = const(0x10)

# Measurement Status (16 bit) bit positions
MEAS_STATUS_BITS = (
    (5, "ongoing"),
    (6, "early_estimate"),
    (7, "validated"),
    (8, "fully_qualified"),
    (9, "from_storage"),
    (10, "demo"),
    (11, "testing"),
    (12, "calibrating"),
    (13, "unavailable"),
    (14, "questionable"),
    (15, "invalid"),
)
# Device and Sensor Status (24 bit) bit positions
DEV_STATUS_BITS = (
    (0, "extended_display_update"),
    (1, "equipment_malfunction"),
    (2, "signal_processing_irregularity"),
    (3, "inadequate_signal"),
    (4, "poor_signal"),
    (5, "low_perfusion"),
    (6, "erratic_signal"),
    (7, "nonpulsatile_signal"),
    (8, "questionable_pulse"),
    (9, "signal_analysis_ongoing"),
    (10, "sensor_interference"),
    (11, "sensor_unconnected_to_user"),
    (12, "unknown_sensor_connected"),
    (13, "sensor_displaced"),
    (14, "sensor_malfunctioning"),
    (15, "sensor_disconnected"),
)


def bits_to_names(value, table):
    """Status word -> list of the names of the bits that are set, in bit order."""
    out = []
    for bit, name in table:
        if value & (1 << bit):
            out.append(name)
    return out


def names_to_bits(names, table):
    """Inverse of bits_to_names; unknown names raise ValueError."""
    value = 0
    for name in names:
        for bit, known in table:
            if known == name:
                value |= 1 << bit
                break
        else:
            raise ValueError("unknown status bit name: %s" % name)
    return value


def plx_continuous_encode(spo2, pr, meas_status=None, dev_status=None, pai=None, fast=None, slow=None):
    """PLX Continuous Measurement bytes. spo2/pr are % and /min (None -> SFLOAT NaN).

    fast and slow are optional (spo2, pr) pairs; statuses are integers; pai is % (SFLOAT).
    """
    flags = 0
    if fast is not None:
        flags |= PLXC_FLAG_FAST
    if slow is not None:
        flags |= PLXC_FLAG_SLOW
    if meas_status is not None:
        flags |= PLXC_FLAG_MEAS_STATUS
    if dev_status is not None:
        flags |= PLXC_FLAG_DEV_STATUS
    if pai is not None:
        flags |= PLXC_FLAG_PAI
    out = bytearray(struct.pack("<BHH", flags, sfloat_encode(spo2), sfloat_encode(pr)))
    if fast is not None:
        out += struct.pack("<HH", sfloat_encode(fast[0]), sfloat_encode(fast[1]))
    if slow is not None:
        out += struct.pack("<HH", sfloat_encode(slow[0]), sfloat_encode(slow[1]))
    if meas_status is not None:
        out += struct.pack("<H", meas_status & 0xFFFF)
    if dev_status is not None:
        out += struct.pack("<HB", dev_status & 0xFFFF, (dev_status >> 16) & 0xFF)
    if pai is not None:
        out += struct.pack("<H", sfloat_encode(pai))
    return bytes(out)


def _need(data, pos, size, what):
    if len(data) < pos + size:
        raise ValueError("%s truncated: need %d bytes at offset %d, have %d" % (what, size, pos, len(data)))


def plx_continuous_decode(data):
    """PLX Continuous bytes -> dict(spo2_pct, pr_bpm, fast, slow, meas_status, dev_status, pai_pct).

    spo2_pct and pr_bpm are floats and may be nan (device has no value) or +-inf.
    """
    _need(data, 0, 5, "PLX continuous")
    flags, spo2, pr = struct.unpack_from("<BHH", data, 0)
    out = {
        "spo2_pct": sfloat_decode(spo2),
        "pr_bpm": sfloat_decode(pr),
        "fast": None,
        "slow": None,
        "meas_status": None,
        "dev_status": None,
        "pai_pct": None,
    }
    pos = 5
    if flags & PLXC_FLAG_FAST:
        _need(data, pos, 4, "PLX continuous SpO2PR-Fast")
        a, b = struct.unpack_from("<HH", data, pos)
        out["fast"] = (sfloat_decode(a), sfloat_decode(b))
        pos += 4
    if flags & PLXC_FLAG_SLOW:
        _need(data, pos, 4, "PLX continuous SpO2PR-Slow")
        a, b = struct.unpack_from("<HH", data, pos)
        out["slow"] = (sfloat_decode(a), sfloat_decode(b))
        pos += 4
    if flags & PLXC_FLAG_MEAS_STATUS:
        _need(data, pos, 2, "PLX continuous measurement status")
        out["meas_status"] = struct.unpack_from("<H", data, pos)[0]
        pos += 2
    if flags & PLXC_FLAG_DEV_STATUS:
        _need(data, pos, 3, "PLX continuous device and sensor status")
        lo, hi = struct.unpack_from("<HB", data, pos)
        out["dev_status"] = lo | (hi << 16)
        pos += 3
    if flags & PLXC_FLAG_PAI:
        _need(data, pos, 2, "PLX continuous pulse amplitude index")
        out["pai_pct"] = sfloat_decode(struct.unpack_from("<H", data, pos)[0])
        pos += 2
    if pos != len(data):
        raise ValueError("PLX continuous: %d unexpected trailing bytes" % (len(data) - pos))
    return out


def plx_spot_check_encode(
    spo2, pr, timestamp=None, meas_status=None, dev_status=None, pai=None, clock_not_set=False
):
    """PLX Spot-Check Measurement bytes; timestamp is (year, month, day, hours, minutes, seconds)."""
    flags = 0
    if timestamp is not None:
        flags |= PLXS_FLAG_TIMESTAMP
    if meas_status is not None:
        flags |= PLXS_FLAG_MEAS_STATUS
    if dev_status is not None:
        flags |= PLXS_FLAG_DEV_STATUS
    if pai is not None:
        flags |= PLXS_FLAG_PAI
    if clock_not_set:
        flags |= PLXS_FLAG_CLOCK_NOT_SET
    out = bytearray(struct.pack("<BHH", flags, sfloat_encode(spo2), sfloat_encode(pr)))
    if timestamp is not None:
        out += struct.pack("<HBBBBB", *timestamp)
    if meas_status is not None:
        out += struct.pack("<H", meas_status & 0xFFFF)
    if dev_status is not None:
        out += struct.pack("<HB", dev_status & 0xFFFF, (dev_status >> 16) & 0xFF)
    if pai is not None:
        out += struct.pack("<H", sfloat_encode(pai))
    return bytes(out)


def plx_spot_check_decode(data):
    """PLX Spot-Check bytes -> dict(spo2_pct, pr_bpm, timestamp, meas_status, dev_status, pai_pct, clock_set)."""
    _need(data, 0, 5, "PLX spot-check")
    flags, spo2, pr = struct.unpack_from("<BHH", data, 0)
    out = {
        "spo2_pct": sfloat_decode(spo2),
        "pr_bpm": sfloat_decode(pr),
        "timestamp": None,
        "meas_status": None,
        "dev_status": None,
        "pai_pct": None,
        "clock_set": not (flags & PLXS_FLAG_CLOCK_NOT_SET),
    }
    pos = 5
    if flags & PLXS_FLAG_TIMESTAMP:
        _need(data, pos, 7, "PLX spot-check timestamp")
        out["timestamp"] = struct.unpack_from("<HBBBBB", data, pos)
        pos += 7
    if flags & PLXS_FLAG_MEAS_STATUS:
        _need(data, pos, 2, "PLX spot-check measurement status")
        out["meas_status"] = struct.unpack_from("<H", data, pos)[0]
        pos += 2
    if flags & PLXS_FLAG_DEV_STATUS:
        _need(data, pos, 3, "PLX spot-check device and sensor status")
        lo, hi = struct.unpack_from("<HB", data, pos)
        out["dev_status"] = lo | (hi << 16)
        pos += 3
    if flags & PLXS_FLAG_PAI:
        _need(data, pos, 2, "PLX spot-check pulse amplitude index")
        out["pai_pct"] = sfloat_decode(struct.unpack_from("<H", data, pos)[0])
        pos += 2
    if pos != len(data):
        raise ValueError("PLX spot-check: %d unexpected trailing bytes" % (len(data) - pos))
    return out


# ---------------------------------------------------------------------------------------------
# Battery Level 0x2A19 (Battery Service v1.0): uint8 percent
def battery_encode(percent):
    percent = int(percent)
    if percent < 0 or percent > 100:
        raise ValueError("battery level out of range: %d" % percent)
    return bytes([percent])


def battery_decode(data):
    if len(data) != 1:
        raise ValueError("battery level: %d bytes, expected 1" % len(data))
    if data[0] > 100:
        raise ValueError("battery level: %d %% is above 100" % data[0])
    return data[0]


# ---------------------------------------------------------------------------------------------
# Nabz waveform frame, version 1 (docs/contract.md "Waveform frame")
#   off size field
#   0   1    version (1)
#   1   1    kind: 1 ECG (int16 microvolts, one channel), 2 PPG (uint24 counts, red then IR)
#   2   1    status flags (WAVE_FLAG_*)
#   3   1    samples per channel in this frame (n >= 1)
#   4   2    sample rate, Hz
#   6   4    sequence number of this frame (per stream, +1 per frame, wraps at 2**32)
#   10  8    device time of the first sample, microseconds on the device clock
#   18  ...  samples: ECG n*2 bytes; PPG n*6 bytes (red uint24, IR uint24 per sample)
WAVE_VERSION = const(1)
WAVE_KIND_ECG = const(1)
WAVE_KIND_PPG = const(2)
WAVE_HEADER = "<BBBBHIQ"
WAVE_HEADER_SIZE = const(18)

WAVE_FLAG_LEADS_OFF = const(0x01)
WAVE_FLAG_SATURATED = const(0x02)
WAVE_FLAG_SENSOR_OFF = const(0x04)
WAVE_FLAG_LOW_BATTERY = const(0x08)
WAVE_FLAG_RESENT = const(0x10)
WAVE_FLAG_GAP_BEFORE = const(0x20)
WAVE_FLAG_NAMES = (
    (0, "leads_off"),
    (1, "saturated"),
    (2, "sensor_off"),
    (3, "low_battery"),
    (4, "resent"),
    (5, "gap_before"),
)
_WAVE_FLAGS_KNOWN = const(0x3F)
_PPG_MAX = const(0xFFFFFF)


def wave_sample_size(kind):
    """Bytes per sample instant for a stream kind (all channels)."""
    if kind == WAVE_KIND_ECG:
        return 2
    if kind == WAVE_KIND_PPG:
        return 6
    raise ValueError("waveform: unknown stream kind %d" % kind)


def wave_max_samples(kind, att_mtu):
    """How many sample instants fit one notification at this ATT MTU (payload = MTU - 3)."""
    n = (att_mtu - 3 - WAVE_HEADER_SIZE) // wave_sample_size(kind)
    if n < 1:
        raise ValueError("waveform: ATT MTU %d too small for one sample" % att_mtu)
    return min(n, 255)


def wave_header_into(buf, kind, flags, n, rate_hz, seq, t0_us):
    """Write the 18-byte frame header into buf[0:18]; returns 18.

    The firmware keeps its samples in wire format (int16 LE, or uint24 LE red then IR) and copies
    them after this header, so a frame costs no per-sample encoding on the device.
    """
    struct.pack_into(WAVE_HEADER, buf, 0, WAVE_VERSION, kind, flags, n, rate_hz, seq & 0xFFFFFFFF, t0_us)
    return WAVE_HEADER_SIZE


def wave_pack_into(buf, kind, flags, rate_hz, seq, t0_us, samples, start, n):
    """Write one frame into buf (a bytearray); returns its length in bytes.

    samples is a flat sequence (ECG: microvolts; PPG: red0, ir0, red1, ir1, ...) read from
    index `start` (in sample instants) for `n` instants, so a ring buffer can be framed in place.
    """
    size = wave_sample_size(kind)
    total = WAVE_HEADER_SIZE + n * size
    if n < 1 or n > 255:
        raise ValueError("waveform: %d samples per frame, must be 1..255" % n)
    if len(buf) < total:
        raise ValueError("waveform: buffer of %d bytes, frame needs %d" % (len(buf), total))
    wave_header_into(buf, kind, flags, n, rate_hz, seq, t0_us)
    pos = WAVE_HEADER_SIZE
    if kind == WAVE_KIND_ECG:
        for i in range(start, start + n):
            struct.pack_into("<h", buf, pos, samples[i])
            pos += 2
    else:
        j = start * 2
        for _ in range(n):
            red = samples[j]
            ir = samples[j + 1]
            buf[pos] = red & 0xFF
            buf[pos + 1] = (red >> 8) & 0xFF
            buf[pos + 2] = (red >> 16) & 0xFF
            buf[pos + 3] = ir & 0xFF
            buf[pos + 4] = (ir >> 8) & 0xFF
            buf[pos + 5] = (ir >> 16) & 0xFF
            pos += 6
            j += 2
    return total


def wave_encode(kind, flags, rate_hz, seq, t0_us, samples):
    """One frame as bytes. samples: ECG list of int microvolts; PPG flat [red0, ir0, red1, ...]."""
    n = len(samples) // (2 if kind == WAVE_KIND_PPG else 1)
    buf = bytearray(WAVE_HEADER_SIZE + n * wave_sample_size(kind))
    wave_pack_into(buf, kind, flags, rate_hz, seq, t0_us, samples, 0, n)
    return bytes(buf)


def wave_decode(data):
    """Frame bytes -> dict(version, kind, flags, n, rate_hz, seq, t0_us, samples).

    samples: ECG a list of int microvolts; PPG a flat list [red0, ir0, red1, ir1, ...].
    """
    if len(data) < WAVE_HEADER_SIZE:
        raise ValueError("waveform: %d bytes, header needs %d" % (len(data), WAVE_HEADER_SIZE))
    version, kind, flags, n, rate, seq, t0_us = struct.unpack_from(WAVE_HEADER, data, 0)
    if version != WAVE_VERSION:
        raise ValueError("waveform: unsupported version %d" % version)
    if kind != WAVE_KIND_ECG and kind != WAVE_KIND_PPG:
        raise ValueError("waveform: unknown stream kind %d" % kind)
    if flags & ~_WAVE_FLAGS_KNOWN:
        raise ValueError("waveform: unknown status flags 0x%02x" % (flags & ~_WAVE_FLAGS_KNOWN))
    if n == 0:
        raise ValueError("waveform: frame with no samples")
    if rate == 0:
        raise ValueError("waveform: sample rate 0 Hz")
    size = wave_sample_size(kind)
    if len(data) != WAVE_HEADER_SIZE + n * size:
        raise ValueError(
            "waveform: header says %d samples (%d bytes) but %d sample bytes follow"
            % (n, n * size, len(data) - WAVE_HEADER_SIZE)
        )
    if kind == WAVE_KIND_ECG:
        samples = list(struct.unpack_from("<%dh" % n, data, WAVE_HEADER_SIZE))
    else:
        samples = []
        pos = WAVE_HEADER_SIZE
        for _ in range(n * 2):
            samples.append(data[pos] | (data[pos + 1] << 8) | (data[pos + 2] << 16))
            pos += 3
    return {
        "version": version,
        "kind": kind,
        "flags": flags,
        "n": n,
        "rate_hz": rate,
        "seq": seq,
        "t0_us": t0_us,
        "samples": samples,
    }


# ---------------------------------------------------------------------------------------------
# Nabz control characteristic (write, gateway -> wearable)
#   op 1 RESEND: uint8 op, uint8 kind, uint32 first seq, uint32 last seq (inclusive)
CTRL_OP_RESEND = const(1)
_CTRL_RESEND = "<BBII"


def control_resend_encode(kind, first_seq, last_seq):
    return struct.pack(_CTRL_RESEND, CTRL_OP_RESEND, kind, first_seq & 0xFFFFFFFF, last_seq & 0xFFFFFFFF)


def control_decode(data):
    """Control write -> dict(op, ...). Unknown ops and bad lengths raise ValueError."""
    if len(data) < 1:
        raise ValueError("control: empty write")
    op = data[0]
    if op == CTRL_OP_RESEND:
        if len(data) != 10:
            raise ValueError("control resend: %d bytes, expected 10" % len(data))
        _, kind, first, last = struct.unpack(_CTRL_RESEND, data)
        if kind != WAVE_KIND_ECG and kind != WAVE_KIND_PPG:
            raise ValueError("control resend: unknown stream kind %d" % kind)
        return {"op": op, "kind": kind, "first_seq": first, "last_seq": last}
    raise ValueError("control: unknown op %d" % op)


# Device -> gateway notifications on the same control characteristic (it is write + notify).
#   op 0x81 RESEND_REPORT, after the device has answered a RESEND request:
#     uint8 op, uint8 kind, uint32 first seq, uint32 last seq (as requested),
#     uint32 first resent seq, uint32 resent count.
#     The resent frames are first_resent .. first_resent + count - 1; every other frame of the
#     request is not coming: those before them are older than the device's buffer (a gap the
#     gateway must report), those after them were never produced.
#   op 0x82 STATUS, when the device changes state: uint8 op, uint8 state, uint8 battery percent.
CTRL_OP_RESEND_REPORT = const(0x81)
CTRL_OP_STATUS = const(0x82)
_CTRL_REPORT = "<BBIIII"
_CTRL_STATUS = "<BBB"
DEVICE_STATE_OK = const(0)
DEVICE_STATE_LOW_BATTERY = const(1)  # reduced rates, frames carry the low-battery flag
DEVICE_STATE_BATTERY_CRITICAL = const(2)  # the last status: sensors are being shut down
DEVICE_STATE_SENSOR_FAULT = const(3)  # the sensor stopped answering; the device is recovering it
DEVICE_STATE_NAMES = ("ok", "low_battery", "battery_critical", "sensor_fault")


def control_report_encode(kind, first_seq, last_seq, resent_first, resent_count):
    return struct.pack(
        _CTRL_REPORT,
        CTRL_OP_RESEND_REPORT,
        kind,
        first_seq & 0xFFFFFFFF,
        last_seq & 0xFFFFFFFF,
        resent_first & 0xFFFFFFFF,
        resent_count,
    )


def control_status_encode(state, battery_pct):
    if state < 0 or state >= len(DEVICE_STATE_NAMES):
        raise ValueError("control status: unknown device state %d" % state)
    return struct.pack(_CTRL_STATUS, CTRL_OP_STATUS, state, battery_pct)


def control_notify_decode(data):
    """A control notification from the device -> dict(op, ...); bad ones raise ValueError."""
    if len(data) < 1:
        raise ValueError("control notification: empty")
    op = data[0]
    if op == CTRL_OP_RESEND_REPORT:
        if len(data) != 18:
            raise ValueError("control resend report: %d bytes, expected 18" % len(data))
        _, kind, first, last, resent_first, count = struct.unpack(_CTRL_REPORT, data)
        if kind != WAVE_KIND_ECG and kind != WAVE_KIND_PPG:
            raise ValueError("control resend report: unknown stream kind %d" % kind)
        if count > ((last - first) & 0xFFFFFFFF) + 1:
            raise ValueError("control resend report: %d frames resent of a shorter request" % count)
        return {
            "op": op,
            "kind": kind,
            "first_seq": first,
            "last_seq": last,
            "resent_first_seq": resent_first,
            "resent_count": count,
        }
    if op == CTRL_OP_STATUS:
        if len(data) != 3:
            raise ValueError("control status: %d bytes, expected 3" % len(data))
        _, state, battery = struct.unpack(_CTRL_STATUS, data)
        if state >= len(DEVICE_STATE_NAMES):
            raise ValueError("control status: unknown device state %d" % state)
        if battery > 100:
            raise ValueError("control status: battery %d %% is above 100" % battery)
        return {"op": op, "state": DEVICE_STATE_NAMES[state], "battery_pct": battery}
    raise ValueError("control notification: unknown op %d" % op)
