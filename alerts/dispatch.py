"""The dispatcher: queued notifications -> grouped SMS texts -> notifiers, with retry and fallback.

Rules of this file:
- It owns the notifiers (a modem is one serial port: one user); the engine only queues.
- Grouping and the per-recipient cap are decided by `alerts.grouping.plan`; texts by
  `alerts.smstext`. Each SMS is recorded before it is handed to a notifier (see alerts.store).
- Notifiers are tried in the configured order: a failure on one (e.g. the modem has no network)
  moves on to the next at once; when every notifier failed and one said the failure may pass,
  the notifications are queued again after a backoff (`retry_min_s` doubling to `retry_max_s`);
  when none may pass, they are given up and the audit log says so.
- Only a notifier that reaches a phone delivers when one is configured: the outbox then keeps a
  copy of each SMS no phone notifier took, and the SMS stays failed and is tried again (a file
  written is nobody told). With the outbox alone (the demo) the outbox is the delivery.
- A part's idempotency key is the same at every attempt of the same notifications with the same
  text, so a provider that honours keys never sends a retried part twice.
- Incoming SMS and delivery reports from notifiers that can receive are stored as commands and
  delivery records; the engine applies the commands.
"""

from __future__ import annotations

import hashlib
import logging

from alerts.grouping import Batch, Queued, plan
from alerts.notify import Delivery, DeliveryReport, Incoming, Notifier, Pollable, reaches_phone
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
        phones = [n for n in notifiers if reaches_phone(n)]
        self._delivery = phones or notifiers
        self._records = [n for n in notifiers if n not in self._delivery]
        self.profiles = Profiles(self.cfg)
        self._attempts: dict[int, int] = {}
        # For the heartbeat and /metrics: can this service reach anyone now?
        self.sent_ok = 0
        self.failures = 0  # SMS that no notifier took (each attempt)
        self.notifier_failures: dict[str, int] = {n.name: 0 for n in notifiers}
        self.last_ok_at: float | None = None
        self.last_failure_at: float | None = None
        self.last_failure = ""
        self.notifier_down: dict[str, str] = {}  # notifier -> its latest failure, until it next delivers

    def text_for(self, b: Batch) -> tuple[str, list[int], dict[str, str]]:
        """The SMS text, the queued items it leaves out (acknowledged since they were queued), and
        each alarm it names with the priority it gives (what a reply to it has seen)."""
        replies = [q for q in b.items if q.text]
        if replies:
            shown = {q.alarm_id: q.priority for q in replies if q.alarm_id not in ("", "-")}
            return " ".join(q.text for q in replies), [], shown
        lines: list[Line] = []
        skipped: list[int] = []
        shown = {}
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
            shown[a.alarm_id] = a.priority
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
            return "", skipped, {}
        return compose(lines, self.cfg.timezone, b.language), skipped, shown

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
            text, skipped, shown = self.text_for(b)
            if skipped:
                self.store.drop_queued(skipped, now, "acknowledged before it went out")
            if not text:
                continue
            keep = Batch(
                b.phone, b.person, b.language, b.patient, tuple(q for q in b.items if q.seq not in skipped)
            )
            encoding, parts = split(text)
            seq = self.store.begin_sms(keep, text, parts, encoding, now, shown)
            sent += self._send(seq, keep, parts, now)
        return sent

    def _send(self, seq: int, b: Batch, parts: list[str], now: float) -> int:
        details: list[str] = []
        retryable = False
        # The same notifications in the same words make the same keys, whichever attempt this is.
        same = hashlib.sha256(
            "|".join(
                [b.phone, ",".join(str(q.seq) for q in sorted(b.items, key=lambda q: q.seq)), *parts]
            ).encode()
        ).hexdigest()[:20]
        keys = [f"nabz-{same}-{i + 1}" for i in range(len(parts))]
        for n in self._delivery:
            ref: str | None = None
            failed = None
            for part, key in zip(parts, keys, strict=True):
                try:
                    d = n.send(b.phone, part, key, now)
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
                self.notifier_down.pop(n.name, None)
                return 1
            self.notifier_failures[n.name] = self.notifier_failures.get(n.name, 0) + 1
            self.notifier_down[n.name] = failed.detail
            details.append(f"{n.name}: {failed.detail}")
            retryable = retryable or failed.retryable
            log.error("SMS %d to %s failed through %s: %s", seq, b.phone, n.name, failed.detail)
        attempts = q_attempts(self.store, seq)
        if attempts == 0:  # a copy of what no phone took, once per SMS
            for r in self._records:
                for part, key in zip(parts, keys, strict=True):
                    try:
                        r.send(b.phone, part, key, now)
                    except Exception:
                        log.exception("notifier %s", r.name)
        self.failures += 1
        self.last_failure_at = now
        self.last_failure = "; ".join(details)
        retry_at = None
        if retryable:
            retry_at = now + min(self.cfg.retry_max_s, self.cfg.retry_min_s * 2.0**attempts)
        self.store.finish_sms(
            seq, False, ",".join(n.name for n in self._delivery), None, "; ".join(details), now, retry_at
        )
        return 0

    @property
    def degraded(self) -> str | None:
        """Which delivering notifiers failed on their latest attempt (SMS may be going another way)."""
        down = [
            f"{name}: {why}" for name, why in list(self.notifier_down.items())
        ]  # another thread writes it
        return "; ".join(down) or None

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
