"""`nabz bench ingest`: how many simulated patients the full ingest keeps in real time on this box.

Everything real: mosquitto and VictoriaMetrics started here (Debian packages), the ingest workers
as separate `nabz ingest run` processes (MQTT v5 shared subscriptions, `ingest.workers`), the
messages as the gateway makes them: the `hardware` simulator's BLE frames decoded by
`gateway.decode`, one message per frame (~7 per patient-second: 2-3 ECG, 2-3 PPG, heart rate,
SpO2). ``--messages second`` joins each second of a waveform's frames into one message instead
(4 per patient-second; the contract allows up to 4,096 samples per message), which no gateway
sends today: it shows what batching in the gateway would be worth. Measured in one run:

- ``broker_messages_per_s``: the broker's delivery rate of the same messages (of the same
  steady-state seconds as the drain) to a paho subscriber that does nothing (QoS 1, one process);
- ``naive_messages_per_s``: the pipeline a user would write first: a paho callback doing one
  synchronous influxdb-client write of the message's `Point`s per message;
- both measured just before and just after the backlog drain, and the mean of the two reported
  (each run in ``baselines_before_and_after_drain``);
- ``messages_per_s``: the full ingest's rate draining a backlog of the same messages (validation,
  dedup, DSP, embedded store, InfluxDB write API to VictoriaMetrics) in steady state, and
  ``drain_cpu_us_per_message``: the CPU each process spent per message of that drain;
- ``patients_realtime``: the most patients whose messages, published in real time for
  ``--seconds``, were all stored within ``_LAG_OK_S`` of being sent, without the lag growing,
  with the alerts service (`nabz alerts run`) evaluating the vitals the workers publish.

Both are measured in steady state: a patient's first `_WARM_S` seconds cost less than every later
second (the analysis windows are still filling, the respiration rate needs 24 s of beats), so they
are run first and not counted.

The load generator is a minimal MQTT client on a raw socket, not paho, so that publishing costs
as little CPU as possible and the box's two cores go to the system under test. Templates of
simulated patients are replayed under new device ids with fresh message ids and times.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from ingest.partition import slot_client_id
from nabz import contract
from nabz.broker import free_port
from nabz.secrets import write_private

__all__ = ["run_ingest_bench"]

_T0_US = 1_795_597_200_000_000
_TEMPLATES = 24  # distinct simulated patients; patient i replays template i % _TEMPLATES
_TEMPLATE_S = 30  # at least; a run's templates cover the whole run (see _Fleet.second)
_LAG_OK_S = 3.0
_DRAIN_S = 10  # seconds of messages in the timed backlog
# Seconds of signal before a patient costs what it will cost from then on: the ECG's analysis
# window (10 s) and the PPG's (8 s) fill, and only then does every second run the full analysis
# (a patient's first seconds cost about half); from about 27 s on (a 24 s span of beats) the
# ECG-derived respiration rate is estimated too, every 5 s. Measurements start after it. (Until
# 2026-11-26 06:34 UTC this was 10 s, which left the respiration out.)
_WARM_S = 30
_SITE = "bench"


# --- load generator -------------------------------------------------------------------------------
def _varlen(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">H", len(b)) + b


class RawPublisher:
    """MQTT 3.1.1 QoS 1 publisher on a plain socket; counts PUBACKs on a reader thread."""

    def __init__(self, port: int, client_id: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        var = _utf8("MQTT") + bytes([4, 0x02]) + struct.pack(">H", 60) + _utf8(client_id)
        self.sock.sendall(b"\x10" + _varlen(len(var)) + var)
        if self.sock.recv(4)[:2] != b"\x20\x02":
            raise RuntimeError("no CONNACK")
        self.acked = 0
        self.sent = 0
        self._ids = itertools.cycle(range(1, 65536))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            n = len(buf) // 4  # PUBACK is 4 bytes: 0x40 0x02 id id
            self.acked += n
            buf = buf[n * 4 :]

    def frame(self, items: list[tuple[str, bytes]]) -> tuple[bytes, int]:
        """PUBLISH packets of these messages, to `send` later (framed ahead of a timed run, the
        gateways' work is not done on the cores being measured), and how many."""
        out = bytearray()
        for topic, payload in items:
            var = _utf8(topic) + struct.pack(">H", next(self._ids))
            out += b"\x32" + _varlen(len(var) + len(payload)) + var + payload
        return bytes(out), len(items)

    def send(self, framed: tuple[bytes, int]) -> None:
        self.sock.sendall(framed[0])
        self.sent += framed[1]

    def publish_many(self, items: list[tuple[str, bytes]]) -> None:
        self.send(self.frame(items))

    def wait_acked(self, timeout_s: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.acked < self.sent and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.acked >= self.sent

    def close(self) -> None:
        try:
            self.sock.sendall(b"\xe0\x00")
        finally:
            self.sock.close()


# --- messages -------------------------------------------------------------------------------------
@dataclass
class _Fleet:
    templates: list[list[list[contract.Reading]]]  # template -> second -> readings

    @classmethod
    def build(cls, per_second: bool = False, seconds: int = _TEMPLATE_S) -> _Fleet:
        """`seconds` of each template: a run should not outlast them (see `second`)."""
        from gateway.decode import Decoder, Notification
        from hardware import make_patients

        people = make_patients(_TEMPLATES, seed=7, scenarios=["normal"] * _TEMPLATES)
        out = []
        for p in people:
            dec = Decoder(_SITE, "gw-t")
            template = []
            for s in range(seconds):
                readings = []
                for d in p.devices:
                    for n in d.advance(1.0):
                        r = dec.decode(Notification(n.device_id, n.char_uuid, n.data, _T0_US + s * 1_000_000))
                        if not isinstance(r, contract.Rejected):
                            readings.append(r)
                template.append(_per_second(readings) if per_second else readings)
            out.append(template)
        return cls(out)

    def second(self, patients: int, s: int, serial: str) -> list[tuple[str, bytes]]:
        """All messages of simulated second `s` for patients 1..patients, with fresh ids shaped as
        a gateway makes them (32 hex digits: a prefix per gateway and run, then a counter).

        Past the templates' length they start again, shifted in time; the simulated signal does
        not join up there (the decoded frames span a little less than the template), so every
        patient's analysis restarts, which is cheaper for a while: runs are built not to get there.
        """
        items = []
        span = len(self.templates[0])
        shift = s // span * span * 1_000_000  # microseconds past the template's span
        run = zlib.crc32(serial.encode())
        for i in range(1, patients + 1):
            gw = f"gw-{i:05d}"
            for k, r in enumerate(self.templates[i % _TEMPLATES][s % span]):
                dev = ("ecg" if r.device.startswith("ecg") else "oxi") + f"-{i:05d}"
                t = r.t if not shift else r.t.fromtimestamp(r.t.timestamp() + shift / 1e6, r.t.tzinfo)
                m = msgspec.structs.replace(
                    r, id=f"{run:08x}{i:012x}{s * 1000 + k:012x}", gateway=gw, device=dev, t=t
                )
                items.append(
                    (contract.reading_topic(_SITE, gw, dev, contract.stream_of(m)), contract.encode(m))
                )
        return items


def _per_second(readings: list[contract.Reading]) -> list[contract.Reading]:
    """A gateway that publishes a second of each waveform per message: a second's frames joined."""
    out: list[contract.Reading] = []
    for r in readings:
        prev = next((p for p in reversed(out) if p.device == r.device and type(p) is type(r)), None)
        if isinstance(r, contract.EcgReading) and isinstance(prev, contract.EcgReading):
            out[out.index(prev)] = msgspec.structs.replace(prev, signal_uv=prev.signal_uv + r.signal_uv)
        elif isinstance(r, contract.PpgReading) and isinstance(prev, contract.PpgReading):
            out[out.index(prev)] = msgspec.structs.replace(
                prev, red_counts=prev.red_counts + r.red_counts, ir_counts=prev.ir_counts + r.ir_counts
            )
        else:
            out.append(r)
    return out


def _enrolment(patients: int) -> dict[str, str]:
    return {f"{k}-{i:05d}": f"p-{i:05d}" for i in range(1, patients + 1) for k in ("ecg", "oxi")}


# --- servers and processes ------------------------------------------------------------------------
class _Servers:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.mq_port, self.vm_port = free_port(), free_port()
        conf = work / "mosquitto.conf"
        conf.write_text(
            f"listener {self.mq_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 0\nmax_inflight_messages 0\n" + ("user root\n" if os.geteuid() == 0 else "")
        )
        self.mq = subprocess.Popen([_need("mosquitto"), "-c", str(conf)], stderr=subprocess.DEVNULL)
        self.vm = subprocess.Popen(
            [_need("victoria-metrics"), f"-storageDataPath={work / 'vm'}", f"-httpListenAddr=127.0.0.1:{self.vm_port}",
             "-retentionPeriod=100y", "-search.latencyOffset=0s", "-dedup.minScrapeInterval=1ms",
             "-loggerLevel=ERROR"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for port in (self.mq_port, self.vm_port):
            _wait_port(port)

    def stop(self) -> None:
        for p in (self.mq, self.vm):
            p.terminate()
            p.wait(15)


def _need(cmd: str) -> str:
    path = shutil.which(cmd)
    if path is None:
        raise RuntimeError(f"{cmd} is not installed (apt-get install {cmd})")
    return path


def _wait_port(port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of processes and their threads, from /proc."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


class _Workers:
    def __init__(self, work: Path, servers: _Servers, workers: int, patients: int, run: str) -> None:
        self.work = work
        name = f"{run}-{patients}"  # every run its own store, sessions and shared group
        self.store = work / f"ingest-{name}.sqlite"
        self.config = work / f"nabz-{name}.toml"
        write_private(  # it holds the InfluxDB token: services refuse a config others can read
            self.config,
            f'site = "{_SITE}"\n[mqtt]\nurl = "mqtt://127.0.0.1:{servers.mq_port}"\n'
            f'[ingest]\nstore_path = "{self.store}"\nworkers = {workers}\nclient_id = "bench-{name}"\n'
            # each run its own group: the stopped sessions of earlier runs stay members of theirs
            f'share_group = "bench-{name}"\nkeep_payloads = false\n'
            f'[influx]\nurl = "http://127.0.0.1:{servers.vm_port}"\ntoken = "bench"\nwaveforms = "chunks"\n'
            f'[alerts]\nstore_path = "{work / f"alerts-{name}.sqlite"}"\n'
            f'outbox_path = "{work / f"outbox-{name}.jsonl"}"\n'
            "[enrolment]\n" + "".join(f'"{d}" = "{p}"\n' for d, p in _enrolment(patients).items()),
        )
        self.n = workers
        self.mq_port = servers.mq_port
        self.client_ids = [slot_client_id(f"bench-{name}", w, workers) for w in range(workers)]
        self.with_alerts = False
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        for w in range(self.n):
            env = {**os.environ, "NABZ_INGEST__WORKER": str(w)}
            log = self._log(w).open("ab")
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "nabz.cli", "-v", "ingest", "run", "--config", str(self.config)],
                    env=env,
                    stdout=log,
                    stderr=log,
                )  # fmt: skip
            )
        if self.with_alerts:  # the alerts service evaluating the vitals ingest publishes
            log = (self.work / f"alerts-{self.config.stem}.log").open("ab")
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "nabz.cli", "alerts", "run", "--config", str(self.config)],
                    stdout=log,
                    stderr=log,
                )  # fmt: skip
            )
        deadline = time.monotonic() + 60
        for w in range(self.n):
            path = self._log(w)
            while f"ingest worker {w}/{self.n}: +" not in path.read_text(errors="replace"):
                if time.monotonic() > deadline:
                    self.stop()  # the processes already started, the alerts service too
                    raise RuntimeError(f"worker {w} did not subscribe: {path.read_text()[-1000:]}")
                time.sleep(0.1)

    def _log(self, w: int) -> Path:
        self.starts = getattr(self, "starts", 0)
        return self.work / f"worker-{self.config.stem}-{w}-{self.starts}.log"

    def stop(self) -> None:
        self.starts = getattr(self, "starts", 0) + 1
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []
        # End the persistent sessions: mosquitto keeps queueing every matching message for a
        # stopped member of a shared subscription, so each later run (and baseline) would pay the
        # broker for queueing its messages to every earlier run's workers (until 2026-11-27 it
        # did), and the next run's alerts would inherit a backlog.
        for cid in self.client_ids + (["nabz-alerts"] if self.with_alerts else []):
            _end_session(self.mq_port, cid)

    def stored(self) -> int:
        """Messages stored so far: the store's own count, kept in the transaction that stores
        them (counting the rows instead took ~1.4 ms at 160,000 rows, polled every 50 ms, on the
        cores the workers need)."""
        if not self.store.exists():
            return 0
        db = sqlite3.connect(self.store, timeout=30)
        try:
            row = db.execute("SELECT value FROM counters WHERE name = 'stored_messages'").fetchone()
            return int(row[0]) if row else 0
        except sqlite3.OperationalError:
            return 0
        finally:
            db.close()

    def wait_stored(self, n: int, timeout_s: float, poll_s: float = 0.1) -> None:
        """Until `n` messages are stored, or `timeout_s` has passed."""
        deadline = time.monotonic() + timeout_s
        while self.stored() < n and time.monotonic() < deadline:
            time.sleep(poll_s)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]


