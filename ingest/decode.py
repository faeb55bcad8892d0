"""Contract validation on the ingest's hot path: the same answers as `contract.decode_reading`,
several times faster for the messages that are valid.

`contract.decode_reading` parses JSON into Python objects and then converts them, which names
the exact reason for any bad message. Nearly every message is good, so this first decodes
straight into the stream's payload type (msgspec validates while parsing) and applies the same
post-checks; anything that fails, for whatever reason, goes through `contract.decode_reading`, so
the dead-letter reason is always the contract's own.

`decode_many`, what the pipeline calls for a batch, goes further for waveforms: their sample
arrays are left as JSON text by msgspec and read for the whole batch in one compiled pass
(`_kernels.json_ints_k`) straight into numpy, never as Python integers, which is what the
analysis and the storage packing want; an array that pass does not certainly read as the
contract's (bounds, length, strict JSON integers) sends its message the slow way too.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import cast

import msgspec
import numpy as np
import numpy.typing as npt

from nabz import contract
from nabz.contract import BatteryReading, EcgReading, HrReading, PpgReading, Reading, Rejected, Spo2Reading

__all__ = ["decode_reading", "decode_many"]

_DECODERS = {
    name: msgspec.json.Decoder(cls)
    for name, cls in (
        ("ecg", contract.EcgReading),
        ("ppg", contract.PpgReading),
        ("hr", contract.HrReading),
        ("spo2", contract.Spo2Reading),
        ("battery", contract.BatteryReading),
    )
}


# A device publishes on the same topic every time: its parsed form is remembered (bounded).
_where = lru_cache(maxsize=1 << 16)(contract.parse_reading_topic)


def decode_reading(topic: str, payload: bytes) -> Reading | Rejected:
    """`contract.decode_reading`, with a fast path for valid messages."""
    where = _where(topic) if len(payload) <= contract.MAX_PAYLOAD_BYTES else None
    # Non-ASCII goes the slow way: msgspec's typed decoder skips unknown keys without checking
    # their UTF-8, and would accept a payload the contract calls not JSON (found by nabz bench fuzz).
    if where is not None and payload.isascii():
        try:
            r = cast(Reading, _DECODERS[where.stream].decode(payload))
        except (msgspec.DecodeError, UnicodeDecodeError):  # bad UTF-8 inside a string is the latter
            pass
        else:
            if (
                r.t.tzinfo is not None
                and (not isinstance(r, PpgReading) or len(r.red_counts) == len(r.ir_counts))
                and (r.site, r.gateway, r.device) == (where.site, where.gateway, where.device)
            ):
                return r
    return contract.decode_reading(topic, payload)


# What `decode_many` decodes into: subclasses of the contract's types (isinstance, the stream tag
# and the other fields are the contract's) with two differences. Waveforms keep their sample
# arrays as JSON text, read by `json_ints_k`. And site, gateway and device are plain strings:
# a reading is taken only if they equal the topic's, which `contract.parse_reading_topic` has
# checked against the same pattern (msgspec's pattern checks cost ~0.3 µs each, a third of the
# decoding of a waveform's envelope).
class _EcgWire(EcgReading, frozen=True, kw_only=True, tag="ecg"):
    site: str
    gateway: str
    device: str
    signal_uv: msgspec.Raw  # type: ignore[assignment]


class _PpgWire(PpgReading, frozen=True, kw_only=True, tag="ppg"):
    site: str
    gateway: str
    device: str
    red_counts: msgspec.Raw  # type: ignore[assignment]
    ir_counts: msgspec.Raw  # type: ignore[assignment]


class _HrWire(HrReading, frozen=True, kw_only=True, tag="hr"):
    site: str
    gateway: str
    device: str


class _Spo2Wire(Spo2Reading, frozen=True, kw_only=True, tag="spo2"):
    site: str
    gateway: str
    device: str


class _BatteryWire(BatteryReading, frozen=True, kw_only=True, tag="battery"):
    site: str
    gateway: str
    device: str


_WIRE: dict[str, msgspec.json.Decoder[Reading]] = {
    "ecg": msgspec.json.Decoder(_EcgWire),
    "ppg": msgspec.json.Decoder(_PpgWire),
    "hr": msgspec.json.Decoder(_HrWire),
    "spo2": msgspec.json.Decoder(_Spo2Wire),
    "battery": msgspec.json.Decoder(_BatteryWire),
}


def _meta(annotated: object) -> msgspec.Meta:
    """The contract's constraints on a type (`Annotated[..., msgspec.Meta(...)]`)."""
    return cast(msgspec.Meta, annotated.__metadata__[0])  # type: ignore[attr-defined]


