"""The InfluxDB sink: retries, the disk spill while the database is down, replay, idempotency.

Against the real VictoriaMetrics (it speaks InfluxDB's write API) where the behaviour is the
server's, and a scripted HTTP stub where a response must be forced (503, 400).
"""

from __future__ import annotations

import time
from pathlib import Path

from ingest.influx import InfluxSink
from ingest.spill import Spill
from nabz.config import InfluxConfig
from tests.ingest.httpstub import Stub
from tests.servers import VictoriaMetrics

T0 = 1_795_597_200_000_000_000


def _lines(start: int, n: int, device: str = "ecg-0001") -> list[str]:
    return [
        f"ecg,device={device},patient=p-0001,site=t signal_uv={i}i {T0 + i * 4_000_000}"
        for i in range(start, start + n)
    ]


def _points(vm: VictoriaMetrics) -> list[int]:
    return [t for s in vm.export('{__name__="ecg_signal_uv"}') for t in s["timestamps"]]


def test_a_database_outage_spills_to_disk_and_replays_with_nothing_lost_or_doubled(tmp_path: Path) -> None:
    # InfluxDB overwrites a point with the same series and timestamp; VictoriaMetrics keeps both
    # unless told to deduplicate (docs/storage.md), as production must be configured
    victoria = VictoriaMetrics(tmp_path / "vm", extra_args=("-dedup.minScrapeInterval=1ms",))
    victoria.start()
    sink = InfluxSink(
        InfluxConfig(url=victoria.url, token="t", batch_size=500, timeout_ms=2000),
        retries=1, backoff_s=0.05, spill_dir=tmp_path / "spill", replay_every_s=0.2,
    )  # fmt: skip
    try:
        sink.write(_lines(0, 1000))
        victoria.stop()
        sink.write(_lines(1000, 1000))  # returns: durable in the spill, the caller may acknowledge
        sink.write(_lines(1500, 1000))  # a redelivery overlapping the previous batch, and more
        assert sink.spill.pending_lines == 2000 and sink.spilled_lines == 2000
        victoria.start()
        deadline = time.monotonic() + 20
        while sink.spill and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not sink.spill
        sink.write(_lines(2500, 10))
        stamps = _points(victoria)
    finally:
        sink.close()
        victoria.stop()
    assert len(stamps) == len(set(stamps)) == 2510  # every point once: the overlap overwrote itself


def test_spilled_data_survives_a_restart_of_ingest(tmp_path: Path) -> None:
    spill = Spill(tmp_path / "spill", segment_bytes=4096)
    for i in range(10):
        spill.append(_lines(i * 20, 20))
    # a crash mid-append leaves a torn record: it was never acknowledged, so it is dropped
    last = sorted((tmp_path / "spill").glob("*.spill"))[-1]
    with last.open("ab") as f:
        f.write(b"NZS1\xff\x00\x00\x00garbage")
    spill.close()  # ingest stops (a crash releases the directory the same way)
    again = Spill(tmp_path / "spill", segment_bytes=4096)
    assert again.pending_lines == 200
    seen: list[str] = []
    calls = 0

    def flaky(lines: list[str]) -> None:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise ConnectionError("database gone again")
        seen.extend(lines)

    try:
        again.replay(flaky)
    except ConnectionError:
        pass
    assert len(seen) == 60 and again.pending_lines == 140
    again.replay(seen.extend)  # resumes where it stopped, no record twice
    assert seen == [line for i in range(10) for line in _lines(i * 20, 20)]
    assert not again and not list((tmp_path / "spill").glob("*.spill"))


def test_5xx_is_retried_with_backoff_and_a_malformed_batch_is_set_aside(tmp_path: Path) -> None:
    stub = Stub()
    stub.routes[("POST", "/api/v2/write")] = [(503, {"message": "busy"}), (503, None), (204, None)]
    sink = InfluxSink(
        InfluxConfig(url=stub.url, token="secret", org="nabz", bucket="nabz", batch_size=5000),
        retries=3, backoff_s=0.01, spill_dir=tmp_path / "spill",
    )  # fmt: skip
    try:
        sink.write(_lines(0, 7000))
        writes = [r for r in stub.requests if r.path == "/api/v2/write"]
        assert len(writes) == 4  # 5000 lines: 503, 503, 204; then the last 2000
        assert writes[0].query["bucket"] == ["nabz"] and writes[0].query["org"] == ["nabz"]
        assert writes[0].headers["Authorization"] == "Token secret"
        assert writes[2].body.count(b"\n") == 4999 and writes[3].body.count(b"\n") == 1999
        assert not sink.spill
        stub.routes[("POST", "/api/v2/write")] = [(400, {"code": "invalid", "message": "bad line"})]
        sink.write(["ecg,device=x signal_uv=oops 1"])  # cannot succeed by retrying: set aside
        assert sink.rejected_lines == 1 and not sink.spill
        assert "bad line" in (tmp_path / "spill" / "rejected.lp").read_text()
    finally:
        sink.close()
        stub.close()
