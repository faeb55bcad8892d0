"""Fault 4: a gateway offline for 6 hours of data (time-compressed 360 times), killed with SIGKILL
in the middle of the outage and restarted, on real processes.

The home's uplink goes (the proxy between the gateway and mosquitto is killed: its connection dies
as when a router goes down, and the broker publishes the gateway's Last Will). The wearables keep
streaming, simulated behind a wired sensor hub (serial line protocol, a pty pair) that keeps its
last lines, so the gateway process that is killed restarts, asks for everything after what its
spool holds, and carries on. When the uplink returns the backlog drains through mosquitto, ingest
and VictoriaMetrics (`waveforms = "chunks"`: one point per message, numeric fields checked).

Counted by message id: everything the gateway spooled is stored exactly once, by device and stream
exactly what the wearables generated, in order, no frame under two ids, and the time-series server
holds each message's points once. Each wearable's waveform is stamped without a hole or an overlap
from start to end, across the restart and its replay. Alarms: the gateway offline (its Last Will)
and the desaturation that happened during the outage are each texted exactly once. (Stale data, the
site watchdog, the derived-data gap alarm and the ECG pause and asystole alarms are left to their
own tests here: on a clock 360 times faster their minutes are fractions of a real second and their
seconds are milliseconds, so a busy machine's scheduling delays would look like lost data or
missing beats; the raw data is counted reading by reading instead.) The gateway's own
store-and-forward at volume (drain rate) is measured too.
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
from datetime import datetime
from pathlib import Path

from hardware import scenario
from hardware.serial_sensor import SerialSensor, open_pty_pair
from nabz.faults import ROOT, Rig, RigOptions, SharedClock, wait_until
from tests.faults.checks import alarms_once, every_reading_once

# At 720 times the simulated sensor could not keep up with the clock here: it fell up to 11 minutes
# behind over the six hours, a backlog growing for hours, which the gateway stamps by the device's
# time (still late an hour of the gateway's clock after the restart, it is taken for a clock set while
# the gateway was down, docs/gateway.md). At 360 times it keeps up with room to spare.
SPEED = 360.0
OUTAGE_S = 6 * 3600  # device time
PATIENTS = 2  # the volume of two patients' wearables behind one home gateway
LIVE_READINGS_PER_S = PATIENTS * (250 + 100)  # ECG + PPG samples (vitals add ~3/s per patient)


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


def _depth(spool: Path) -> int:
    with _spool_db(spool) as db:
        return int(db.execute("SELECT COUNT(*) FROM spool").fetchone()[0])


def _start_gateway(config: Path, port: str, clock: SharedClock, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "nabz.faults", "gateway", "--config", str(config), "--serial-port", port,
             "--clock", f"{clock.speed}:{clock.sim0}:{clock.wall0}"],
            cwd=ROOT, stdout=out, stderr=out,
        )  # fmt: skip


def _stamping_faults(frames: list[tuple[str, int, str, int, int]]) -> dict[str, tuple[float, float]]:
    """Per device and stream, (the largest hole, the largest overlap) in ms between consecutive
    frames' times, where one is over 2 ms: a frame starts where the one before it ended, one sample
    period after its last sample (the clock estimate moves by at most 1 ms a frame)."""
    by_topic: dict[str, list[tuple[int, float, int, int]]] = {}
    for topic, seq, t, rate, n in frames:
        by_topic.setdefault(topic, []).append((seq, datetime.fromisoformat(t).timestamp(), rate, n))
    faults = {}
    for topic, rows in by_topic.items():
        rows.sort()
        errors = [(b[1] - a[1] - a[3] / a[2]) * 1000 for a, b in zip(rows, rows[1:], strict=False)]
        if max(errors) > 2 or min(errors) < -2:
            faults[topic.split("/", 5)[5]] = (round(max(errors), 1), round(-min(errors), 1))
    return faults


def _wait_open(log: Path, times: int) -> None:
    wait_until(
        lambda: log.exists() and log.read_text().count("open at") >= times, 30, "the port was not opened"
    )


def test_4_gateway_offline_for_six_hours_of_data_killed_in_the_middle(tmp_path: Path) -> None:
    options = RigOptions(
        patients=PATIENTS, scenarios=[scenario("desaturation", 1800.0), "normal"], speed=SPEED, sim_span_s=OUTAGE_S + 4 * 3600,
        virtual_gateways=False, waveforms="chunks",
        alerts={"stale_after_s": 1e9, "site_quiet_after_s": 1e9, "gateway_offline_after_s": 60.0, "gap_alarm_s": 1e9,
                "pause_s": 1e9, "asystole_s": 1e9},
        ingest_toml="keep_payloads = true\n",
    )  # fmt: skip
    spool = tmp_path / "spool.sqlite"
    with Rig(tmp_path, options) as rig:
        devices = [d for p in rig.people for d in p.devices]
        config = tmp_path / "gateway.toml"
        config.write_text(
            f'site = "test"\n[mqtt]\nurl = "{rig.servers.uplink_url}"\nreconnect_min_s = 0.2\nreconnect_max_s = 1.0\n'
            f'[gateway]\nid = "gw-sf"\nspool_path = "{spool}"\nstatus_interval_s = 3600.0\ntransport = "serial"\n'
            # ingest's heartbeats come every real second (360 simulated ones): three of them
            f"pause_after_s = {3 * SPEED}\n"
            "[gateway.deadman]\nafter_s = 1e9\n"
            # real seconds (the rig's gateway runs the serial link's timers in real time): the
            # sensor's end is reported lost during the drain, however fast that is
            "[gateway.serial]\nlost_after_s = 15.0\n"
            + "".join(f'[[gateway.devices]]\nid = "{d.device_id}"\n' for d in devices)
        )
        master, slave, port = open_pty_pair()
        sensor = SerialSensor(master, devices, seed=61, ring=150_000)  # lines: > the restart's gap
        log = tmp_path / "gateway.log"
        gw = _start_gateway(config, port, rig.clock, log)
        # A second of device time per write, paced to the clock. Vital signs carry no device time:
        # the gateway stamps them as late as the waveform frame before them, so the values read in
        # one burst by a busy gateway, or replayed after its restart, keep their seconds apart.
        writer = threading.Thread(target=sensor.run, args=(OUTAGE_S, 1.0, SPEED), daemon=True)
        try:
            _wait_open(log, 1)  # pyserial flushes what is waiting when it opens a port: start after that
            wait_until(lambda: "gw-sf" in rig.alerts.engine.gateways.devices, 20, "no birth from the gateway")
            rig.servers.cut_uplink()  # the outage begins: the broker publishes the gateway's Last Will
            wait_until(lambda: any(a["kind"] == "gateway_offline" for a in rig.alerts.store.alarms()), 20)
            t0 = time.monotonic()
            writer.start()
            while devices[0].elapsed_s < OUTAGE_S / 2:
                assert writer.is_alive() and gw.poll() is None
                time.sleep(0.05)
            gw.send_signal(signal.SIGKILL)  # in the middle of the outage, while busy
            assert gw.wait(10) == -signal.SIGKILL
            killed_at = devices[0].elapsed_s
            gw = _start_gateway(config, port, rig.clock, log)
            writer.join(600)
            assert not writer.is_alive()
            losses = log.read_text().count(" lost (serial port")  # (a slow start may have had some)
            session = f"{sensor.session}:{sensor.lseq}"
            wait_until(
                lambda: _mark(spool, f"transport/serial:{port}") == session, 300, "not everything spooled"
            )
            spooled_s = time.monotonic() - t0

            # Everything is on the gateway's disk and nothing has left it: read it as it is.
            with _spool_db(spool) as db:
                rows = db.execute("SELECT id, topic, stream, readings FROM spool").fetchall()
                frames = db.execute(  # in the order of the spool
                    "SELECT topic, json_extract(p, '$.seq'), json_extract(p, '$.t'), json_extract(p, '$.rate_hz'), "
                    "json_array_length(p, CASE stream WHEN 'ecg' THEN '$.signal_uv' ELSE '$.red_counts' END) "
                    "FROM (SELECT seq, topic, stream, CAST(payload AS TEXT) AS p FROM spool "
                    "WHERE stream IN ('ecg', 'ppg')) ORDER BY seq"
                ).fetchall()
            rig.sent = {mid: (topic.split("/")[5], stream, n) for mid, topic, stream, n in rows}
            assert sum(n for _, _, _, n in rows) == sum(sensor.tally.values())
            last: dict[str, int] = {}
            for topic, seq, *_ in frames:  # per device and stream, in the order of the spool, seq +1 each
                assert seq == last.get(topic, seq - 1) + 1, (topic, seq, last.get(topic))
                last[topic] = seq
            assert _stamping_faults(frames) == {}

            rig.servers.start_uplink()  # the outage ends
            drain_start = time.monotonic()
            wait_until(lambda: _depth(spool) == 0, 300, "the backlog did not drain")
            drain_s = time.monotonic() - drain_start
            # the sensor's end, reported as its four wearables lost (a device_offline each, below)
            wait_until(
                lambda: log.read_text().count(" lost (serial port") >= losses + 4, 60, "the sensor's end"
            )
            rig.settle(timeout_s=300)
            count, alarms = rig.count(), rig.alarm_report()
            per_stream = rig.stored_by_stream()
            twice = (
                sqlite3.connect(rig.store_path)
                .execute(
                    "SELECT device, stream, json_extract(CAST(payload AS TEXT), '$.seq') AS seq, COUNT(*) FROM messages "
                    "WHERE stream IN ('ecg', 'ppg') GROUP BY 1, 2, 3 HAVING COUNT(*) > 1"
                )
                .fetchall()
            )
        finally:
            sensor.close()
            if gw.poll() is None:
                gw.send_signal(signal.SIGTERM)
                gw.wait(20)
            os.close(slave)
            os.close(master)

    every_reading_once(count, at_least=OUTAGE_S * LIVE_READINGS_PER_S)
    assert per_stream == Counter(sensor.tally)  # exactly what the wearables generated, by device and stream
    assert twice == []  # no frame stored under two ids
    # The sensor stops writing when its data ends, long before the backlog has drained: a port
    # with no valid line for lost_after_s is a lost link (docs/gateway.md, wired sensors), so each
    # patient's device_offline is raised once, at the end.
    alarms_once(
        alarms,
        {("p-0001", "gateway_offline"), ("p-0002", "gateway_offline"), ("p-0001", "spo2_low"),
         ("p-0001", "device_offline"), ("p-0002", "device_offline")},
    )  # fmt: skip
    replays = "asking the sensor to replay" in log.read_text()
    drain_rate = count.sent_readings / drain_s
    print(json.dumps({
        "readings": count.sent_readings, "messages": count.sent_messages, "killed_at_device_s": round(killed_at),
        "spool_s": round(spooled_s, 1), "drain_s": round(drain_s, 1), "drain_readings_per_s": round(drain_rate),
        "drain_vs_live": round(drain_rate / LIVE_READINGS_PER_S, 1), "replay_after_restart": replays,
        "vm_points": count.vm_stored,
    }))  # fmt: skip
    assert replays
    assert drain_rate > 20 * LIVE_READINGS_PER_S