def _end_session(port: int, client_id: str) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
    c.connect("127.0.0.1", port, clean_start=True)  # session expiry 0: gone at disconnect
    c.loop_start()
    time.sleep(0.3)
    c.disconnect()
    c.loop_stop()


# --- measurements ---------------------------------------------------------------------------------
def _broker_rate(servers: _Servers, items: list[tuple[str, bytes]]) -> float:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    got = 0
    first = last = 0.0

    def on_message(_c: Any, _u: Any, _m: Any) -> None:
        nonlocal got, first, last
        got += 1
        last = time.perf_counter()
        if got == 1:
            first = last

    sub = paho.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-null", protocol=MQTTProtocolVersion.MQTTv5
    )
    sub.on_message = on_message
    sub.connect("127.0.0.1", servers.mq_port)
    sub.subscribe(contract.READINGS_FILTER, qos=1)
    sub.loop_start()
    time.sleep(0.5)
    pub = RawPublisher(servers.mq_port, "bench-pub-null")
    for framed in [pub.frame(items[i : i + 500]) for i in range(0, len(items), 500)]:
        pub.send(framed)
    deadline = time.monotonic() + 120
    while got < len(items) and time.monotonic() < deadline:
        time.sleep(0.02)
    pub.close()
    sub.disconnect()
    sub.loop_stop()
    return (got - 1) / max(last - first, 1e-9)


