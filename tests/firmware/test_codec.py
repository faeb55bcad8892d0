"""The shared BLE codec under CPython: golden vectors, rejection of bad frames, fuzzing, round trips.

The vectors live in tests/vectors/codec.json (its "_comment" explains the format); the same file is
checked under the real MicroPython interpreter by test_codec_micropython.py.

Fuzz tests use Hypothesis with print_blob=True: a failure prints the falsifying example and an
``@reproduce_failure(...)`` line, and failures replay from the local .hypothesis/ database. Pin a
whole run with ``pytest --hypothesis-seed=N``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware import nabz_codec as codec

VECTORS_PATH = Path(__file__).resolve().parents[1] / "vectors" / "codec.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text())

DECODERS: dict[str, Callable[[Any], Any]] = {
    "hrm": codec.hrm_decode,
    "plx_continuous": codec.plx_continuous_decode,
    "plx_spot_check": codec.plx_spot_check_decode,
    "battery": codec.battery_decode,
    "wave": codec.wave_decode,
    "control": codec.control_decode,
    "control_notify": codec.control_notify_decode,
}
TABLES = {"meas": codec.MEAS_STATUS_BITS, "dev": codec.DEV_STATUS_BITS}
MARKERS = {"nan": math.nan, "+inf": math.inf, "-inf": -math.inf}
FUZZ = settings(
    max_examples=400, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
FUZZ_FRAMES = settings(FUZZ, max_examples=150)  # whole frames of up to 510 samples: fewer, bigger cases


# ---------------------------------------------------------------------------------------------
# Helpers: JSON <-> codec values, compared with their types (98.0 is not 98, False is not 0).
def unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def to_json(value: Any) -> Any:
    """A codec result in the vector file's notation: tuples as lists, non-finite floats as markers."""
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (math.inf, -math.inf):
            return "+inf" if value > 0 else "-inf"
        return value
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def sf(value: Any) -> Any:
    """An SFLOAT-valued field from the vector file: a marker string becomes its float."""
    return MARKERS[value] if isinstance(value, str) else value


