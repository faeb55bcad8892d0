"""The alert engine: rules -> alarms -> silences and inhibition -> escalation -> the notification
queue, for all patients of a site. Time comes in as arguments; state lives in the store.

Rules of this file:
- One open alarm per patient and kind (`self.open`). A rule raising again while its alarm is open
  changes nothing, unless at a higher priority (`worsen`).
- Every transition becomes an AlarmEvent (returned, for publishing) and an audit row.
- Conditions of a kind disabled for the patient are dropped; configured priorities replace the
  rule's own.
- Notifications are queued here and sent by `alerts.dispatch`; an alarm that is silenced or
  inhibited (an open alarm of a kind that explains it, e.g. asystole explains a pause) is raised
  and published but its escalation waits.
- Acknowledgements and silences arrive as commands in the store (from the CLI or an SMS reply) and
  are applied in `tick`, in order: one writer for alarm state.
- Rules run on the data's time, the lifecycle on the service's (`now`). When the data that raise,
  worsen or clear an alarm are more than `LATE_AFTER_S` behind `now` (a gateway's spool after an
  outage), the alarm's message says when they are from and how late, and so does its event
  (`data_t`, `late_s`): the alarm is raised all the same, never held back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import msgspec

from alerts.grouping import Queued
from alerts.lifecycle import PRIORITY_RANK, Alarm, LifecycleError, apply, to_event
from alerts.oncall import Escalation, Schedule, advance
from alerts.profile import Profiles
from alerts.rules import BandRule, Condition, News2Rule, NoBeatNoPulseRule, physiological_rules
from alerts.silences import Silence, make_silence, silenced
from alerts.smstext import late_note
from alerts.store import AlertStore
from alerts.technical import FlagRule, GapRule, GatewayTracker, StaleTracker, technical_rules
from alerts.watchdog import EXPLAINED_BY_SITE_QUIET, SITE_QUIET, site_patient
from nabz import contract
from nabz.config import Config, EscalationPolicy
from nabz.contract import AlarmEvent, GatewayStatus, Vitals

__all__ = ["AlertEngine", "parse_sms_command", "LATE_AFTER_S"]

log = logging.getLogger(__name__)

Rule = BandRule | News2Rule | NoBeatNoPulseRule | FlagRule | GapRule
_SAVE_DEVICES_EVERY_S = 30.0
_ALL = 2**62  # drops every saved value of a window
# Saved rule timers older than this at start are not taken up: after a longer outage the vitals
# queued in the broker may not all be there, and a delay that counted them would mislead.
_TIMERS_MAX_AGE_S = 600.0
_STARTUP_GRACE_S = 60.0
# Live vitals reach the rules within about 2 s of their time (ingest's windows and batches, a
# frame resent after a BLE drop-out); data further behind are a backlog (a gateway's spool after an
# outage, the broker's queue after this service was down) and their alarm says how late they are.
LATE_AFTER_S = 10.0
_INHIBIT_GRACE_S = 30.0
_SENSOR_INHIBITORS = frozenset({"leads_off", "sensor_off"})  # inhibit because the data were unusable
# An ACK code is not given to another alarm within a day of the last, and an SMS reply acts only on
# alarms texted to that phone within as long (docs/alerts.md "Replies").
CODE_REUSE_S = 24 * 3600.0


def parse_sms_command(text: str) -> tuple[str, list[str], float | None] | None:
    """'ACK 4821', 'ack 4821 4822', 'SNOOZE 4821 30' (minutes) -> (action, codes, minutes)."""
    tokens = re.sub(r"(?i)\b(minutes|mins|min|m)\b", " ", text.replace(",", " ")).split()
    if (
        len(tokens) < 2
        or tokens[0].lower() not in ("ack", "snooze")
        or not all(t.isascii() and t.isdigit() for t in tokens[1:])  # "30²" is a digit to str
    ):
        return None
    action, numbers = tokens[0].lower(), tokens[1:]
    if action == "ack":
        return action, numbers, None
    if len(numbers) > 1 and len(numbers[-1]) <= 3:
        return action, numbers[:-1], float(numbers[-1])
    return action, numbers, 15.0


class AlertEngine:
    def __init__(
        self,
        config: Config,
        store: AlertStore,
        *,
        new_id: Callable[[], str] = contract.new_id,
        rng: random.Random | None = None,
        now: float | None = None,
    ) -> None:
        """`now`: when the engine starts (saved rule timers older than `_TIMERS_MAX_AGE_S` are
        not taken up); None takes up any."""
        self.config = config
        self.cfg = config.alerts
        self.site = config.site
        self.store = store
        self.new_id = new_id
        # ACK codes come from the OS's CSPRNG: nobody can predict the next one from the last few.
        self.rng = rng or random.SystemRandom()
        self.profiles = Profiles(self.cfg)
        self.rules: list[Rule] = [*physiological_rules(self.cfg), *technical_rules(self.cfg)]
        self.stale = StaleTracker(self.cfg.stale_after_s)
        self.gateways = GatewayTracker(self.cfg.gateway_offline_after_s, self._patient_of)
        self.schedule = Schedule(config.oncall, self.cfg.on_call)
        esc = config.escalation
        targets = [t for pol in (esc.high, esc.medium, esc.low) for step in pol.steps for t in step.notify]
        unknown = self.schedule.unknown_targets(targets)
        if unknown:
            raise ValueError(f"[escalation] notifies {sorted(set(unknown))}: no such role, person or team")
        if not self.schedule.everyone():
            raise ValueError("nobody to text: set [oncall.people] or [alerts] on_call")
        self.nobody_on_call = 0  # alarms whose escalation found nobody on call (sent to everyone instead)
        self.open: dict[tuple[str, str], Alarm] = {(a.patient, a.kind): a for a in store.open_alarms()}
        self.latest: dict[str, dict[str, object]] = {}  # patient -> latest values, for the console
        self._by_kind: dict[str, list[Rule]] = {}
        for r in self.rules:
            self._by_kind.setdefault(r.kind, []).append(r)
        resumed = self._resume_timers(now)
        for a in self.open.values():  # rules resume where the alarms stand
            rules = self._by_kind.get(a.kind)
            if rules:
                if (a.kind, a.patient) not in resumed:
                    for rule in rules:
                        rule.restore(a.patient, a.priority, a.condition_started_at)
            elif a.kind == "stale_data":
                self.stale.restore(a.patient, a.priority, a.condition_started_at)
            elif a.kind in ("gateway_offline", "device_offline", "device_fault", "gateway_data_gap"):
                self.gateways.restore(a.patient, a.kind, a.condition_started_at)
        self._silences = store.silences()
        self._cleared_at: dict[tuple[str, str], float] = {}
        self._started = False
        self._devices_saved_at = float("-inf")
        self._timers_saved = True  # whether the store may hold timers (at start: maybe)
        # (kind, idx, patient, param) -> the number of the first value of that window not saved
        self._window_marks: dict[tuple[str, int, str, str], int] = {}
        self._notified_seq = max((s for s, _, _ in store.notified_after(0)), default=0)
        # ack code -> when an alarm last got it: a code is not given again within CODE_REUSE_S, so a
        # late or mistyped reply to an old SMS cannot acknowledge another patient's new alarm
        self._codes: dict[str, float] = store.recent_codes(-math.inf if now is None else now - CODE_REUSE_S)

    # --- inputs -------------------------------------------------------------------------------
    def observe(self, v: Vitals, now: float) -> list[AlarmEvent]:
        """Feed one derived-vitals message (received at `now`)."""
        self._start(now)
        self._remember(v)
        self.stale.seen(v.device, v.patient, now)
        lim = self.profiles.get(v.patient)
        conditions = [c for r in self.rules if (c := r.observe(v, lim)) is not None]
        return self._apply(conditions, now)

    def gateway_status(self, s: GatewayStatus, now: float) -> list[AlarmEvent]:
        self._start(now)
        self.gateways.status(s, now)
        return self._apply(self.gateways.tick(now), now)

    def external(self, conditions: list[Condition], now: float) -> list[AlarmEvent]:
        """Conditions from a watcher outside the rules (the site watchdog, alerts.watchdog)."""
        self._start(now)
        return self._apply(conditions, now)

    def tick(self, now: float) -> list[AlarmEvent]:
        """Clock-driven work: stale data, offline gateways, commands, escalation, notified times."""
        self._start(now)
        events = self._apply(self.stale.tick(now) + self.gateways.tick(now), now)
        for seq, action, args, source in self.store.pending_commands():
            try:
                result, evs = self._command(action, args, source, now)
            except (KeyError, ValueError, LifecycleError) as exc:
                result, evs = f"error: {exc}", []
            self.store.command_done(seq, now, result)
            events += evs
        self._silences = self.store.silences(now)
        for alarm in list(self.open.values()):
            self._escalate(alarm, now)
        events += self._notified()
        if now - self._devices_saved_at >= _SAVE_DEVICES_EVERY_S:
            self._devices_saved_at = now
            self.store.save_devices({d: (p, self.stale.last_seen[d]) for d, p in self.stale.devices.items()})
        return events

    def save_timers(self, now: float, *, full: bool = False) -> None:
        """Save every rule's running timers (a condition building up, or raised and waiting to
        clear), with the open alarm each belongs to, so that a restart takes them up where they
        stood instead of starting each delay again (`_resume_timers`). The runner calls this once
        a second, and with `full` (the data-gap rule's newest data times too) at a planned stop.
        The NEWS2 windows of the patients whose timers are saved go with them, as they changed
        since the last save (whole, they are kilobytes a patient). Nothing is written while no
        timer runs."""
        rows: list[tuple[str, int, str, str | None, str | None, str]] = []
        gone: list[tuple[str, int, str, str, int]] = []
        new: list[tuple[str, int, str, str, int, float, float]] = []
        marks: dict[tuple[str, int, str, str], int] = {}
        for kind, rules in self._by_kind.items():
            for i, rule in enumerate(rules):
                timers = rule.saved(full)
                for patient, state in timers.items():
                    a = self.open.get((patient, kind))
                    alarm_id, priority = (a.alarm_id, a.priority) if a is not None else (None, None)
                    rows.append((kind, i, patient, alarm_id, priority, json.dumps(state)))
                    if isinstance(rule, News2Rule):
                        for param in rule.PARAMS:
                            key = (kind, i, patient, param)
                            got = rule.window(patient, param, self._window_marks.get(key, 0))
                            if got is None:
                                continue
                            oldest, values = got
                            if key in self._window_marks:
                                gone.append((*key, oldest))
                            new += [(*key, n, t, x) for n, t, x in values]
                            marks[key] = values[-1][0] + 1 if values else self._window_marks.get(key, oldest)
        gone += [(*key, _ALL) for key in self._window_marks if key not in marks]  # no timers now
        if rows or self._timers_saved:
            self.store.save_rule_timers(now, rows, (gone, new))
        self._timers_saved = bool(rows)
        self._window_marks = marks  # only once saved: after a failure the next save writes them again

    def acknowledge(self, code_or_id: str, by: str, now: float) -> AlarmEvent:
        """Acknowledge one open alarm, by its ack code or alarm id; never any other alarm."""
        key = self._open_by_code(code_or_id)
        if key is None:
            raise KeyError(f"no open alarm with code or id {code_or_id}")
        acked = apply(self.open[key], "ack", now, by)
        self.open[key] = acked
        return self._record(acked, now)

    def _open_by_code(self, code_or_id: str) -> tuple[str, str] | None:
        return next((k for k, a in self.open.items() if code_or_id in (a.ack_code, a.alarm_id)), None)

    def silence(
        self, patient: str, kind: str, duration_s: float, by: str, now: float, reason: str = ""
    ) -> Silence:
        s = make_silence(self.cfg, self.new_id(), patient, kind, now, duration_s, by, reason)
        self.store.add_silence(s)
        self.store.audit_add(now, "-", "silence", "created", json.dumps(_silence_dict(s)))
        self._silences = self.store.silences(now)
        return s

    # --- internals ----------------------------------------------------------------------------
    def _resume_timers(self, now: float | None) -> set[tuple[str, str]]:
        """Take up the timers `save_timers` left, where the patient's alarm of that kind is still
        what it was when they were saved (the same open alarm at the same priority, or none, and
        then no rule of that kind holding one raised: a kind disabled for the patient when saved
        may be enabled now). Where it is not (an alarm raised, worsened or cleared after the last
        save, just before a crash), or the save is older than `_TIMERS_MAX_AGE_S` before `now`,
        the rules of that kind start as before: from the open alarm alone. Returns the
        (kind, patient) pairs taken up: every rule of the kind is then as saved (one without a
        saved row had nothing running)."""
        resumed: set[tuple[str, str]] = set()
        try:
            saved = self.store.rule_timers()
            values = self.store.rule_window_values()
            if saved or values:
                # Used up: this process acknowledges newer vitals from now on, and if it could not
                # save their effect before a restart, the next one must not take these up again
                # (newest data times minutes old would show holes that are not there).
                self.store.forget_rule_timers()
        except Exception as exc:  # never keep the alarms from starting
            log.warning(
                "alerts: could not read or use up the saved rule timers (%s); every delay starts again", exc
            )
            return resumed
        windows: dict[tuple[str, int, str], dict[str, list[Any]]] = {}  # saved beside a timers row
        for kind, i, patient, param, t, x in values:
            windows.setdefault((kind, i, patient), {}).setdefault(param, []).append([t, x])
        groups: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = {}
        aside: set[tuple[str, str]] = set()  # one row set aside: none of the kind for the patient
        for kind, i, patient, alarm_id, priority, at, data in saved:
            rules = self._by_kind.get(kind, [])
            a = self.open.get((patient, kind))
            try:
                state = json.loads(data)
                if (kind, i, patient) in windows:  # the rule reads them; a bad value sets the row aside
                    state["windows"] = windows[(kind, i, patient)]
                usable = (
                    0 <= i < len(rules)
                    and (now is None or now - _TIMERS_MAX_AGE_S <= at <= now + _TIMERS_MAX_AGE_S)
                    and (alarm_id, priority) == ((a.alarm_id, a.priority) if a else (None, None))
                    and (a is not None or not state["raised"])
                )
            except Exception:  # noqa: BLE001 - a row this code cannot read is left, whatever is wrong
                usable = False
            if usable:
                groups.setdefault((kind, patient), []).append((i, state))
            else:
                aside.add((kind, patient))
        for (kind, patient), group in groups.items():
            if (kind, patient) in aside:
                continue
            rules = self._by_kind[kind]
            try:  # every row of the patient's kind read before any is applied: all or none
                steps = [rules[i].resume(patient, st) for i, st in group]
            except Exception as exc:  # noqa: BLE001 - whatever a damaged row holds, the alarms start
                log.warning("alerts: saved %s timers of %s not used: %s", kind, patient, exc)
                continue
            for step in steps:
                step()
            resumed.add((kind, patient))
        if saved:
            log.info(
                "alerts: took up saved rule timers for %d patient-kinds (%d rows saved)",
                len(resumed),
                len(saved),
            )
        return resumed

    def _start(self, now: float) -> None:
        if self._started:
            return
        self._started = True
        # Devices heard from before a restart: their silence counts, but a service that was down
        # gives the data a minute to flow again before calling it stale.
        floor = now - self.cfg.stale_after_s + _STARTUP_GRACE_S
        for device, (patient, last) in self.store.devices().items():
            self.stale.seen(device, patient, max(last, floor))
        for device, patient in self.config.enrolment.items():
            self.stale.enrol(device, patient, now)
        self.store.recover_interrupted(now)

    def _patient_of(self, device: str) -> str | None:
        return self.stale.devices.get(device) or self.config.enrolment.get(device)

    def _apply(self, conditions: list[Condition], now: float) -> list[AlarmEvent]:
        events: list[AlarmEvent] = []
        for c in conditions:
            lim = self.profiles.get(c.patient)
            if c.kind in lim.disabled:
                continue
            priority = lim.priority.get(c.kind, c.priority)
            key = (c.patient, c.kind)
            current = self.open.get(key)
            # Rules judge by the data's time: data replayed minutes late must not read as fresh.
            late = (c.at, now - c.at) if now - c.at > LATE_AFTER_S else None
            note = "" if late is None else late_note(*late, self.cfg.timezone, ended=not c.active)
            if c.active and current is None:
                alarm = Alarm(
                    alarm_id=self.new_id(), site=self.site, patient=c.patient, kind=c.kind, priority=priority,
                    state="active", message=c.message + note, value=c.value, threshold=c.threshold,
                    unit=c.unit, condition_started_at=c.started_at, raised_at=now,
                    ack_code=self._ack_code(now), technical=c.technical,
                )  # fmt: skip
                with self.store.tx():
                    self.open[key] = alarm
                    events.append(self._record(alarm, now, late))
                    self._escalate(alarm, now)
            elif c.active and current is not None:
                if PRIORITY_RANK[priority] <= PRIORITY_RANK[current.priority]:
                    continue
                worse = apply(
                    current, "worsen", now, priority=priority, message=c.message + note, value=c.value
                )
                with self.store.tx():
                    self.open[key] = worse
                    events.append(self._record(worse, now, late))
                    esc = self.store.escalation(worse.alarm_id) or Escalation()
                    esc.started_at, esc.steps_done, esc.paused_at = None, 0, None
                    self.store.put_escalation(worse.alarm_id, esc)
                    self._escalate(worse, now, reason_first="worse")
            elif not c.active and current is not None:
                cleared = apply(current, "clear", now)
                if note:  # what it was, and that it ended on data this late
                    cleared = replace(cleared, message=current.message + note)
                self._cleared_at[key] = now
                self._codes[cleared.ack_code] = now  # SMS showed it until now: a day from here
                for rule in self._by_kind.get(c.kind, ()):  # e.g. asystole: two rules, one alarm
                    rule.forget_restored(c.patient)
                with self.store.tx():
                    del self.open[key]
                    events.append(self._record(cleared, now, late))
                    done = self.store.escalation(cleared.alarm_id)
                    if done is not None and self.config.escalation.all_clear:
                        for name, (phone, lang, _) in done.reached.items():
                            self._queue(cleared, name, phone, lang, "cleared", now)
                    self.store.drop_escalation(cleared.alarm_id)
        return events

    def _suppressed(self, alarm: Alarm, now: float) -> bool:
        if silenced(alarm, self._silences, now, self.cfg):
            return True
        if alarm.kind in EXPLAINED_BY_SITE_QUIET and (site_patient(alarm.site), SITE_QUIET) in self.open:
            return True  # the whole site is quiet: one SMS says so, not one per patient
        for kind in self.profiles.inhibitors(alarm.kind):
            other = self.open.get((alarm.patient, kind))
            if other is not None and other.alarm_id != alarm.alarm_id:
                return True
            # An episode's alarms end together but not in the same second (an asystole clears a
            # little before the pause and the low rate inside it): an alarm raised while the alarm
            # that explains it was open, and outlasting it by a moment, stays quiet. Not after a
            # sensor came back: its data stand on their own then.
            cleared = self._cleared_at.get((alarm.patient, kind), float("-inf"))
            if (
                kind not in _SENSOR_INHIBITORS
                and alarm.raised_at <= cleared
                and now - cleared < _INHIBIT_GRACE_S
            ):
                return True
        return False

    def _policy(self, alarm: Alarm) -> EscalationPolicy:
        esc_cfg = self.config.escalation
        return {"high": esc_cfg.high, "medium": esc_cfg.medium, "low": esc_cfg.low}[alarm.priority]

    def _escalate(self, alarm: Alarm, now: float, reason_first: str = "new") -> None:
        if alarm.state != "active":
            return
        with self.store.tx():
            esc = self.store.escalation(alarm.alarm_id) or Escalation()
            before = (esc.started_at, esc.steps_done, esc.paused_at, dict(esc.reached))
            policy = self._policy(alarm)
            due = advance(esc, policy, self.schedule, now, self._suppressed(alarm, now))
            if (
                before[1] == 0
                and esc.steps_done
                and not any(self.schedule.resolve(st.notify, now) for st in policy.steps[: esc.steps_done])
            ):
                # The first steps of a new (or worsened) alarm name nobody on call now (no rotation for
                # the role, an empty team): an alarm texted to no one is what this service must not do.
                due = [(p, "new") for p in self.schedule.everyone()]
                for p, _ in due:
                    esc.reached[p.name] = (p.phone, p.language, now)
                self.nobody_on_call += 1
                log.error("alerts: %s of %s: the escalation names nobody on call; texting everyone on the"
                          " schedule", alarm.kind, alarm.patient)  # fmt: skip
                self.store.audit_add(now, alarm.alarm_id, "escalation", "nobody_on_call",
                                     json.dumps({"to": [p.name for p, _ in due]}))  # fmt: skip
            for person, why in due:
                reason = reason_first if why == "new" else why
                self._queue(alarm, person.name, person.phone, person.language, reason, now)
            if due or before != (esc.started_at, esc.steps_done, esc.paused_at, esc.reached):
                self.store.put_escalation(alarm.alarm_id, esc)

    def _queue(self, alarm: Alarm, name: str, phone: str, lang: str, reason: str, now: float) -> None:
        self.store.enqueue(
            Queued(0, phone, name, lang, alarm.patient, alarm.alarm_id, alarm.priority, reason, now)
        )

    def _notified(self) -> list[AlarmEvent]:
        """Alarms whose first SMS went out since the last look: their event gains `notified_at`."""
        events: list[AlarmEvent] = []
        for seq, alarm_id, at in self.store.notified_after(self._notified_seq):
            self._notified_seq = max(self._notified_seq, seq)
            for key, alarm in self.open.items():
                if alarm.alarm_id == alarm_id and alarm.notified_at is None:
                    self.open[key] = replace(alarm, notified_at=at)
                    events.append(self._record(self.open[key], at))
        return events

    def _command(
        self, action: str, args: dict[str, Any], source: str, now: float
    ) -> tuple[str, list[AlarmEvent]]:
        not_after = args.get("not_after")
        came = float(args.get("received_at", now))
        if not_after is not None and came > float(not_after):
            # The nurse page told its user this did not go through: doing it now would surprise them.
            self.store.audit_add(now, "-", action, "refused", json.dumps({**args, "why": "too late"}))
            return f"refused: arrived {came - float(not_after):.1f} s after its sender gave up", []
        if action == "ack":
            seen = args.get("priority")
            code = str(args["code"])
            key = self._open_by_code(code)
            a = self.open[key] if key is not None else None
            if seen is not None and a is not None and PRIORITY_RANK[a.priority] > PRIORITY_RANK[str(seen)]:
                # It worsened after the nurse saw it: a worse alarm must be seen before it is acknowledged.
                why = {**args, "why": f"worsened to {a.priority}"}
                self.store.audit_add(now, a.alarm_id, "ack", "refused", json.dumps(why))
                return (
                    f"refused: {a.kind} of {a.patient} worsened to {a.priority} after it was seen at {seen}",
                    [],
                )
            ev = self.acknowledge(code, str(args.get("by", source)), now)
            return f"acknowledged {ev.kind} of {ev.patient}", [ev]
        if action == "silence":
            s = self.silence(str(args["patient"]), str(args.get("kind", "*")), float(args["duration_s"]),
                             str(args.get("by", source)), now, str(args.get("reason", "")))  # fmt: skip
            return f"silence {s.silence_id} until {s.ends_at:.0f}", []
        if action == "unsilence":
            ok = self.store.end_silence(str(args["silence_id"]), now)
            return "ended" if ok else "no such active silence", []
        if action == "sms_in":
            return self._sms_in(str(args["phone"]), str(args["text"]), now)
        raise ValueError(f"unknown command {action!r}")

    def _sms_in(self, phone: str, text: str, now: float) -> tuple[str, list[AlarmEvent]]:
        known = {p.phone: p for p in self.schedule.people.values()} or {
            p.phone: p for p in self.schedule.fallback
        }
        person = known.get(phone)
        parsed = parse_sms_command(text)
        if person is None:
            self.store.audit_add(
                now, "-", "sms_in", "refused", json.dumps({"phone": phone, "text": text[:160]})
            )
            return f"refused: {phone} is not on the on-call list", []
        if parsed is None:
            self._reply(
                person.name,
                phone,
                person.language,
                "NABZ: reply ACK <code> to acknowledge, SNOOZE <code> <minutes> to snooze",
                now,
            )
            return "not understood", []
        action, codes, minutes = parsed
        events: list[AlarmEvent] = []
        done: list[str] = []
        texted = self.store.texted(phone, now - CODE_REUSE_S)
        for code in codes:
            alarm = next((a for a in self.open.values() if a.ack_code == code), None)
            if alarm is None:
                done.append(f"{code}: no open alarm")
                continue
            if alarm.alarm_id not in texted:  # a mistyped code, or someone else's alarm
                why = {"phone": phone, "text": text[:160], "why": "not an alarm texted to this phone"}
                self.store.audit_add(now, alarm.alarm_id, f"sms_{action}", "refused", json.dumps(why))
                done.append(f"{code}: no open alarm texted to you")
                continue
            seen = texted[alarm.alarm_id]
            if seen is not None and PRIORITY_RANK[alarm.priority] > PRIORITY_RANK[seen]:
                # It worsened after the SMS this reply answers: say so, and take the next ACK.
                why = {"phone": phone, "text": text[:160], "why": f"worsened to {alarm.priority}"}
                self.store.audit_add(now, alarm.alarm_id, f"sms_{action}", "refused", json.dumps(why))
                self.store.enqueue(Queued(
                    0, phone, person.name, person.language, alarm.patient, alarm.alarm_id, alarm.priority,
                    "ack_reply", now,
                    text=f"NABZ: {code} {alarm.patient} {alarm.kind} is now {alarm.priority.upper()}: "
                    f"{alarm.message}. Not done; reply {'ACK' if action == 'ack' else 'SNOOZE'} {code} again",
                ))  # fmt: skip
                continue
            if action == "ack":
                if alarm.state == "active":
                    events.append(self.acknowledge(code, person.name, now))
                done.append(f"ACK {code} {alarm.patient} {alarm.kind}")
            else:
                s = self.silence(
                    alarm.patient, alarm.kind, (minutes or 15.0) * 60.0, person.name, now, "SMS snooze"
                )
                done.append(f"SNOOZED {code} {alarm.patient} {alarm.kind} {(s.ends_at - now) / 60:.0f} min")
        if done:
            self._reply(person.name, phone, person.language, "NABZ: " + "; ".join(done), now)
        return "; ".join(done) or "refused: worsened since texted", events

    def _reply(self, name: str, phone: str, lang: str, text: str, now: float) -> None:
        self.store.enqueue(Queued(0, phone, name, lang, "-", "", "low", "ack_reply", now, text=text))

    def _ack_code(self, now: float) -> str:
        """A code no open alarm has and none got in the last CODE_REUSE_S (else the longest unused)."""
        used = {a.ack_code for a in self.open.values()}
        for _ in range(64):
            code = f"{self.rng.randrange(1000, 10000)}"
            if code not in used and now - self._codes.get(code, -math.inf) > CODE_REUSE_S:
                break
        else:  # thousands of alarms a day: the code given out longest ago
            code = min((c for c in map(str, range(1000, 10000)) if c not in used),
                       key=lambda c: self._codes.get(c, -math.inf))  # fmt: skip
        self._codes[code] = now  # at most the 9,000 four-digit codes: nothing to prune
        return code

    def _record(self, alarm: Alarm, now: float, late: tuple[float, float] | None = None) -> AlarmEvent:
        """The alarm's event, stored and audited. `late`: the time of the data that caused this
        transition and how far behind `now` they came, when more than `LATE_AFTER_S`."""
        event = to_event(alarm, self.new_id())
        if late is not None:
            data_t, late_s = late
            event = msgspec.structs.replace(
                event, data_t=datetime.fromtimestamp(data_t, UTC), late_s=round(late_s, 1)
            )
        self.store.record(alarm, event, now)
        return event

    def _remember(self, v: Vitals) -> None:
        row = self.latest.setdefault(v.patient, {})
        for name in ("hr_bpm", "pr_bpm", "spo2_pct", "sqi", "battery_pct", "pause_s", "af_score", "resp_bpm"):
            x = getattr(v, name)
            if x is not None:
                row[f"{v.source}.{name}"] = x
        row["t"] = v.t
        row["flags"] = v.flags


def _silence_dict(s: Silence) -> dict[str, Any]:
    return dataclasses.asdict(s)
