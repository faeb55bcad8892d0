"""Which series each Grafana panel returns, and what it calls each, for patients run through
ingest's real line output (no Grafana or Flux engine installs here: the generated queries'
filters are applied to the points ingest writes, the way Flux would, and Grafana's field
overrides are resolved the way it resolves them).

`vitals` has one series per `source` (ecg, ppg, device): a panel that named every match of a
field alike showed "HR" twice and the oximeter's SpO2 and the PPG's uncalibrated estimate under
one label (fixed 2026-11-28)."""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from dashboards.grafana import PATIENT_LIST_RANGE, build_all
from gateway.decode import Decoder, Notification
from hardware import make_patients
from ingest.pipeline import IngestCore, Message
from ingest.store import Store
from nabz import contract
from nabz.config import AlertsConfig

Series = tuple[str, str, tuple[tuple[str, str], ...]]  # measurement, field, tags (sorted)

FULL, DEVICE_ONLY = "p-0001", "p-0002"  # ECG patch + oximeter, all streams; standard services only


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, lines: list[str]) -> None:
        self.lines.extend(lines)


@pytest.fixture(scope="module")
def written() -> set[Series]:
    """The series ingest writes for 20 s of two simulated patients: p-0001 with an ECG patch and
    an oximeter sending everything, p-0002 whose wearables send no waveforms (a Heart Rate Service
    strap and a PLX oximeter: hr, spo2, battery)."""
    sink = _Lines()
    patients = make_patients(2, seed=3, scenarios=["normal", "normal"])
    enrolment = {d.device_id: p.patient_id for p in patients for d in p.devices}
    t0 = int(time.time()) - 60
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "s.sqlite")
        core = IngestCore(store, sink=sink, enrolment=enrolment)
        decoder = Decoder("demo", "gw-0001")
        for s in range(20):
            batch = []
            for p in patients:
                for d in p.devices:
                    for n in d.advance(1.0):
                        r = decoder.decode(
                            Notification(n.device_id, n.char_uuid, n.data, (t0 + s) * 1_000_000)
                        )
                        if r is None or isinstance(r, list):
                            continue
                        stream = contract.stream_of(r)
                        if p.patient_id == DEVICE_ONLY and stream in ("ecg", "ppg"):
                            continue
                        topic = contract.reading_topic("demo", "gw-0001", r.device, stream)
                        batch.append(Message(topic, contract.encode(r), t0 + s + 0.1))
            core.handle_batch(batch)
        store.close()
    out: set[Series] = set()
    for line in sink.lines:
        head, fields, _ = line.rsplit(" ", 2)
        measurement, *tags = head.split(",")
        tag_pairs = tuple(sorted((k, v) for k, v in (t.split("=", 1) for t in tags)))
        for name in re.findall(r"(?:^|,)(\w+)=", fields):
            out.add((measurement, name, tag_pairs))
    sources = {dict(t)["source"] for m, _, t in out if m == "vitals" and dict(t)["patient"] == FULL}
    assert sources == {"ecg", "ppg", "device"}, sources  # the fixture shows what it should
    return out


def _returned(query: str, written: set[Series], patient: str) -> list[Series]:
    """The series a generated Flux query returns for `patient` (${patient} set to it): each
    `from` pipeline's filters applied to the written series; a `group()` makes one of them all."""
    found: list[Series] = []
    for block in query.split("from(bucket:")[1:]:
        (measurement,) = re.findall(r'r\._measurement == "([^"]+)"', block)
        fields = set(re.findall(r'r\._field == "([^"]+)"', block))
        equal = dict(re.findall(r'r\.([a-z]\w*) == "([^"]*)"', block))
        for tag, variable in re.findall(r"r\.([a-z]\w*) =~ /\^\$\{(\w+):regex\}\$/", block):
            assert variable == "patient", block
            equal[tag] = patient
        for m, f, tags in sorted(written):
            t = dict(tags)
            if m == measurement and f in fields and all(t.get(k) == v for k, v in equal.items()):
                found.append((m, f, tags))
    tail = query.rsplit("from(bucket:", 1)[-1]
    if "|> group()" in tail and found:
        return [("(grouped)", "", ())]
    return found


