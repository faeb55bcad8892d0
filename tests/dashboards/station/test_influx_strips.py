"""Strips drawn from InfluxDB when the ingest store does not hold them (none kept, or pruned):
ingest's own lines, written to a real InfluxDB (1.6, Debian's), read back through InfluxQL."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec
import pytest

from dashboards.station import StationServer
from dashboards.station.influxstrips import InfluxStrips, StripReadError
from dashboards.station.strips import Segment
from gateway.decode import Decoder, Notification
from hardware import make_patients
from ingest.lines import chunk_lines_many, reading_lines, to_ns
from nabz import contract
from nabz.broker import free_port
from nabz.config import Config, InfluxConfig
from tests.dashboards.station.client import Agent
from tests.dashboards.station.stack import PASSWORDS, add_users, config_for
from tests.servers import InfluxDB1

T0_US = 1_795_597_200_000_000  # 2026-11-25T09:00:00Z


def _readings(seconds: int) -> list[contract.Reading]:
    """Two patients' ECG patch and oximeter frames, decoded as the gateway decodes them."""
    out: list[contract.Reading] = []
    for number, person in enumerate(make_patients(2, seed=3, scenarios=["normal", "normal"]), start=1):
        decoder = Decoder("demo", "gw-0001")
        for s in range(seconds):
            for device in person.devices:
                for n in device.advance(1.0):
                    r = decoder.decode(Notification(n.device_id, n.char_uuid, n.data, T0_US + s * 1_000_000))
                    if isinstance(r, contract.EcgReading | contract.PpgReading):
                        kind = "ecg" if isinstance(r, contract.EcgReading) else "oxi"
                        out.append(msgspec.structs.replace(r, device=f"{kind}-{number:04d}"))
    return out


def _patient(r: contract.Reading) -> str:
    return f"p-{r.device[-4:]}"


def _frames(
    readings: list[contract.Reading], device: str, start: float, end: float
) -> list[contract.Reading]:
    """What a strip of [start, end] should hold: the frames that begin in [start - 5 s, end]."""
    return [r for r in readings if r.device == device and start - 5 <= r.t.timestamp() <= end]


def _samples(r: contract.Reading) -> list[int]:
    return r.signal_uv if isinstance(r, contract.EcgReading) else r.ir_counts  # type: ignore[union-attr]


def _strips(influxdb: InfluxDB1, waveforms: str) -> InfluxStrips:
    return InfluxStrips(InfluxConfig(url=influxdb.url, bucket=influxdb.database, waveforms=waveforms))  # type: ignore[arg-type]


def _config(tmp_path: Path, influx: InfluxConfig, **station: float) -> Config:
    config = config_for(tmp_path, f"mqtt://127.0.0.1:{free_port()}", **station)  # nothing listens there
    return msgspec.structs.replace(config, influx=influx)


