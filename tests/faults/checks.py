"""What every fault test asserts: readings counted by message id at both ends (and point by point
in the time-series server), and alarms counted at the phone."""

from __future__ import annotations

from collections import Counter
from typing import Any

from nabz.faults import ReadingCount, Rig


def every_reading_once(count: ReadingCount, at_least: int) -> None:
    assert count.sent_readings >= at_least, count
    assert count.lost_messages == 0, f"{count.lost_messages} messages ({count.lost_readings} readings) lost"
    assert count.unexpected_messages == 0
    assert (count.stored_messages, count.stored_readings) == (count.sent_messages, count.sent_readings)
    if count.vm_expected:  # the time-series server, series by series, timestamp by timestamp
        assert count.vm_missing == {} and count.vm_doubled == 0, (count.vm_missing, count.vm_doubled)
        assert count.vm_shared == {}  # no two points of a series on one millisecond
        assert count.vm_stored == count.vm_expected


def generated_equals_stored(rig: Rig) -> None:
    """Nothing was lost between the wearables and the spools either: by device and stream."""
    assert rig.stored_by_stream() == rig.generated()


def alarms_once(report: dict[str, Any], expected: set[tuple[str, str]]) -> None:
    """Exactly the expected alarms were raised, and each was texted exactly once."""
    alarms = report["alarms"]
    raised = Counter((a["patient"], a["kind"]) for a in alarms)
    assert set(raised) == expected, alarms
    assert all(n == 1 for n in raised.values()), raised
    for a in alarms:
        assert a["sms"] == 1, a
        assert a["at_phone"] in (None, 1), a  # the phone got the text (ACK code) once too