def _naive_rate(servers: _Servers, items: list[tuple[str, bytes]]) -> float:
    import paho.mqtt.client as paho
    from influxdb_client import InfluxDBClient  # type: ignore[attr-defined]
    from influxdb_client import Point as _P  # type: ignore[attr-defined]

    def Point(name: str) -> Any:  # noqa: N802 - stands in for the library's class
        return _P(name)  # type: ignore[no-untyped-call]

    from influxdb_client.client.write_api import SYNCHRONOUS
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    client = InfluxDBClient(url=f"http://127.0.0.1:{servers.vm_port}", token="bench", org="nabz")
    api = client.write_api(write_options=SYNCHRONOUS)
    done = 0
    first = last = 0.0

    def on_message(_c: Any, _u: Any, m: Any) -> None:
        nonlocal done, first, last
        data = json.loads(m.payload)
        t_ns = int(datetime.fromisoformat(data["t"].replace("Z", "+00:00")).timestamp() * 1e9)
        points = []
        if "signal_uv" in data:
            step = 1e9 / data["rate_hz"]
            for i, v in enumerate(data["signal_uv"]):
                points.append(
                    Point("naive_ecg")
                    .tag("device", data["device"])
                    .field("signal_uv", v)
                    .time(t_ns + int(i * step))
                )
        elif "red_counts" in data:
            step = 1e9 / data["rate_hz"]
            for i, (r, ir) in enumerate(zip(data["red_counts"], data["ir_counts"], strict=True)):
                points.append(
                    Point("naive_ppg").tag("device", data["device"]).field("red_counts", r).field("ir_counts", ir)
                    .time(t_ns + int(i * step))
                )  # fmt: skip
        else:
            p = Point("naive_vitals").tag("device", data["device"]).time(t_ns)
            for k in ("hr_bpm", "spo2_pct", "pr_bpm", "battery_pct"):
                if data.get(k) is not None:
                    p = p.field(k, float(data[k]))
            points.append(p)
        api.write(bucket="nabz", record=points)
        done += 1
        last = time.perf_counter()
        if done == 1:
            first = last

    sub = paho.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-naive", protocol=MQTTProtocolVersion.MQTTv5
    )
    sub.on_message = on_message
    sub.connect("127.0.0.1", servers.mq_port)
    sub.subscribe(contract.READINGS_FILTER, qos=1)
    sub.loop_start()
    time.sleep(0.5)
    pub = RawPublisher(servers.mq_port, "bench-pub-naive")
    pub.send(pub.frame(items))
    deadline = time.monotonic() + 120
    while done < len(items) and time.monotonic() < deadline:
        time.sleep(0.05)
    pub.close()
    sub.disconnect()
    sub.loop_stop()
    client.close()  # type: ignore[no-untyped-call]
    return (done - 1) / max(last - first, 1e-9)