@contextmanager
def _station(
    config: Config,
    alarm_id: str,
    raised: float,
    kind: str = "hr_high",
    message: str = "HR 150/min",
    began: float | None = None,
) -> Iterator[StationServer]:
    """The station running, with the test users and one high alarm of p-0001 raised at `raised`
    (its condition began at `began`, 5 s before by default)."""
    from alerts.lifecycle import Alarm, to_event
    from alerts.store import AlertStore

    began = raised - 5 if began is None else began
    a = Alarm(
        alarm_id, "demo", "p-0001", kind, "high", "active", message, 150.0, 130.0, "/min", began, raised
    )
    AlertStore(config.alerts.store_path).record(a, to_event(a, f"ev-{alarm_id}"), raised)
    add_users(config.station.db_path)
    server = StationServer(config)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _flagged(readings: list[contract.Reading], every: int = 7) -> list[contract.Reading]:
    """Every `every`-th waveform frame flagged: leads off, saturated, or resent after a gap."""
    kinds: list[list[str]] = [["leads_off"], ["saturated", "low_battery"], ["resent", "gap_before"]]
    return [
        msgspec.structs.replace(r, flags=kinds[k // every % 3]) if k % every == every - 1 else r  # type: ignore[arg-type]
        for k, r in enumerate(readings)
    ]


def test_chunks_come_back_as_the_frames_that_were_stored(influxdb: InfluxDB1) -> None:
    readings = _flagged(_readings(12))
    influxdb.write(chunk_lines_many([(r, _patient(r)) for r in readings]))
    start, end = T0_US / 1e6 + 7, T0_US / 1e6 + 11
    strips = _strips(influxdb, "chunks")
    for stream, device in (("ecg", "ecg-0001"), ("ppg", "oxi-0001")):
        got_device, segments = strips.waveforms("p-0001", stream, start, end)
        want = _frames(readings, device, start, end)
        assert got_device == device and len(want) > 10 and sum(bool(r.flags) for r in want) >= 2  # type: ignore[union-attr]
        assert [(round(s.t0, 6), s.rate_hz, list(s.samples), s.flags) for s in segments] == [
            (round(r.t.timestamp(), 6), float(r.rate_hz), _samples(r), tuple(r.flags))  # type: ignore[union-attr]
            for r in want
        ]
    assert strips.waveforms("p-0003", "ecg", start, end) == (None, [])  # nobody's data


def test_a_database_never_sent_a_flag_gives_unflagged_strips(influxdb: InfluxDB1) -> None:
    """No message was flagged (or all were written before flags were stored): InfluxDB 1.6 answers
    the `flags` column with nulls; a server that leaves an unknown column out is read alike."""
    from dashboards.station.influxstrips import _rows

    readings = [r for r in _readings(3) if r.device == "ecg-0001"]
    influxdb.write(chunk_lines_many([(r, _patient(r)) for r in readings]))
    _, segments = _strips(influxdb, "chunks").waveforms("p-0001", "ecg", T0_US / 1e6, T0_US / 1e6 + 3)
    assert len(segments) == len(readings) and not any(s.flags for s in segments)
    without = {"columns": ["time", "rate_hz", "signal_uv"], "values": [[1, 250, "AAA"]]}
    assert _rows(without, ["time", "rate_hz", "flags", "signal_uv"]) == [[1, 250, None, "AAA"]]


def test_points_come_back_each_at_the_time_it_was_stored(influxdb: InfluxDB1) -> None:
    readings = _flagged([r for r in _readings(8) if r.device == "ecg-0002"], every=3)
    influxdb.write([line for r in readings for line in reading_lines(r, _patient(r))])
    start, end = T0_US / 1e6 + 3, T0_US / 1e6 + 7
    device, segments = _strips(influxdb, "points").waveforms("p-0002", "ecg", start, end)
    want = [  # every sample timed in [start, end], as reading_lines times it
        (to_ns(r.t) + round(i * 1e9 / r.rate_hz), x) for r in readings for i, x in enumerate(_samples(r))
    ]
    want = [(t, x) for t, x in want if start * 1e9 <= t <= end * 1e9]
    assert device == "ecg-0002" and len(want) > 900
    assert all(s.rate_hz == pytest.approx(250.0) for s in segments)
    got = [(s.t0 + i / s.rate_hz, x) for s in segments for i, x in enumerate(s.samples)]
    assert [x for _, x in got] == [x for _, x in want]
    # drawn where it was stored: the frames' clocks differ by a millisecond or so, and a run that
    # ran across them would place later samples tens of milliseconds off
    assert max(abs(t * 1e9 - w) for (t, _), (w, _) in zip(got, want, strict=True)) < 2_000
    # each flagged frame's flags at its first sample
    flagged = {
        to_ns(r.t): tuple(r.flags) for r in readings if r.flags and start * 1e9 <= to_ns(r.t) <= end * 1e9
    }  # type: ignore[union-attr]
    assert len(flagged) >= 3
    assert {round(s.t0 * 1e6): s.flags for s in segments if s.flags} == {
        t // 1000: f for t, f in flagged.items()
    }


def test_a_hole_in_the_points_splits_the_run() -> None:
    from dashboards.station.influxstrips import _point_segments

    rows = [[k * 4_000_000, 1 if k == 4 else None, k] for k in (*range(10), *range(15, 20))]
    assert _point_segments(rows) == [
        Segment(0.0, 250.0, list(range(4))),
        Segment(0.016, 250.0, list(range(4, 10)), ("leads_off",)),  # a flagged point starts a run
        Segment(0.06, 250.0, list(range(15, 20))),
    ]


def test_an_unreadable_influxdb_is_said_plainly(influxdb: InfluxDB1) -> None:
    wrong = InfluxStrips(InfluxConfig(url=influxdb.url, bucket="no-such-bucket", waveforms="chunks"))
    with pytest.raises(StripReadError, match="refused the query: database not found"):
        wrong.waveforms("p-0001", "ecg", 0.0, 10.0)
    down = InfluxStrips(
        InfluxConfig(url=f"http://127.0.0.1:{free_port()}", waveforms="chunks"), timeout_s=2.0
    )
    with pytest.raises(StripReadError, match="could not be read"):
        down.waveforms("p-0001", "ecg", 0.0, 10.0)
    # a patient id is a string in the query, whatever it holds
    assert _strips(influxdb, "chunks").waveforms("p' OR 'a'='a", "ecg", 0.0, 2e9) == (None, [])


def test_a_strip_cut_short_by_the_server_is_refused_not_drawn(tmp_path: Path) -> None:
    server = InfluxDB1(tmp_path / "influxdb", http_settings="  max-row-limit = 5")
    server.start()
    try:
        readings = _readings(4)
        server.write(chunk_lines_many([(r, _patient(r)) for r in readings]))
        with pytest.raises(StripReadError, match="only part of the strip"):
            _strips(server, "chunks").waveforms("p-0001", "ecg", T0_US / 1e6, T0_US / 1e6 + 4)
    finally:
        server.stop()


def test_the_strip_around_an_alarm_is_drawn_from_influxdb(influxdb: InfluxDB1, tmp_path: Path) -> None:
    """A server with InfluxDB as its store (no payloads kept): the strip page still shows the ECG
    and PPG around the alarm, and says where they came from."""
    from ingest.pipeline import IngestCore
    from ingest.store import Store

    readings = _readings(20)
    leads_off = next(  # one ECG frame in the alarm's window with the leads off
        k for k, r in enumerate(readings) if r.device == "ecg-0001" and r.t.timestamp() > T0_US / 1e6 + 10
    )
    readings[leads_off] = msgspec.structs.replace(readings[leads_off], flags=["leads_off"])  # type: ignore[type-var]
    influxdb.write(chunk_lines_many([(r, _patient(r)) for r in readings]))
    influx = InfluxConfig(url=influxdb.url, bucket=influxdb.database, waveforms="chunks")
    config = _config(tmp_path, influx, strip_before_s=6.0, strip_after_s=4.0)
    IngestCore(Store(config.ingest.store_path), keep_payloads=False)
    with _station(config, "alarm-000003", T0_US / 1e6 + 12, "spo2_low", "SpO2 86 %") as server:
        nurse = Agent(server.url)
        nurse.login("sana", PASSWORDS["sana"])
        status, _, text, _ = nurse.request("GET", "/patient/p-0001/alarm/alarm-000003")
        assert status == 200 and "SpO2 86 %" in text
        assert "ECG from ecg-0001, PPG from oxi-0001" in text and "Waveforms read from InfluxDB" in text
        status, _, svg, _ = nurse.request("GET", "/patient/p-0001/alarm/alarm-000003/strip.svg")
        traces = re.findall(r'<polyline points="([^"]+)"', svg)
        assert status == 200 and len(traces) == 2, len(traces)  # one ECG and one PPG trace
        assert min(len(t.split()) for t in traces) > 500  # 10 s of samples, drawn
        assert svg.count(">leads off<") == 1  # marked where it happened, as from the store
        influxdb.stop()  # the database goes away: the page says so instead of an empty strip
        status, _, text, _ = nurse.request("GET", "/patient/p-0001/alarm/alarm-000003")
        assert status == 200 and "The waveforms could not be read: InfluxDB could not be read" in text


def test_a_database_that_hangs_holds_up_its_strips_not_the_ward(tmp_path: Path) -> None:
    """InfluxDB takes the connection and never answers: strip pages say so after their deadline,
    and the ward and patient pages stay quick meanwhile."""
    from ingest.pipeline import IngestCore
    from ingest.store import Store

    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)  # connections complete in the backlog; nothing reads or answers them
    config = _config(
        tmp_path, InfluxConfig(url=f"http://127.0.0.1:{hung.getsockname()[1]}", waveforms="chunks")
    )
    IngestCore(Store(config.ingest.store_path), keep_payloads=False)
    with hung, _station(config, "alarm-000004", time.time() - 30) as server:
        nurses = [Agent(server.url) for _ in range(7)]
        for nurse in nurses:
            nurse.login("sana", PASSWORDS["sana"])
        pages: list[tuple[float, str]] = []

        def strip(agent: Agent) -> None:
            t = time.monotonic()
            _, _, text, _ = agent.request("GET", "/patient/p-0001/alarm/alarm-000004")
            pages.append((time.monotonic() - t, text))

        threads = [threading.Thread(target=strip, args=(n,)) for n in nurses[:6]]
        for th in threads:
            th.start()
        time.sleep(0.5)
        for path in ("/", "/patient/p-0001"):
            t = time.monotonic()
            status, _, _, _ = nurses[6].request("GET", path)
            assert status == 200 and time.monotonic() - t < 1.0, (path, time.monotonic() - t)
        for th in threads:
            th.join(30)
        assert len(pages) == 6
        for took, text in pages:
            assert re.search(r"The waveforms could not be read: [^<]*InfluxDB", text) and took < 12.0, took


def test_an_alarm_older_than_the_stored_payloads_is_drawn_from_influxdb(
    influxdb: InfluxDB1, tmp_path: Path
) -> None:
    """Payloads kept, but pruned after the dedup window: an older alarm's strip comes from InfluxDB."""
    from dashboards.station.data import Records
    from ingest.pipeline import IngestCore
    from ingest.store import Store

    readings = _readings(14)
    influxdb.write(chunk_lines_many([(r, _patient(r)) for r in readings]))
    start, end = T0_US / 1e6 + 7, T0_US / 1e6 + 11
    store = Store(tmp_path / "nabz.sqlite")
    IngestCore(store, keep_payloads=True)
    newer = next(r for r in readings if r.device == "ecg-0001" and r.t.timestamp() > end)
    with store.batch():  # the store's oldest ECG of the patient is newer than the alarm's window
        store.add_messages([(newer.id, end, "demo", "gw-0001", newer.device, "p-0001", "ecg", to_ns(newer.t),
                             contract.reading_count(newer), contract.encode(newer))])  # fmt: skip
    strips = _strips(influxdb, "chunks")
    got = Records(tmp_path / "nabz.sqlite", tmp_path / "alerts.sqlite", strips).waveforms(
        "p-0001", "ecg", start, end
    )
    assert got.source == "influxdb" and got.device == "ecg-0001" and len(got.segments) > 10
    without = Records(tmp_path / "nabz.sqlite", tmp_path / "alerts.sqlite").waveforms(
        "p-0001", "ecg", start, end
    )
    assert without == (None, [], 0, "store")
    # a patient whose stream the store has never held (an oximeter-only patient's ECG) is not looked for
    assert Records(tmp_path / "nabz.sqlite", tmp_path / "alerts.sqlite", strips).waveforms(
        "p-0002", "ecg", start, end
    ) == (None, [], 0, "store")


def test_a_stream_that_cannot_be_read_leaves_the_other_drawn(tmp_path: Path) -> None:
    """Payloads kept: the ECG of the alarm's window is in the store, the oximeter's has been pruned
    (its oldest stored message is newer) and InfluxDB is down. The ECG is drawn, and the page says
    why the PPG is not."""
    from ingest.store import Store

    down = InfluxConfig(url=f"http://127.0.0.1:{free_port()}", waveforms="chunks")
    config = _config(tmp_path, down, strip_before_s=6.0, strip_after_s=4.0)
    store = Store(config.ingest.store_path)
    readings = _readings(20)
    with store.batch():
        store.add_messages([
            (r.id, r.t.timestamp(), r.site, r.gateway, r.device, _patient(r), contract.stream_of(r), to_ns(r.t),
             contract.reading_count(r), contract.encode(r))
            for r in readings if r.device == "ecg-0001" or (r.device == "oxi-0001" and r.t.timestamp() > T0_US / 1e6 + 17)
        ])  # fmt: skip
    with _station(config, "alarm-000005", T0_US / 1e6 + 12) as server:
        nurse = Agent(server.url)
        nurse.login("sana", PASSWORDS["sana"])
        status, _, text, _ = nurse.request("GET", "/patient/p-0001/alarm/alarm-000005")
        assert status == 200 and "ECG from ecg-0001, PPG from no device" in text
        assert "The waveforms could not be read: InfluxDB could not be read" in text
        _, _, svg, _ = nurse.request("GET", "/patient/p-0001/alarm/alarm-000005/strip.svg")
        assert len(re.findall(r"<polyline ", svg)) == 1  # the ECG trace


def test_a_strip_reaches_back_to_when_the_condition_began(tmp_path: Path, influxdb: InfluxDB1) -> None:
    """An SpO2 alarm waits 15-30 s: a strip of 6 s before the alarm would leave the onset out
    without a word. It starts 2 s before the onset instead (at most 60 s before the alarm), and an
    onset longer ago than that is said in words."""
    readings = _readings(40)
    influxdb.write(chunk_lines_many([(r, _patient(r)) for r in readings]))
    influx = InfluxConfig(url=influxdb.url, bucket=influxdb.database, waveforms="chunks")
    config = _config(tmp_path, influx, strip_before_s=6.0, strip_after_s=4.0)
    raised = T0_US / 1e6 + 30
    with _station(config, "alarm-000007", raised, "spo2_low", "SpO2 86 %", began=raised - 20) as server:
        nurse = Agent(server.url)
        nurse.login("sana", PASSWORDS["sana"])
        _, _, svg, _ = nurse.request("GET", "/patient/p-0001/alarm/alarm-000007/strip.svg")
        width_mm = float(re.search(r'width="([0-9.]+)mm"', svg).group(1))  # type: ignore[union-attr]
        assert width_mm == pytest.approx(10 + 25 * (22 + 4), abs=0.5)  # 25 mm/s from 2 s before the onset
        assert ">condition began<" in svg
    config = _config(tmp_path / "again", influx, strip_before_s=6.0, strip_after_s=4.0)
    with _station(config, "alarm-000008", raised, "spo2_low", "SpO2 86 %", began=raised - 300) as server:
        nurse = Agent(server.url)
        nurse.login("sana", PASSWORDS["sana"])
        _, _, svg, _ = nurse.request("GET", "/patient/p-0001/alarm/alarm-000008/strip.svg")
        assert "before this strip" in svg
