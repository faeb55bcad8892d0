"""A fault rig: the whole pipeline on real processes, counted at both ends, for the fault suite
(tests/faults) and `nabz bench soak`.

simulated patients -> gateways (in this process, virtual wearables, through an uplink proxy)
  -> mosquitto (persistence) -> ingest (`nabz ingest run`, its own process)
  -> VictoriaMetrics (`-dedup.minScrapeInterval=1ms`, as docs/storage.md asks) and derived vitals
  -> alerts (this process) -> a notifier that keeps every SMS

Rules of this file:
- One clock for everything that reads one (`SharedClock`): simulated time runs `speed` times
  faster than the wall clock, from a start far enough in the past that no reading is ever
  future-dated, and any process can rebuild it from three numbers.
- Readings are counted by message id at both ends: every row a gateway writes to its spool
  (`sent`), every row ingest stored (`stored`, read from its database). `lost` = sent, never
  stored; a second copy cannot be stored (the id is the key) and shows up as ingest's
  `duplicates` counter instead. The time-series server is checked against the storage contract:
  for each stored message, the points `ingest.lines.reading_lines` says it writes, by series and
  timestamp, exactly once.
- Alarms are counted at the phone: every SMS the notifier took, matched to its alarm by the ACK
  code. With the rig's escalation (one step, no repeats) each alarm must be texted exactly once.
- Faults are what a user would see: a broker restarted, a process killed with SIGKILL, a server
  stopped, the uplink proxy killed (the gateway's TCP connection dies, as when the home's internet
  goes), a notifier failing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alerts.notify import Delivery
from nabz.broker import free_port
from nabz.config import (
    AlertsConfig,
    Config,
    DeadmanConfig,
    EscalationConfig,
    EscalationPolicy,
    EscalationStep,
    GatewayConfig,
    MqttConfig,
    OncallConfig,
)

__all__ = [
    "SharedClock",
    "Servers",
    "IngestProcess",
    "SmsBook",
    "Rig",
    "vm_points",
    "expected_points",
    "point_stamps",
]

ROOT = Path(__file__).resolve().parents[1]


def need(command: str) -> str:
    path = shutil.which(command)
    if path is None:
        raise RuntimeError(f"{command} is not installed (make test installs it; or apt-get install it)")
    return path


def wait_port(port: int, timeout_s: float = 15.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout_s} s")


def wait_until(what: Callable[[], bool], timeout_s: float, message: str = "timed out") -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        if time.monotonic() > deadline:
            raise TimeoutError(message)
        time.sleep(0.05)


# --- time ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SharedClock:
    """sim = sim0 + (wall - wall0) * speed; the same in every process given the same numbers."""

    speed: float
    sim0: float
    wall0: float

    @classmethod
    def starting_now(cls, speed: float, sim_span_s: float) -> SharedClock:
        wall = time.time()
        # Whole hours back, so that a run of `sim_span_s` ends an hour before the real now.
        return cls(speed, float(int((wall - sim_span_s - 3600.0) // 3600) * 3600), wall)

    def __call__(self) -> float:
        return self.sim0 + (time.time() - self.wall0) * self.speed

    def real_s(self, sim_s: float) -> float:
        return sim_s / self.speed


# --- servers -------------------------------------------------------------------------------------
class Servers:
    """mosquitto, VictoriaMetrics and an uplink proxy (socat), each restartable."""

    def __init__(self, work: Path, broker_queue: int = 0) -> None:
        """`broker_queue`: mosquitto's `max_queued_messages` (0: unlimited)."""
        self.work = work
        self.broker_queue = broker_queue
        work.mkdir(parents=True, exist_ok=True)
        self.mq_port, self.vm_port, self.uplink_port = free_port(), free_port(), free_port()
        self.mq: subprocess.Popen[bytes] | None = None
        self.vm: subprocess.Popen[bytes] | None = None
        self.uplink: subprocess.Popen[bytes] | None = None
        self.mq_log = work / "mosquitto.log"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mq_port}"

    @property
    def uplink_url(self) -> str:
        """The broker as the gateways reach it: through the proxy that `cut_uplink` kills."""
        return f"mqtt://127.0.0.1:{self.uplink_port}"

    @property
    def vm_url(self) -> str:
        return f"http://127.0.0.1:{self.vm_port}"

    def start_mosquitto(self) -> None:
        conf = self.work / "mosquitto.conf"
        (self.work / "mq").mkdir(exist_ok=True)
        conf.write_text(
            f"listener {self.mq_port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {self.work / 'mq'}/\nautosave_interval 1\n"
            f"max_queued_messages {self.broker_queue}\nmax_inflight_messages 0\nlog_dest stderr\n"
            + ("user root\n" if os.geteuid() == 0 else "")
        )
        with self.mq_log.open("ab") as log:
            self.mq = subprocess.Popen([need("mosquitto"), "-c", str(conf)], stdout=log, stderr=log)
        wait_port(self.mq_port, 10, self.mq)

    def stop_mosquitto(self) -> None:
        if self.mq is not None and self.mq.poll() is None:
            self.mq.send_signal(signal.SIGTERM)  # it saves its persistence file on SIGTERM
            self.mq.wait(15)
        self.mq = None
        if "Error saving" in self.mq_log.read_text(errors="replace"):
            raise RuntimeError("mosquitto could not save its persistence file")

    def start_victoria(self) -> None:
        log = (self.work / "victoria.log").open("ab")
        self.vm = subprocess.Popen(
            [need("victoria-metrics"), f"-storageDataPath={self.work / 'vm'}",
             f"-httpListenAddr=127.0.0.1:{self.vm_port}", "-retentionPeriod=100y", "-search.latencyOffset=0s",
             "-dedup.minScrapeInterval=1ms", "-loggerLevel=ERROR"],
            stdout=log, stderr=log,
        )  # fmt: skip
        wait_port(self.vm_port, 15, self.vm)

    def pause_victoria(self) -> None:
        """Freeze the time-series server (SIGSTOP): connections still open, nothing answers."""
        assert self.vm is not None
        self.vm.send_signal(signal.SIGSTOP)

    def resume_victoria(self) -> None:
        assert self.vm is not None
        self.vm.send_signal(signal.SIGCONT)

    def stop_victoria(self) -> None:
        if self.vm is not None and self.vm.poll() is None:
            self.vm.terminate()
            self.vm.wait(15)
        self.vm = None

    def start_uplink(self) -> None:
        # Its own session: killing the group takes the per-connection children too, which is
        # what cuts the established connections (a home's router going down).
        self.uplink = subprocess.Popen(
            [need("socat"), f"TCP-LISTEN:{self.uplink_port},bind=127.0.0.1,reuseaddr,fork",
             f"TCP:127.0.0.1:{self.mq_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        wait_port(self.uplink_port, 10, self.uplink)

    def cut_uplink(self) -> None:
        if self.uplink is not None and self.uplink.poll() is None:
            os.killpg(self.uplink.pid, signal.SIGKILL)
            self.uplink.wait(10)
        self.uplink = None

    def stop(self) -> None:
        self.cut_uplink()
        for stop in (self.stop_victoria, self.stop_mosquitto):
            try:
                stop()
            except RuntimeError:
                pass


# --- ingest as its own process -------------------------------------------------------------------
class IngestProcess:
    """`nabz ingest run` with a configuration file; killed with SIGKILL when asked."""

    def __init__(self, work: Path, config_toml: str) -> None:
        self.work = work
        self.config = work / "ingest.toml"
        self.config.write_text(config_toml)
        self.config.chmod(0o600)
        self.log = work / "ingest.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nabz.cli", "-v", "ingest", "run", "--config", str(self.config)],
                cwd=ROOT, stdout=out, stderr=out,
            )  # fmt: skip
        self.starts += 1
        wait_until(lambda: self.log.read_text(errors="replace").count("ingest connected to") >= self.starts,
                   30, f"ingest did not connect: {self.log}")  # fmt: skip

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- SMS -----------------------------------------------------------------------------------------
@dataclass
class SmsBook:
    """A notifier that keeps every SMS it takes; `failing(now)` makes it refuse for a while. It
    stands in for the outbox, not for a phone."""

    reaches_phone = False
    name: str = "book"
    sent: list[tuple[str, str, float]] = field(default_factory=list)
    refused: int = 0
    failing: Callable[[float], bool] = lambda _now: False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, to: str, text: str, key: str, at: float) -> Delivery:
        if self.failing(at):
            self.refused += 1
            return Delivery(False, retryable=True, detail="simulated: no network")
        with self.lock:
            self.sent.append((to, text, at))
        return Delivery(True, ref=key)

    def texts(self) -> list[str]:
        with self.lock:
            return [t for _, t, _ in self.sent]


