"""What ingest writes is what the catalogue declares: every measurement, tag and field of the line
protocol ingest produces (samples, chunks, device values, derived vitals, the operations board).

The dashboards and docs/contract.md are checked against nabz.catalogue; this closes the loop on
the writing side, so a field ingest adds or renames fails here, not as an empty panel."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from ingest.lines import chunk_lines_many, reading_lines, vitals_lines
from ingest.opsstats import GatewayState, Totals, ops_lines
from nabz.catalogue import MEASUREMENTS
from nabz.contract import (
    BatteryReading,
    DeviceHealth,
    EcgReading,
    HrReading,
    PpgReading,
    Reading,
    Spo2Reading,
    Vitals,
)

T = datetime(2026, 11, 27, 9, 0, 0, tzinfo=UTC)
WHO = {"v": 1, "site": "demo", "gateway": "gw-0001", "t": T}


def _parse(line: str) -> tuple[str, set[str], set[str]]:
    """(measurement, tag keys, field keys) of one line (no escaped spaces or commas in these)."""
    head, fields, _t = re.match(r'^(\S+) ((?:[^ "]|"[^"]*")+) (\d+)$', line).groups()  # type: ignore[union-attr]
    name, *tags = head.split(",")
    return name, {t.split("=")[0] for t in tags}, {f.split("=")[0] for f in re.split(r",(?=\w+=)", fields)}


def _readings() -> list[Reading]:
    return [
        EcgReading(**WHO, id="a" * 32, device="ecg-0001", seq=1, rate_hz=250, flags=["leads_off"],
                   signal_uv=[10, 12, -3]),
        PpgReading(**WHO, id="b" * 32, device="oxi-0001", seq=1, rate_hz=100, flags=["saturated"],
                   red_counts=[100, 101], ir_counts=[200, 201]),
        HrReading(**WHO, id="c" * 32, device="ecg-0001", hr_bpm=61, rr_ms=[980.0, 990.0]),
        Spo2Reading(**WHO, id="d" * 32, device="oxi-0001", spo2_pct=97, pr_bpm=62, pi_pct=3.1),
        BatteryReading(**WHO, id="e" * 32, device="oxi-0001", battery_pct=80),
    ]  # fmt: skip


def _vitals() -> list[Vitals]:
    every = {"hr_bpm": 60.0, "pr_bpm": 61.0, "spo2_pct": 96.0, "pi_pct": 2.0, "sqi": 0.9, "pause_s": 1.1,
             "af_score": 0.1, "hrv_sdnn_ms": 40.0, "hrv_rmssd_ms": 30.0, "resp_bpm": 16.0}  # fmt: skip
    return [
        Vitals(id="f" * 32, site="demo", patient="p-0001", device="ecg-0001", t=T, source=source, **every)  # type: ignore[arg-type]
        for source in ("ecg", "ppg", "device")
    ]


def _ops() -> list[str]:
    gw = GatewayState(
        "demo", "gw-0001", True, 3, 0.0, "", (DeviceHealth(device="ecg-0001", state="connected", battery_pct=80,
                                                           rssi_dbm=-60, device_state="ok", gap_frames=2),),
        ("oxi-0009",),
    )  # fmt: skip
    return ops_lines("demo", 0, Totals(1, 2, 3, 4), [gw], 1)


def test_every_line_ingest_writes_uses_only_declared_measurements_tags_and_fields() -> None:
    readings = _readings()
    lines = [
        *(line for r in readings for line in reading_lines(r, "p-0001")),
        *chunk_lines_many([(r, "p-0001") for r in readings]),
        *(line for v in _vitals() for line in vitals_lines(v)),
        *_ops(),
    ]
    written: dict[str, set[str]] = {}
    for line in lines:
        name, tags, fields = _parse(line)
        assert name in MEASUREMENTS, (
            f"ingest writes measurement {name!r}, which nabz.catalogue does not declare"
        )
        m = MEASUREMENTS[name]
        assert tags == set(m.tags), f"{name}: tags {sorted(tags)} written, {sorted(m.tags)} declared"
        assert fields <= set(m.fields), f"{name}: fields {sorted(fields - set(m.fields))} are not declared"
        written.setdefault(name, set()).update(fields)
    # and nothing declared is never written (a panel on it would stay empty)
    for name, fields in written.items():
        assert fields == set(MEASUREMENTS[name].fields), (
            name,
            sorted(set(MEASUREMENTS[name].fields) - fields),
        )
    assert set(written) == set(MEASUREMENTS), sorted(set(MEASUREMENTS) - set(written))
