"""The alarm lifecycle: one open alarm per patient and kind, moved only through this table.

Rules of this file:
- TRANSITIONS is the whole state machine; `apply` refuses anything not in it.
- An alarm is open until it is cleared; acknowledging one alarm never touches another.
- `cleared` is final: a new occurrence of the same condition is a new alarm with a new id.
- `worsen` raises an open alarm's priority (a desaturation that deepens from medium to high). A
  worsening of an acknowledged alarm makes it unacknowledged again: the doctor acknowledged a
  lesser condition than the one now present (IEC 60601-1-8 lets priority escalate).

    active --ack--> acknowledged --clear--> cleared
    active --clear--> cleared                       (ended before anyone acknowledged it)
    active --worsen--> active
    acknowledged --worsen--> active                 (needs acknowledging again)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal

from nabz.contract import AlarmEvent

__all__ = ["Alarm", "TRANSITIONS", "LifecycleError", "Priority", "PRIORITY_RANK", "apply", "to_event"]

State = Literal["active", "acknowledged", "cleared"]
Event = Literal["ack", "clear", "worsen"]
Priority = Literal["high", "medium", "low"]
PRIORITY_RANK: dict[str, int] = {"low": 0, "medium": 1, "high": 2}

TRANSITIONS: dict[tuple[State, Event], State] = {
    ("active", "ack"): "acknowledged",
    ("active", "clear"): "cleared",
    ("acknowledged", "clear"): "cleared",
    ("active", "worsen"): "active",
    ("acknowledged", "worsen"): "active",
}


class LifecycleError(Exception):
    """A transition that the lifecycle does not allow (e.g. acknowledging a cleared alarm)."""


@dataclass(frozen=True, slots=True)
class Alarm:
    alarm_id: str
    site: str
    patient: str
    kind: str
    priority: Priority
    state: State
    message: str
    value: float | None
    threshold: float | None
    unit: str | None
    condition_started_at: float
    raised_at: float
    notified_at: float | None = None
    acknowledged_at: float | None = None
    acknowledged_by: str | None = None
    cleared_at: float | None = None
    ack_code: str = ""  # what a doctor texts back ("ACK 4821"); unique among open alarms
    technical: bool = False  # about the equipment or data, not the patient's physiology


def apply(
    alarm: Alarm,
    event: Event,
    at: float,
    by: str | None = None,
    *,
    priority: Priority | None = None,
    message: str | None = None,
    value: float | None = None,
) -> Alarm:
    """The alarm after `event` at time `at`; raises LifecycleError if the table has no such move."""
    target = TRANSITIONS.get((alarm.state, event))
    if target is None:
        raise LifecycleError(f"alarm {alarm.alarm_id} is {alarm.state}; cannot {event} it")
    if event == "ack":
        return replace(alarm, state=target, acknowledged_at=at, acknowledged_by=by)
    if event == "worsen":
        if priority is None or PRIORITY_RANK[priority] <= PRIORITY_RANK[alarm.priority]:
            raise LifecycleError(
                f"alarm {alarm.alarm_id}: worsen needs a higher priority than {alarm.priority}"
            )
        return replace(
            alarm,
            state=target,
            priority=priority,
            message=message or alarm.message,
            value=alarm.value if value is None else value,
            acknowledged_at=None,
            acknowledged_by=None,
        )
    return replace(alarm, state=target, cleared_at=at)


def _dt(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, UTC)


def to_event(alarm: Alarm, event_id: str) -> AlarmEvent:
    """The contract event (docs/contract.md section 4) for the alarm's current state."""
    return AlarmEvent(
        id=event_id,
        alarm_id=alarm.alarm_id,
        site=alarm.site,
        patient=alarm.patient,
        kind=alarm.kind,
        priority=alarm.priority,
        state=alarm.state,
        message=alarm.message,
        value=alarm.value,
        threshold=alarm.threshold,
        unit=alarm.unit,
        condition_started_at=datetime.fromtimestamp(alarm.condition_started_at, UTC),
        raised_at=datetime.fromtimestamp(alarm.raised_at, UTC),
        notified_at=_dt(alarm.notified_at),
        acknowledged_at=_dt(alarm.acknowledged_at),
        acknowledged_by=alarm.acknowledged_by,
        cleared_at=_dt(alarm.cleared_at),
    )
