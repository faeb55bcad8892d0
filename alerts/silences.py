"""Silences and snoozes: notifications held back for a patient and kind until an expiry. Pure.

Rules of this file:
- A silence matches a patient (or "*", every patient) and a kind (or "*"). It holds back
  notifications only: the alarm is still raised, recorded, published and shown.
- Nothing is silenced for longer than `silence_max_s`; a high-priority alarm is silenced for at
  most `silence_max_high_s` from the silence's start, whatever the silence says. When a silence
  ends with the alarm still unacknowledged, its escalation resumes where it stood.
- A snooze is a silence of one alarm's patient and kind, made from its acknowledgement code.
"""

from __future__ import annotations

from dataclasses import dataclass

from alerts.lifecycle import Alarm
from nabz.config import AlertsConfig

__all__ = ["Silence", "make_silence", "silenced", "parse_duration"]


@dataclass(frozen=True, slots=True)
class Silence:
    silence_id: str
    patient: str  # or "*"
    kind: str  # or "*"
    starts_at: float
    ends_at: float
    created_by: str
    reason: str = ""

    def covers(self, alarm: Alarm, now: float, max_high_s: float) -> bool:
        if self.patient not in ("*", alarm.patient) or self.kind not in ("*", alarm.kind):
            return False
        if not self.starts_at <= now < self.ends_at:
            return False
        return alarm.priority != "high" or now < self.starts_at + max_high_s


def make_silence(
    cfg: AlertsConfig, silence_id: str, patient: str, kind: str, now: float, duration_s: float, by: str,
    reason: str = "",
) -> Silence:  # fmt: skip
    """A silence from now, its length capped at the configured maximum."""
    if duration_s <= 0:
        raise ValueError("a silence needs a positive duration")
    return Silence(silence_id, patient, kind, now, now + min(duration_s, cfg.silence_max_s), by, reason)


def silenced(alarm: Alarm, silences: list[Silence], now: float, cfg: AlertsConfig) -> bool:
    return any(s.covers(alarm, now, cfg.silence_max_high_s) for s in silences)


_UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """'90s', '15m', '2h', '1d' or plain seconds -> seconds."""
    t = text.strip().lower()
    for unit in sorted(_UNITS, key=len, reverse=True):
        number = t[: -len(unit)].replace(".", "", 1)
        if t.endswith(unit) and number.isascii() and number.isdigit():
            return float(t[: -len(unit)]) * _UNITS[unit]
    try:
        return float(t)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (e.g. 90s, 15m, 2h)") from None
