"""Grafana dashboards as code (grafana-foundation-sdk, pinned to Grafana 11.6).

Rules of this file:
- Every Flux query is built by `flux()`, which takes measurement, field and tag names and checks
  them against nabz.catalogue — the same definitions ingest writes with — so a renamed field breaks
  the build here rather than a panel in production.
- Units come from the catalogue's Grafana units.
- SpO2 from the PPG is labelled uncalibrated wherever it is shown.
- `vitals` has one series per `source` (ecg, ppg, device): a panel asks for each source's value
  with its own query and names it by that query (`_per_source`), so no two values share a label
  and the PPG's SpO2 estimate never passes for the oximeter's reading.
- Colour bands are the alarm rules' default limits (nabz.config.AlertsConfig), not NEWS2 bands:
  a value turns orange where the default medium alarm starts, red where the high one starts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import stat, statetimeline, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

from ingest.lines import WAVE_FLAGS, flags_of
from ingest.opsstats import DEVICE_STATE_CODES, LINK_CODES
from nabz.catalogue import MEASUREMENTS, QUANTITIES
from nabz.config import AlertsConfig

__all__ = ["DATASOURCE_UID", "GRAFANA_VERSION", "FluxTarget", "flux", "build_all", "to_json", "SchemaError"]

GRAFANA_VERSION = "11.6.0"
DATASOURCE_UID = "nabz-influxdb"
DATASOURCE = model.DataSourceRef(type_val="influxdb", uid=DATASOURCE_UID)
BUCKET = "${bucket}"
_ALARMS = AlertsConfig()  # the alarm rules' defaults (a patient's own limits are not shown here)
STALE_AFTER_S = _ALARMS.stale_after_s  # the alerts service's default stale-data limit (300 s)
# How far back the ward's patient list looks (schema.tagValues' own default, made explicit), and
# so how far back "time since data" looks: a listed patient silent that long shows NO DATA.
PATIENT_LIST_RANGE = "-30d"


_P = TypeVar("_P", stat.Panel, timeseries.Panel)  # the panels `_per_source` adds queries to


class SchemaError(ValueError):
    """A dashboard query names a measurement, field or tag that ingest does not write."""


class FluxQuery(cogvariants.Dataquery):
    def __init__(self, ref_id: str, query: str) -> None:
        self.ref_id = ref_id
        self.query = query

    def to_json(self) -> dict[str, object]:
        return {
            "refId": self.ref_id,
            "query": self.query,
            "datasource": {"type": "influxdb", "uid": DATASOURCE_UID},
        }


class FluxTarget(cogbuilder.Builder[cogvariants.Dataquery]):
    def __init__(self, query: str, ref_id: str = "A") -> None:
        self._query = FluxQuery(ref_id, query)

    def build(self) -> cogvariants.Dataquery:
        return self._query


def flux(
    measurement: str,
    fields: Sequence[str],
    *,
    where: dict[str, str] | None = None,
    aggregate: str | None = "mean",
    last: bool = False,
    extra: Sequence[str] = (),
    start: str | None = None,
) -> str:
    """A Flux query over catalogue names; `where` values may be Grafana variables like ${patient}.
    `start` (e.g. "-30d") replaces the dashboard's time range by a fixed one."""
    m = MEASUREMENTS.get(measurement)
    if m is None:
        raise SchemaError(f"no measurement {measurement!r} in the catalogue")
    unknown = [f for f in fields if f not in m.fields]
    if unknown:
        raise SchemaError(f"{measurement} has no fields {unknown}; it has {list(m.fields)}")
    bad_tags = [t for t in (where or {}) if t not in m.tags]
    if bad_tags:
        raise SchemaError(f"{measurement} has no tags {bad_tags}; it has {list(m.tags)}")
    lines = [
        f'from(bucket: "{BUCKET}")',
        f"  |> range(start: {start})"
        if start
        else "  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)",
        f'  |> filter(fn: (r) => r._measurement == "{measurement}")',
        "  |> filter(fn: (r) => " + " or ".join(f'r._field == "{f}"' for f in fields) + ")",
    ]
    for tag, value in (where or {}).items():
        if value.startswith("${") and value.endswith("}"):
            # A Grafana variable, single or multi-valued: its :regex format matches either.
            lines.append(f"  |> filter(fn: (r) => r.{tag} =~ /^${{{value[2:-1]}:regex}}$/)")
        else:
            lines.append(f'  |> filter(fn: (r) => r.{tag} == "{value}")')
    if last:
        lines.append("  |> last()")
    elif aggregate:
        lines.append(f"  |> aggregateWindow(every: v.windowPeriod, fn: {aggregate}, createEmpty: false)")
    lines.extend(f"  |> {step}" for step in extra)
    return "\n".join(lines)


