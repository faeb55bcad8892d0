"""`nabz bench soak` itself: a short soak through the real command line, faults injected in turn,
its JSON report as a user reads it. The faults are each tested at length in test_faults.py; this
proves the soak keeps counting right (and that its report would show a loss if there were one)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

from nabz.soak import _episodes, _notices


def test_a_one_minute_soak_loses_nothing_doubles_nothing_and_texts_each_alarm_once() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nabz.cli", "bench", "soak", "--minutes", "1", "--patients", "3", "--json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    r = json.loads(out.stdout)
    for key in (
        "readings_sent",
        "readings_stored",
        "duplicates",
        "lost",
        "alarms_expected",
        "alarms_notified",
    ):
        assert key in r
    assert r["faults"] == {"broker": 1, "ingest": 1, "victoria": 1}
    assert r["readings_sent"] > 100_000 and r["readings_stored"] == r["readings_sent"] and r["lost"] == 0
    assert r["duplicates_stored"] == 0 and r["vm_points_missing"] == 0 and r["vm_points_doubled"] == 0
    assert r["alarms_expected"] == 2 and r["alarms_notified"] == 2 and r["alarms_texted_twice"] == 0


def test_the_report_tells_a_first_notice_a_worse_one_and_a_duplicate_apart() -> None:
    alarms = [{"alarm_id": "a", "ack_code": "4821"}, {"alarm_id": "b", "ack_code": "1234"},
              {"alarm_id": "old", "ack_code": "4821"}, {"alarm_id": "c", "ack_code": "3800"}]  # fmt: skip
    sent = [
        {"status": "sent", "alarm_ids": ["a"], "text": "NABZ MEDIUM p-0002: HR 140/min (>130/min) for 7 s, since 02:02 PKT. ACK 4821"},
        {"status": "sent", "alarm_ids": ["a", "b"], "text": "NABZ HIGH p-0002: WORSE HR 151/min (>150/min) for 17 s, "
         "since 02:02 PKT. ACK 4821; MEDIUM SpO2 91% (<92%) for 60 s, since 02:03 PKT. ACK 1234"},
        {"status": "failed", "alarm_ids": ["b"], "text": "NABZ MEDIUM p-0002: SpO2 91% (<92%). ACK 1234"},
        {"status": "sent", "alarm_ids": ["b"], "text": "NABZ MEDIUM p-0002: SpO2 91% (<92%) for 60 s. ACK 1234"},
        {"status": "sent", "alarm_ids": ["c"], "text": "NABZ HIGH p-0003: HR 151/min (>150/min) for 17 s, since 02:32 "
         "PKT. ACK 3800; WORSE HIGH HR 151/min (>150/min) for 17 s, since 02:32 PKT. ACK 3800"},
    ]  # fmt: skip
    n = _notices(sent, alarms)
    assert n == {"a": Counter(first=1, worse=1), "b": Counter(first=2), "c": Counter(first=1, worse=1)}
    assert "old" not in n  # a code reused by a closed alarm is not counted against it
    assert _episodes(600.0, 60.0, 600.0) == [60.0] and _episodes(1866.0, 120.0, 900.0) == [120.0, 1020.0]
