"""Store-and-forward on real processes: a 6-hour outage (time-compressed; the volume of 2 patients,
4 wearables) with the gateway killed with SIGKILL in the middle. Every reading arrives at ingest
exactly once, counted by message id, in order per device, and the backlog drains well above the
live rate.

The wearables are simulated behind a wired sensor hub (serial line protocol, a pty pair), which
keeps its last lines: the one gateway process that is killed restarts, asks for everything after
what its spool holds, and carries on.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from hardware import make_patients
from hardware.serial_sensor import SerialSensor, open_pty_pair
from ingest.service import IngestService
from nabz.config import Config, IngestConfig, MqttConfig
from tests.servers import Mosquitto

ROOT = Path(__file__).parents[2]
OUTAGE_S = 6 * 3600  # device time
LIVE_READINGS_PER_S = 2 * (250 + 100)  # ECG + PPG samples of 2 patients (vitals add ~6/s)


def _spool_db(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def _mark(path: Path, name: str) -> str | None:
    if not path.exists():
        return None
    try:
        with _spool_db(path) as db:
            row = db.execute("SELECT value FROM marks WHERE name = ?", (name,)).fetchone()
    except sqlite3.OperationalError:
        return None
    return str(row[0]) if row else None


def _start_gateway(config: Path, port: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "nabz.cli", "-v", "gateway", "run", "--config", str(config),
             "--transport", "serial", "--serial-port", port],
            cwd=ROOT, stdout=out, stderr=out,
        )  # fmt: skip


def test_six_hour_outage_with_a_gateway_kill_delivers_every_reading_exactly_once(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    devices = [d for p in make_patients(2, seed=61) for d in p.devices]
    ids = [d.device_id for d in devices]
    spool = tmp_path / "spool.sqlite"
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'site = "test"\n[mqtt]\nurl = "{mosquitto.url}"\nreconnect_min_s = 0.2\nreconnect_max_s = 1.0\n'
        f'[gateway]\nid = "gw-sf"\nspool_path = "{spool}"\nstatus_interval_s = 5.0\n'
        + "".join(f'[[gateway.devices]]\nid = "{i}"\n' for i in ids)
    )
    ingest = IngestService(
        Config(
            site="test",
            mqtt=MqttConfig(url=mosquitto.url, reconnect_min_s=0.2, reconnect_max_s=1.0),
            ingest=IngestConfig(store_path=str(tmp_path / "ingest.sqlite")),
            enrolment={i: f"p-{i[-1]}" for i in ids},
        ),
        client_id="sf-ingest",
    )
    ingest.start()
    assert ingest.connected.wait(10)
    mosquitto.stop()  # the outage begins: nothing reaches the server for 6 hours of data

    master, slave, port = open_pty_pair()
    sensor = SerialSensor(master, devices, seed=61, ring=50_000)
    log = tmp_path / "gateway.log"
    gw = _start_gateway(config, port, log)
    writer = threading.Thread(target=sensor.run, args=(OUTAGE_S, 10.0), daemon=True)
    t0 = time.monotonic()
    try:
        _wait_open(log, 1)  # pyserial flushes what is waiting when it opens a port: start after that
        writer.start()
        while devices[0].elapsed_s < OUTAGE_S / 2:
            assert writer.is_alive() and gw.poll() is None
            time.sleep(0.05)
        gw.send_signal(signal.SIGKILL)  # in the middle of the outage, while busy
        assert gw.wait(10) == -signal.SIGKILL
        killed_at = devices[0].elapsed_s
        gw = _start_gateway(config, port, log)
        writer.join(600)
        assert not writer.is_alive()
        session = f"{sensor.session}:{sensor.lseq}"
        deadline = time.monotonic() + 300
        while _mark(spool, f"transport/serial:{port}") != session:
            assert time.monotonic() < deadline, "the gateway did not spool everything"
            assert gw.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        spooled_s = time.monotonic() - t0

        # Everything is on the gateway's disk and nothing has left it: read it as it is.
        with _spool_db(spool) as db:
            spooled_ids = {r[0] for r in db.execute("SELECT id FROM spool")}
            spooled_readings = db.execute("SELECT SUM(readings) FROM spool").fetchone()[0]
            order = db.execute(
                "SELECT topic, json_extract(CAST(payload AS TEXT), '$.seq') FROM spool "
                "WHERE stream IN ('ecg', 'ppg') ORDER BY seq"
            ).fetchall()
        assert spooled_readings == sum(sensor.tally.values())
        last: dict[str, int] = {}
        for topic, seq in order:  # per device and stream, in the order of the spool, seq +1 each
            assert seq == last.get(topic, seq - 1) + 1, (topic, seq, last.get(topic))
            last[topic] = seq

        mosquitto.start()  # the outage ends
        drain_start = time.monotonic()
        while _depth(spool) > 0:
            assert time.monotonic() - drain_start < 300, "the backlog did not drain"
            time.sleep(0.1)
        drain_s = time.monotonic() - drain_start
        deadline = time.monotonic() + 300
        while ingest.store.count_readings() < spooled_readings and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        sensor.close()
        if gw.poll() is None:
            gw.send_signal(signal.SIGTERM)
            gw.wait(20)
        ingest.stop()
        os.close(slave)
        os.close(master)

    stored_ids = set(ingest.store.message_ids())
    assert stored_ids == spooled_ids  # every message, counted by id; nothing else
    db = ingest.store.db
    per_stream = Counter(
        {
            (d, s): int(n)
            for d, s, n in db.execute("SELECT device, stream, SUM(readings) FROM messages GROUP BY 1, 2")
        }
    )
    assert per_stream == sensor.tally  # exactly what the wearables generated, by device and stream
    twice = db.execute(
        "SELECT device, stream, json_extract(CAST(payload AS TEXT), '$.seq') AS seq, COUNT(*) FROM messages "
        "WHERE stream IN ('ecg', 'ppg') GROUP BY 1, 2, 3 HAVING COUNT(*) > 1"
    ).fetchall()
    assert twice == []  # no frame stored under two ids
    replays = "asking the sensor to replay" in log.read_text()
    drain_rate = spooled_readings / drain_s
    print(
        json.dumps(
            {
                "readings": spooled_readings,
                "messages": len(spooled_ids),
                "killed_at_device_s": round(killed_at),
                "spool_s": round(spooled_s, 1),
                "drain_s": round(drain_s, 1),
                "drain_readings_per_s": round(drain_rate),
                "drain_vs_live": round(drain_rate / LIVE_READINGS_PER_S, 1),
                "replay_after_restart": replays,
            }
        )
    )
    assert replays
    assert drain_rate > 20 * LIVE_READINGS_PER_S


def _depth(spool: Path) -> int:
    with _spool_db(spool) as db:
        return int(db.execute("SELECT COUNT(*) FROM spool").fetchone()[0])


def _wait_open(log: Path, times: int) -> None:
    deadline = time.monotonic() + 30
    while not log.exists() or log.read_text().count("open at") < times:
        assert time.monotonic() < deadline, "the gateway did not open the serial port"
        time.sleep(0.05)
