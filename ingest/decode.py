"""Contract validation on the ingest's hot path: the same answers as `contract.decode_reading`,
three times faster for the messages that are valid.

`contract.decode_reading` parses JSON into Python objects and then converts them, which names
the exact reason for any bad message. Nearly every message is good, so this first decodes
straight into the stream's payload type (msgspec validates while parsing) and applies the same
post-checks; anything that fails, for whatever reason, goes through `contract.decode_reading`, so
the dead-letter reason is always the contract's own.
"""

from __future__ import annotations

from functools import lru_cache
from typing import cast

import msgspec

from nabz import contract
from nabz.contract import PpgReading, Reading, Rejected

__all__ = ["decode_reading"]

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