def once_policy() -> EscalationConfig:
    """Text the primary once per alarm, no repeats, no escalation: so 'exactly once' is exact."""
    one = EscalationPolicy(steps=[EscalationStep(after_s=0.0, notify=["primary"])], renotify_s=0.0)
    return EscalationConfig(high=one, medium=one, low=one)


# --- counting ------------------------------------------------------------------------------------
def stored_rows(db_path: Path) -> list[tuple[str, str, str, int, bytes]]:
    """(id, device, stream, readings, payload) of every message ingest stored."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        return [(str(a), str(b), str(c), int(d), bytes(e)) for a, b, c, d, e in
                db.execute("SELECT id, device, stream, readings, payload FROM messages")]  # fmt: skip
    finally:
        db.close()


def store_counters(db_path: Path) -> dict[str, int]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        return {str(k): int(v) for k, v in db.execute("SELECT name, value FROM counters")}
    finally:
        db.close()


_LINE = re.compile(r"^(?P<m>[^,]+),(?P<tags>\S+) (?P<fields>\S+) (?P<t>\d+)$")


def expected_points(
    rows: list[tuple[str, str, str, int, bytes]], enrolment: dict[str, str], chunks: bool = False
) -> Counter[tuple[str, str]]:
    """(VictoriaMetrics series name, device) -> distinct millisecond timestamps, from the
    storage contract: what `reading_lines` (or `chunk_lines`) writes for each stored message.
    VictoriaMetrics keeps numeric fields only: a chunk's packed samples are not counted."""
    return point_stamps(rows, enrolment, chunks)[0]


