"""`nabz bench ingest` on a small load: the harness itself must keep working (its workers run the
real `nabz ingest run` on a configuration holding an InfluxDB token, as deployments do)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from ingest.benchload import _drain_rate, _Fleet, _realtime, _Servers


def _session_left(port: int, client_id: str) -> bool:
    """Whether the broker still holds a session for this client id (CONNACK's session present)."""
    present: list[bool] = []
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
    c.on_connect = lambda _c, _u, flags, _rc, _p: present.append(bool(flags.session_present))
    c.connect("127.0.0.1", port, clean_start=False)
    c.loop_start()
    deadline = time.monotonic() + 5
    while not present and time.monotonic() < deadline:
        time.sleep(0.02)
    c.disconnect()
    c.loop_stop()
    assert present, "no CONNACK"
    return present[0]


def test_a_small_real_time_run_stores_every_message_in_time() -> None:
    work = Path(tempfile.mkdtemp(prefix="nabz-bench-test-"))
    servers = _Servers(work)
    try:
        fleet = _Fleet.build()
        r = _realtime(work, servers, fleet, patients=20, seconds=3, workers=2, warm_s=2)
        rate, cpu = _drain_rate(work, servers, fleet, patients=60, seconds=2, workers=2)
        # a finished run leaves no session behind in the broker: mosquitto would go on queueing
        # every later run's messages for a stopped member of a shared subscription
        left = [
            cid
            for cid in (
                "bench-rt-20-0",
                "bench-rt-20-1",
                "bench-drain-60-0",
                "bench-drain-60-1",
                "nabz-alerts",
            )
            if _session_left(servers.mq_port, cid)
        ]
    finally:
        servers.stop()
        shutil.rmtree(work, ignore_errors=True)
    assert r.ok, r
    assert left == []
    assert r.messages_per_s > 0 and r.lag_end_s < 3.0
    # where the cores went, by process (20 patients' alerts can round to 0.00 cores in 3 s)
    assert set(r.cpu_by_process) == {"mosquitto", "victoria_metrics", "ingest_workers", "alerts", "load"}
    assert r.cpu_by_process["ingest_workers"] > 0
    assert abs(sum(r.cpu_by_process.values()) - r.cpu_cores) <= 0.05  # each rounded to 0.01
    # the backlog drain (after the patients' first 30 s, stored untimed): its rate, and the CPU
    # each process spent per message drained
    assert rate > 0 and set(cpu) == {"mosquitto", "victoria_metrics", "ingest_workers", "load"}
    # µs: validation, dedup, DSP and storage cost something (/proc counts CPU in 10 ms ticks,
    # ~12 µs a message over the ~830 drained here: at least one tick per worker is charged)
    assert cpu["ingest_workers"] > 10
