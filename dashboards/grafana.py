"""Grafana dashboards as code (grafana-foundation-sdk, pinned to Grafana 11.6).

Rules of this file:
- Every Flux query is built by `flux()`, which takes measurement, field and tag names and checks
  them against nabz.catalogue — the same definitions ingest writes with — so a renamed field breaks
  the build here rather than a panel in production.
- Units come from the catalogue's Grafana units.
- SpO2 from the PPG is labelled uncalibrated wherever it is shown.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

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

__all__ = ["DATASOURCE_UID", "GRAFANA_VERSION", "FluxTarget", "flux", "build_all", "to_json", "SchemaError"]

GRAFANA_VERSION = "11.6.0"
DATASOURCE_UID = "nabz-influxdb"
DATASOURCE = model.DataSourceRef(type_val="influxdb", uid=DATASOURCE_UID)
BUCKET = "${bucket}"
STALE_AFTER_S = 300  # matches the alerts service's default stale-data limit


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
) -> str:
    """A Flux query over catalogue names; `where` values may be Grafana variables like ${patient}."""
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
        "  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)",
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
    query = f'import "influxdata/influxdb/schema"\nschema.tagValues(bucket: "{BUCKET}", tag: "{tag}")'
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


def ward_overview() -> db.Dashboard:
    """One tile per patient: latest HR, SpO2 (uncalibrated), signal quality, and time since last data."""
    vitals = flux(
        "vitals", ["hr_bpm", "spo2_pct", "sqi"], where={"patient": "${patient}"}, aggregate=None, last=True
    )
    since = flux(
        "vitals",
        ["sqi"],  # every derived-vitals point carries its signal quality, whatever else it has
        where={"patient": "${patient}"},
        aggregate=None,
        last=True,
        extra=[
            'map(fn: (r) => ({r with _value: float(v: uint(v: now()) - uint(v: r._time)) / 1000000000.0, _field: "seconds since data"}))',
            "min()",
        ],
    )
    tile = (
        stat.Panel()
        .title("$patient")
        .description(
            "Latest derived vitals. SpO2 is uncalibrated (not measured against a reference oximeter)."
        )
        .datasource(DATASOURCE)
        .with_target(FluxTarget(vitals))
        .repeat("patient")
        .repeat_direction("h")
        .max_per_row(4)
        .span(6)
        .height(5)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        .graph_mode(common.BigValueGraphMode.NONE)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .override_by_regexp(
            _field_regexp("spo2_pct"),
            [
                model.DynamicConfigValue(id_val="unit", value=_unit("spo2_pct")),
                model.DynamicConfigValue(id_val="displayName", value="SpO2 % (uncalibrated)"),
                model.DynamicConfigValue(
                    id_val="thresholds",
                    value=_thresholds((None, "red"), (88, "orange"), (92, "green")).build(),
                ),
            ],
        )
        .override_by_regexp(
            _field_regexp("hr_bpm"),
            [
                model.DynamicConfigValue(id_val="unit", value=_unit("hr_bpm")),
                model.DynamicConfigValue(id_val="displayName", value="HR /min"),
                model.DynamicConfigValue(
                    id_val="thresholds",
                    value=_thresholds(
                        (None, "red"), (41, "orange"), (51, "green"), (111, "orange"), (131, "red")
                    ).build(),
                ),
            ],
        )
        .override_by_regexp(
            _field_regexp("sqi"),
            [
                model.DynamicConfigValue(id_val="unit", value=_unit("sqi")),
                model.DynamicConfigValue(id_val="displayName", value="ECG signal quality"),
                model.DynamicConfigValue(
                    id_val="thresholds", value=_thresholds((None, "red"), (0.5, "green")).build()
                ),
            ],
        )
    )
    stale = (
        stat.Panel()
        .title("$patient: time since data")
        .description(f"Red after {STALE_AFTER_S // 60} min without data: the monitoring has gone quiet.")
        .datasource(DATASOURCE)
        .with_target(FluxTarget(since))
        .repeat("patient")
        .repeat_direction("h")
        .max_per_row(4)
        .span(6)
        .height(3)
        .unit("s")
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .thresholds(_thresholds((None, "green"), (60, "orange"), (STALE_AFTER_S, "red")))
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
        _series_panel(
            "Heart rate (ECG) and pulse rate (PPG)",
            flux("vitals", ["hr_bpm", "pr_bpm"], where=who),
            _unit("hr_bpm"),
        ),
        _series_panel(
            "SpO2 — uncalibrated (server PPG) and as reported by the oximeter",
            [flux("vitals", ["spo2_pct"], where=who), flux("device_vitals", ["spo2_pct"], where=who)],
            _unit("spo2_pct"),
        ),
        _series_panel("Signal quality", flux("vitals", ["sqi"], where=who), _unit("sqi"), span=6),
        _series_panel(
            "Battery", flux("device_vitals", ["battery_pct"], where=who), _unit("battery_pct"), span=6
        ),
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
        .with_panel(_series_panel("Gateway spool depth", spool, _unit("spool_depth"), span=24))
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