def _drain_rate(
    work: Path, servers: _Servers, fleet: _Fleet, patients: int, seconds: int, workers: int
) -> tuple[float, dict[str, float]]:
    """A backlog drained in steady state: the patients' first `_WARM_S` seconds are published and
    stored, untimed (their analysis windows fill); then their next `seconds` all at once, timed
    from the first publish to the last message stored. (Until 2026-11-26 the backlog was the
    first seconds themselves, which cost about half as much: the figure was too kind.)

    Returns messages per second and the CPU each process spent per message drained (µs)."""
    w = _Workers(work, servers, workers, patients, "drain")
    w.start()
    pub = RawPublisher(servers.mq_port, "bench-pub-drain")
    try:
        total = 0
        for s in range(_WARM_S):
            items = fleet.second(patients, s, "d")
            pub.publish_many(items)
            total += len(items)
        w.wait_stored(total, 600, 0.2)
        backlog = [pub.frame(fleet.second(patients, s, "d")) for s in range(_WARM_S, _WARM_S + seconds)]
        roles = {"mosquitto": [servers.mq.pid], "victoria_metrics": [servers.vm.pid],
                 "ingest_workers": w.pids, "load": [os.getpid()]}  # fmt: skip
        cpu0 = {role: _cpu_s(group) for role, group in roles.items()}
        t0 = time.perf_counter()
        for framed in backlog:
            pub.send(framed)
            total += framed[1]
        w.wait_stored(total, 600, 0.05)
        elapsed = time.perf_counter() - t0
        drained = sum(n for _, n in backlog)
        cpu = {role: round((_cpu_s(g) - cpu0[role]) / drained * 1e6, 1) for role, g in roles.items()}
    finally:
        pub.close()
        w.stop()
    return drained / max(elapsed, 1e-9), cpu


