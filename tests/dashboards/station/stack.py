"""The real system around the nurse station for its tests: mosquitto, the ingest service, the
alerts service and the station server, in this process, on free loopback ports.

Signals: the ECG is MIT-BIH record 100 lead MLII (real, PhysioNet, ODC-By 1.0; see
tests/ingest/dsp/data/mitdb/README.md) resampled to the wearables' 250 Hz; the PPG is synthetic
(`ingest.dsp.synth.synth_ppg`) and says so. Vital-sign readings (HR, SpO2, battery) are written
by the tests, as a wearable would send them.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from alerts.service import AlertService
from dashboards.station import StationServer
from dashboards.station.auth import hash_password
from dashboards.station.db import StationDB
from ingest.dsp.mitdb import read_record, to_microvolts
from ingest.dsp.synth import synth_ppg
from ingest.service import IngestService
from nabz import contract
from nabz.config import AlertsConfig, Config, IngestConfig, MqttConfig, PatientAlertsConfig, StationConfig
from nabz.mqtt import connect, make_client
from tests.servers import Mosquitto

__all__ = ["Stack", "start_stack", "iso", "PASSWORDS", "RECORD_100"]

RECORD_100 = Path(__file__).parents[2] / "ingest" / "dsp" / "data" / "mitdb" / "100"
PASSWORDS = {"sana": "sana-nurse-pass-1", "imran": "imran-doctor-pass", "root.admin": "admin-pass-12345"}
ROLES = {"sana": "nurse", "imran": "doctor", "root.admin": "admin"}
ENROLMENT = {
    "ecg-0001": "p-0001", "oxi-0001": "p-0001",
    "ecg-0002": "p-0002", "oxi-0002": "p-0002",
    "ecg-0003": "p-0003",
}  # fmt: skip


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def config_for(tmp: Path, mqtt_url: str, **station: Any) -> Config:
    return Config(
        site="demo",
        mqtt=MqttConfig(url=mqtt_url, protocol="5"),
        ingest=IngestConfig(store_path=str(tmp / "nabz.sqlite")),
        alerts=AlertsConfig(
            store_path=str(tmp / "alerts.sqlite"),
            outbox_path=str(tmp / "outbox.jsonl"),
            # Short delays so an alarm comes in a second; no stale-data alarms during a short test.
            spo2_delay_s=2.0,
            spo2_min_delay_s=1.0,
            stale_after_s=1e7,
            patients={"p-0002": PatientAlertsConfig(label="Bed 2")},
        ),
        station=StationConfig(db_path=str(tmp / "station.sqlite"), port=0, **station),
        enrolment=ENROLMENT,
    )


@dataclass
class Stack:
    tmp: Path
    config: Config
    mosquitto: Mosquitto
    ingest: IngestService
    alerts: AlertService
    station: StationServer
    publisher: Any
    _seq: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.station.url

    def publish(self, topic: str, payload: dict[str, Any]) -> float:
        """Publish QoS 1, wait for PUBACK; returns the time just before publishing."""
        t = time.time()
        info = self.publisher.publish(topic, json.dumps(payload), qos=1)
        info.wait_for_publish(5)
        return t

    def reading(self, gateway: str, device: str, stream: str, t: float, **fields: Any) -> float:
        payload = {"v": 1, "id": contract.new_id(), "stream": stream, "site": "demo", "gateway": gateway,
                   "device": device, "t": iso(t), **fields}  # fmt: skip
        return self.publish(contract.reading_topic("demo", gateway, device, stream), payload)

    def waveforms(self, patient_n: int, start: float, seconds: float) -> None:
        """`seconds` of real ECG (record 100) and synthetic PPG from `start`, as the wearables frame them."""
        gw, ecg_dev, oxi_dev = f"gw-000{patient_n}", f"ecg-000{patient_n}", f"oxi-000{patient_n}"
        ecg = _record_100()[: int(seconds * 250)]
        for i in range(0, len(ecg), 113):
            seq = self._next(ecg_dev)
            self.reading(gw, ecg_dev, "ecg", start + i / 250, seq=seq, rate_hz=250, flags=[],
                         signal_uv=[int(x) for x in ecg[i : i + 113]])  # fmt: skip
        red, ir = synth_ppg(72.0, seconds, 100.0, rng=np.random.default_rng(7))
        for i in range(0, len(ir), 37):
            seq = self._next(oxi_dev)
            self.reading(gw, oxi_dev, "ppg", start + i / 100, seq=seq, rate_hz=100, flags=[],
                         red_counts=[int(x) for x in red[i : i + 37]], ir_counts=[int(x) for x in ir[i : i + 37]])  # fmt: skip

    def seed_history(self, patient_n: int, end: float, hours: float = 6.0, step_s: float = 30.0) -> None:
        """Synthetic derived vitals for the hours before `end`, written through the ingest store's own
        API (as ingest writes them): a slow HR rise with an hour of tachycardia, an SpO2 dip."""
        rng = np.random.default_rng(11)
        patient = f"p-000{patient_n}"
        rows = []
        for k, t in enumerate(np.arange(end - hours * 3600, end - 30, step_s)):
            h = (t - (end - hours * 3600)) / 3600
            hr = 72 + 4 * h + (38 if 2.0 < h < 3.0 else 0) + rng.normal(0, 2)
            spo2 = 96 - (5 if 4.0 < h < 4.5 else 0) + rng.normal(0, 0.6)
            t_ns = int(t * 1e9)
            common = ("demo", patient)
            rows += [
                (f"hist-e-{k}", *common, f"ecg-000{patient_n}", "ecg", t_ns, hr, None, None, 0, None,
                 min(1.0, 0.9 + rng.normal(0, 0.04)), None, "", None, None, None, None, 16 + rng.normal(0, 1)),
                (f"hist-d-{k}", *common, f"oxi-000{patient_n}", "device", t_ns, None, hr + rng.normal(0, 1),
                 min(100.0, spo2), 0, None, None, None, "", None, None, None, None, None),
                (f"hist-p-{k}", *common, f"oxi-000{patient_n}", "ppg", t_ns, None, hr + rng.normal(0, 2),
                 min(100.0, spo2 + 1.5 + rng.normal(0, 1)), 0, 2.0, min(1.0, 0.85 + rng.normal(0, 0.05)),
                 None, "", None, None, None, None, None),
                (f"hist-b-{k}", *common, f"oxi-000{patient_n}", "device", t_ns, None, None, None, 0, None, None,
                 int(95 - 10 * h), "", None, None, None, None, None),
            ]  # fmt: skip
        with self.ingest.store.batch():
            self.ingest.store.add_vitals(rows)

    def _next(self, device: str) -> int:
        self._seq[device] = self._seq.get(device, -1) + 1
        return self._seq[device]

    def stop(self) -> None:
        self.station.stop()
        self.publisher.disconnect()
        self.publisher.loop_stop()
        self.alerts.stop()
        self.ingest.stop()
        self.mosquitto.stop()


_ecg_cache: list[np.ndarray] = []


def _record_100() -> np.ndarray:
    if not _ecg_cache:
        rec = read_record(RECORD_100)
        _ecg_cache.append(
            np.round(to_microvolts(rec.signal("MLII"), rec.sampling_rate, 250)[250 * 60 : 250 * 120])
        )
    return _ecg_cache[0]


def add_users(db_path: str) -> None:
    db = StationDB(db_path)
    for name, role in ROLES.items():
        db.add_user(name, role, hash_password(PASSWORDS[name]), time.time())
    db.close()


def start_stack(tmp: Path, **station: Any) -> Stack:
    mosquitto = Mosquitto(tmp / "mosquitto")
    mosquitto.start()
    config = config_for(tmp, mosquitto.url, **station)
    add_users(config.station.db_path)
    ingest = IngestService(config, client_id="station-test-ingest")
    alerts = AlertService(config, client_id="station-test-alerts")
    ingest.start()
    alerts.start()
    if not ingest.connected.wait(10):
        raise RuntimeError("ingest did not connect to mosquitto")
    station = StationServer(config)
    station.start()
    connected = threading.Event()
    pub = make_client(config.mqtt, client_id="station-test-publisher")
    pub.on_connect = lambda *_: connected.set()
    connect(pub, config.mqtt)
    if not connected.wait(10):
        raise RuntimeError("the test publisher did not connect")
    deadline = time.monotonic() + 10
    while not (station.app.station.hub.connected and alerts.client.is_connected()):
        if time.monotonic() > deadline:
            raise RuntimeError("the station or the alerts service did not connect")
        time.sleep(0.05)
    time.sleep(0.3)  # subscriptions granted
    return Stack(tmp, config, mosquitto, ingest, alerts, station, pub)
