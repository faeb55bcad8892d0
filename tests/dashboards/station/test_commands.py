"""Acknowledging from the nurse page on the real system (mosquitto, ingest, alerts, the station;
no browser): what the nurse is told is what happened. An alarm that worsened after she saw it is
not acknowledged, and an acknowledgement she was told did not go through is never applied later."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dashboards.station.client import Agent
from tests.dashboards.station.stack import PASSWORDS, Stack, start_stack


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = start_stack(tmp_path)
    yield s
    s.stop()


def _desaturate(stack: Stack, spo2: float, seconds: int = 4) -> None:
    now = time.time()
    for k in range(seconds):  # below 88 % for longer than the (test's) 1-2 s delay
        stack.reading("gw-0001", "oxi-0001", "spo2", now - seconds + 1 + k, spo2_pct=spo2, pr_bpm=96.0)


def _open_alarm(stack: Stack, priority: str | None = None, timeout_s: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        tile = next(
            (t for t in stack.station.app.station.hub.ward.tiles(time.time()) if t["patient"] == "p-0001"),
            None,
        )
        alarms = [a for a in (tile or {}).get("alarms", []) if a["kind"] == "spo2_low"]
        if alarms and (priority is None or alarms[0]["priority"] == priority):
            return alarms[0]
        time.sleep(0.05)
    raise AssertionError(f"no spo2_low alarm{' at ' + priority if priority else ''} on the ward")


def _stored(stack: Stack, alarm_id: str) -> dict[str, Any]:
    return next(a for a in stack.alerts.store.alarms() if a["alarm_id"] == alarm_id)


def test_an_alarm_that_worsened_after_the_nurse_saw_it_is_not_acknowledged(stack: Stack) -> None:
    _desaturate(stack, 90.0, seconds=70)  # medium: under 92 % for a minute
    seen = _open_alarm(stack)
    _desaturate(stack, 80.0)  # worse while the nurse looks at the tile
    worse = _open_alarm(stack, "high")
    assert seen["priority"] != "high" and worse["alarm_id"] == seen["alarm_id"]

    nurse = Agent(stack.url)
    nurse.login("sana", PASSWORDS["sana"])
    status, body = nurse.post_json(f"/api/alarms/{seen['alarm_id']}/ack", {"priority": seen["priority"]})
    assert status == 409 and "HIGH" in body["error"] and "not acknowledged" in body["error"]
    assert _stored(stack, seen["alarm_id"])["state"] == "active"
    # seen as it is now, it is acknowledged, and the answer says so only once it is
    status, body = nurse.post_json(f"/api/alarms/{seen['alarm_id']}/ack", {"priority": "high"})
    assert status == 200 and body["state"] == "acknowledged" and body["alarm"]["acknowledged_by"] == "sana"
    assert _stored(stack, seen["alarm_id"])["state"] == "acknowledged"


def test_an_acknowledgement_the_nurse_was_told_failed_is_never_applied_later(stack: Stack) -> None:
    """The broker stalls (overload, a network stall) with the connection up: no receipt within 5 s,
    the nurse is told to acknowledge by SMS. paho sends the command again once the broker is back;
    the alerts service must refuse it, or the alarm would be acknowledged behind her back."""
    _desaturate(stack, 80.0)
    alarm = _open_alarm(stack, "high")
    nurse = Agent(stack.url)
    nurse.login("sana", PASSWORDS["sana"])
    proc = stack.mosquitto.proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        status, body = nurse.post_json(f"/api/alarms/{alarm['alarm_id']}/ack", {"priority": "high"})
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert status == 503 and "SMS" in body["error"] and "not acknowledged" in body["error"]
    deadline = time.monotonic() + 15
    refused: list[dict[str, Any]] = []
    while not refused and time.monotonic() < deadline:  # the command arrives late, and is refused
        refused = [a for a in stack.alerts.store.audit() if a["what"] == "ack" and a["state"] == "refused"]
        time.sleep(0.1)
    assert refused and "too late" in refused[0]["detail"]
    assert _stored(stack, alarm["alarm_id"])["state"] == "active"