def assert_same(actual: Any, expected: Any, where: str = "") -> None:
    assert type(actual) is type(expected), f"{where}: {actual!r} ({type(actual).__name__}) != {expected!r}"
    if isinstance(expected, dict):
        assert sorted(actual) == sorted(expected), f"{where}: keys {sorted(actual)} != {sorted(expected)}"
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{where}: {actual!r} != {expected!r}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{where}[{i}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def encode_decoded(name: str, d: Any) -> bytes:
    """Encode a decoded value (in vector notation) back to bytes with the matching encoder."""
    if name == "hrm":
        return codec.hrm_encode(d["hr_bpm"], d["contact"], d["energy_kj"], d["rr_1024"])
    if name == "plx_continuous":
        pair = lambda p: None if p is None else (sf(p[0]), sf(p[1]))  # noqa: E731
        return codec.plx_continuous_encode(
            sf(d["spo2_pct"]), sf(d["pr_bpm"]), d["meas_status"], d["dev_status"],
            sf(d["pai_pct"]), pair(d["fast"]), pair(d["slow"]),
        )  # fmt: skip
    if name == "plx_spot_check":
        ts = None if d["timestamp"] is None else tuple(d["timestamp"])
        return codec.plx_spot_check_encode(
            sf(d["spo2_pct"]), sf(d["pr_bpm"]), ts, d["meas_status"], d["dev_status"],
            sf(d["pai_pct"]), not d["clock_set"],
        )  # fmt: skip
    if name == "battery":
        return codec.battery_encode(d)
    if name == "wave":
        assert d["version"] == codec.WAVE_VERSION
        return codec.wave_encode(d["kind"], d["flags"], d["rate_hz"], d["seq"], d["t0_us"], d["samples"])
    if name == "control":
        assert d["op"] == codec.CTRL_OP_RESEND
        return codec.control_resend_encode(d["kind"], d["first_seq"], d["last_seq"])
    if name == "control_notify":
        if d["op"] == codec.CTRL_OP_STATUS:
            return codec.control_status_encode(codec.DEVICE_STATE_NAMES.index(d["state"]), d["battery_pct"])
        return codec.control_report_encode(
            d["kind"], d["first_seq"], d["last_seq"], d["resent_first_seq"], d["resent_count"]
        )
    raise AssertionError(name)


def call_with(name: str, args: dict[str, Any]) -> tuple[Any, bytearray | None]:
    """Call codec.<name>(**args), resolving the vector file's 'table' and 'buf_size' conventions."""
    kwargs = dict(args)
    buf = None
    if "table" in kwargs:
        kwargs["table"] = TABLES[kwargs["table"]]
    if "buf_size" in kwargs:
        buf = bytearray(b"\xee" * kwargs.pop("buf_size"))
        kwargs["buf"] = buf
    return getattr(codec, name)(**kwargs), buf


def section(name: str) -> list[Any]:
    return [pytest.param(v, id=v["name"]) for v in VECTORS[name]]


def frames() -> list[Any]:
    return [pytest.param(name, v, id=f"{name}: {v['name']}") for name in DECODERS for v in VECTORS[name]]


# ---------------------------------------------------------------------------------------------
# The vector file itself
def test_vector_file_has_every_section_and_no_duplicate_names() -> None:
    expected = {"sfloat", "sfloat_encode", "encode", "wave_max_samples", "status_bits", "invalid", *DECODERS}
    assert {k for k in VECTORS if not k.startswith("_")} == expected
    assert "_comment" in VECTORS
    for key in expected:
        names = [v["name"] for v in VECTORS[key]]
        assert len(names) == len(set(names)), f"duplicate vector names in {key}"


def test_every_public_codec_function_has_a_vector() -> None:
    public = {
        name
        for name, obj in vars(codec).items()
        if callable(obj) and not name.startswith("_") and not isinstance(obj, type) and name != "const"
    }
    covered = {"sfloat_decode", "sfloat_special", "sfloat_encode", "bits_to_names", "names_to_bits"}
    covered |= {"wave_max_samples", "wave_sample_size", "control_resend_encode"}
    covered |= {f.__name__ for f in DECODERS.values()}
    covered |= {v["call"] for v in VECTORS["encode"]} | {v["call"] for v in VECTORS["invalid"] if "call" in v}
    covered |= set(encode_decoded.__code__.co_names)  # the encoders that re-encode decoded vectors
    assert public - covered == set()


# ---------------------------------------------------------------------------------------------
# SFLOAT
@pytest.mark.parametrize("vec", section("sfloat"))
def test_sfloat_decode(vec: dict[str, Any]) -> None:
    raw = int(vec["raw"], 16)
    special = vec.get("special")
    expected = vec["value"] if special is None else {"nres": "nan", "reserved": "nan"}.get(special, special)
    assert_same(to_json(codec.sfloat_decode(raw)), expected, vec["name"])
    assert codec.sfloat_special(raw) == special
    # On the wire an SFLOAT is little-endian: the PLX decoder must read the same value.
    frame = b"\x00" + raw.to_bytes(2, "little") + b"\x48\x00"
    assert_same(to_json(codec.plx_continuous_decode(frame)["spo2_pct"]), expected, vec["name"])
    if vec.get("canonical", True):
        assert codec.sfloat_encode(codec.sfloat_decode(raw)) == raw


@pytest.mark.parametrize("vec", section("sfloat_encode"))
def test_sfloat_encode(vec: dict[str, Any]) -> None:
    assert f"{codec.sfloat_encode(sf(vec['value'])):04x}" == vec["raw"]


def test_sfloat_every_raw_value_decodes_and_canonical_ones_round_trip() -> None:
    """All 65536 codes: decoding never raises; a value the encoder can hold comes back unchanged."""
    specials = {0x07FF, 0x0800, 0x07FE, 0x0802, 0x0801}
    for raw in range(0x10000):
        value = codec.sfloat_decode(raw)
        assert isinstance(value, float)
        if raw in specials:
            assert codec.sfloat_special(raw) is not None
            continue
        assert codec.sfloat_special(raw) is None
        mantissa = (raw & 0x0FFF) - (0x1000 if raw & 0x0800 else 0)
        exponent = (raw >> 12) - (0x10 if raw & 0x8000 else 0)
        assert value == mantissa * 10.0**exponent or value == mantissa / 10 ** (-exponent)
        if exponent >= -3 and abs(mantissa) <= 2045:
            again = codec.sfloat_encode(value)
            assert codec.sfloat_decode(again) == value, f"0x{raw:04x} -> {value} -> 0x{again:04x}"


@FUZZ
@given(st.floats(min_value=-2.045e10, max_value=2.045e10, allow_nan=False))
def test_sfloat_encode_decode_round_trip(value: float) -> None:
    raw = codec.sfloat_encode(value)
    assert 0 <= raw <= 0xFFFF
    assert codec.sfloat_special(raw) is None
    back = codec.sfloat_decode(raw)
    # Up to 3 decimals, and at least 3 significant digits once the mantissa limit forces a coarser step.
    assert abs(back - value) <= max(0.0005, abs(value) / 409) * (1 + 1e-9) + 1e-12


@FUZZ
@given(st.floats(min_value=2.0456e10, allow_infinity=True, allow_nan=False), st.booleans())
def test_sfloat_encode_overflows_to_infinity(magnitude: float, negative: bool) -> None:
    value = -magnitude if negative else magnitude
    assert codec.sfloat_encode(value) == (codec.SFLOAT_NEG_INF if negative else codec.SFLOAT_POS_INF)


# ---------------------------------------------------------------------------------------------
# Frames: decode, and re-encode where the encoding is canonical
@pytest.mark.parametrize(("name", "vec"), frames())
def test_decode_vector(name: str, vec: dict[str, Any]) -> None:
    data = unhex(vec["hex"])
    decode = DECODERS[name]
    # bleak hands the gateway bytearrays, MicroPython hands the firmware memoryviews.
    for buf in (data, bytearray(data), memoryview(data)):
        assert_same(to_json(decode(buf)), vec["decoded"], f"{vec['name']} ({type(buf).__name__})")
    if vec.get("canonical", True):
        assert encode_decoded(name, vec["decoded"]).hex(" ") == data.hex(" ")
    else:
        # A non-canonical frame still decodes to a value whose canonical encoding decodes the same.
        assert_same(to_json(decode(encode_decoded(name, vec["decoded"]))), vec["decoded"], vec["name"])


@pytest.mark.parametrize("vec", section("encode"))
def test_encode_vector(vec: dict[str, Any]) -> None:
    result, buf = call_with(vec["call"], vec["args"])
    expected = unhex(vec["hex"])
    if buf is None:
        assert result.hex(" ") == expected.hex(" ")
    else:
        assert result == len(expected)
        assert bytes(buf[:result]).hex(" ") == expected.hex(" ")
        assert buf[result:] == b"\xee" * (len(buf) - result), "wrote past the frame"


@pytest.mark.parametrize("vec", section("wave_max_samples"))
def test_wave_max_samples(vec: dict[str, Any]) -> None:
    n = codec.wave_max_samples(vec["kind"], vec["att_mtu"])
    assert n == vec["n"]
    # The largest frame fits the notification payload (ATT MTU - 3).
    assert codec.WAVE_HEADER_SIZE + n * codec.wave_sample_size(vec["kind"]) <= vec["att_mtu"] - 3


@pytest.mark.parametrize("vec", section("status_bits"))
def test_status_bits(vec: dict[str, Any]) -> None:
    table = TABLES[vec["table"]]
    assert codec.bits_to_names(vec["value"], table) == vec["names"]
    if vec.get("canonical", True):
        assert codec.names_to_bits(vec["names"], table) == vec["value"]


@pytest.mark.parametrize("vec", section("invalid"))
def test_invalid_is_rejected_with_value_error(vec: dict[str, Any]) -> None:
    # pytest.raises(ValueError) lets any other exception through, which fails the test.
    with pytest.raises(ValueError) as info:
        if "codec" in vec:
            DECODERS[vec["codec"]](unhex(vec["hex"]))
        else:
            call_with(vec["call"], vec["args"])
    assert str(info.value), "the reason must say what is wrong"


# ---------------------------------------------------------------------------------------------
# Fuzzing: frames are untrusted, so no decoder may raise anything but ValueError
VALID_FRAMES = [unhex(v["hex"]) for name in DECODERS for v in VECTORS[name]]


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A real vector with a few bytes changed, cut short or extended: reaches the deep branches."""
    data = bytearray(draw(st.sampled_from(VALID_FRAMES)))
    for _ in range(draw(st.integers(0, 4))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut] if draw(st.booleans()) else data + draw(st.binary(max_size=8)))


def only_value_error(decode: Callable[[Any], Any], data: bytes) -> None:
    try:
        decode(data)
    except ValueError:
        pass


@FUZZ
@given(st.sampled_from(sorted(DECODERS)), st.one_of(st.binary(max_size=300), mutated_frames()))
def test_decoders_raise_only_value_error(name: str, data: bytes) -> None:
    only_value_error(DECODERS[name], data)


@FUZZ
@given(
    st.sampled_from([codec.WAVE_KIND_ECG, codec.WAVE_KIND_PPG]),
    st.integers(0, 0xFF),
    st.integers(0, 0xFF),
    st.integers(0, 0xFFFF),
    st.binary(max_size=600),
)
def test_wave_decode_with_plausible_header_raises_only_value_error(
    kind: int, flags: int, n: int, rate: int, body: bytes
) -> None:
    header = bytes([1, kind, flags, n]) + rate.to_bytes(2, "little") + bytes(12)
    only_value_error(codec.wave_decode, header + body)


# ---------------------------------------------------------------------------------------------
# Round trips
@st.composite
def wave_frames(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from([codec.WAVE_KIND_ECG, codec.WAVE_KIND_PPG]))
    n = draw(st.integers(1, 255))
    if kind == codec.WAVE_KIND_ECG:
        samples = draw(st.lists(st.integers(-32768, 32767), min_size=n, max_size=n))
    else:
        samples = draw(st.lists(st.integers(0, 0xFFFFFF), min_size=2 * n, max_size=2 * n))
    return {
        "version": 1,
        "kind": kind,
        "flags": draw(st.integers(0, 0x3F)),
        "n": n,
        "rate_hz": draw(st.integers(1, 0xFFFF)),
        "seq": draw(st.integers(0, 2**32 - 1)),
        "t0_us": draw(st.integers(0, 2**64 - 1)),
        "samples": samples,
    }


@FUZZ_FRAMES
@given(wave_frames())
def test_wave_encode_decode_round_trip(frame: dict[str, Any]) -> None:
    data = codec.wave_encode(
        frame["kind"], frame["flags"], frame["rate_hz"], frame["seq"], frame["t0_us"], frame["samples"]
    )
    assert len(data) == codec.WAVE_HEADER_SIZE + frame["n"] * codec.wave_sample_size(frame["kind"])
    assert codec.wave_decode(data) == frame


@FUZZ_FRAMES
@given(wave_frames(), st.integers(0, 50), st.integers(0, 50))
def test_wave_pack_into_a_ring_buffer_equals_wave_encode(
    frame: dict[str, Any], before: int, spare: int
) -> None:
    per = 1 if frame["kind"] == codec.WAVE_KIND_ECG else 2
    ring = [0] * (before * per) + frame["samples"] + [0] * (spare * per)
    expected = codec.wave_encode(
        frame["kind"], frame["flags"], frame["rate_hz"], frame["seq"], frame["t0_us"], frame["samples"]
    )
    buf = bytearray(len(expected) + spare)
    size = codec.wave_pack_into(
        buf,
        frame["kind"],
        frame["flags"],
        frame["rate_hz"],
        frame["seq"],
        frame["t0_us"],
        ring,
        before,
        frame["n"],
    )
    assert size == len(expected)
    assert bytes(buf[:size]) == expected


@FUZZ
@given(
    st.integers(0, 0xFFFF),
    st.sampled_from([None, False, True]),
    st.one_of(st.none(), st.integers(0, 0xFFFF)),
    st.lists(st.integers(0, 0xFFFF), max_size=9),
)
def test_hrm_encode_decode_round_trip(
    hr: int, contact: bool | None, energy: int | None, rr: list[int]
) -> None:
    decoded = codec.hrm_decode(codec.hrm_encode(hr, contact, energy, rr))
    assert decoded == {"hr_bpm": hr, "contact": contact, "energy_kj": energy, "rr_1024": rr}
