"""The walking skeleton on real parts: simulated wearables -> gateways -> mosquitto -> ingest ->
VictoriaMetrics (InfluxDB write API), counted at both ends. The same pipeline under faults (a
broker restart among them) is tests/faults."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from pathlib import Path

from ingest.service import IngestService
from nabz.config import Config, IngestConfig, MqttConfig
from tests.contract_doc import vectors
from tests.pipeline import Pipeline
from tests.servers import Mosquitto, VictoriaMetrics, require

# (stream, VictoriaMetrics series) for what each simulated message writes.
_SERIES = {
    "ecg": "ecg_signal_uv",
    "ppg": "ppg_ir_counts",
    "hr": "device_vitals_hr_bpm",
    "battery": "device_vitals_battery_pct",
}


def test_every_reading_arrives_exactly_once_in_the_time_series_server(
    mosquitto: Mosquitto, victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    pipe = Pipeline(tmp_path, mosquitto.url, patients=3, speed=5.0, influx_url=victoria.url)
    try:
        pipe.start_ingest()
        pipe.start_gateways()
        pipe.run_for(20.0)
        pipe.stop_wearables_and_drain()
        stored = pipe.wait_stored(pipe.generated)
    finally:
        pipe.close()
    assert pipe.generated > 3 * 20 * (250 + 100)  # 20 s of ECG and PPG for three patients, at least
    assert stored == pipe.generated

    per_device: Counter[tuple[str, str]] = Counter()
    for stream, series in _SERIES.items():
        for s in victoria.export(f'{{__name__="{series}",site="test"}}'):
            stamps = s["timestamps"]
            assert len(stamps) == len(set(stamps)), f"doubled points in {s['metric']}"
            per_device[(s["metric"]["device"], stream)] += len(stamps)
    expected = Counter({k: v for k, v in pipe.tally.items() if k[1] in _SERIES})
    assert per_device == expected


def test_a_reading_published_by_hand_as_documented_is_stored_and_a_malformed_one_is_dead_lettered(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    mosquitto_pub = require("mosquitto_pub", "mosquitto-clients")
    config = Config(
        site="demo",
        mqtt=MqttConfig(url=mosquitto.url),
        ingest=IngestConfig(store_path=str(tmp_path / "ingest.sqlite")),
        enrolment={"ecg-0001": "p-0001", "oxi-0001": "p-0001"},
    )
    ingest = IngestService(config, client_id="hand-test")
    ingest.start()
    try:
        assert ingest.subscribed.wait(10)
        (ecg,) = [v for v in vectors("mqtt:reading") if v.attrs["name"] == "ecg"]
        rejects = vectors("mqtt:reject")
        for v in [ecg, *rejects]:
            example = tmp_path / "example.json"
            example.write_text(v.body)
            subprocess.run(
                [
                    mosquitto_pub,
                    "-p",
                    str(mosquitto.port),
                    "-q",
                    "1",
                    "-t",
                    v.attrs["topic"],
                    "-f",
                    str(example),
                ],
                check=True,
                timeout=10,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            ingest.store.count_readings() < 5 or len(ingest.store.dead_letters()) < len(rejects)
        ):
            time.sleep(0.05)
        assert ingest.store.count_readings("ecg") == 5
        letters = ingest.store.dead_letters()
        assert [d.reason for d in letters] == [v.attrs["reason"] for v in rejects]
        assert all(d.detail for d in letters)
        assert letters[0].payload == rejects[0].body.encode()  # kept exactly as received
    finally:
        ingest.stop()