def point_stamps(
    rows: list[tuple[str, str, str, int, bytes]], enrolment: dict[str, str], chunks: bool = False
) -> tuple[Counter[tuple[str, str]], Counter[tuple[str, str]]]:
    """`expected_points`, and by series the points written on a millisecond another point of
    that series already has: VictoriaMetrics keeps one of them, so each is a reading lost there
    (two values stamped a microsecond apart, or two waveform frames overlapping in time). Not
    counted for RR intervals, whose times are estimates (docs/storage.md): a beat of one heart-rate
    notification can land on the millisecond of one of the notification before."""
    import msgspec

    from ingest.lines import chunk_lines, reading_lines
    from nabz import contract

    stamps: dict[tuple[str, str], set[int]] = {}
    shared: Counter[tuple[str, str]] = Counter()
    decoder = msgspec.json.Decoder(contract.Reading)
    for _, device, _, _, payload in rows:
        r = decoder.decode(payload)
        lines = chunk_lines(r, enrolment[device]) if chunks else reading_lines(r, enrolment[device])
        for line in lines:
            m = _LINE.match(line)
            assert m is not None, line
            for f in m.group("fields").split(","):
                if f.endswith('"'):  # a string field (packed samples): not stored by VictoriaMetrics
                    continue
                key = (f"{m.group('m')}_{f.split('=')[0]}", device)
                series, ms = stamps.setdefault(key, set()), int(m.group("t")) // 1_000_000
                if ms in series and m.group("m") != "rr":
                    shared[key] += 1
                series.add(ms)
    return Counter({k: len(v) for k, v in stamps.items()}), shared


