"""What ingest tells operators about the pipeline itself: the `ingest_stats`, `gateway_status` and
`device_status` points for the Grafana operations board, and its `/metrics` and `/healthz`. Pure, except for the
small `Rates` window that keeps recent totals.

Rules of this file:
- Gateways' retained status messages (`nabz/v1/<site>/gw/<gateway>/status`) are kept here as the
  latest per gateway: online or not, and spool depth. A malformed one is counted, not raised.
- `ingest_stats` fields are the worker's running totals since it started (counters: a restart
  begins again at 0, which `derivative(nonNegative: true)` and `increase()` handle); tags are the
  site and the worker slot. Measurement, tag and field names come from nabz.catalogue.
- A series per gateway, and per wearable of an online gateway (its link, what it says of itself,
  battery, signal, lost frames, as the gateway's status last gave them), is written on every
  interval, so the panels show the present even when nothing changes.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import msgspec

from nabz.catalogue import MEASUREMENTS
from nabz.contract import DeviceHealth, GatewayStatus
from nabz.health import Metric

__all__ = [
    "DEVICE_STATE_CODES",
    "GatewayStatuses",
    "GatewayState",
    "LINK_CODES",
    "ops_lines",
    "Rates",
    "Totals",
]

_status_decoder = msgspec.json.Decoder(GatewayStatus)


@dataclass(frozen=True, slots=True)
class GatewayState:
    site: str
    gateway: str
    online: bool
    spool_depth: int
    seen_at: float  # ingest's clock, when this status arrived
    reason: str = ""
    devices: tuple[DeviceHealth, ...] = ()  # each wearable as the gateway last reported it
    held: tuple[str, ...] = ()  # wearables whose readings no server subscriber takes (kept there)


# `device_status` fields as numbers, for state timelines (docs/contract.md section 3)
LINK_CODES = {"connecting": 0, "connected": 1, "reconnecting": 2, "lost": 3}
DEVICE_STATE_CODES = {"ok": 0, "low_battery": 1, "battery_critical": 2, "sensor_fault": 3}


@dataclass(slots=True)
class Totals:
    """An ingest worker's running totals (since it started)."""

    stored_messages: int = 0
    stored_readings: int = 0
    dead_letters: int = 0
    duplicates: int = 0


class GatewayStatuses:
    """The latest retained status of every gateway ingest has heard of."""

    def __init__(self) -> None:
        self.latest: dict[tuple[str, str], GatewayState] = {}
        self.malformed = 0

    def feed(self, topic: str, payload: bytes, now: float) -> str:
        """One message from the status topic; returns what it was, for counting."""
        parts = topic.split("/")
        if len(parts) != 6 or parts[3] != "gw" or parts[5] != "status":
            return "not_status"
        if not payload:  # a retained message being cleared
            self.latest.pop((parts[2], parts[4]), None)
            return "cleared"
        try:
            s = _status_decoder.decode(payload)
        except (msgspec.DecodeError, UnicodeDecodeError):
            self.malformed += 1
            return "malformed"
        if (s.site, s.gateway) != (parts[2], parts[4]):
            self.malformed += 1
            return "topic_mismatch"
        self.latest[(s.site, s.gateway)] = GatewayState(
            s.site, s.gateway, s.state == "online", s.spool_depth or 0, now, s.reason or "", tuple(s.health),
            tuple(s.held),
        )  # fmt: skip
        return s.state

    def snapshot(self) -> list[GatewayState]:
        return sorted(self.latest.values(), key=lambda g: (g.site, g.gateway))


def _tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def ops_lines(site: str, worker: int, totals: Totals, gateways: list[GatewayState], t_ns: int) -> list[str]:
    """Line protocol for the operations board (docs/contract.md section 3)."""
    stats = MEASUREMENTS["ingest_stats"]
    fields = ",".join(f"{f}={getattr(totals, f)}i" for f in stats.fields)
    out = [f"{stats.name},site={_tag(site)},worker={worker} {fields} {t_ns}"]
    gw = MEASUREMENTS["gateway_status"]
    dev = MEASUREMENTS["device_status"]
    for g in gateways:
        out.append(
            f"{gw.name},gateway={_tag(g.gateway)},site={_tag(g.site)} "
            f"online={int(g.online)}i,spool_depth={g.spool_depth}i,held={len(g.held)}i {t_ns}"
        )
        for d in g.devices if g.online else ():  # an offline gateway says nothing of its devices
            values = {
                "link": LINK_CODES[d.state],
                "device_state": None if d.device_state is None else DEVICE_STATE_CODES[d.device_state],
                "battery_pct": d.battery_pct,
                "rssi_dbm": d.rssi_dbm,
                "gap_frames": d.gap_frames,
            }
            fields = ",".join(f"{k}={x}i" for k, x in values.items() if x is not None)
            out.append(
                f"{dev.name},device={_tag(d.device)},gateway={_tag(g.gateway)},site={_tag(g.site)} {fields} {t_ns}"
            )
    return out


class Rates:
    """Messages and readings per second over the last `window_s`, from running totals."""

    def __init__(self, window_s: float = 60.0) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int, int]] = deque()

    def add(self, totals: Totals, now: float | None = None) -> None:
        t = time.monotonic() if now is None else now
        self._samples.append((t, totals.stored_messages, totals.stored_readings))
        while self._samples and self._samples[0][0] < t - self.window_s:
            self._samples.popleft()

    def per_second(self) -> tuple[float, float]:
        if len(self._samples) < 2:
            return 0.0, 0.0
        (t0, m0, r0), (t1, m1, r1) = self._samples[0], self._samples[-1]
        dt = max(t1 - t0, 1e-9)
        return (m1 - m0) / dt, (r1 - r0) / dt


def gateway_metrics(gateways: list[GatewayState]) -> list[Metric]:
    online = [({"site": g.site, "gateway": g.gateway}, float(g.online)) for g in gateways]
    depth = [({"site": g.site, "gateway": g.gateway}, float(g.spool_depth)) for g in gateways]
    held = [({"site": g.site, "gateway": g.gateway}, float(len(g.held))) for g in gateways]
    return [
        Metric("nabz_gateway_online", "1 while the gateway's retained status says online", "gauge", online),
        Metric("nabz_gateway_spool_depth", "messages waiting in the gateway's spool (its last status)",
               "gauge", depth),
        Metric("nabz_gateway_held_devices", "wearables whose readings no server subscriber takes: kept at "
               "the gateway, unmonitored (not enrolled, or ingest not subscribed)", "gauge", held),
    ]  # fmt: skip