def _field_regexp(field: str) -> str:
    # Grafana names a Flux series after its _field plus its tags, e.g. `hr_bpm {patient="p-0001"}`.
    return f"/^{field}\\b.*/"


def _unit(field: str) -> str:
    return QUANTITIES[field].grafana_unit


def _thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=v, color=c) for v, c in steps])
    )


def _patient_variable(multi: bool) -> db.QueryVariable:
    return _tag_variable("patient", "Patient", multi)


def _tag_variable(tag: str, label: str, multi: bool) -> db.QueryVariable:
    """A variable listing the values of `tag` in the bucket (all of them, for a multi one)."""
    query = (
        'import "influxdata/influxdb/schema"\n'
        f'schema.tagValues(bucket: "{BUCKET}", tag: "{tag}", start: {PATIENT_LIST_RANGE})'
    )
    return (
        db.QueryVariable(tag)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(multi)
        .include_all(multi)
    )


def _bucket_variable() -> db.ConstantVariable:
    return db.ConstantVariable("bucket").value("nabz")


def _base(uid: str, title: str, description: str) -> db.Dashboard:
    return (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["nabz"])
        .timezone("browser")
        .refresh("10s")
        .time("now-1h", "now")
        .with_variable(_bucket_variable())
    )


# Each value a panel shows from `vitals`, by (field, source), with the one label it is shown
# under. `vitals` holds one series per source, so the same field comes from several: the ECG's
# heart rate and the one the wearable computed itself (an ECG patch's or a chest strap's, Heart
# Rate Service); the oximeter's own SpO2 and pulse and the server's estimate from its raw PPG
# (uncalibrated: not measured against a reference oximeter; the oximeter's own reading is its
# maker's calibration). The station's trends name them alike (dashboards/station/app.py).
SOURCE_LABELS: dict[tuple[str, str], str] = {
    ("hr_bpm", "ecg"): "HR (ECG)",
    ("hr_bpm", "device"): "HR (patch/strap)",
    ("pr_bpm", "device"): "Pulse rate (oximeter)",
    ("pr_bpm", "ppg"): "Pulse rate (PPG)",
    ("spo2_pct", "device"): "SpO2 (oximeter)",
    ("spo2_pct", "ppg"): "SpO2 PPG estimate (uncalibrated)",
    ("sqi", "ecg"): "ECG signal quality",
    ("sqi", "ppg"): "PPG signal quality",
}


def _above(limit: float) -> float:
    # Grafana colours a value from the step it reaches (>=); a "high" alarm starts strictly above
    # its limit (alerts.rules.BandRule), so the step goes just above it: 130 /min is not orange.
    return math.nextafter(limit, math.inf)


def _hr_bands() -> db.ThresholdsConfig:
    a = _ALARMS
    return _thresholds(
        (None, "red"),
        (a.hr_critical_low_bpm, "orange"),
        (a.hr_low_bpm, "green"),
        (_above(a.hr_high_bpm), "orange"),
        (_above(a.hr_critical_high_bpm), "red"),
    )


def _band_props(field: str) -> list[model.DynamicConfigValue]:
    """Unit, and colours at the default alarm limits (a "low" alarm starts strictly below its
    limit, as Grafana's steps do); signal quality below min_sqi is not used by the alarms."""
    a = _ALARMS
    bands = {
        "hr_bpm": _hr_bands(),
        "pr_bpm": _hr_bands(),
        "spo2_pct": _thresholds((None, "red"), (a.spo2_critical_pct, "orange"), (a.spo2_low_pct, "green")),
        "sqi": _thresholds((None, "red"), (a.min_sqi, "green")),
    }[field]
    return [
        model.DynamicConfigValue(id_val="unit", value=_unit(field)),
        model.DynamicConfigValue(id_val="thresholds", value=bands.build()),
    ]


