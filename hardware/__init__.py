"""Virtual wearables for Nabz: simulated patients, an ECG patch and a pulse oximeter.

They send exactly the BLE notifications the firmware sends (bytes from the shared codec
`firmware.nabz_codec`), driven by scripted, seeded patients, so the gateway, ingest and alerts can
be run end to end without radios or people. Synthetic signals: see `hardware.ecg` and
`hardware.ppg` (the PPG's SpO2 follows the same uncalibrated 110 - 25 R line as the server).

Typical use (the gateway's virtual transport)::

    from hardware import make_patients
    fleet = make_patients(3, seed=1)
    for p in fleet:
        for device in p.devices:
            notifications = device.advance(1.0)
"""

from hardware.ecg import ECG_RANGE_UV, ECG_RATE_HZ, EcgSynth
from hardware.heart import Heart
from hardware.home import MonitoredPatient, VirtualHome, default_scenario, make_patients
from hardware.patient import LOW_BATTERY_PCT, Patient, Physiology
from hardware.ppg import PPG_MAX_COUNTS, PPG_RATE_HZ, PpgSynth, ratio_from_spo2, spo2_from_ratio
from hardware.scenario import SCENARIO_NAMES, Event, EventKind, Scenario, scenario
from hardware.wearables import (
    CHAR_BATTERY_LEVEL,
    CHAR_CONTROL,
    CHAR_ECG_WAVEFORM,
    CHAR_HEART_RATE,
    CHAR_PLX_CONTINUOUS,
    CHAR_PPG_WAVEFORM,
    DEFAULT_MTU,
    DeviceKind,
    Notification,
    VirtualDevice,
    VirtualEcgPatch,
    VirtualOximeter,
    uuid128,
)

__all__ = [
    "CHAR_BATTERY_LEVEL",
    "CHAR_CONTROL",
    "CHAR_ECG_WAVEFORM",
    "CHAR_HEART_RATE",
    "CHAR_PLX_CONTINUOUS",
    "CHAR_PPG_WAVEFORM",
    "DEFAULT_MTU",
    "ECG_RANGE_UV",
    "ECG_RATE_HZ",
    "LOW_BATTERY_PCT",
    "PPG_MAX_COUNTS",
    "PPG_RATE_HZ",
    "SCENARIO_NAMES",
    "DeviceKind",
    "EcgSynth",
    "Event",
    "EventKind",
    "Heart",
    "MonitoredPatient",
    "Notification",
    "Patient",
    "Physiology",
    "PpgSynth",
    "Scenario",
    "VirtualDevice",
    "VirtualEcgPatch",
    "VirtualHome",
    "VirtualOximeter",
    "default_scenario",
    "make_patients",
    "ratio_from_spo2",
    "scenario",
    "spo2_from_ratio",
    "uuid128",
]