@dataclass
class _RealTime:
    patients: int
    ok: bool
    lag_end_s: float
    messages_per_s: float
    cpu_cores: float
    cpu_by_process: dict[str, float]  # the same CPU by process ("load": this process, publishing)


def _realtime(
    work: Path,
    servers: _Servers,
    fleet: _Fleet,
    patients: int,
    seconds: int,
    workers: int,
    warm_s: int = _WARM_S,
) -> _RealTime:
    """`seconds` in real time after `warm_s` seconds of warming up (published in real time too,
    but neither judged nor counted: see _WARM_S)."""
    w = _Workers(work, servers, workers, patients, "rt")
    w.with_alerts = True
    w.start()
    pub = RawPublisher(servers.mq_port, f"bench-pub-rt-{patients}")
    roles = {"mosquitto": [servers.mq.pid], "victoria_metrics": [servers.vm.pid],
             "ingest_workers": w.pids[: w.n], "alerts": w.pids[w.n :], "load": [os.getpid()]}  # fmt: skip
    sent = sent_before = 0
    lags: list[float] = []
    by0, wall0 = {role: _cpu_s(group) for role, group in roles.items()}, time.perf_counter()
    start = time.monotonic()
    steady = start + warm_s
    for s in range(warm_s + seconds):
        framed = pub.frame(fleet.second(patients, s, f"r{patients}-"))
        while time.monotonic() < start + s + 1:  # a simulated second's messages go out when it ends
            time.sleep(0.005)
        if s == warm_s:  # from here on it counts
            by0, wall0, steady = (
                {role: _cpu_s(g) for role, g in roles.items()},
                time.perf_counter(),
                time.monotonic(),
            )
            sent_before = sent
        pub.send(framed)
        sent += framed[1]
        if s >= warm_s:
            lags.append((sent - w.stored()) / max(1, framed[1]))  # backlog in seconds of messages
    end = time.monotonic()
    w.wait_stored(sent, 60)
    lag_end = time.monotonic() - end
    wall = time.perf_counter() - wall0
    used = {role: (_cpu_s(group) - by0[role]) / wall for role, group in roles.items()}
    by, cores = {role: round(c, 2) for role, c in used.items()}, sum(used.values())
    pub.close()
    w.stop()
    # the backlog right after each second's burst, in seconds of messages: growing if the last
    # quarter of the run sits more than a second above the second quarter
    q = max(1, len(lags) // 4)
    growing = len(lags) >= 8 and sum(lags[-q:]) / q > sum(lags[q : 2 * q]) / q + 1.0
    ok = lag_end <= _LAG_OK_S and not growing
    rate = (sent - sent_before) / (end - steady)
    return _RealTime(patients, ok, round(lag_end, 2), round(rate, 1), round(cores, 2), by)


def run_ingest_bench(
    *,
    workers: int = 2,
    seconds: int = 20,
    start_patients: int | None = None,
    max_patients: int = 4000,
    messages: str = "frame",
) -> dict[str, Any]:
    """Everything `nabz bench ingest --json` prints (see the module docstring)."""
    if messages not in ("frame", "second"):
        raise ValueError(f"messages is 'frame' or 'second', not {messages!r}")
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    fleet = _Fleet.build(
        per_second=messages == "second", seconds=max(_TEMPLATE_S, _WARM_S + max(seconds, _DRAIN_S))
    )
    per_patient_s = sum(len(s) for t in fleet.templates for s in t) / sum(len(t) for t in fleet.templates)
    work = Path(tempfile.mkdtemp(prefix="nabz-bench-"))
    servers = _Servers(work)
    try:
        # Both baselines just before and just after the drain, each reported as the mean of the
        # two: the box's speed drifts by tens of percent over minutes (docs/benchmarks.md,
        # 2026-11-27), and a ratio should compare runs that met the same box.
        # The baselines take messages of the seconds the drain times, past the warm-up: the first
        # second of a run also holds a battery reading per wearable (a one-point message, 29 % of
        # the naive pipeline's sample until 2026-11-27, when it drew from that second).
        sample = [m for s in range(_WARM_S, _WARM_S + 10) for m in fleet.second(500, s, "b")]
        naive_sample = fleet.second(600, _WARM_S, "n")[:4000]
        brokers = [_broker_rate(servers, sample)]
        naives = [_naive_rate(servers, naive_sample)]
        drain, drain_cpu = _drain_rate(work, servers, fleet, 1000, _DRAIN_S, workers)
        brokers.append(_broker_rate(servers, sample))
        naives.append(_naive_rate(servers, naive_sample))
        broker, naive = sum(brokers) / len(brokers), sum(naives) / len(naives)
        runs: list[_RealTime] = []
        n = start_patients or max(50, int(0.8 * drain / per_patient_s) // 50 * 50)
        best: _RealTime | None = None
        lo, hi = 0, max_patients + 1
        for _ in range(5):  # a short search: up while real time holds, then bisect
            n = min(max(n, 50), max_patients)
            r = _realtime(work, servers, fleet, n, seconds, workers)
            runs.append(r)
            if r.ok:
                best = r if best is None or r.patients > best.patients else best
                lo = max(lo, n)
                n = n * 2 if hi > max_patients else (n + hi) // 2
            else:
                hi = min(hi, n)
                n = (lo + n) // 2 if lo else n // 2
            if hi - lo <= max(50, lo // 10) or n in (lo, hi):
                break
    finally:
        servers.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {
        "patients_realtime": best.patients if best else 0,
        "messages_per_s": round(drain, 1),
        "ratio_vs_broker": round(drain / broker, 3),
        "ratio_vs_naive": round(drain / naive, 1),
        "cpu_cores_used": best.cpu_cores if best else None,
        "broker_messages_per_s": round(broker, 1),
        "naive_messages_per_s": round(naive, 1),
        "baselines_before_and_after_drain": {
            "broker_messages_per_s": [round(b, 1) for b in brokers],
            "naive_messages_per_s": [round(n, 1) for n in naives],
        },
        # CPU per message drained, by process (µs): where the drain's cores went
        "drain_cpu_us_per_message": drain_cpu,
        "messages_per_patient_s": round(per_patient_s, 2),
        "waveform_per_message": "1 s (frames of a second joined)"
        if messages == "second"
        else "one BLE frame",
        "workers": workers,
        "cpu_count": os.cpu_count(),
        "runs": [r.__dict__ for r in runs],
        # other work on the box competes for the same cores: the 1-minute load average around the run
        "loadavg_1min": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
