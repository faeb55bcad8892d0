"""The fault tests' own arithmetic: what they expect VictoriaMetrics to hold, from the stored
messages, and which points would be lost there because they share a millisecond."""

from __future__ import annotations

import json

from nabz.faults import point_stamps


def _hr(mid: str, t: str) -> tuple[str, str, str, int, bytes]:
    msg = {"v": 1, "id": mid, "stream": "hr", "site": "demo", "gateway": "gw-0001", "device": "ecg-0001",
           "t": t, "rx": t, "hr_bpm": 72}  # fmt: skip
    return (mid, "ecg-0001", "hr", 1, json.dumps(msg).encode())


def test_points_a_microsecond_apart_are_one_point_in_the_store_and_are_counted_as_shared() -> None:
    rows = [
        _hr("a" * 32, "2026-11-25T09:00:01.000000Z"),
        _hr("b" * 32, "2026-11-25T09:00:01.000001Z"),  # the same millisecond: one point there
        _hr("c" * 32, "2026-11-25T09:00:01.001000Z"),
    ]
    expected, shared = point_stamps(rows, {"ecg-0001": "p-0001"})
    assert sum(expected.values()) == 2
    assert list(shared.values()) == [1] and next(iter(shared))[1] == "ecg-0001"