def _per_source(
    panel: _P,
    values: Sequence[tuple[str, str]],
    *,
    last: bool,
    props: Callable[[str], list[model.DynamicConfigValue]] | None = None,
) -> _P:
    """One query per (field, source) of `vitals`, for the patient in ${patient}, each named by an
    override on its own query (byFrameRefID) with its label from SOURCE_LABELS: names taken
    from Grafana's series names (`hr_bpm {source="ecg", ...}`) would need regexps on its label
    formatting, and one regexp per field named every source alike."""
    for i, (name, source) in enumerate(values):
        ref = chr(ord("A") + i)
        query = flux(
            "vitals",
            [name],
            where={"patient": "${patient}", "source": source},
            aggregate=None if last else "mean",
            last=last,
        )
        named = [model.DynamicConfigValue(id_val="displayName", value=SOURCE_LABELS[name, source])]
        panel = panel.with_target(FluxTarget(query, ref_id=ref)).override_by_query(
            ref, named + (props(name) if props else [])
        )
    return panel


def _since_query() -> str:
    """Seconds since the newest point of any kind from the patient (`vitals` of every source and
    `device_vitals`, battery included, as the stale-data alarm counts any message), over
    PATIENT_LIST_RANGE rather than the dashboard's hour: one value per patient, or none."""
    who = {"patient": "${patient}"}
    # last() per series; only its time is kept, so that series of float and bool fields
    # (spo2_calibrated) can be put in one table by group()
    keep = ['keep(columns: ["_time"])']
    derived = flux(
        "vitals",
        ["hr_bpm", "pr_bpm", "spo2_pct", "pi_pct", "sqi"],
        where=who, aggregate=None, last=True, extra=keep, start=PATIENT_LIST_RANGE,
    )  # fmt: skip
    own = flux(
        "device_vitals",
        ["hr_bpm", "spo2_pct", "pr_bpm", "pi_pct", "battery_pct"],
        where=who, aggregate=None, last=True, extra=keep, start=PATIENT_LIST_RANGE,
    )  # fmt: skip
    return "\n".join(
        [
            "derived = " + derived,
            "own = " + own,
            "union(tables: [derived, own])",
            "  |> group()",
            '  |> sort(columns: ["_time"])',
            '  |> last(column: "_time")',
            "  |> map(fn: (r) => ({_time: r._time, _value: float(v: int(v: now()) - int(v: r._time)) / 1000000000.0}))",
            # a reading dated ahead of the server's clock (a gateway clock running fast) is fresh
            "  |> map(fn: (r) => ({r with _value: if r._value < 0.0 then 0.0 else r._value}))",
        ]
    )


def ward_overview() -> db.Dashboard:
    """One tile per patient: the latest value of each vital from each source, each under its own
    label (SOURCE_LABELS), and time since the patient's last data."""
    tile = (
        stat.Panel()
        .title("$patient")
        .description(
            "Latest derived vitals of the last hour, each from its source: HR from the ECG and as the "
            "ECG patch or chest strap computed it; SpO2 as the oximeter measured it, and the server's "
            "estimate from the raw PPG, which is uncalibrated (not measured against a reference "
            "oximeter); signal quality of the ECG and of the PPG. Colours: the default alarm limits "
            "(orange from the medium alarm's, red from the high one's), not the patient's own."
        )
        .datasource(DATASOURCE)
        .repeat("patient")
        .repeat_direction("h")
        .max_per_row(4)
        .span(6)
        .height(6)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        .graph_mode(common.BigValueGraphMode.NONE)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        # nothing in the last hour: Grafana draws noValue in the base step's colour
        .no_value("NO DATA")
        .thresholds(_thresholds((None, "red")))
    )
    tile = _per_source(
        tile,
        [("hr_bpm", "ecg"), ("hr_bpm", "device"), ("spo2_pct", "device"), ("spo2_pct", "ppg"),
         ("sqi", "ecg"), ("sqi", "ppg")],
        last=True,
        props=_band_props,
    )  # fmt: skip
    stale = (
        stat.Panel()
        .title("$patient: time since data")
        .description(
            f"Since the newest data of any of the patient's wearables (over {PATIENT_LIST_RANGE[1:]}). "
            f"Red after {STALE_AFTER_S / 60:.0f} min, the alerts' default stale-data limit: the "
            "monitoring has gone quiet. NO DATA (red): nothing at all in that time."
        )
        .datasource(DATASOURCE)
        .with_target(FluxTarget(_since_query()))
        .repeat("patient")
        .repeat_direction("h")
        .max_per_row(4)
        .span(6)
        .height(3)
        .unit("s")
        .display_name("since data")
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        # no value at all: Grafana draws noValue in the base step's colour, so the base is red
        .no_value("NO DATA")
        .thresholds(_thresholds((None, "red"), (0, "green"), (60, "orange"), (STALE_AFTER_S, "red")))
    )
    return (
        _base("nabz-ward", "Nabz — ward overview", "Every monitored patient at a glance.")
        .with_variable(_patient_variable(multi=True))
        .with_panel(tile)
        .with_panel(stale)
    )


