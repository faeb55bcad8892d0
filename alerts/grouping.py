"""Which queued notifications go out now, and together. Pure; time is a parameter.

Rules of this file:
- Notifications wait in the store's queue, one per (recipient, alarm, reason). Those for one
  recipient and one patient that are due together become one SMS.
- The first SMS about a patient to a recipient goes at once; what follows within
  `group_interval_s` of it waits for the end of that interval and goes as one SMS — unless it is
  high priority, which never waits.
- A recipient gets at most `max_sms_per_hour` SMS in any hour; high priority always goes
  through. Held notifications are not dropped: they go, merged, when the hour allows.
- Acknowledgement confirmations and test messages are not alarms: they go at once, alone.
- An SMS that names an alarm takes along every other notice of that alarm to that recipient still
  waiting (a retry after a failure waits longer than a newer notice): one alarm is never texted
  twice because its notices fell due apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nabz.config import AlertsConfig

__all__ = ["Queued", "Batch", "plan"]


@dataclass(frozen=True, slots=True)
class Queued:
    seq: int
    phone: str
    person: str
    language: str
    patient: str
    alarm_id: str
    priority: str
    reason: str  # new, worse, escalation, repeat, cleared, ack_reply, test
    created_at: float
    not_before: float = 0.0  # a retry after a failure waits until then
    text: str = ""  # the whole text, for replies and tests (alarm texts are composed when sent)


@dataclass(frozen=True, slots=True)
class Batch:
    phone: str
    person: str
    language: str
    patient: str
    items: tuple[Queued, ...]


def plan(
    queue: Sequence[Queued],
    sent_at: dict[str, list[float]],  # phone -> times of SMS sent in the last hour
    last_about: dict[tuple[str, str], float],  # (phone, patient) -> last SMS about that patient
    now: float,
    cfg: AlertsConfig,
) -> list[Batch]:
    groups: dict[tuple[str, str], list[Queued]] = {}
    later: dict[tuple[str, str], list[Queued]] = {}  # (phone, alarm) -> notices not due yet
    out: list[Batch] = []
    for q in queue:
        if q.not_before > now:
            if q.reason not in ("ack_reply", "test"):
                later.setdefault((q.phone, q.alarm_id), []).append(q)
            continue
        if q.reason in ("ack_reply", "test"):
            out.append(Batch(q.phone, q.person, q.language, q.patient, (q,)))
            continue
        groups.setdefault((q.phone, q.patient), []).append(q)
    used = {phone: len([t for t in times if t > now - 3600.0]) for phone, times in sent_at.items()}
    for (phone, patient), items in sorted(groups.items(), key=lambda kv: min(q.created_at for q in kv[1])):
        urgent = any(q.priority == "high" and q.reason != "cleared" for q in items)
        last = last_about.get((phone, patient))
        if not urgent and last is not None and now < last + cfg.group_interval_s:
            continue
        if not urgent and used.get(phone, 0) >= cfg.max_sms_per_hour:
            continue
        used[phone] = used.get(phone, 0) + 1
        first = items[0]
        along = [
            x for alarm in dict.fromkeys(q.alarm_id for q in items) for x in later.pop((phone, alarm), [])
        ]
        out.append(Batch(phone, first.person, first.language, patient, tuple(items + along)))
    return out
