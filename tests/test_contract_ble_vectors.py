"""The BLE examples in docs/contract.md decode as the document says, and all are golden vectors.

Every ```json block introduced by ``<!-- vector ble:<codec> ... -->`` is decoded with
firmware/nabz_codec.py and compared with its "decoded" field (the document writes the codec's nan as
null). Each must also appear in tests/vectors/codec.json, which runs under MicroPython too.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from firmware import nabz_codec as codec

REPO = Path(__file__).resolve().parents[1]
CONTRACT = REPO / "docs" / "contract.md"
VECTORS: dict[str, Any] = json.loads((REPO / "tests" / "vectors" / "codec.json").read_text())

DECODERS: dict[str, Callable[[Any], Any]] = {
    "hrm": codec.hrm_decode,
    "plx_continuous": codec.plx_continuous_decode,
    "plx_spot_check": codec.plx_spot_check_decode,
    "battery": codec.battery_decode,
    "wave": codec.wave_decode,
    "control": codec.control_decode,
}
BLOCK = re.compile(
    r"<!--\s*vector\s+ble:(?P<codec>\w+)(?P<attrs>[^>]*?)-->\s*```json\n(?P<body>.*?)```", re.DOTALL
)


def ble_blocks() -> list[Any]:
    text = CONTRACT.read_text()
    params = []
    for m in BLOCK.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        body = json.loads(m.group("body"))
        params.append(
            pytest.param(
                m.group("codec"), body, id=f"{m.group('codec')}{m.group('attrs').rstrip()} line {line}"
            )
        )
    return params


BLOCKS = ble_blocks()


def doc_form(value: Any) -> Any:
    """A value in the document's notation: nan (codec or vector file marker) is null, tuples are lists."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if value == "nan":
        return None
    if isinstance(value, (list, tuple)):
        return [doc_form(v) for v in value]
    if isinstance(value, dict):
        return {k: doc_form(v) for k, v in value.items()}
    return value


def assert_same(actual: Any, expected: Any, where: str) -> None:
    assert type(actual) is type(expected), f"{where}: {actual!r} is not {expected!r}"
    if isinstance(expected, dict):
        assert sorted(actual) == sorted(expected), f"{where}: fields {sorted(actual)} != {sorted(expected)}"
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{where}: {actual!r} != {expected!r}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{where}[{i}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def hexbytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def test_the_contract_has_its_ble_examples() -> None:
    """Guards against a parser that silently finds nothing."""
    codecs = [p.values[0] for p in BLOCKS]
    assert set(codecs) >= {"hrm", "sfloat", "plx_continuous", "battery", "wave", "control"}
    assert len(codecs) >= 9
    assert set(codecs) <= set(DECODERS) | {"sfloat"}, "a ble: vector names a codec this test does not know"
    # Every "vector ble:" comment was parsed (none lost to a malformed fence).
    assert CONTRACT.read_text().count("<!-- vector ble:") == len(BLOCKS)


@pytest.mark.parametrize(("name", "body"), BLOCKS)
def test_contract_ble_example_decodes_as_documented(name: str, body: Any) -> None:
    if name == "sfloat":
        for item in body:
            raw = int(item["raw"], 16)
            assert codec.sfloat_special(raw) == item.get("special"), item
            if "special" in item:
                value = codec.sfloat_decode(raw)
                expected = {"+inf": math.inf, "-inf": -math.inf}.get(item["special"])
                assert math.isnan(value) if expected is None else value == expected, item
            else:
                assert_same(codec.sfloat_decode(raw), item["value"], item["raw"])
        return
    decoded = DECODERS[name](hexbytes(body["hex"]))
    assert_same(doc_form(decoded), body["decoded"], name)


@pytest.mark.parametrize(("name", "body"), BLOCKS)
def test_contract_ble_example_is_a_golden_vector(name: str, body: Any) -> None:
    if name == "sfloat":
        for item in body:
            matches = [v for v in VECTORS["sfloat"] if v["raw"] == item["raw"]]
            assert matches, f"SFLOAT {item['raw']} is not in tests/vectors/codec.json"
            assert {k: matches[0].get(k) for k in item} == item
        return
    data = hexbytes(body["hex"])
    matches = [v for v in VECTORS[name] if hexbytes(v["hex"]) == data]
    assert matches, f"{name} {body['hex']} is not in tests/vectors/codec.json"
    assert_same(doc_form(matches[0]["decoded"]), body["decoded"], f"codec.json {matches[0]['name']}")