def _series_panel(
    title: str, query: str | Sequence[str], unit: str, *, span: int = 12, height: int = 8
) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).datasource(DATASOURCE).unit(unit).span(span).height(height)
    for i, q in enumerate([query] if isinstance(query, str) else query):
        panel = panel.with_target(FluxTarget(q, ref_id=chr(ord("A") + i)))
    return panel.span_nulls(False)


def _flag_names(mask: int) -> str:
    return ", ".join(name.replace("_", " ") for name in flags_of(mask))  # as ingest stored the mask


def _raw_panel(title: str, measurement: str, field: str, who: dict[str, str]) -> timeseries.Panel:
    """A raw waveform with its messages' flags (leads off, saturated, sensor off, ...) as red
    points on a right-hand axis, named in the tooltip: a flat line marked "leads off" is a lead
    that came off, not an asystole (the flags are stored on each flagged message's first sample:
    docs/storage.md)."""
    every_mask = {
        str(mask): model.ValueMappingResult(text=_flag_names(mask), color="red")
        for mask in range(1, 1 << len(WAVE_FLAGS))
    }
    return (
        _series_panel(
            title,
            [
                flux(measurement, [field], where=who, aggregate=None),
                flux(measurement, ["flags"], where=who, aggregate=None),
            ],
            _unit(field),
            height=6,
        )
        .description(
            "Raw samples. Red points on the right axis: the device flagged those samples "
            "(leads off, saturated, sensor off, low battery, resent, gap before); hover for the names. "
            "A flat line marked leads off is not an asystole."
        )
        .time_from("10s")
        .override_by_regexp(
            _field_regexp("flags"),
            [
                model.DynamicConfigValue(id_val="displayName", value="flags"),
                model.DynamicConfigValue(id_val="unit", value="none"),
                model.DynamicConfigValue(id_val="custom.drawStyle", value="points"),
                model.DynamicConfigValue(id_val="custom.pointSize", value=9),
                model.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
                model.DynamicConfigValue(id_val="custom.axisLabel", value="flags"),
                model.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": "red"}),
                model.DynamicConfigValue(
                    id_val="mappings", value=[model.ValueMap(options=every_mask).to_json()]
                ),
            ],
        )
    )


def patient_detail() -> db.Dashboard:
    """One patient's trends, raw ECG and PPG, RR intervals and battery."""
    who = {"patient": "${patient}"}
    panels = [
        _per_source(
            _series_panel("Heart rate and pulse rate", [], _unit("hr_bpm")).description(
                "HR from the ECG and as the ECG patch or chest strap computed it; pulse rate as the "
                "oximeter measured it and from the raw PPG."
            ),
            [("hr_bpm", "ecg"), ("hr_bpm", "device"), ("pr_bpm", "device"), ("pr_bpm", "ppg")],
            last=False,
        ),
        _per_source(
            _series_panel(
                "SpO2: oximeter, and PPG estimate (uncalibrated)", [], _unit("spo2_pct")
            ).description(
                "The oximeter's own reading, and the server's estimate from the raw PPG, which is "
                "uncalibrated (not measured against a reference oximeter)."
            ),
            [("spo2_pct", "device"), ("spo2_pct", "ppg")],
            last=False,
        ),
        _per_source(
            _series_panel("Signal quality", [], _unit("sqi"), span=6),
            [("sqi", "ecg"), ("sqi", "ppg")],
            last=False,
        ),
        _series_panel(
            "Battery", flux("device_vitals", ["battery_pct"], where=who), _unit("battery_pct"), span=6
        ).display_name("Battery ${__field.labels.device}"),  # one series per wearable
        _series_panel("RR intervals", flux("rr", ["rr_ms"], where=who, aggregate=None), _unit("rr_ms")),
        _raw_panel("ECG (raw, last 10 s)", "ecg", "signal_uv", who),
        _raw_panel("PPG infrared (raw, last 10 s)", "ppg", "ir_counts", who),
    ]
    dash = _base(
        "nabz-patient", "Nabz — patient detail", "Trends and raw signals for one patient."
    ).with_variable(_patient_variable(multi=False))
    for p in panels:
        dash = dash.with_panel(p)
    return dash


