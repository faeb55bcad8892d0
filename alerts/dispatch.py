"""The dispatcher: queued notifications -> grouped SMS texts -> notifiers, with retry and fallback.

Rules of this file:
- It owns the notifiers (a modem is one serial port: one user); the engine only queues.
- Grouping and the per-recipient cap are decided by `alerts.grouping.plan`; texts by
  `alerts.smstext`. Each SMS is recorded before it is handed to a notifier (see alerts.store).
- Notifiers are tried in the configured order: a failure on one (e.g. the modem has no network)
  moves on to the next at once; when every notifier failed and one said the failure may pass,
  the notifications are queued again after a backoff (`retry_min_s` doubling to `retry_max_s`);
  when none may pass, they are given up and the audit log says so.
- Incoming SMS and delivery reports from notifiers that can receive are stored as commands and
  delivery records; the engine applies the commands.
"""

from __future__ import annotations

import logging

from alerts.grouping import Batch, Queued, plan
from alerts.notify import Delivery, DeliveryReport, Incoming, Notifier, Pollable
from alerts.profile import Profiles
from alerts.smstext import Line, compose, split
from alerts.store import AlertStore
from nabz.config import Config

__all__ = ["Dispatcher", "build_notifiers"]

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(self, config: Config, store: AlertStore, notifiers: list[Notifier]) -> None:
        if not notifiers:
            raise ValueError("no notifier configured")
        self.cfg = config.alerts
        self.store = store
        self.notifiers = notifiers
        self.profiles = Profiles(self.cfg)
        self._attempts: dict[int, int] = {}
        # For the heartbeat and /metrics: can this service reach anyone now?
        self.sent_ok = 0
        self.failures = 0  # SMS that no notifier took (each attempt)
        self.notifier_failures: dict[str, int] = {n.name: 0 for n in notifiers}
        self.last_ok_at: float | None = None
        self.last_failure_at: float | None = None
        self.last_failure = ""

    def text_for(self, b: Batch) -> tuple[str, list[int]]:
        """The SMS text, and the queued items it leaves out (acknowledged since they were queued)."""
        replies = [q.text for q in b.items if q.text]
        if replies:
            return " ".join(replies), []
        lines: list[Line] = []
        skipped: list[int] = []
        for q in _one_per_alarm(b.items):
            a = self.store.alarm(q.alarm_id)
            if a is None or (a.state == "acknowledged" and q.reason != "cleared"):
                # someone has it in hand: no repeat, no escalation
                skipped.extend(x.seq for x in b.items if x.alarm_id == q.alarm_id)
                continue
            message = a.message
            if a.state == "cleared" and q.reason != "cleared":
                message += " (now cleared)"
            label = self.profiles.get(a.patient).label
            value = None if a.technical else a.value
            lines.append(
                Line(
                    label,
                    a.kind,
                    a.priority,
                    message,
                    a.condition_started_at,
                    a.ack_code,
                    q.reason,
                    value,
                    a.unit or "",
                )
            )
        if not lines:
            return "", skipped
        return compose(lines, self.cfg.timezone, b.language), skipped

    def step(self, now: float) -> int:
        """Send what is due now; the number of SMS accepted."""
        queue = self.store.queued()
        if not queue:
            return 0
        batches = plan(
            queue, self.store.sent_times(now - 3600.0), self.store.last_about(now - 3600.0), now, self.cfg
        )
        sent = 0
        for b in batches:
            text, skipped = self.text_for(b)
            if skipped:
                self.store.drop_queued(skipped, now, "acknowledged before it went out")
            if not text:
                continue
            keep = Batch(
                b.phone, b.person, b.language, b.patient, tuple(q for q in b.items if q.seq not in skipped)
            )
            encoding, parts = split(text)
            seq = self.store.begin_sms(keep, text, parts, encoding, now)
            sent += self._send(seq, b, parts, now)
        return sent

    def _send(self, seq: int, b: Batch, parts: list[str], now: float) -> int:
        details: list[str] = []
        retryable = False
        for n in self.notifiers:
            ref: str | None = None
            failed = None
            for i, part in enumerate(parts):
                try:
                    d = n.send(b.phone, part, f"nabz-{seq}-{i + 1}", now)
                except Exception as exc:  # a notifier's bug is a failed attempt, not a stuck SMS
                    log.exception("notifier %s", n.name)
                    d = Delivery(False, retryable=True, detail=f"{type(exc).__name__}: {exc}")
                if not d.ok:
                    failed = d
                    break
                ref = ref or d.ref
            if failed is None:
                self.store.finish_sms(seq, True, n.name, ref, "accepted", now, None)
                self.sent_ok += 1
                self.last_ok_at = now
                return 1
            self.notifier_failures[n.name] = self.notifier_failures.get(n.name, 0) + 1
            details.append(f"{n.name}: {failed.detail}")
            retryable = retryable or failed.retryable
            log.error("SMS %d to %s failed through %s: %s", seq, b.phone, n.name, failed.detail)
        self.failures += 1
        self.last_failure_at = now
        self.last_failure = "; ".join(details)
        attempts = max(q_attempts(self.store, seq), 0)
        retry_at = None
        if retryable:
            retry_at = now + min(self.cfg.retry_max_s, self.cfg.retry_min_s * 2.0**attempts)
        self.store.finish_sms(
            seq, False, ",".join(n.name for n in self.notifiers), None, "; ".join(details), now, retry_at
        )
        return 0

    @property
    def failing(self) -> bool:
        """The latest SMS went through no notifier, and none has since."""
        return self.last_failure_at is not None and (
            self.last_ok_at is None or self.last_failure_at > self.last_ok_at
        )

    def poll(self, now: float) -> int:
        """Read incoming SMS and delivery reports from the notifiers that can receive."""
        got = 0
        for n in self.notifiers:
            if not isinstance(n, Pollable):
                continue
            for ev in n.poll(now):
                got += 1
                if isinstance(ev, Incoming):
                    self.store.add_command(
                        now, "sms_in", {"phone": ev.phone, "text": ev.text}, f"sms:{ev.phone}"
                    )
                elif isinstance(ev, DeliveryReport):
                    self.store.delivered(ev.ref, n.name, ev.status, now)
        return got


