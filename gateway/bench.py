"""`nabz bench gateway`: what a gateway process costs and how fast it catches up after an outage.

Real processes throughout: a mosquitto broker, a virtual radio with four wearables (two patients:
ECG patch 250 Hz + pulse oximeter 2 x 100 Hz) in one process (`python -m hardware.ble_peripherals`),
and `nabz gateway run --transport ble` in another, reaching the radio through bumble's HCI over TCP
as it would a USB dongle. A subscriber in this process stands in for ingest (a persistent MQTT v5
session on a broker that keeps its sessions across the outage, as deployed): a reading nobody
subscribes to would be held back by the gateway (gateway.hold), not delivered. Measured on the
gateway process only (psutil):

- `rss_mb`: resident memory at the end of the live phase (and `rss_max_mb` over it);
- `cpu_percent`: CPU time over wall time during the live phase, in percent of one core;
- `live_readings_per_s`: readings published per second while streaming live;
- `drain_readings_per_s`: readings delivered per second while the backlog of a broker outage of
  `outage_s` drains, as the gateway itself reports it in its log ("backlog ... delivered");
- `drain_vs_live`: their ratio. Targets (issue 4): rss_mb <= 60, cpu_percent <= 10, ratio >= 20.

The numbers are ratios and counts from one run on the machine at hand, not assertions.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["run_bench"]

TARGETS = {"rss_mb": 60.0, "cpu_percent": 10.0, "drain_vs_live": 20.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Broker:
    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("mosquitto")
        if binary is None:
            raise SystemExit("nabz bench gateway needs mosquitto: sudo apt-get install -y mosquitto")
        self.binary = binary
        self.port = _free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {workdir}/\nmax_queued_messages 1000000\nmax_inflight_messages 0\n"
            + ("user root\n" if os.geteuid() == 0 else "")
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stderr=subprocess.DEVNULL)
        _wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # it saves its sessions on the way out
            self.proc.wait(10)
            self.proc = None


def _ingest_stand_in(port: int) -> Any:
    """A persistent subscriber to every reading that does nothing with them (paho reconnects it)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from nabz import contract

    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-ingest", protocol=MQTTProtocolVersion.MQTTv5
    )
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    # not a shared subscription: mosquitto 2.0.11 does not restore those from its persistence
    # file after a restart (measured), and the gateway would hold every reading until a probe
    client.subscribe(contract.READINGS_FILTER, qos=1)
    client.loop_start()
    return client