def operations() -> db.Dashboard:
    """Is the monitoring itself healthy: ingest rate, dead letters, spools, gateways."""
    rate = flux(
        "ingest_stats",
        ["stored_readings"],
        aggregate=None,
        extra=["derivative(unit: 1s, nonNegative: true)"],
    )
    dead = flux("ingest_stats", ["dead_letters", "duplicates"], aggregate=None, extra=["increase()"])
    # At scale there are hundreds of gateways and thousands of wearables: the gateway variable
    # (all of them by default) narrows the per-gateway and per-wearable panels to a few homes.
    gw = {"gateway": "${gateway}"}
    spool = flux("gateway_status", ["spool_depth"], where=gw, aggregate="max")
    # wearables whose readings nobody on the server takes (not enrolled, or no ingest worker
    # subscribed): kept at the gateway, their patients unmonitored until it is put right
    held = flux("gateway_status", ["held"], where=gw, aggregate="max")
    # the worst of each interval: a gateway offline for a moment shows, not only its last state
    online = flux("gateway_status", ["online"], where=gw, aggregate="min")
    gateways = (
        statetimeline.Panel()
        .title("Gateways online")
        .datasource(DATASOURCE)
        .with_target(FluxTarget(online))
        .span(24)
        .height(6)
        .mappings(
            [
                model.ValueMap(
                    options={
                        "0": model.ValueMappingResult(text="offline", color="red"),
                        "1": model.ValueMappingResult(text="online", color="green"),
                    }
                )
            ]
        )
    )
    return (
        _base(
            "nabz-ops",
            "Nabz — operations",
            "Ingest throughput, dead letters, gateway spools and status, and each wearable's link and state.",
        )
        .with_variable(_tag_variable("gateway", "Gateway", multi=True))
        .with_panel(_series_panel("Readings stored per second", rate, "short", span=12))
        .with_panel(_series_panel("Dead letters and duplicates", dead, _unit("dead_letters"), span=12))
        .with_panel(_series_panel("Gateway spool depth", spool, _unit("spool_depth"), span=12))
        .with_panel(
            _series_panel("Wearables held at the gateway (nobody takes their readings)", held, _unit("held"))
            .description(
                "Wearables whose readings no ingest worker takes (the broker answers 'no matching "
                "subscribers'): not enrolled, or ingest not subscribed. The gateway keeps their readings "
                "and retries; their patients are not monitored until this is 0. `nabz gateway status` "
                "on the gateway names them."
            )
        )
        .with_panel(gateways)
        .with_panel(
            _device_timeline(
                "Wearables: link to their gateway", "link", LINK_CODES,
                {"connecting": "blue", "connected": "green", "reconnecting": "orange", "lost": "red"},
            )
        )
        .with_panel(
            _device_timeline(
                "Wearables: what they say of themselves", "device_state", DEVICE_STATE_CODES,
                {"ok": "green", "low_battery": "orange", "battery_critical": "red", "sensor_fault": "red"},
            )
        )
    )  # fmt: skip


def _device_timeline(
    title: str, field: str, codes: dict[str, int], colors: dict[str, str]
) -> statetimeline.Panel:
    """One row per wearable of the chosen gateways (their status, written by ingest as
    `device_status`): each state's code shown as its name, in its colour. The codes grow with
    how bad the state is (but `connecting`, the first moments of a link), so an interval shows
    the worst state reported in it: a wearable lost for a few seconds is not hidden by the
    connected state before and after."""
    return (
        statetimeline.Panel()
        .title(title)
        .description(
            "Each wearable of the chosen gateways as they reported it, the worst state of each interval;"
            " no row while its gateway is offline."
        )
        .datasource(DATASOURCE)
        .with_target(
            FluxTarget(flux("device_status", [field], where={"gateway": "${gateway}"}, aggregate="max"))
        )
        .span(12)
        .height(8)
        .mappings(
            [
                model.ValueMap(
                    options={
                        str(code): model.ValueMappingResult(text=state.replace("_", " "), color=colors[state])
                        for state, code in codes.items()
                    }
                )
            ]
        )
    )


def build_all() -> dict[str, dict[str, Any]]:
    """uid -> dashboard JSON (as Grafana's import API and file provisioning take it)."""
    out: dict[str, dict[str, Any]] = {}
    for make in (ward_overview, patient_detail, operations):
        d = json.loads(to_json(make().build()))
        out[d["uid"]] = d
    return out


def to_json(obj: object) -> str:
    return json.dumps(obj, cls=JSONEncoder, indent=2, sort_keys=True)