# Which notice of one alarm a merged SMS shows when several were waiting (a failed notifier, the
# grouping interval): one the doctor has not had yet first; the others are said by its text, which
# is the alarm as it is now ("(now cleared)" included).
_NOTICE_RANK = {"new": 0, "escalation": 1, "worse": 2, "repeat": 3, "cleared": 4}


def _one_per_alarm(items: tuple[Queued, ...]) -> list[Queued]:
    best: dict[str, Queued] = {}
    for q in items:
        have = best.get(q.alarm_id)
        if have is None or _NOTICE_RANK.get(q.reason, 9) < _NOTICE_RANK.get(have.reason, 9):
            best[q.alarm_id] = q
    return [q for q in items if best.get(q.alarm_id) is q]


def q_attempts(store: AlertStore, sms_seq: int) -> int:
    rows = store._rows("SELECT MAX(attempts) FROM queue WHERE sms_seq = ?", (sms_seq,))
    return int(rows[0][0] or 0) if rows else 0


def build_notifiers(config: Config) -> list[Notifier]:
    """The configured notifiers, in order (`[alerts] notifiers`)."""
    out: list[Notifier] = []
    for name in config.alerts.notifiers:
        if name == "outbox":
            from alerts.notify import OutboxNotifier

            out.append(OutboxNotifier(config.alerts.outbox_path))
        elif name == "http":
            from alerts.notify import HttpSmsNotifier

            out.append(HttpSmsNotifier(config.sms_http))
        elif name == "gsm":
            from alerts.gsm import GsmNotifier

            out.append(GsmNotifier(config.modem))
    return out
