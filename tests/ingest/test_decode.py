"""The ingest's fast validation answers exactly as the contract's (docs/contract.md vectors and
damaged variants of them)."""

from __future__ import annotations

import json

import numpy as np
from msgspec import Struct
from msgspec.structs import asdict

from ingest.decode import decode_many
from ingest.decode import decode_reading as fast
from nabz.contract import EcgReading, PpgReading, Rejected, stream_of
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


def _same(got: object, want: object) -> bool:
    """A reading from `decode_many` (samples as arrays) against the contract's (lists)."""
    if isinstance(want, Rejected) or isinstance(got, Rejected):
        return got == want
    assert isinstance(got, Struct) and isinstance(want, Struct)
    as_lists = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in asdict(got).items()}
    return stream_of(got) == stream_of(want) and as_lists == asdict(want)  # type: ignore[arg-type]


# Sample arrays as JSON text, each in place of a waveform's samples: what the compiled reader
# takes and what it must leave to the contract (valid JSON it does not read, and invalid).
_SAMPLE_TEXTS = [
    "[1,2,3]", "[ 1 , -2 ,\n3\t]", "[\r\n7]", "[-0]", "[0]", "[0,0]", "[]", "[ ]", "[01]", "[-01]",
    "[1.0]", "[1e2]", "[1E2]", "[2.5]", "[32767,-32768]", "[32768]", "[-32769]", "[16777215]",
    "[16777216]", "[-1]", "[1,]", "[,1]", "[1 2]", "[- 1]", "[-]", "[1234567890]", "[999999999]",
    "[99999999999999999999999]", '["1"]', "[true]", "[null]", "[[1]]", "[1,[2]]", "[1,2",
    "[" + ",".join(["5"] * 4096) + "]", "[" + ",".join(["5"] * 4097) + "]",
]  # fmt: skip


def _sample_variants() -> list[tuple[str, bytes]]:
    out = []
    for v in vectors("mqtt:reading"):
        raw = json.loads(v.body)
        fields = [k for k in ("signal_uv", "red_counts", "ir_counts") if k in raw]
        for field in fields:
            for text in _SAMPLE_TEXTS:
                body = json.dumps(dict(raw, **{field: "@"})).replace('"@"', text)
                out.append((v.attrs["topic"], body.encode()))
        if len(fields) == 2:  # both PPG arrays replaced: equal lengths or not
            for a, b in (("[1,2]", "[3,4]"), ("[1,2]", "[3]"), ("[5]", "[ 6 ]")):
                body = json.dumps(dict(raw, red_counts="@r", ir_counts="@i"))
                out.append((v.attrs["topic"], body.replace('"@r"', a).replace('"@i"', b).encode()))
    return out


def test_a_batch_decoded_at_once_answers_as_the_contract_does_for_each_message() -> None:
    """`decode_many` (the pipeline's path: waveform samples read into arrays by a compiled pass)
    against the contract one message at a time, on the vectors, damaged variants of them, and
    sample arrays the compiled reader must read or leave to the contract; all in one batch and
    one message at a time, so that a bad array cannot shift its neighbours' samples."""
    messages = [
        variant
        for v in vectors("mqtt:reading") + vectors("mqtt:reject")
        if v.body.rstrip().endswith("}")
        for variant in _variants(v.attrs["topic"], v.body)
    ] + _sample_variants()
    want = [reference(t, p) for t, p in messages]
    together = decode_many(messages)
    waveforms = [w for w in want if isinstance(w, EcgReading | PpgReading)]
    assert len(waveforms) > 30 and sum(isinstance(w, Rejected) for w in want) > 300
    for (topic, payload), got, expected in zip(messages, together, want, strict=True):
        assert _same(got, expected), (topic, payload[:300], got, expected)
        alone = decode_many([(topic, payload)])[0]
        assert _same(alone, expected), (topic, payload[:300])
    arrays = [
        getattr(r, name) for r in together if isinstance(r, EcgReading | PpgReading)
        for name in (("signal_uv",) if isinstance(r, EcgReading) else ("red_counts", "ir_counts"))
    ]  # fmt: skip
    assert all(isinstance(a, np.ndarray) and a.dtype == np.int64 and not a.flags.writeable for a in arrays)
