"""Alarm rules: derived vitals in, alarm conditions out. Pure; time is the vitals' own time or `now`.

Rules of this file:
- A rule sees one patient's vitals in time order and says when a condition starts to be an alarm
  (after its delay) and when it ends (after its hysteresis).
- Delays scale with how far a limit is crossed (Welch 2011: a 15 s SpO2 delay removed most false
  alarms; a deep desaturation should not wait that long): at the limit the full delay applies,
  `depth_for_min_delay` beyond it the minimum delay.
- Physiological rules only use values whose signal quality index is at least `min_sqi`; poor
  signal holds the rule where it is rather than starting or ending an alarm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from nabz.config import AlertsConfig
from nabz.contract import Vitals

__all__ = ["Condition", "ThresholdRule", "StaleRule", "default_rules"]

Priority = Literal["high", "medium", "low"]


@dataclass(frozen=True, slots=True)
class Condition:
    """A rule's verdict for one patient: raise (active=True) or clear (active=False)."""

    patient: str
    kind: str
    active: bool
    priority: Priority
    value: float | None
    threshold: float
    unit: str
    started_at: float  # when the value first crossed the limit (epoch s)
    at: float  # when the verdict was reached
    message: str


@dataclass(slots=True)
class _State:
    crossed_since: float | None = None
    recovered_since: float | None = None
    raised: bool = False
    worst: float | None = None


@dataclass(slots=True)
class ThresholdRule:
    """`field` below (direction 'low') or above ('high') a limit for a scaled delay."""

    kind: str
    quantity: str  # the Vitals field this rule watches
    sources: tuple[str, ...]
    direction: Literal["low", "high"]
    limit: float
    unit: str
    label: str
    delay_s: float
    min_delay_s: float
    depth_for_min_delay: float
    clear_margin: float
    clear_after_s: float
    high_priority_beyond: float  # a value beyond this is high priority; otherwise medium
    min_sqi: float = 0.5
    states: dict[tuple[str, str], _State] = field(default_factory=dict)

    def any_raised(self, patient: str) -> bool:
        return any(st.raised for (p, _), st in self.states.items() if p == patient)

    def _beyond(self, x: float, limit: float) -> bool:
        return x < limit if self.direction == "low" else x > limit

    def _depth(self, x: float) -> float:
        return self.limit - x if self.direction == "low" else x - self.limit

    def delay_for(self, x: float) -> float:
        frac = min(1.0, max(0.0, self._depth(x) / self.depth_for_min_delay))
        return self.delay_s - (self.delay_s - self.min_delay_s) * frac

    def priority_for(self, x: float) -> Priority:
        return "high" if self._beyond(x, self.high_priority_beyond) else "medium"

    def observe(self, v: Vitals) -> Condition | None:
        if v.source not in self.sources:
            return None
        x = getattr(v, self.quantity)
        if x is None or (v.sqi is not None and v.sqi < self.min_sqi):
            return None
        t = v.t.timestamp()
        key = (v.patient, v.source)  # each source keeps its own timer; the engine merges them
        st = self.states.setdefault(key, _State())
        if self._beyond(x, self.limit):
            st.recovered_since = None
            if st.crossed_since is None:
                st.crossed_since = t
                st.worst = x
            elif st.worst is None or self._depth(x) > self._depth(st.worst):
                st.worst = x
            if not st.raised and t - st.crossed_since >= self.delay_for(x):
                st.raised = True
                held = t - st.crossed_since
                return self._condition(v.patient, True, x, st.crossed_since, t, f"for {held:.0f} s")
            return None
        if st.crossed_since is None:
            return None
        clear_limit = (
            self.limit + self.clear_margin if self.direction == "low" else self.limit - self.clear_margin
        )
        if self._beyond(x, clear_limit):
            st.recovered_since = None  # between the limit and the hysteresis band: neither
            return None
        if st.recovered_since is None:
            st.recovered_since = t
        if t - st.recovered_since < self.clear_after_s:
            return None
        started = st.crossed_since
        was_raised = st.raised
        self.states[key] = _State()
        if not was_raised:
            return None
        return self._condition(v.patient, False, x, started, t, "recovered")

    def _condition(
        self, patient: str, active: bool, x: float, started: float, t: float, how: str
    ) -> Condition:
        side = "below" if self.direction == "low" else "above"
        text = f"{self.label} {x:.0f}{self.unit} {side} {self.limit:.0f}{self.unit} {how}"
        if not active:
            text = f"{self.label} {x:.0f}{self.unit}, back within {self.limit:.0f}{self.unit}"
        return Condition(
            patient, self.kind, active, self.priority_for(x) if active else "low", x, self.limit, self.unit,
            started, t, text,
        )  # fmt: skip


@dataclass(slots=True)
class StaleRule:
    """No data from a patient's devices for `after_s`: the monitoring has gone quiet."""

    after_s: float
    last_seen: dict[str, float] = field(default_factory=dict)  # patient -> ingest clock
    raised: set[str] = field(default_factory=set)
    kind: str = "stale_data"

    def seen(self, patient: str, now: float) -> Condition | None:
        self.last_seen[patient] = now
        if patient in self.raised:
            self.raised.discard(patient)
            return Condition(
                patient, self.kind, False, "low", None, self.after_s, "s", now, now, "data again"
            )
        return None

    def tick(self, now: float) -> list[Condition]:
        out = []
        for patient, last in self.last_seen.items():
            if patient not in self.raised and now - last >= self.after_s:
                self.raised.add(patient)
                minutes = (now - last) / 60
                out.append(
                    Condition(
                        patient,
                        self.kind,
                        True,
                        "medium",
                        now - last,
                        self.after_s,
                        "s",
                        last,
                        now,
                        f"no data for {minutes:.0f} min",
                    )  # fmt: skip
                )
        return out


def default_rules(cfg: AlertsConfig) -> list[ThresholdRule]:
    """The physiological rules, with limits and delays from the configuration."""
    return [
        ThresholdRule(
            kind="spo2_low", quantity="spo2_pct", sources=("ppg", "device"), direction="low",
            limit=cfg.spo2_low_pct, unit="%", label="SpO2", delay_s=cfg.spo2_delay_s,
            min_delay_s=cfg.spo2_min_delay_s, depth_for_min_delay=6.0, clear_margin=2.0,
            clear_after_s=cfg.clear_after_s, high_priority_beyond=88.0,
        ),
        ThresholdRule(
            kind="hr_high", quantity="hr_bpm", sources=("ecg",), direction="high", limit=cfg.hr_high_bpm,
            unit="/min", label="HR", delay_s=cfg.hr_delay_s, min_delay_s=cfg.hr_delay_s / 2,
            depth_for_min_delay=30.0, clear_margin=5.0, clear_after_s=cfg.clear_after_s,
            high_priority_beyond=150.0,
        ),
        ThresholdRule(
            kind="hr_low", quantity="hr_bpm", sources=("ecg",), direction="low", limit=cfg.hr_low_bpm,
            unit="/min", label="HR", delay_s=cfg.hr_delay_s, min_delay_s=cfg.hr_delay_s / 2,
            depth_for_min_delay=10.0, clear_margin=5.0, clear_after_s=cfg.clear_after_s,
            high_priority_beyond=35.0,
        ),
    ]  # fmt: skip
