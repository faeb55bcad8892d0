"""The ingest's fast validation answers exactly as the contract's (docs/contract.md vectors and
damaged variants of them)."""

from __future__ import annotations

import json

from ingest.decode import decode_reading as fast
from nabz.contract import decode_reading as reference
from tests.contract_doc import vectors


def _variants(topic: str, body: str) -> list[tuple[str, bytes]]:
    raw = json.loads(body)
    out = [
        (topic, body.encode()),
        (topic, body.encode()[:-7]),
        (topic.replace("/gw/", "/xx/"), body.encode()),
    ]
    for key in list(raw):
        less = dict(raw)
        less.pop(key)
        out.append((topic, json.dumps(less).encode()))
        for bad in (None, "x", -1, 10**9, [1], {"a": 1}, 1.5):
            changed = dict(raw)
            changed[key] = bad
            out.append((topic, json.dumps(changed).encode()))
    naive = dict(raw, t=str(raw["t"]).replace("Z", ""))
    out.append((topic, json.dumps(naive).encode()))
    if "red_counts" in raw:
        out.append((topic, json.dumps(dict(raw, red_counts=raw["red_counts"][:1])).encode()))
    other = topic.rsplit("/", 2)
    out.append((f"{other[0]}/other-dev/{other[2]}", body.encode()))
    return out


def test_fast_validation_equals_the_contract_on_good_and_bad_messages() -> None:
    checked = 0
    for v in vectors("mqtt:reading") + vectors("mqtt:reject"):
        for topic, payload in _variants(v.attrs["topic"], v.body) if v.body.rstrip().endswith("}") else []:
            assert fast(topic, payload) == reference(topic, payload), (topic, payload[:200])
            checked += 1
    assert checked > 300