def vm_points(vm_url: str, names: Sequence[str]) -> tuple[Counter[tuple[str, str]], int]:
    """(series, device) -> points in VictoriaMetrics, and how many timestamps were doubled."""
    urllib.request.urlopen(f"{vm_url}/internal/force_flush", timeout=10).read()
    query = urllib.parse.urlencode({"match[]": '{__name__=~"' + "|".join(names) + '"}'})
    out: Counter[tuple[str, str]] = Counter()
    doubled = 0
    with urllib.request.urlopen(f"{vm_url}/api/v1/export?{query}", timeout=60) as resp:
        for line in resp.read().splitlines():
            if line.strip():
                s = json.loads(line)
                stamps = s["timestamps"]
                out[(s["metric"]["__name__"], s["metric"]["device"])] += len(set(stamps))
                doubled += len(stamps) - len(set(stamps))
    return out, doubled


@dataclass
class ReadingCount:
    sent_messages: int
    sent_readings: int
    stored_messages: int
    stored_readings: int
    lost_messages: int
    lost_readings: int
    unexpected_messages: int  # stored, never sent by a gateway
    duplicates: int  # redeliveries ingest recognised and discarded
    vm_expected: int
    vm_stored: int
    vm_missing: dict[str, int]
    vm_doubled: int
    vm_shared: dict[str, int]  # series -> points written on a millisecond already taken (lost there)

    @property
    def exact(self) -> bool:
        return (
            self.lost_messages == 0 and self.unexpected_messages == 0 and self.stored_readings == self.sent_readings
            and not self.vm_missing and self.vm_doubled == 0 and not self.vm_shared
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


__all__ += ["ReadingCount", "once_policy", "stored_rows", "store_counters", "wait_until", "need", "wait_port"]


# --- the rig -------------------------------------------------------------------------------------
class _Tally:
    """A simulated wearable whose readings are counted by (device, stream) as generated."""

    def __init__(self, inner: Any, tally: Counter[tuple[str, str]]) -> None:
        self.inner, self.tally = inner, tally
        self.device_id: str = inner.device_id

    @property
    def readings_generated(self) -> int:
        return int(self.inner.readings_generated)

    @property
    def device_t_us(self) -> int:
        return int(self.inner.device_t_us)

    def write(self, char: str, data: bytes) -> Any:
        return self.inner.write(char, data)

    def advance(self, seconds: float) -> list[Any]:
        from firmware import nabz_codec as codec
        from gateway.decode import normalize_uuid

        sent = list(self.inner.advance(seconds))
        for n in sent:
            char = normalize_uuid(n.char_uuid)
            if char in (codec.NABZ_ECG_WAVEFORM, codec.NABZ_PPG_WAVEFORM):
                self.tally[(self.device_id, "ecg" if n.data[1] == codec.WAVE_KIND_ECG else "ppg")] += n.data[
                    3
                ]
            else:
                self.tally[(self.device_id, {"2a37": "hr", "2a5f": "spo2", "2a19": "battery"}[char])] += 1
        return sent


@dataclass
class RigOptions:
    patients: int = 2
    scenarios: Sequence[Any] | None = None  # per patient: a hardware Scenario, a preset name or None
    speed: float = 10.0
    sim_span_s: float = 3600.0  # how much simulated time the run may cover (for the clock's start)
    seed: int = 11
    influx: bool = True
    waveforms: str = "points"  # [influx] waveforms: points | chunks
    alerts: dict[str, Any] = field(default_factory=dict)  # AlertsConfig overrides
    escalation: EscalationConfig | None = None  # default: text the primary once per alarm
    oncall: OncallConfig | None = None
    ingest_toml: str = ""  # more [ingest] lines
    virtual_gateways: bool = True  # a gateway per patient in this process (else the test brings its own)
    broker_queue: int = 0  # mosquitto's max_queued_messages (0: unlimited)


class Rig:
    """See the module docstring. Use as a context manager, or call `close()`."""

    def __init__(
        self, work: Path, options: RigOptions | None = None, *, notifiers: list[Any] | None = None
    ) -> None:
        from hardware import make_patients

        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.o = options or RigOptions()
        self.clock = SharedClock.starting_now(self.o.speed, self.o.sim_span_s)
        self.servers = Servers(work / "servers", self.o.broker_queue)
        self.people = make_patients(self.o.patients, self.o.seed, scenarios=self.o.scenarios)
        self.enrolment = {d.device_id: p.patient_id for p in self.people for d in p.devices}
        self.tally: Counter[tuple[str, str]] = Counter()
        self.sent: dict[str, tuple[str, str, int]] = {}  # message id -> (device, stream, readings)
        self._sent_lock = threading.Lock()
        self.book = SmsBook()
        self._notifiers = notifiers
        self.gateways: list[Any] = []
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._thread: threading.Thread | None = None
        self.ingest: IngestProcess | None = None
        self.alerts: Any = None
        self.store_path = work / "ingest.sqlite"

    # --- configuration ---------------------------------------------------------------------------
    def alerts_config(self) -> Config:
        # Timers that watch for silence are set in real seconds here: on a clock 60 times faster a
        # second of real pipeline latency is a simulated minute, and the end of a run (the
        # wearables stop) would otherwise look like every patient going quiet.
        speed = self.o.speed
        opts: dict[str, Any] = dict(
            store_path=str(self.work / "alerts.sqlite"), outbox_path=str(self.work / "outbox.jsonl"),
            heartbeat_s=1.0, stale_after_s=max(300.0, 60 * speed), site_quiet_after_s=max(120.0, 60 * speed),
            gateway_offline_after_s=max(60.0, 5 * speed),
        )  # fmt: skip
        opts.update(self.o.alerts)
        return Config(
            site="test",
            mqtt=MqttConfig(url=self.servers.mqtt_url, reconnect_min_s=0.2, reconnect_max_s=1.0),
            alerts=AlertsConfig(**opts),
            escalation=self.o.escalation or once_policy(),
            oncall=self.o.oncall or OncallConfig(),
            enrolment=self.enrolment,
        )

    def gateway_config(self, gateway_id: str) -> Config:
        return Config(
            site="test",
            mqtt=MqttConfig(url=self.servers.uplink_url, reconnect_min_s=0.2, reconnect_max_s=1.0),
            gateway=GatewayConfig(
                id=gateway_id, spool_path=str(self.work / f"spool-{gateway_id}.sqlite"), status_interval_s=30.0,
                # The dead-man is tested on its own (tests/gateway/test_deadman.py); here the alerts
                # service's heartbeats come every real second, i.e. every `speed` simulated seconds.
                deadman=DeadmanConfig(after_s=max(600.0, 30 * self.o.speed)),
                # ingest's heartbeats come every real second: three of them, in simulated time
                # (at speed 720, 30 simulated seconds are 42 ms: the gateways paused and resumed
                # between heartbeats, found by review)
                pause_after_s=max(30.0, 3 * self.o.speed),
            ),
        )  # fmt: skip

    def ingest_toml(self) -> str:
        influx = (
            f'[influx]\nurl = "{self.servers.vm_url}"\ntoken = "rig"\nspill_dir = "{self.work / "spill"}"\n'
            f'waveforms = "{self.o.waveforms}"\n'
        )
        return (
            f'site = "test"\n[mqtt]\nurl = "{self.servers.mqtt_url}"\nreconnect_min_s = 0.2\nreconnect_max_s = 1.0\n'
            f'[ingest]\nstore_path = "{self.store_path}"\nclient_id = "rig-ingest"\nheartbeat_s = 1.0\n'
            f"stats_interval_s = 2.0\n{self.o.ingest_toml}\n"
            + (influx if self.o.influx else "")
            + "[enrolment]\n"
            + "".join(f'"{d}" = "{p}"\n' for d, p in self.enrolment.items())
        )

    # --- life ------------------------------------------------------------------------------------
    def start(self) -> Rig:
        self.servers.start_mosquitto()
        self.servers.start_uplink()
        if self.o.influx:
            self.servers.start_victoria()
        self.ingest = IngestProcess(self.work, self.ingest_toml())
        self.ingest.start()
        self.start_alerts()
        if self.o.virtual_gateways:
            self.start_gateways()
        return self

    def start_alerts(self) -> None:
        from alerts.service import AlertService

        self.alerts = AlertService(
            self.alerts_config(),
            notifiers=self._notifiers or [self.book],
            clock=self.clock,
            client_id="rig-alerts",
        )
        self.alerts.start()

    def start_gateways(self) -> None:
        from gateway.service import Gateway
        from gateway.virtual import VirtualTransport

        for i, p in enumerate(self.people, start=1):
            transport = VirtualTransport([_Tally(d, self.tally) for d in p.devices])
            gw = Gateway(self.gateway_config(f"gw-{i:04d}"), transport, clock=self.clock)
            self._record_sent(gw)
            gw.start()
            self.gateways.append(gw)
        self._thread = threading.Thread(target=self._loop, name="rig-gateways", daemon=True)
        self._thread.start()

    def add_gateway(self, gw: Any) -> None:
        """A gateway the test built (BLE, say): its sent ids are counted and the rig steps it."""
        self._record_sent(gw)
        self.gateways.append(gw)
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="rig-gateways", daemon=True)
            self._thread.start()

    def _record_sent(self, gw: Any) -> None:
        put = gw.spool.put

        def recording(
            rows: list[tuple[str, str, bytes, str, int]], marks: dict[str, str] | None = None
        ) -> int:
            with self._sent_lock:
                for mid, topic, _, stream, n in rows:
                    self.sent[mid] = (topic.split("/")[5], stream, n)
            return int(put(rows, marks))

        gw.spool.put = recording

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._paused.is_set():
                for gw in self.gateways:
                    gw.step()
            self._stop.wait(0.02)

    def run_for(self, sim_s: float) -> None:
        time.sleep(self.clock.real_s(sim_s))

    def wait_sim(self, until_sim: float) -> None:
        time.sleep(max(0.0, (until_sim - self.clock()) / self.o.speed))

    # --- ending and counting ---------------------------------------------------------------------
    def settle(self, timeout_s: float = 120.0, alarms_quiet_s: float = 2.0) -> None:
        """Stop the wearables, let every spool drain and ingest store it all, let alarms settle."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for gw in self.gateways:
            gw.step()
            gw.transport.stop()
        for gw in self.gateways:
            if not gw.drain(timeout_s):
                raise TimeoutError(f"gateway {gw.id} kept {gw.spool.depth} messages")
        want = len(self.sent)
        wait_until(lambda: self.stored_messages() >= want, timeout_s, "ingest did not store everything")
        time.sleep(1.0)  # a double would show now; vitals reach alerts
        last = -1
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:  # alarms settle: nothing new for a while
            n = len(self.alerts.store.sms()) + len(self.alerts.store.alarms())
            if n == last:
                break
            last = n
            time.sleep(alarms_quiet_s)

    def stored_messages(self) -> int:
        try:
            return len(stored_rows(self.store_path))
        except sqlite3.OperationalError:
            return 0

    def count(self) -> ReadingCount:
        rows = stored_rows(self.store_path)
        with self._sent_lock:
            sent = dict(self.sent)
        stored = {mid: n for mid, _, _, n, _ in rows}
        lost = [m for m in sent if m not in stored]
        vm_expected: Counter[tuple[str, str]] = Counter()
        vm_got: Counter[tuple[str, str]] = Counter()
        shared: Counter[tuple[str, str]] = Counter()
        doubled = 0
        if self.o.influx and self.servers.vm is not None:
            vm_expected, shared = point_stamps(rows, self.enrolment, chunks=self.o.waveforms == "chunks")
            names = sorted({name for name, _ in vm_expected})
            deadline = time.monotonic() + 30
            while True:
                vm_got, doubled = vm_points(self.servers.vm_url, names)
                if vm_got == vm_expected or time.monotonic() > deadline:
                    break
                time.sleep(0.5)  # the spill replays, VictoriaMetrics flushes
        missing = {
            f"{k[0]}/{k[1]}": vm_expected[k] - vm_got.get(k, 0)
            for k in vm_expected
            if vm_got.get(k, 0) != vm_expected[k]
        }
        missing.update({f"{k[0]}/{k[1]}": -v for k, v in vm_got.items() if k not in vm_expected})
        return ReadingCount(
            sent_messages=len(sent),
            sent_readings=sum(n for _, _, n in sent.values()),
            stored_messages=len(stored),
            stored_readings=sum(stored.values()),
            lost_messages=len(lost),
            lost_readings=sum(sent[m][2] for m in lost),
            unexpected_messages=len([m for m in stored if m not in sent]),
            duplicates=store_counters(self.store_path).get("duplicates", 0),
            vm_expected=sum(vm_expected.values()),
            vm_stored=sum(vm_got.values()),
            vm_missing=missing,
            vm_doubled=doubled,
            vm_shared={f"{k[0]}/{k[1]}": v for k, v in shared.items()},
        )

    def alarm_report(self) -> dict[str, Any]:
        """Each alarm and how many SMS that went out named it; the phone's side cross-checked."""
        store = self.alerts.store
        sent_rows = [s for s in store.sms() if s["status"] == "sent"]
        texts = self.book.texts() if not self._notifiers else None
        alarms = []
        for a in store.alarms():
            times = sum(1 for s in sent_rows if a["alarm_id"] in s["alarm_ids"])
            at_phone = None if texts is None else sum(t.count(f"ACK {a['ack_code']}") for t in texts)
            alarms.append({"alarm_id": a["alarm_id"], "patient": a["patient"], "kind": a["kind"], "priority": a["priority"],
                           "state": a["state"], "sms": times, "at_phone": at_phone, "message": a["message"]})  # fmt: skip
        return {
            "alarms": alarms,
            "sms_sent": len(sent_rows),
            "sms_failed_attempts": self.alerts.dispatcher.failures,
        }

    def generated(self) -> Counter[tuple[str, str]]:
        return Counter(self.tally)

    def stored_by_stream(self) -> Counter[tuple[str, str]]:
        out: Counter[tuple[str, str]] = Counter()
        for _, device, stream, n, _ in stored_rows(self.store_path):
            out[(device, stream)] += n
        return out

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for gw in self.gateways:
            try:
                gw.stop(graceful=False)
            except Exception:  # closing after a failure: report the first error, not this one
                pass
        if self.alerts is not None:
            self.alerts.stop()
        if self.ingest is not None:
            self.ingest.stop()
        self.servers.stop()

    def __enter__(self) -> Rig:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ += ["Rig", "RigOptions"]


