"""Notifiers: where alarm texts go. The outbox notifier writes SMS texts to a file and the console.

Each notifier returns a `Delivery` saying whether the message went out and, if not, whether it is
worth retrying (a full outbox disk is; an invalid number is not).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

from alerts.lifecycle import Alarm

__all__ = ["Notifier", "Delivery", "OutboxNotifier", "sms_text"]

log = logging.getLogger(__name__)

SMS_MAX_GSM7 = 160


@dataclass(frozen=True, slots=True)
class Delivery:
    ok: bool
    retryable: bool = False
    detail: str = ""


class Notifier(Protocol):
    def send(self, to: str, text: str, alarm_id: str, at: float) -> Delivery: ...


def sms_text(alarm: Alarm, tz: str = "Asia/Karachi") -> str:
    """One SMS (<= 160 GSM-7 characters): priority, patient, what, since when (local time)."""
    since = datetime.fromtimestamp(alarm.condition_started_at, UTC).astimezone(ZoneInfo(tz))
    head = "CLEARED" if alarm.state == "cleared" else alarm.priority.upper()
    text = f"NABZ {head} {alarm.patient}: {alarm.message}. Since {since:%H:%M} {since.tzname()}."
    if alarm.state == "active":
        text += f" Reply ACK {alarm.alarm_id[:6]}"
    return text[:SMS_MAX_GSM7]


class OutboxNotifier:
    """Appends one JSON line per SMS to a file and logs it (the demo's stand-in for a modem)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def send(self, to: str, text: str, alarm_id: str, at: float) -> Delivery:
        record = {
            "to": to,
            "text": text,
            "alarm_id": alarm_id,
            "sent_at": datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z"),
        }
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            return Delivery(False, retryable=True, detail=str(exc))
        log.warning("SMS to %s: %s", to, text)
        return Delivery(True)
