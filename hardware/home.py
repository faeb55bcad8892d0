"""A fleet of virtual patients, each wearing an ECG patch and a pulse oximeter.

`make_patients(n, seed)` gives the demo's default mix: patient 1 normal; patient 2 desaturates
from 2 s down to ~84 %; patient 3 goes tachycardic (150 bpm) from 2 s, then bradycardic (40 bpm),
then back to normal; from patient 4 on most patients are normal and every tenth one has one event
(sensor off, motion, leads off, low battery, asystole, desaturation, tachycardia, bradycardia,
atrial fibrillation in turn; AF joined on 2026-11-26, which moved patients 90 and up one place) starting at a seeded time between 5 and 30 s. Patient k is `p-000k` and wears `ecg-000k` and
`oxi-000k`. The same (n, seed) always gives the same patients and the same bytes, and patient k
does not depend on n.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from hardware.patient import Patient
from hardware.scenario import Scenario, scenario
from hardware.wearables import Notification, VirtualDevice, VirtualEcgPatch, VirtualOximeter

__all__ = ["MonitoredPatient", "VirtualHome", "make_patients", "default_scenario"]

_ROTATION = (
    "sensor_off",
    "motion",
    "leads_off",
    "low_battery",
    "asystole",
    "desaturation",
    "tachycardia",
    "bradycardia",
    "af",
)


@dataclass(frozen=True, slots=True)
class MonitoredPatient:
    """A patient and the two wearables on them."""

    patient: Patient
    ecg: VirtualEcgPatch
    oximeter: VirtualOximeter

    @property
    def patient_id(self) -> str:
        return self.patient.patient_id

    @property
    def devices(self) -> tuple[VirtualDevice, VirtualDevice]:
        return (self.ecg, self.oximeter)


def default_scenario(number: int, seed: int = 0) -> Scenario:
    """The demo mix's scenario for patient `number` (1-based)."""
    if number == 1:
        return scenario("normal")
    if number == 2:
        return scenario("desaturation", start_s=2.0, target_pct=84.0)
    if number == 3:
        return scenario("tachy_brady", start_s=2.0, tachy_bpm=150.0, brady_bpm=40.0)
    if number % 10:
        return scenario("normal")
    rng = np.random.Generator(np.random.PCG64([seed, number, 7]))
    name = _ROTATION[(number // 10 - 1) % len(_ROTATION)]
    return scenario(name, start_s=round(5.0 + 25.0 * float(rng.random()), 1))


def make_patients(
    n: int,
    seed: int = 0,
    scenarios: Sequence[Scenario | str | None] | None = None,
) -> list[MonitoredPatient]:
    """n patients `p-0001`... with their wearables `ecg-0001`/`oxi-0001`...

    scenarios: optional per-patient overrides (index 0 is patient 1), each a `Scenario`, a preset
    name (started at 2 s) or None for the default mix; it may be shorter than n.
    """
    if n < 0 or n > 9999:
        raise ValueError("between 0 and 9999 patients")
    out: list[MonitoredPatient] = []
    for number in range(1, n + 1):
        given = scenarios[number - 1] if scenarios is not None and number <= len(scenarios) else None
        if isinstance(given, str):
            sc = scenario(given, start_s=2.0)
        elif given is None:
            sc = default_scenario(number, seed)
        else:
            sc = given
        u = np.random.Generator(np.random.PCG64([seed, number, 1])).random(4).tolist()
        patient = Patient(
            f"p-{number:04d}",
            seed=(seed, number),
            hr_bpm=round(62.0 + 20.0 * u[0]),
            spo2_pct=round(96.0 + 3.0 * u[1]),
            battery_pct=round(40.0 + 60.0 * u[2], 1),
            battery_drain_pct_per_h=round(1.5 + 2.5 * u[3], 2),
            scenario=sc,
        )
        ecg = VirtualEcgPatch(patient, f"ecg-{number:04d}")
        oxi = VirtualOximeter(patient, f"oxi-{number:04d}")
        out.append(MonitoredPatient(patient, ecg, oxi))
    return out


class VirtualHome:
    """All the wearables of a set of patients, advanced together."""

    def __init__(self, patients: Sequence[MonitoredPatient]) -> None:
        self.patients = list(patients)
        self.devices: list[VirtualDevice] = [d for p in self.patients for d in p.devices]
        self._by_id = {d.device_id: d for d in self.devices}
        if len(self._by_id) != len(self.devices):
            raise ValueError("device ids must be unique")

    @classmethod
    def create(
        cls, n: int, seed: int = 0, scenarios: Sequence[Scenario | str | None] | None = None
    ) -> VirtualHome:
        return cls(make_patients(n, seed, scenarios))

    def __iter__(self) -> Iterator[VirtualDevice]:
        return iter(self.devices)

    def __len__(self) -> int:
        return len(self.devices)

    def device(self, device_id: str) -> VirtualDevice:
        return self._by_id[device_id]

    def enrolment(self) -> dict[str, str]:
        """device id -> patient id, for enrolling the fleet."""
        return {d.device_id: d.patient_id for d in self.devices}

    def advance(self, seconds: float) -> list[Notification]:
        """Advance every device by `seconds`; notifications grouped by device, each in send order."""
        out: list[Notification] = []
        for d in self.devices:
            out.extend(d.advance(seconds))
        return out

    @property
    def readings_generated(self) -> int:
        return sum(d.readings_generated for d in self.devices)

    @property
    def frames_sent(self) -> int:
        return sum(d.frames_sent for d in self.devices)
