"""Helpers for the alert tests: synthetic vitals sequences on an injected clock, a recording notifier."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alerts.dispatch import Dispatcher
from alerts.engine import AlertEngine
from alerts.notify import Delivery
from alerts.store import AlertStore
from nabz.config import AlertsConfig, Config, OncallConfig, PersonConfig, RotationConfig
from nabz.contract import AlarmEvent, Vitals

T0 = 1_795_597_200.0  # 2026-11-25 09:00:00 UTC = 14:00 PKT

_n = 0


def v(
    t: float, patient: str = "p-0001", source: str = "ppg", device: str | None = None, **values: Any
) -> Vitals:
    """One synthetic vitals message; SQI 0.9 unless given."""
    global _n
    _n += 1
    values.setdefault("sqi", 0.9 if source != "device" else None)
    dev = device or {"ppg": "oxi-0001", "ecg": "ecg-0001", "device": "oxi-0001"}[source]
    return Vitals(id=f"vitals{_n:08d}", site="demo", patient=patient, device=dev,
                  t=datetime.fromtimestamp(t, UTC), source=source, **values)  # type: ignore[arg-type]  # fmt: skip


@dataclass
class Recorder:
    """A notifier that keeps what it is given; `fail` makes it refuse (retryable or not)."""

    name: str = "rec"
    sent: list[tuple[str, str, float]] = field(default_factory=list)
    fail: Delivery | None = None
    keys: list[str] = field(default_factory=list)  # every part's idempotency key, failed attempts too

    def send(self, to: str, text: str, key: str, at: float) -> Delivery:
        self.keys.append(key)
        if self.fail is not None:
            return self.fail
        self.sent.append((to, text, at))
        return Delivery(True, ref=key)

    def texts(self, to: str | None = None) -> list[str]:
        return [t for p, t, _ in self.sent if to is None or p == to]


PEOPLE = {
    "aisha": PersonConfig(phone="+923001111111"),
    "bilal": PersonConfig(phone="+923002222222", language="ur"),
    "farah": PersonConfig(phone="+923003333333"),
    "omar": PersonConfig(phone="+923004444444"),
}


def config(alerts: AlertsConfig | None = None, *, schedule: bool = True, **kw: Any) -> Config:
    oncall = OncallConfig()
    if schedule:
        oncall = OncallConfig(
            people=PEOPLE,
            rotations=[
                RotationConfig(role="primary", members=["aisha", "farah"], start="2026-11-02T08:00"),
                RotationConfig(role="backup", members=["bilal"], start="2026-11-02T08:00"),
            ],
            team=["aisha", "bilal", "farah", "omar"],
        )
    # Stale data is tested on its own; elsewhere a sequence that simply ends must not raise it.
    return Config(site="demo", alerts=alerts or AlertsConfig(stale_after_s=1e7), oncall=oncall, **kw)


class Rig:
    """Engine + dispatcher + store on one SQLite file, driven on an injected clock."""

    def __init__(self, tmp_path: Path, cfg: Config | None = None, notifier: Recorder | None = None,
                 seed: int = 1) -> None:  # fmt: skip
        self.path = tmp_path / "alerts.sqlite"
        self.cfg = cfg or config()
        self.notifier = notifier or Recorder()
        self.seed = seed
        self.open()

    def open(self) -> None:
        self.store = AlertStore(self.path)
        self.engine = AlertEngine(self.cfg, self.store, rng=random.Random(self.seed))
        self.dispatcher = Dispatcher(self.cfg, self.store, [self.notifier])

    def restart(self) -> None:
        """As after a crash or a restart of the service: new objects on the same database."""
        self.store.close()
        self.seed += 1
        self.open()

    def feed(self, seq: list[Vitals]) -> list[AlarmEvent]:
        out: list[AlarmEvent] = []
        for x in seq:
            now = x.t.timestamp()
            out += self.engine.observe(x, now)
            self.dispatcher.step(now)
        return out

    def at(self, now: float) -> list[AlarmEvent]:
        """One tick of the runner: engine, dispatcher, engine again (picks up notified times)."""
        out = self.engine.tick(now)
        self.dispatcher.step(now)
        return out + self.engine.tick(now)

    def run(self, start: float, end: float, step: float = 1.0) -> list[AlarmEvent]:
        out: list[AlarmEvent] = []
        t = start
        while t <= end:
            out += self.at(t)
            t += step
        return out