def _wait_port(port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def _published(spool: Path) -> tuple[int, int]:
    """(published readings, messages waiting) from the gateway's spool, read-only."""
    try:
        db = sqlite3.connect(f"file:{spool}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return 0, 0
    try:
        row = db.execute("SELECT value FROM counters WHERE name = 'published_readings'").fetchone()
        depth = db.execute("SELECT COUNT(*) FROM spool").fetchone()[0]
        return (int(row[0]) if row else 0), int(depth)
    except sqlite3.OperationalError:
        return 0, 0
    finally:
        db.close()


def _health(spool: Path) -> list[dict[str, Any]]:
    try:
        db = sqlite3.connect(f"file:{spool}?mode=ro", uri=True, timeout=5)
        row = db.execute("SELECT payload FROM status WHERE id = 1").fetchone()
        db.close()
    except sqlite3.OperationalError:
        return []
    if not row:
        return []
    health: list[dict[str, Any]] = json.loads(row[0])["status"].get("health", [])
    return health


def run_bench(live_s: float = 30.0, outage_s: float = 60.0, transport: str = "ble") -> dict[str, Any]:
    import psutil  # type: ignore[import-untyped]

    from hardware.ble_peripherals import peripheral_address

    work = Path(tempfile.mkdtemp(prefix="nabz-bench-gateway-"))
    broker = _Broker(work)
    broker.start()
    ingest = _ingest_stand_in(broker.port)
    procs: list[subprocess.Popen[bytes]] = []
    spool = work / "spool.sqlite"
    ids = ["ecg-0001", "oxi-0001", "ecg-0002", "oxi-0002"]
    hci_port = _free_port()
    config = work / "gateway.toml"
    config.write_text(
        f'site = "bench"\n[mqtt]\nurl = "mqtt://127.0.0.1:{broker.port}"\nreconnect_min_s = 0.5\n'
        f'reconnect_max_s = 2.0\n[gateway]\nid = "gw-bench"\nspool_path = "{spool}"\n'
        f'status_interval_s = 2.0\n[gateway.ble]\nbackend = "bumble"\nhci = "tcp-client:127.0.0.1:{hci_port}"\n'
        + "".join(
            f'[[gateway.devices]]\nid = "{d}"\naddress = "{peripheral_address(i)}"\n'
            for i, d in enumerate(ids)
        )
    )
    log = work / "gateway.log"
    try:
        if transport == "ble":
            radio = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hardware.ble_peripherals",
                    "--patients",
                    "2",
                    "--hci-port",
                    str(hci_port),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            procs.append(radio)
            assert radio.stdout is not None
            for line in radio.stdout:  # the radio prints "ready" once its HCI listens
                if line.startswith(b"ready"):
                    break
            args = ["--transport", "ble"]
        else:
            args = ["--transport", "virtual", "--patients", "2"]
        with log.open("wb") as out:
            gw = subprocess.Popen(
                [sys.executable, "-m", "nabz.cli", "gateway", "run", "--config", str(config),
                 "--log-format", "json", *args],
                stdout=out, stderr=out,
            )  # fmt: skip
        procs.append(gw)
        deadline = time.monotonic() + 60
        while sum(h.get("state") == "connected" for h in _health(spool)) < len(ids):
            if time.monotonic() > deadline or gw.poll() is not None:
                raise RuntimeError(f"the gateway did not connect its four wearables; see {log}")
            time.sleep(0.2)
        proc = psutil.Process(gw.pid)
        time.sleep(3.0)  # settle: first frames, caches
        c0, w0, (p0, _) = _cpu(proc), time.monotonic(), _published(spool)
        rss_max = 0.0
        while time.monotonic() - w0 < live_s:
            rss_max = max(rss_max, proc.memory_info().rss / 1e6)
            time.sleep(0.5)
        c1, w1, (p1, _) = _cpu(proc), time.monotonic(), _published(spool)
        rss = proc.memory_info().rss / 1e6
        live_rate = (p1 - p0) / (w1 - w0)

        broker.stop()
        time.sleep(outage_s)
        _, backlog = _published(spool)
        broker.start()
        drain = _wait_drain(log, 120.0)
        result = {
            "transport": transport,
            "wearables": len(ids),
            "rss_mb": round(rss, 1),
            "rss_max_mb": round(max(rss_max, rss), 1),
            "cpu_percent": round(100.0 * (c1 - c0) / (w1 - w0), 1),
            "live_s": live_s,
            "live_readings_per_s": round(live_rate, 1),
            "outage_s": outage_s,
            "backlog_messages": backlog,
            "drain_s": drain.get("drain_s"),
            "drain_readings_per_s": drain.get("drain_readings_per_s"),
            "drain_vs_live": round(drain["drain_readings_per_s"] / live_rate, 1)
            if drain and live_rate
            else None,
            "targets": TARGETS,
            "cpu_count": os.cpu_count(),
        }
        result["meets_targets"] = bool(
            result["rss_mb"] <= TARGETS["rss_mb"]
            and result["cpu_percent"] <= TARGETS["cpu_percent"]
            and (result["drain_vs_live"] or 0) >= TARGETS["drain_vs_live"]
        )
        return result
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        ingest.loop_stop()
        ingest.disconnect()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def _cpu(proc: Any) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def _wait_drain(log: Path, timeout_s: float) -> dict[str, Any]:
    """The gateway's own report of its drained backlog (a JSON log line)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if '"drain_readings_per_s"' in line:
                record: dict[str, Any] = json.loads(line)
                return record
        time.sleep(0.2)
    return {}