# --- a gateway process on the shared clock (fault 4) ---------------------------------------------
def gateway_main(argv: Sequence[str] | None = None) -> int:
    """`python -m nabz.faults gateway --config F --serial-port P --clock SPEED:SIM0:WALL0`: the
    gateway `nabz gateway run --transport serial` runs, on the rig's compressed clock (the only
    difference), so that a test can kill it with SIGKILL."""
    import argparse
    import logging

    from gateway.service import Gateway
    from gateway.transport import make_transport
    from nabz.config import load

    ap = argparse.ArgumentParser(prog="python -m nabz.faults gateway")
    ap.add_argument("--config", required=True)
    ap.add_argument("--serial-port", required=True)
    ap.add_argument("--clock", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    speed, sim0, wall0 = (float(x) for x in args.clock.split(":"))
    clock = SharedClock(speed, sim0, wall0)
    cfg = load(args.config)
    # The transport stamps what it receives with the compressed clock; its own timers (replay
    # timeout, reopen ladder) keep their real-time lengths, as in production.
    transport = make_transport(
        "serial", port=args.serial_port, baudrate=cfg.gateway.serial.baudrate,
        devices=[d.id for d in cfg.gateway.devices], clock=clock, replay_timeout_s=2.0 * speed,
        retry_min_s=0.5 * speed, retry_max_s=10.0 * speed,
        lost_after_s=cfg.gateway.serial.lost_after_s * speed,
    )  # fmt: skip
    gw = Gateway(cfg, transport, clock=clock)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    gw.start()
    try:
        gw.run(stop)
    finally:
        gw.stop()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["gateway"]:
        sys.exit(gateway_main(sys.argv[2:]))
    sys.exit("usage: python -m nabz.faults gateway --config F --serial-port P --clock SPEED:SIM0:WALL0")
