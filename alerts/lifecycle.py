"""The alarm lifecycle: one open alarm per patient and kind, moved only through this table.

Rules of this file:
- TRANSITIONS is the whole state machine; `apply` refuses anything not in it.
- An alarm is open until it is cleared; acknowledging one alarm never touches another.
- `cleared` is final: a new occurrence of the same condition is a new alarm with a new id.

    active --ack--> acknowledged --clear--> cleared
    active --clear--> cleared            (the condition ended before anyone acknowledged it)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal

from nabz.contract import AlarmEvent

__all__ = ["Alarm", "TRANSITIONS", "LifecycleError", "apply", "to_event"]

State = Literal["active", "acknowledged", "cleared"]
Event = Literal["ack", "clear"]

TRANSITIONS: dict[tuple[State, Event], State] = {
    ("active", "ack"): "acknowledged",
    ("active", "clear"): "cleared",
    ("acknowledged", "clear"): "cleared",
}


class LifecycleError(Exception):
    """A transition that the lifecycle does not allow (e.g. acknowledging a cleared alarm)."""


@dataclass(frozen=True, slots=True)
class Alarm:
    alarm_id: str
    site: str
    patient: str
    kind: str
    priority: Literal["high", "medium", "low"]
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


def apply(alarm: Alarm, event: Event, at: float, by: str | None = None) -> Alarm:
    """The alarm after `event` at time `at`; raises LifecycleError if the table has no such move."""
    target = TRANSITIONS.get((alarm.state, event))
    if target is None:
        raise LifecycleError(f"alarm {alarm.alarm_id} is {alarm.state}; cannot {event} it")
    if event == "ack":
        return replace(alarm, state=target, acknowledged_at=at, acknowledged_by=by)
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
