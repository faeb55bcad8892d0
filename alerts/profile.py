"""Per-patient limits, priorities and inhibitions, resolved once from the configuration. Pure.

Rules of this file:
- The site's `[alerts]` values are the defaults; `[alerts.patients."<id>"]` overrides them.
- A target SpO2 range (e.g. 88-92 % in chronic lung disease, BMJ 2021;372:n677) moves the SpO2
  limits under it: medium below its lower end, high 4 points lower (NEWS2 scale 2 scores <= 83 as
  3), and scores SpO2 on NEWS2 scale 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from alerts.lifecycle import Priority
from nabz.config import AlertsConfig

__all__ = ["Limits", "Profiles"]


@dataclass(frozen=True, slots=True)
class Limits:
    patient: str
    label: str
    spo2_low: float
    spo2_critical: float
    spo2_scale: int  # NEWS2 SpO2 scale, 1 or 2
    hr_high: float
    hr_critical_high: float
    hr_low: float
    hr_critical_low: float
    priority: dict[str, Priority] = field(default_factory=dict)  # kind -> fixed priority
    disabled: frozenset[str] = frozenset()


class Profiles:
    """Limits per patient, cached; `inhibitors(kind)` says which open alarm kinds hold it back."""

    def __init__(self, cfg: AlertsConfig) -> None:
        self.cfg = cfg
        self._cache: dict[str, Limits] = {}
        self._inhibited_by: dict[str, set[str]] = {}
        for source, targets in cfg.inhibit.items():
            for t in targets:
                self._inhibited_by.setdefault(t, set()).add(source)

    def get(self, patient: str) -> Limits:
        lim = self._cache.get(patient)
        if lim is None:
            lim = self._cache[patient] = self._resolve(patient)
        return lim

    def inhibitors(self, kind: str) -> set[str]:
        return self._inhibited_by.get(kind, set())

    def _resolve(self, patient: str) -> Limits:
        c = self.cfg
        p = c.patients.get(patient)
        spo2_low, spo2_critical, scale = c.spo2_low_pct, c.spo2_critical_pct, 1
        if p is not None and p.spo2_target_pct is not None:
            lo = float(p.spo2_target_pct[0])
            spo2_low, spo2_critical = lo, lo - 4.0
            scale = 2 if lo < 92.0 else 1
        if p is None:
            return Limits(
                patient, patient, spo2_low, spo2_critical, scale, c.hr_high_bpm, c.hr_critical_high_bpm,
                c.hr_low_bpm, c.hr_critical_low_bpm, dict(c.priority),
            )  # fmt: skip

        def pick(own: float | None, site: float) -> float:
            return site if own is None else own

        return Limits(
            patient=patient,
            label=p.label or patient,
            spo2_low=pick(p.spo2_low_pct, spo2_low),
            spo2_critical=pick(p.spo2_critical_pct, spo2_critical),
            spo2_scale=scale,
            hr_high=pick(p.hr_high_bpm, c.hr_high_bpm),
            hr_critical_high=pick(p.hr_critical_high_bpm, c.hr_critical_high_bpm),
            hr_low=pick(p.hr_low_bpm, c.hr_low_bpm),
            hr_critical_low=pick(p.hr_critical_low_bpm, c.hr_critical_low_bpm),
            priority={**c.priority, **p.priority},
            disabled=frozenset(p.disabled),
        )