def _grafana_name(series: Series) -> str:
    """Grafana's own name for a Flux series: its field and its tags, e.g. `hr_bpm {source="ecg"}`."""
    _, field, tags = series
    labels = ", ".join(f'{k}="{v}"' for k, v in tags)
    return f"{field} {{{labels}}}"


def _display(panel: dict[str, Any], ref_id: str, series: Series) -> tuple[str | None, dict[str, Any]]:
    """(display name, field config) Grafana gives a series from query `ref_id`: the defaults, then
    each matching override in order (a later one wins)."""
    config = dict(panel["fieldConfig"]["defaults"])
    for o in panel["fieldConfig"]["overrides"]:
        kind, option = o["matcher"]["id"], o["matcher"]["options"]
        if (
            (kind == "byFrameRefID" and option == ref_id)
            or (kind == "byRegexp" and re.search(option.strip("/"), _grafana_name(series)))
            or (kind == "byName" and option == _grafana_name(series))
        ):
            config.update({p["id"]: p["value"] for p in o["properties"]})
    name = config.get("displayName")
    if name is not None:
        name = re.sub(r"\$\{__field\.labels\.(\w+)\}", lambda m: dict(series[2]).get(m.group(1), ""), name)
    return name, config


def _shown(
    panel: dict[str, Any], written: set[Series], patient: str = FULL
) -> list[tuple[Series, str | None, dict[str, Any]]]:
    out = []
    for target in panel["targets"]:
        for series in _returned(target["query"], written, patient):
            out.append((series, *_display(panel, target["refId"], series)))
    return out


@pytest.fixture(scope="module")
def panels() -> dict[str, dict[str, Any]]:
    built = build_all()
    return {p["title"]: p for d in ("nabz-ward", "nabz-patient") for p in built[d]["panels"]}


VITALS_PANELS = ("$patient", "Heart rate", "SpO2", "Signal quality", "Battery")


def _panel(panels: dict[str, dict[str, Any]], start: str) -> dict[str, Any]:
    (panel,) = [p for title, p in panels.items() if title.startswith(start) and "since data" not in title]
    return panel


# The words that say where a `vitals` value came from.
SOURCE_WORDS = {"ecg": ("ECG",), "ppg": ("PPG",), "device": ("oximeter", "patch/strap")}


@pytest.mark.parametrize("start", VITALS_PANELS)
def test_every_series_a_vitals_panel_returns_has_a_name_of_its_own_saying_its_source(
    panels: dict[str, dict[str, Any]], written: set[Series], start: str
) -> None:
    shown = _shown(_panel(panels, start), written)
    assert shown, start
    names = [name for _, name, _ in shown]
    assert None not in names, shown
    assert len(set(names)) == len(names), f"{start}: two series under one name: {names}"
    for (measurement, _, tags), name, _ in shown:
        assert name is not None
        t = dict(tags)
        if measurement == "vitals":
            assert any(w in name for w in SOURCE_WORDS[t["source"]]), (name, t)
        elif "device" in t:
            assert t["device"] in name, (name, t)


def test_the_ward_tile_shows_each_value_once_from_each_source(
    panels: dict[str, dict[str, Any]], written: set[Series]
) -> None:
    shown = {(f, dict(t)["source"]): name for (_, f, t), name, _ in _shown(panels["$patient"], written)}
    assert shown == {
        ("hr_bpm", "ecg"): "HR (ECG)",
        ("hr_bpm", "device"): "HR (patch/strap)",
        ("spo2_pct", "device"): "SpO2 (oximeter)",
        ("spo2_pct", "ppg"): "SpO2 PPG estimate (uncalibrated)",
        ("sqi", "ecg"): "ECG signal quality",
        ("sqi", "ppg"): "PPG signal quality",
    }