def _range(annotated: object) -> tuple[int, int]:
    meta = _meta(annotated)
    return int(cast(int, meta.ge)), int(cast(int, meta.le))


_RANGES = {"ecg": _range(contract.Microvolts), "ppg": _range(contract.Counts)}  # a sample's bounds
_MOST = min(_meta(contract.Samples).max_length or 0, _meta(contract.PpgSamples).max_length or 0)
_SAMPLE_FIELDS = {"ecg": ("signal_uv",), "ppg": ("red_counts", "ir_counts")}


def _as_arrays(r: Reading | Rejected) -> Reading | Rejected:
    """A waveform decoded the slow way, its sample lists made arrays as `decode_many` gives them."""
    if isinstance(r, EcgReading | PpgReading):
        for name in _SAMPLE_FIELDS[contract.stream_of(r)]:
            msgspec.structs.force_setattr(r, name, _frozen(np.asarray(getattr(r, name), dtype=np.int64)))
    return r


def _frozen(a: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    a.flags.writeable = False
    return a


def decode_many(messages: Sequence[tuple[str, bytes]]) -> list[Reading | Rejected]:
    """`decode_reading` of each (topic, payload), in order, with one difference: a waveform's
    samples (`signal_uv`, `red_counts`, `ir_counts`) are read-only int64 numpy arrays, not
    lists, holding the same values (and the readings' types are subclasses of the contract's).
    Never raises on bad input."""
    out: list[Reading | Rejected] = []
    wire: list[int] = []  # indices in `out` of waveforms whose arrays are still JSON text
    raws: list[msgspec.Raw] = []  # their arrays, in order (a PPG's red then ir)
    lo: list[int] = []
    hi: list[int] = []
    for topic, payload in messages:
        where = _where(topic) if len(payload) <= contract.MAX_PAYLOAD_BYTES else None
        if where is not None and payload.isascii():  # isascii: see decode_reading
            try:
                r = _WIRE[where.stream].decode(payload)
            except (msgspec.DecodeError, UnicodeDecodeError):
                pass
            else:
                if r.t.tzinfo is not None and (r.site, r.gateway, r.device) == (
                    where.site,
                    where.gateway,
                    where.device,
                ):
                    if where.stream in _SAMPLE_FIELDS:
                        wire.append(len(out))
                        least, most = _RANGES[where.stream]
                        for name in _SAMPLE_FIELDS[where.stream]:
                            raws.append(getattr(r, name))
                            lo.append(least)
                            hi.append(most)
                    out.append(r)
                    continue
        out.append(_as_arrays(contract.decode_reading(topic, payload)))
    if not raws:
        return out
    from ingest.dsp._kernels import json_ints_k  # here: `decode_reading` alone needs no compiler

    text = b"".join(raws)
    lengths = np.fromiter(map(len, raws), dtype=np.int64, count=len(raws))
    ends = np.cumsum(lengths)
    # room for what can be read: an integer and its comma take 2 bytes, and an array gives 4,096
    # at most (sized by the text alone, whitespace could ask for gigabytes)
    values = np.empty(int(np.minimum(lengths // 2 + 1, _MOST).sum()), dtype=np.int64)
    counts, ok = json_ints_k(
        np.frombuffer(text, dtype=np.uint8), ends - lengths, ends, np.array(lo, dtype=np.int64),
        np.array(hi, dtype=np.int64), _MOST, values,
    )  # fmt: skip
    values.flags.writeable = False  # the readings are frozen; their arrays are views of this
    bounds = np.concatenate(([0], np.cumsum(counts))).tolist()
    good, j = ok.tolist(), 0
    for i in wire:
        r = cast(_EcgWire | _PpgWire, out[i])
        names = _SAMPLE_FIELDS[contract.stream_of(r)]
        k, j = j, j + len(names)
        if all(good[k:j]) and (len(names) == 1 or counts[k] == counts[k + 1]):
            for m, name in enumerate(names, start=k):
                msgspec.structs.force_setattr(r, name, values[bounds[m] : bounds[m + 1]])
        else:  # not certainly valid: the contract's own decoding says what it is
            out[i] = _as_arrays(contract.decode_reading(*messages[i]))
    return out
