"""`nabz demo`: the whole system in one process on embedded defaults.

Simulated patients (hardware/) wear an ECG patch and a pulse oximeter; each home has a gateway
(virtual transport, its own spool); an embedded broker (amqtt) carries MQTT; ingest stores into the
embedded SQLite store (and InfluxDB with --influx); alerts notify an outbox file; the nurse station
serves the live ward on localhost (port 8080, or any free port if that is taken) with a demo account.
At the end the demo stops the wearables, lets everything in flight arrive, and counts readings at
each stage.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alerts.service import AlertService
from dashboards.station import StationError, StationServer
from dashboards.station.auth import hash_password
from dashboards.station.db import StationDB
from gateway.service import Gateway
from gateway.virtual import VirtualTransport
from hardware import make_patients
from ingest.service import IngestService
from nabz.broker import EmbeddedBroker
from nabz.config import (
    AlertsConfig,
    Config,
    GatewayConfig,
    InfluxConfig,
    IngestConfig,
    MqttConfig,
    StationConfig,
)

__all__ = ["DemoOptions", "run_demo"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DemoOptions:
    patients: int = 5
    duration_s: float | None = None
    seed: int = 1
    broker: str | None = None
    influx: str | None = None
    influx_token: str | None = None
    report: str | None = None
    data_dir: str = "var/demo"
    live: bool = True
    drain_timeout_s: float = 60.0
    station_port: int = 8080  # the nurse page on 127.0.0.1; a free port if this one is taken


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Demo:
    def __init__(self, opts: DemoOptions) -> None:
        self.opts = opts
        self.dir = Path(opts.data_dir)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.broker = EmbeddedBroker() if opts.broker is None else None
        url = opts.broker or self.broker.url  # type: ignore[union-attr]
        self.patients = make_patients(opts.patients, opts.seed)
        enrolment = {d.device_id: p.patient_id for p in self.patients for d in p.devices}
        self.config = Config(
            site="demo",
            # amqtt speaks MQTT 3.1.1 only; a real broker given with --broker gets v5.
            mqtt=MqttConfig(url=url, protocol="3.1.1" if opts.broker is None else "5"),
            gateway=GatewayConfig(status_interval_s=5.0),
            ingest=IngestConfig(store_path=str(self.dir / "nabz.sqlite")),
            influx=InfluxConfig(url=opts.influx, token=opts.influx_token),
            alerts=AlertsConfig(
                store_path=str(self.dir / "alerts.sqlite"), outbox_path=str(self.dir / "outbox" / "sms.jsonl")
            ),
            station=StationConfig(db_path=str(self.dir / "station.sqlite"), port=opts.station_port),
            enrolment=enrolment,
        )
        # A demo account with a fresh password, printed once at start (simulated patients only).
        self.station_user = "demo.nurse"
        self.station_password = secrets.token_urlsafe(9)
        db = StationDB(self.config.station.db_path)
        db.add_user(self.station_user, "nurse", hash_password(self.station_password), time.time())
        db.close()
        self.station: StationServer | None = None
        self.ingest: IngestService | None = None
        self.alerts: AlertService | None = None
        self.gateways: list[Gateway] = []
        self._stop = threading.Event()
        self._gw_thread: threading.Thread | None = None

    def start(self) -> None:
        if self.broker is not None:
            self.broker.start()
        self.ingest = IngestService(self.config, client_id="nabz-demo-ingest")
        self.alerts = AlertService(self.config, client_id="nabz-demo-alerts")
        self.ingest.start()
        self.alerts.start()
        if not self.ingest.connected.wait(15):
            raise RuntimeError(f"ingest could not connect to the broker at {self.config.mqtt.url}")
        self.station = StationServer(self.config, host="127.0.0.1")
        try:
            self.station.start()
        except StationError:  # the port is taken: any free one will do for a demo
            self.station = StationServer(self.config, host="127.0.0.1", port=0)
            self.station.start()
        time.sleep(0.3)  # let the alert service subscribe before the first vitals
        for i, p in enumerate(self.patients, start=1):
            gw = Gateway(
                self.config,
                VirtualTransport(p.devices),
                gateway_id=f"gw-{i:04d}",
                spool_path=str(self.dir / f"spool-gw-{i:04d}.sqlite"),
            )
            gw.start()
            self.gateways.append(gw)
        self._gw_thread = threading.Thread(target=self._run_gateways, name="nabz-gateways", daemon=True)
        self._gw_thread.start()

    def _run_gateways(self) -> None:
        while not self._stop.is_set():
            if sum(gw.step() for gw in self.gateways) == 0:
                self._stop.wait(0.05)

    def finish(self) -> dict[str, Any]:
        """Stop the wearables, deliver everything in flight, stop the services, count."""
        assert self.ingest is not None and self.alerts is not None
        self._stop.set()
        if self._gw_thread is not None:
            self._gw_thread.join()
        for gw in self.gateways:
            gw.step()  # whatever the wearables sent up to now
            gw.transport.stop()
        deadline = time.monotonic() + self.opts.drain_timeout_s
        for gw in self.gateways:
            if not gw.drain(max(0.1, deadline - time.monotonic())):
                log.error("gateway %s could not deliver %d messages in time", gw.id, gw.spool.depth)
        published = sum(gw.stats().published for gw in self.gateways)
        while time.monotonic() < deadline and self.ingest.store.count_readings() < published:
            time.sleep(0.05)
        time.sleep(0.5)  # last vitals reach the alert service
        report = self.report()
        if self.station is not None:
            self.station.stop()
        for gw in self.gateways:
            gw.stop()
        self.alerts.stop()
        self.ingest.stop()
        if self.broker is not None:
            self.broker.stop()
        return report

    def report(self) -> dict[str, Any]:
        assert self.ingest is not None and self.alerts is not None
        stats = [gw.stats() for gw in self.gateways]
        store = self.ingest.store
        return {
            "readings": {
                "generated": sum(s.generated for s in stats),
                "published": sum(s.published for s in stats),
                "stored": store.count_readings(),
                "dead_lettered": store.counter("dead_letters") + sum(s.dead_letters for s in stats),
            },
            "duplicates_discarded": store.counter("duplicates"),
            "alarms": [
                {
                    "patient": a["patient"],
                    "kind": a["kind"],
                    "priority": a["priority"],
                    "raised_at": _iso(a["raised_at"]),
                }
                for a in self.alerts.store.alarms()
            ],
            "notifications": [
                {"to": n["to"], "text": n["text"], "sent_at": _iso(n["at"])}
                for n in self.alerts.store.notifications()
                if n["ok"]
            ],
        }

    # --- console -------------------------------------------------------------------------------
    def rows(self) -> list[dict[str, str]]:
        assert self.alerts is not None
        latest = self.alerts.engine.latest
        open_alarms = self.alerts.engine.open
        out = []
        for p in self.patients:
            v = latest.get(p.patient_id, {})
            alarms = sorted(
                f"{k}({a.priority})" for (pid, k), a in open_alarms.items() if pid == p.patient_id
            )
            out.append(
                {
                    "patient": p.patient_id,
                    "hr": _fmt(v.get("ecg.hr_bpm")),
                    "pr": _fmt(v.get("ppg.pr_bpm")),
                    "spo2": _fmt(v.get("ppg.spo2_pct")),
                    "sqi": _fmt(v.get("ecg.sqi"), "{:.2f}"),
                    "battery": _fmt(v.get("device.battery_pct")),
                    "alarms": ", ".join(alarms) or "-",
                }
            )
        return out

    def station_line(self) -> str:
        url = self.station.url if self.station is not None else "-"
        return f"nurse page: {url}  (log in as {self.station_user} / {self.station_password})"

    def totals(self) -> str:
        assert self.ingest is not None
        stats = [gw.stats() for gw in self.gateways]
        return (
            f"generated {sum(s.generated for s in stats)}  published {sum(s.published for s in stats)}  "
            f"stored {self.ingest.store.count_readings()}  spool {sum(s.spool_depth for s in stats)}  "
            f"dead letters {self.ingest.store.counter('dead_letters')}"
        )


def _fmt(x: object, pattern: str = "{:.0f}") -> str:
    return "-" if x is None else pattern.format(x)


def _live(demo: Demo, until: float | None) -> None:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    def table() -> Table:
        t = Table(
            title=f"Nabz demo — broker {demo.config.mqtt.url}  (SpO2 is uncalibrated)\n{demo.station_line()}",
            caption=demo.totals(),
        )
        for col in (
            "patient",
            "HR /min (ECG)",
            "PR /min (PPG)",
            "SpO2 % (uncal.)",
            "ECG SQI",
            "battery %",
            "open alarms",
        ):
            t.add_column(col)
        for r in demo.rows():
            style = "bold red" if "high" in r["alarms"] else "yellow" if r["alarms"] != "-" else None
            t.add_row(
                r["patient"], r["hr"], r["pr"], r["spo2"], r["sqi"], r["battery"], r["alarms"], style=style
            )
        return t

    with Live(table(), console=Console(), refresh_per_second=2) as live:
        while until is None or time.monotonic() < until:
            time.sleep(0.5)
            live.update(table())


def _plain(demo: Demo, until: float | None) -> None:
    while until is None or time.monotonic() < until:
        time.sleep(min(5.0, max(0.05, (until or float("inf")) - time.monotonic())))
        print(demo.totals(), flush=True)
        for r in demo.rows():
            if r["alarms"] != "-":
                print(f"  {r['patient']}: SpO2 {r['spo2']} HR {r['hr']} alarms {r['alarms']}", flush=True)


def run_demo(opts: DemoOptions) -> dict[str, Any]:
    demo = Demo(opts)
    demo.start()
    print(
        f"Nabz demo: {opts.patients} patients, broker {demo.config.mqtt.url}, files in {demo.dir}", flush=True
    )
    print(demo.station_line(), flush=True)
    until = None if opts.duration_s is None else time.monotonic() + opts.duration_s
    try:
        (_live if opts.live and sys.stdout.isatty() else _plain)(demo, until)
    except KeyboardInterrupt:
        pass
    print("stopping: delivering everything in flight ...", flush=True)
    report = demo.finish()
    if opts.report:
        Path(opts.report).write_text(json.dumps(report, indent=2) + "\n")
    return report