def test_the_ppg_spo2_estimate_is_labelled_uncalibrated_per_series_and_the_oximeter_is_not_it(
    panels: dict[str, dict[str, Any]], written: set[Series]
) -> None:
    """Not "uncalibrated" somewhere in the panel: on the PPG estimate's own series, and never on
    the oximeter's reading, which must not pass for the estimate or the estimate for it."""
    seen = set()
    for title, panel in panels.items():
        for (measurement, field, tags), name, _ in _shown(panel, written):
            if field != "spo2_pct":
                continue
            assert measurement == "vitals" and name is not None, (title, measurement, name)
            source = dict(tags)["source"]
            seen.add((title, source))
            if source == "ppg":
                assert "PPG estimate" in name and "(uncalibrated)" in name, (title, name)
            else:
                assert source == "device" and "oximeter" in name and "PPG" not in name, (title, name)
    assert {s for _, s in seen} == {"ppg", "device"} and len(seen) == 4, seen  # ward tile, SpO2 panel


def _colour(steps: list[dict[str, Any]], x: float) -> str:
    colour = steps[0]["color"]
    for step in steps[1:]:
        if x >= step["value"]:
            colour = step["color"]
    return colour


def test_the_ward_colours_are_the_default_alarm_limits(
    panels: dict[str, dict[str, Any]], written: set[Series]
) -> None:
    """Orange where the alarm rules' default medium alarm starts, red where the high one starts
    (strictly beyond the limit, alerts.rules.BandRule); not NEWS2's bands."""
    a = AlertsConfig()
    want = {
        "hr_bpm": [
            (a.hr_critical_low_bpm - 1, "red"), (a.hr_critical_low_bpm, "orange"),
            (a.hr_low_bpm - 1, "orange"), (a.hr_low_bpm, "green"), (111, "green"),
            (a.hr_high_bpm, "green"), (a.hr_high_bpm + 1, "orange"),
            (a.hr_critical_high_bpm, "orange"), (a.hr_critical_high_bpm + 1, "red"),
        ],
        "spo2_pct": [
            (a.spo2_critical_pct - 1, "red"), (a.spo2_critical_pct, "orange"),
            (a.spo2_low_pct - 1, "orange"), (a.spo2_low_pct, "green"),
        ],
        "sqi": [(a.min_sqi - 0.01, "red"), (a.min_sqi, "green")],
    }  # fmt: skip
    for (_, field, _), name, config in _shown(panels["$patient"], written):
        steps = config["thresholds"]["steps"]
        assert [(x, _colour(steps, x)) for x, _ in want[field]] == want[field], name


def test_time_since_data_is_one_value_per_patient_from_any_of_their_data_red_when_there_is_none(
    written: set[Series],
) -> None:
    """A patient whose wearables send no waveforms has no `sqi`; one silent for longer than the
    dashboard's hour has nothing in it: both must show an age, or a red NO DATA, never a
    normal-coloured "No data"."""
    built = build_all()
    ward = built["nabz-ward"]
    (panel,) = [p for p in ward["panels"] if "since data" in p["title"]]
    (target,) = panel["targets"]
    query = target["query"]
    for patient in (FULL, DEVICE_ONLY):
        assert _returned(query, written, patient) == [("(grouped)", "", ())], patient  # one value each
    measurements = set(re.findall(r'r\._measurement == "([^"]+)"', query))
    assert measurements == {"vitals", "device_vitals"}
    # a fixed range, the one the patient list is drawn from, not the dashboard's hour
    assert "v.timeRangeStart" not in query
    assert query.count(f"range(start: {PATIENT_LIST_RANGE})") == 2
    (patients,) = [v for v in ward["templating"]["list"] if v["name"] == "patient"]
    assert f"start: {PATIENT_LIST_RANGE}" in patients["query"]
    defaults = panel["fieldConfig"]["defaults"]
    steps = defaults["thresholds"]["steps"]
    # Grafana draws noValue in the colour of the base step (displayProcessor: scaleFunc(-Infinity))
    assert defaults["noValue"] == "NO DATA" and steps[0] == {"color": "red", "value": None}
    assert _colour(steps, 0) == "green" and _colour(steps, AlertsConfig().stale_after_s) == "red"
    assert _colour(steps, AlertsConfig().stale_after_s - 1) != "red"
