# Check every vector of tests/vectors/codec.json against nabz_codec, inside MicroPython.
#
# Run by tests/firmware/test_codec_micropython.py through tests/tools/mpy_run.mjs:
#   mp_codec_check.py [VECTORS_JSON]      (default /codec.json; nabz_codec importable from /lib)
# Prints one FAIL line per failing vector, then "codec vectors: N passed, M failed" and exits 1 if
# anything failed. Written in the MicroPython/CPython common subset (it also runs under CPython with
# firmware/ on sys.path), and independent of the CPython test's helpers on purpose.

import json
import sys

import nabz_codec as codec

_INF = float("inf")
_MARKERS = {"nan": float("nan"), "+inf": _INF, "-inf": -_INF}
_DECODERS = {
    "hrm": codec.hrm_decode,
    "plx_continuous": codec.plx_continuous_decode,
    "plx_spot_check": codec.plx_spot_check_decode,
    "battery": codec.battery_decode,
    "wave": codec.wave_decode,
    "control": codec.control_decode,
    "control_notify": codec.control_notify_decode,
}
_TABLES = {"meas": codec.MEAS_STATUS_BITS, "dev": codec.DEV_STATUS_BITS}
_SPECIAL_VALUE = {"nan": "nan", "nres": "nan", "reserved": "nan", "+inf": "+inf", "-inf": "-inf"}


def unhex(text):
    return bytes.fromhex(text.replace(" ", ""))


def to_json(value):
    if type(value) is float:
        if value != value:
            return "nan"
        if value == _INF:
            return "+inf"
        if value == -_INF:
            return "-inf"
        return value
    if type(value) in (list, tuple):
        return [to_json(v) for v in value]
    if type(value) is dict:
        return {k: to_json(v) for k, v in value.items()}
    return value


def same(a, b):
    """Equal with equal types all the way down (98.0 is not 98, False is not 0)."""
    if type(a) is not type(b):
        return False
    if type(b) is dict:
        if sorted(a.keys()) != sorted(b.keys()):
            return False
        for k in b:
            if not same(a[k], b[k]):
                return False
        return True
    if type(b) is list:
        if len(a) != len(b):
            return False
        for i in range(len(b)):
            if not same(a[i], b[i]):
                return False
        return True
    return a == b


def sf(value):
    return _MARKERS[value] if type(value) is str else value


def pair(p):
    return None if p is None else (sf(p[0]), sf(p[1]))


def encode_decoded(name, d):
    if name == "hrm":
        return codec.hrm_encode(d["hr_bpm"], d["contact"], d["energy_kj"], d["rr_1024"])
    if name == "plx_continuous":
        return codec.plx_continuous_encode(
            sf(d["spo2_pct"]), sf(d["pr_bpm"]), d["meas_status"], d["dev_status"], sf(d["pai_pct"]),
            pair(d["fast"]), pair(d["slow"]),
        )  # fmt: skip
    if name == "plx_spot_check":
        ts = None if d["timestamp"] is None else tuple(d["timestamp"])
        return codec.plx_spot_check_encode(
            sf(d["spo2_pct"]), sf(d["pr_bpm"]), ts, d["meas_status"], d["dev_status"], sf(d["pai_pct"]),
            not d["clock_set"],
        )  # fmt: skip
    if name == "battery":
        return codec.battery_encode(d)
    if name == "wave":
        return codec.wave_encode(d["kind"], d["flags"], d["rate_hz"], d["seq"], d["t0_us"], d["samples"])
    if name == "control":
        return codec.control_resend_encode(d["kind"], d["first_seq"], d["last_seq"])
    if name == "control_notify":
        if d["op"] == codec.CTRL_OP_STATUS:
            return codec.control_status_encode(codec.DEVICE_STATE_NAMES.index(d["state"]), d["battery_pct"])
        return codec.control_report_encode(
            d["kind"], d["first_seq"], d["last_seq"], d["resent_first_seq"], d["resent_count"]
        )
    raise KeyError(name)


def call_with(name, args):
    kwargs = dict(args)
    buf = None
    if "table" in kwargs:
        kwargs["table"] = _TABLES[kwargs["table"]]
    if "buf_size" in kwargs:
        buf = bytearray(b"\xee" * kwargs.pop("buf_size"))
        kwargs["buf"] = buf
    return getattr(codec, name)(**kwargs), buf


