"""The alert engine: rules -> lifecycle -> notifications, for all patients of a site. Pure but for
the notifier and the store it is given; time comes in as arguments.

Rules of this file:
- One open alarm per patient and kind (`self.open`); a rule raising again while it is open
  updates nothing and notifies nobody.
- Every transition becomes an AlarmEvent (returned, for publishing) and a row in the audit log.
- A notification is sent when an alarm is raised; `notified_at` records the first success.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from alerts.lifecycle import Alarm, apply, to_event
from alerts.notify import Notifier, sms_text
from alerts.rules import Condition, StaleRule, ThresholdRule, default_rules
from alerts.store import AlertStore
from nabz import contract
from nabz.config import AlertsConfig
from nabz.contract import AlarmEvent, Vitals

__all__ = ["AlertEngine"]

log = logging.getLogger(__name__)


class AlertEngine:
    def __init__(
        self,
        cfg: AlertsConfig,
        site: str,
        notifier: Notifier,
        store: AlertStore,
        *,
        new_id: Callable[[], str] = contract.new_id,
    ) -> None:
        self.cfg = cfg
        self.site = site
        self.notifier = notifier
        self.store = store
        self.new_id = new_id
        self.rules: list[ThresholdRule] = default_rules(cfg)
        self.stale = StaleRule(cfg.stale_after_s)
        self.open: dict[tuple[str, str], Alarm] = {(a.patient, a.kind): a for a in store.open_alarms()}
        self.latest: dict[str, dict[str, object]] = {}  # patient -> latest values, for the console

    def observe(self, v: Vitals, now: float) -> list[AlarmEvent]:
        """Feed one derived-vitals message (received at `now`)."""
        self._remember(v)
        conditions: list[Condition] = []
        back = self.stale.seen(v.patient, now)
        if back is not None:
            conditions.append(back)
        for rule in self.rules:
            c = rule.observe(v)
            if c is not None and (c.active or not rule.any_raised(v.patient)):
                conditions.append(c)
        return self._apply(conditions, now)

    def tick(self, now: float) -> list[AlarmEvent]:
        """Time-driven rules (stale data)."""
        return self._apply(self.stale.tick(now), now)

    def acknowledge(self, alarm_id: str, by: str, now: float) -> AlarmEvent:
        for key, alarm in self.open.items():
            if alarm.alarm_id == alarm_id:
                acked = apply(alarm, "ack", now, by)
                self.open[key] = acked
                return self._record(acked, now)
        raise KeyError(f"no open alarm {alarm_id}")

    # --- internals -----------------------------------------------------------------------------
    def _apply(self, conditions: list[Condition], now: float) -> list[AlarmEvent]:
        events: list[AlarmEvent] = []
        for c in conditions:
            key = (c.patient, c.kind)
            current = self.open.get(key)
            if c.active:
                if current is not None:
                    continue
                alarm = Alarm(
                    alarm_id=self.new_id(), site=self.site, patient=c.patient, kind=c.kind, priority=c.priority,
                    state="active", message=c.message, value=c.value, threshold=c.threshold, unit=c.unit,
                    condition_started_at=c.started_at, raised_at=c.at,
                )  # fmt: skip
                alarm = self._notify(alarm, now)
                self.open[key] = alarm
                events.append(self._record(alarm, now))
            elif current is not None:
                cleared = apply(current, "clear", c.at)
                del self.open[key]
                events.append(self._record(cleared, now))
        return events

    def _notify(self, alarm: Alarm, now: float) -> Alarm:
        text = sms_text(alarm, self.cfg.timezone)
        for to in self.cfg.on_call:
            result = self.notifier.send(to, text, alarm.alarm_id, now)
            self.store.notification(alarm.alarm_id, to, text, now, result.ok, result.detail)
            if result.ok and alarm.notified_at is None:
                alarm = replace(alarm, notified_at=now)
            elif not result.ok:
                log.error("could not notify %s of alarm %s: %s", to, alarm.alarm_id, result.detail)
        return alarm

    def _record(self, alarm: Alarm, now: float) -> AlarmEvent:
        event = to_event(alarm, self.new_id())
        self.store.record(alarm, event, now)
        return event

    def _remember(self, v: Vitals) -> None:
        row = self.latest.setdefault(v.patient, {})
        for name in ("hr_bpm", "pr_bpm", "spo2_pct", "sqi", "battery_pct"):
            x = getattr(v, name)
            if x is not None:
                row[f"{v.source}.{name}"] = x
        row["t"] = v.t
        row["flags"] = v.flags
