"""Three ingest worker processes share the readings on real mosquitto (MQTT v5 shared
subscriptions, one owner per patient); one is killed mid-run and restarted in its slot.
Signals are from the `hardware` simulator (synthetic)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.decode import Decoder, Notification
from hardware import make_patients
from ingest.partition import owner_of
from nabz import contract
from nabz.contract import Rejected
from tests.servers import Mosquitto

T0_US = 1_795_597_200_000_000
WORKERS = 3


def _messages(patients: int, seconds: int) -> list[list[tuple[str, bytes, int, str]]]:
    """Per simulated second, every gateway's messages of that second: (topic, payload, readings, id)."""
    people = make_patients(patients, seed=5)
    decoders = {p.patient_id: Decoder("test", f"gw-{i:04d}") for i, p in enumerate(people, 1)}
    out = []
    for s in range(seconds):
        batch = []
        for p in people:
            for d in p.devices:
                for n in d.advance(1.0):
                    dec = decoders[p.patient_id]
                    r = dec.decode(Notification(n.device_id, n.char_uuid, n.data, T0_US + s * 1_000_000))
                    assert not isinstance(r, Rejected)
                    topic = contract.reading_topic("test", dec.gateway, r.device, contract.stream_of(r))
                    batch.append((topic, contract.encode(r), contract.reading_count(r), r.id))
        out.append(batch)
    return out


def _start(config: Path, worker: int, logs: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NABZ_INGEST__WORKER": str(worker)}
    log = (logs / f"worker-{worker}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "nabz.cli", "-v", "ingest", "run", "--config", str(config)],
        env=env, stdout=log, stderr=log,
    )  # fmt: skip


def _wait_log(path: Path, text: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{path.name}: no {text!r}: {path.read_text(errors='replace')[-1500:]}")


def test_three_workers_one_killed_every_reading_once_and_in_order(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    patients = 9
    per_second = _messages(patients, 24)
    enrolment = {f"{k}-{i:04d}": f"p-{i:04d}" for i in range(1, patients + 1) for k in ("ecg", "oxi")}
    owners = {owner_of(p, WORKERS) for p in enrolment.values()}
    assert owners == {0, 1, 2}, "the patients should spread over the three workers"
    store = tmp_path / "ingest.sqlite"
    config = tmp_path / "nabz.toml"
    config.write_text(
        f'site = "test"\n[mqtt]\nurl = "{mosquitto.url}"\nreconnect_min_s = 0.2\nreconnect_max_s = 1.0\n'
        f'[ingest]\nstore_path = "{store}"\nworkers = {WORKERS}\n[enrolment]\n'
        + "".join(f'"{d}" = "{p}"\n' for d, p in enrolment.items())
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = [_start(config, w, logs) for w in range(WORKERS)]
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-pub", protocol=MQTTProtocolVersion.MQTTv5)
    try:
        for w in range(WORKERS):
            _wait_log(logs / f"worker-{w}.log", f"ingest worker {w}/{WORKERS}: +")
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        sent = readings = 0
        order: dict[str, int] = {}
        for second, batch in enumerate(per_second):
            if second == 10:
                procs[1].send_signal(signal.SIGKILL)  # mid-run, with messages in flight
                procs[1].wait()
            if second == 13:  # its slot restarts (systemd would); its session kept the backlog
                procs[1] = _start(config, 1, logs)
            for _, _, _, mid in batch:
                order[mid] = len(order)
            infos = [pub.publish(topic, payload, qos=1) for topic, payload, _, _ in batch]
            for info in infos:
                info.wait_for_publish(10)
            sent += len(batch)
            readings += sum(n for _, _, n, _ in batch)
            time.sleep(0.1)
        db = sqlite3.connect(store, timeout=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] >= sent:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # anything beyond `sent` (a double) would show now
        stored = db.execute("SELECT COUNT(*), COALESCE(SUM(readings), 0) FROM messages").fetchone()
        rows = db.execute("SELECT device, stream, id FROM messages ORDER BY rowid").fetchall()
        db.close()
    finally:
        pub.disconnect()
        pub.loop_stop()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
    assert tuple(stored) == (sent, readings)  # every message and reading exactly once
    last: dict[tuple[str, str], int] = {}
    for device, stream, mid in rows:  # stored in the order each device's readings were sent
        assert order[mid] > last.get((device, stream), -1), (device, stream)
        last[(device, stream)] = order[mid]
    killed_log = (logs / "worker-1.log").read_text(errors="replace")
    assert killed_log.count("ingest worker 1/3: +") == 2  # it ran twice: before and after the kill