# Each check returns None when the vector holds, else what went wrong.
def check_sfloat(vec):
    raw = int(vec["raw"], 16)
    special = vec.get("special")
    expected = vec["value"] if special is None else _SPECIAL_VALUE[special]
    got = to_json(codec.sfloat_decode(raw))
    if not same(got, expected):
        return f"decoded {got!r}, expected {expected!r}"
    if codec.sfloat_special(raw) != special:
        return f"sfloat_special {codec.sfloat_special(raw)!r}, expected {special!r}"
    if vec.get("canonical", True):
        again = codec.sfloat_encode(codec.sfloat_decode(raw))
        if again != raw:
            return f"re-encoded as {again:04x}"
    return None


def check_sfloat_encode(vec):
    raw = codec.sfloat_encode(sf(vec["value"]))
    if f"{raw:04x}" != vec["raw"]:
        return "encoded {:04x}, expected {}".format(raw, vec["raw"])
    return None


def check_frame(name, vec):
    data = unhex(vec["hex"])
    for buf in (data, bytearray(data), memoryview(data)):
        got = to_json(_DECODERS[name](buf))
        if not same(got, vec["decoded"]):
            return "decoded {!r} from {}, expected {!r}".format(got, type(buf).__name__, vec["decoded"])
    if vec.get("canonical", True):
        again = encode_decoded(name, vec["decoded"])
        if again != data:
            return f"re-encoded as {again.hex()}"
    return None


def check_encode(vec):
    result, buf = call_with(vec["call"], vec["args"])
    expected = unhex(vec["hex"])
    if buf is None:
        if result != expected:
            return f"encoded {result.hex()}, expected {expected.hex()}"
        return None
    if result != len(expected) or bytes(buf[:result]) != expected:
        return f"packed {result!r} bytes {bytes(buf).hex()}, expected {expected.hex()}"
    if bytes(buf[result:]) != b"\xee" * (len(buf) - result):
        return "wrote past the frame"
    return None


def check_wave_max_samples(vec):
    n = codec.wave_max_samples(vec["kind"], vec["att_mtu"])
    return None if n == vec["n"] else f"got {n}, expected {vec['n']}"


def check_status_bits(vec):
    table = _TABLES[vec["table"]]
    names = codec.bits_to_names(vec["value"], table)
    if names != vec["names"]:
        return "names {!r}, expected {!r}".format(names, vec["names"])
    if vec.get("canonical", True) and codec.names_to_bits(vec["names"], table) != vec["value"]:
        return "names_to_bits gave {!r}".format(codec.names_to_bits(vec["names"], table))
    return None


def check_invalid(vec):
    try:
        if "codec" in vec:
            _DECODERS[vec["codec"]](unhex(vec["hex"]))
        else:
            call_with(vec["call"], vec["args"])
    except ValueError:
        return None
    except Exception as e:  # noqa: BLE001 - anything but ValueError is the failure being looked for
        return f"raised {type(e).__name__}: {e}, expected ValueError"
    return "accepted, expected ValueError"


def _frame_check(name):
    return lambda vec: check_frame(name, vec)


CHECKS = {
    "sfloat": check_sfloat,
    "sfloat_encode": check_sfloat_encode,
    "encode": check_encode,
    "wave_max_samples": check_wave_max_samples,
    "status_bits": check_status_bits,
    "invalid": check_invalid,
}
for _name in _DECODERS:
    CHECKS[_name] = _frame_check(_name)


def main(path):
    with open(path) as f:
        vectors = json.load(f)
    passed = 0
    failed = 0
    for section in sorted(vectors):
        if section.startswith("_"):
            continue
        check = CHECKS.get(section)
        for vec in vectors[section]:
            try:
                problem = f"no check for section {section}" if check is None else check(vec)
            except Exception as e:  # noqa: BLE001 - report and count, keep checking the rest
                problem = f"raised {type(e).__name__}: {e}"
            if problem is None:
                passed += 1
            else:
                failed += 1
                print("FAIL {}: {}: {}".format(section, vec.get("name"), problem))
    impl = sys.implementation
    print("interpreter: {} {}".format(impl.name, ".".join(str(v) for v in impl.version[:3])))
    print(f"codec vectors: {passed} passed, {failed} failed")
    return failed


if __name__ == "__main__":
    sys.exit(1 if main(sys.argv[1] if len(sys.argv) > 1 else "/codec.json") else 0)
