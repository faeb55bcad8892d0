"""Who is on call, and whom an alarm's escalation reaches when. Pure; time is a parameter.

Rules of this file:
- A rotation hands a role ("primary", "backup", ...) from one member to the next every `shift_h`
  hours, counted from `start` (a local date-time in the schedule's timezone, default Asia/Karachi).
  An override gives the role to someone else on [start, end). The last override listed wins.
- "team" means everyone in `oncall.team`; any other target that is not a role is a person's name.
- With no people configured, the `[alerts] on_call` numbers are everyone's primary, backup and team.
- Escalation (`advance`): the policy's steps fire `after_s` after the alarm became notifiable
  (raised and neither silenced nor inhibited; time spent suppressed does not count); after a
  step, everyone reached so far is re-notified every `renotify_s` until the alarm is acknowledged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from nabz.config import EscalationPolicy, OncallConfig

__all__ = ["Person", "Schedule", "Escalation", "advance"]


@dataclass(frozen=True, slots=True)
class Person:
    name: str
    phone: str
    language: str = "en"


def _local(text: str, tz: ZoneInfo) -> float:
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz)
    return dt.timestamp()


def _wall(t: float, tz: ZoneInfo) -> float:
    """Seconds on the local wall clock at epoch time `t` (as if it never changed)."""
    return datetime.fromtimestamp(t, tz).replace(tzinfo=UTC).timestamp()


class Schedule:
    def __init__(self, cfg: OncallConfig, fallback_numbers: list[str] | None = None) -> None:
        self.cfg = cfg
        self.tz = ZoneInfo(cfg.timezone)
        self.people = {name: Person(name, p.phone, p.language) for name, p in cfg.people.items()}
        self.fallback = [Person(n, n) for n in (fallback_numbers or [])] if not self.people else []
        self.rotations = [(r, _local(r.start, self.tz)) for r in cfg.rotations]
        self.overrides = [(o, _local(o.start, self.tz), _local(o.end, self.tz)) for o in cfg.overrides]
        for name in (
            [m for r in cfg.rotations for m in r.members] + [o.person for o in cfg.overrides] + cfg.team
        ):
            if name not in self.people:
                raise ValueError(f"on-call schedule names {name!r}, who is not in [oncall.people]")

    def who(self, role: str, at: float) -> list[Person]:
        """The people a target ("primary", "backup", "team", or a person's name) means at `at`."""
        if self.fallback:
            return list(self.fallback)
        if role == "team":
            return [self.people[n] for n in self.cfg.team]
        if role in self.people:
            return [self.people[role]]
        for o, start, end in reversed(self.overrides):
            if o.role == role and start <= at < end:
                return [self.people[o.person]]
        for r, start in self.rotations:
            if r.role == role and r.members:
                # Shifts are counted on the local wall clock, so a hand-over stays at its local time
                # across a daylight-saving change (a 24 h shift that spans one is 23 or 25 h long).
                elapsed = _wall(at, self.tz) - _wall(start, self.tz)
                turn = math.floor(elapsed / (r.shift_h * 3600.0))
                return [self.people[r.members[turn % len(r.members)]]]
        return []

    def everyone(self) -> list[Person]:
        """Every person on the schedule (or the fallback numbers): who an alarm goes to when its
        escalation names nobody who is on call."""
        return list(self.fallback) or list(self.people.values())

    def unknown_targets(self, targets: list[str]) -> list[str]:
        """Escalation targets that name no role, person or the team (a typo in the configuration)."""
        if self.fallback:
            return []
        roles = {
            "primary",
            "backup",
            "team",
            *(r.role for r, _ in self.rotations),
            *(o.role for o, _, _ in self.overrides),
        }
        return [t for t in targets if t not in roles and t not in self.people]

    def resolve(self, targets: list[str], at: float) -> list[Person]:
        out: list[Person] = []
        for t in targets:
            for p in self.who(t, at):
                if p not in out:
                    out.append(p)
        return out

    def describe(self, at: float, roles: tuple[str, ...] = ("primary", "backup")) -> dict[str, list[str]]:
        table = {role: [f"{p.name} {p.phone}" for p in self.who(role, at)] for role in roles}
        table["team"] = [f"{p.name} {p.phone}" for p in self.who("team", at)]
        return table


@dataclass(slots=True)
class Escalation:
    """Where one alarm's escalation stands (kept in the store, so a restart continues it)."""

    started_at: float | None = None  # when it became notifiable, shifted by time spent suppressed
    steps_done: int = 0
    paused_at: float | None = None
    reached: dict[str, tuple[str, str, float]] = field(default_factory=dict)  # name -> (phone, lang, last)


def advance(
    esc: Escalation, policy: EscalationPolicy, schedule: Schedule, now: float, suppressed: bool
) -> list[tuple[Person, str]]:
    """Move `esc` to `now`; who to notify now and why ("new", "escalation" or "repeat")."""
    if suppressed:
        if esc.started_at is not None and esc.paused_at is None:
            esc.paused_at = now
        return []
    if esc.started_at is None:
        esc.started_at = now
    if esc.paused_at is not None:
        esc.started_at += now - esc.paused_at
        esc.paused_at = None
    out: list[tuple[Person, str]] = []
    while esc.steps_done < len(policy.steps) and now >= esc.started_at + policy.steps[esc.steps_done].after_s:
        step = policy.steps[esc.steps_done]
        why = "new" if esc.steps_done == 0 else "escalation"
        esc.steps_done += 1
        for p in schedule.resolve(step.notify, now):
            if p.name in esc.reached and esc.reached[p.name][2] == now:
                continue
            out.append((p, why))
            esc.reached[p.name] = (p.phone, p.language, now)
    if policy.renotify_s > 0:
        for name, (phone, lang, last) in list(esc.reached.items()):
            if now - last >= policy.renotify_s:
                out.append((Person(name, phone, lang), "repeat"))
                esc.reached[name] = (phone, lang, now)
    return out
