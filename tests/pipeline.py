"""A whole pipeline for tests: simulated patients -> gateways -> a real broker -> ingest (-> a real
time-series server), on a compressed clock, with every reading tallied where it was generated."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from firmware import nabz_codec as codec
from gateway.decode import normalize_uuid
from gateway.service import Gateway
from gateway.virtual import VirtualTransport
from hardware import make_patients
from ingest.service import IngestService
from nabz.config import Config, GatewayConfig, InfluxConfig, IngestConfig, MqttConfig


class CompressedClock:
    """Wall time running `speed` times faster, from a fixed start: the gateways' and ingest's clock."""

    def __init__(self, speed: float, start: float = 1_795_597_200.0) -> None:
        self.speed = speed
        self.start = start
        self.m0 = time.monotonic()

    def __call__(self) -> float:
        return self.start + (time.monotonic() - self.m0) * self.speed


class TallyingWearable:
    """A simulated wearable whose every notification is counted by (device, stream) as generated."""

    def __init__(self, inner: object, tally: Counter[tuple[str, str]]) -> None:
        self.inner = inner
        self.tally = tally
        self.device_id: str = inner.device_id  # type: ignore[attr-defined]

    @property
    def readings_generated(self) -> int:
        return int(self.inner.readings_generated)  # type: ignore[attr-defined]

    @property
    def device_t_us(self) -> int:
        return int(self.inner.device_t_us)  # type: ignore[attr-defined]

    def advance(self, seconds: float) -> list[object]:
        sent = self.inner.advance(seconds)  # type: ignore[attr-defined]
        for n in sent:
            char = normalize_uuid(n.char_uuid)
            if char in (codec.NABZ_ECG_WAVEFORM, codec.NABZ_PPG_WAVEFORM):
                frame = codec.wave_decode(n.data)
                stream = "ecg" if frame["kind"] == codec.WAVE_KIND_ECG else "ppg"
                self.tally[(self.device_id, stream)] += frame["n"]
            else:
                stream = {"2a37": "hr", "2a5f": "spo2", "2a19": "battery"}[char]
                self.tally[(self.device_id, stream)] += 1
        return list(sent)


@dataclass
class Pipeline:
    workdir: Path
    broker_url: str
    patients: int = 2
    seed: int = 11
    speed: float = 5.0
    influx_url: str | None = None
    scenarios: Sequence[str | None] | None = None
    tally: Counter[tuple[str, str]] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.clock = CompressedClock(self.speed)
        self.people = make_patients(self.patients, self.seed, scenarios=self.scenarios)
        self.config = Config(
            site="test",
            mqtt=MqttConfig(url=self.broker_url, reconnect_min_s=0.2, reconnect_max_s=1.0),
            gateway=GatewayConfig(status_interval_s=5.0),
            ingest=IngestConfig(store_path=str(self.workdir / "ingest.sqlite")),
            influx=InfluxConfig(url=self.influx_url, token="test-token", batch_size=5000),
            enrolment={d.device_id: p.patient_id for p in self.people for d in p.devices},
        )
        self.ingest: IngestService | None = None
        self.gateways: list[Gateway] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start_ingest(self) -> IngestService:
        self.ingest = IngestService(self.config, clock=self.clock, client_id="test-ingest")
        self.ingest.start()
        assert self.ingest.subscribed.wait(10), "ingest did not subscribe"
        return self.ingest

    def start_gateways(self) -> None:
        for i, p in enumerate(self.people, start=1):
            transport = VirtualTransport([TallyingWearable(d, self.tally) for d in p.devices])
            gw = Gateway(
                self.config,
                transport,
                clock=self.clock,
                gateway_id=f"gw-{i:04d}",
                spool_path=str(self.workdir / f"spool-{i}.sqlite"),
            )
            gw.start()
            self.gateways.append(gw)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for gw in self.gateways:
                gw.step()
            self._stop.wait(0.02)

    def run_for(self, sim_seconds: float) -> None:
        time.sleep(sim_seconds / self.speed)

    def stop_wearables_and_drain(self, timeout_s: float = 60.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for gw in self.gateways:
            gw.step()
            gw.transport.stop()
        for gw in self.gateways:
            assert gw.drain(timeout_s), f"gateway {gw.id} kept {gw.spool.depth} messages"

    def wait_stored(self, expected: int, timeout_s: float = 60.0) -> int:
        assert self.ingest is not None
        deadline = time.monotonic() + timeout_s
        stored = self.ingest.store.count_readings()
        while stored < expected and time.monotonic() < deadline:
            time.sleep(0.05)
            stored = self.ingest.store.count_readings()
        time.sleep(0.2)  # anything beyond `expected` (a duplicate) would show now
        return self.ingest.store.count_readings()

    @property
    def generated(self) -> int:
        return sum(self.tally.values())

    def close(self) -> None:
        self._stop.set()
        for gw in self.gateways:
            gw.stop()
        if self.ingest is not None:
            self.ingest.stop()
