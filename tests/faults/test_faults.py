"""The fault suite (issue 8): the whole pipeline on real processes — simulated patients, gateways,
mosquitto, `nabz ingest run`, VictoriaMetrics, the alerts service — on a compressed clock (nabz.faults),
each test injecting one fault. Each counts every reading by message id at the gateways' spools and
in ingest's store, checks the time-series server point by point against the storage contract, and
counts the SMS each alarm produced: every reading stored exactly once, every alarm texted exactly once.

Patient p-0001 desaturates (84 %) in every run, so each fault also carries a real alarm through.
Faults 4 (gateway offline for 6 hours, killed in the middle) and 5 (BLE drop-out) have files of
their own; `nabz bench soak` runs these faults in turn for as long as asked.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from hardware import scenario
from nabz.config import (
    EscalationConfig,
    EscalationPolicy,
    EscalationStep,
    ModemConfig,
    OncallConfig,
    PersonConfig,
    RotationConfig,
)
from nabz.faults import Rig, RigOptions, wait_until
from tests.faults.checks import alarms_once, every_reading_once, generated_equals_stored
from tests.modem import start_modem

DESAT = {("p-0001", "spo2_low")}


def _desat(start_s: float) -> list[object]:
    return [scenario("desaturation", start_s), "normal"]


def _connected_to(pid: int, port: int) -> bool:
    """Whether process `pid` has a TCP connection established to `port` on this host (/proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        f = line.split()  # local, remote (hex ip:port), state (01 established), ..., inode
        if f[2].endswith(f":{port:04X}") and f[3] == "01" and f[9] in inodes:
            return True
    return False


def test_1_broker_restarted_mid_run(tmp_path: Path) -> None:
    """mosquitto stops (SIGTERM, persistence on) for 20 s of data and comes back: the gateways keep
    readings in their spools, ingest's persistent session resumes, the alarm during the outage
    still goes out once."""
    with Rig(tmp_path, RigOptions(scenarios=_desat(20.0), speed=10.0)) as rig:
        rig.run_for(20)
        rig.servers.stop_mosquitto()
        rig.run_for(20)
        held = sum(gw.spool.depth for gw in rig.gateways)
        rig.servers.start_mosquitto()
        rig.run_for(40)
        rig.settle()
        count, alarms = rig.count(), rig.alarm_report()
        generated_equals_stored(rig)
    assert held > 50, "the outage should have filled the spools"
    every_reading_once(count, at_least=2 * 70 * 350)
    alarms_once(alarms, DESAT)


def test_2_ingest_killed_with_sigkill_in_the_middle_of_a_batch_then_restarted(tmp_path: Path) -> None:
    """Ingest is killed while it drains a backlog (caught writing its batch to a frozen
    time-series server, after analysing it), and started again: what it had not acknowledged
    comes again, and is stored once, in the embedded store and in the time-series server."""
    with Rig(tmp_path, RigOptions(scenarios=_desat(30.0), speed=10.0)) as rig:
        assert rig.ingest is not None
        rig.run_for(15)
        rig.ingest.kill()  # down for 20 s of data: a backlog waits in its persistent session
        rig.run_for(20)
        before = rig.stored_messages()
        # The time-series server is frozen while ingest comes back: ingest takes the backlog,
        # analyses it and is caught writing it, neither acknowledged nor committed, when killed.
        rig.servers.pause_victoria()
        try:
            rig.ingest.start()
            assert rig.ingest.proc is not None
            pid, port = rig.ingest.proc.pid, rig.servers.vm_port
            wait_until(lambda: _connected_to(pid, port), 30, "ingest never wrote to the time-series server")
            time.sleep(0.2)
            rig.ingest.kill()
        finally:
            rig.servers.resume_victoria()
        mid = rig.stored_messages()
        sent_then = len(rig.sent)
        rig.ingest.start()
        rig.run_for(40)
        rig.settle()
        count, alarms = rig.count(), rig.alarm_report()
        generated_equals_stored(rig)
        log = rig.ingest.log.read_text()
    assert mid == before < sent_then - 50, (before, mid, sent_then)  # killed with the backlog in hand
    assert log.count("ingest connected to") == 3
    every_reading_once(count, at_least=2 * 85 * 350)
    alarms_once(alarms, DESAT)


def test_3_time_series_server_down_for_ten_minutes_of_data(tmp_path: Path) -> None:
    """VictoriaMetrics is stopped for 10 minutes of data (compressed 60 times): ingest spills to
    disk, keeps storing and deriving vitals (the alarm is not delayed), and replays the spill
    oldest first when the server is back: every point exactly once."""
    with Rig(tmp_path, RigOptions(scenarios=_desat(300.0), speed=60.0, sim_span_s=4 * 3600)) as rig:
        rig.run_for(60)
        rig.servers.stop_victoria()
        down_at = rig.clock()
        rig.run_for(600)
        spilled = any((tmp_path / "spill").glob("*/*.spill"))  # segments in a worker's directory
        raised_while_down = [a for a in rig.alerts.engine.open.values() if a.kind == "spo2_low"] or [
            a for a in rig.alerts.store.alarms() if a["kind"] == "spo2_low"
        ]
        rig.servers.start_victoria()
        rig.run_for(60)
        rig.settle()
        count, alarms = rig.count(), rig.alarm_report()
        generated_equals_stored(rig)
    assert spilled and raised_while_down, "ingest spilled and the alarm did not wait for the database"
    assert rig.clock() - down_at > 600
    every_reading_once(count, at_least=2 * 700 * 350)
    alarms_once(alarms, DESAT)


def test_7_ingest_down_longer_than_the_broker_queues_for_it(tmp_path: Path) -> None:
    """Ingest is killed for 3 minutes of data while the broker queues at most 600 messages for its
    session (`nabz broker config` writes 1,000,000: as long as ~2.4 minutes for 1,000 patients).
    Mosquitto acknowledges to the gateways what it queues for ingest, then drops what is over, still
    acknowledged: the gateways deleted those readings (~1,900 of ~2,500 messages here). Now they
    keep them once ingest has been silent for 30 s, and send them when it is heard again."""
    with Rig(tmp_path, RigOptions(scenarios=_desat(240.0), speed=10.0, broker_queue=600)) as rig:
        assert rig.ingest is not None
        rig.run_for(15)
        rig.ingest.kill()
        made_before = len(rig.sent)
        rig.run_for(180)
        made = len(rig.sent) - made_before
        kept = sum(gw.spool.depth for gw in rig.gateways)
        paused = [gw.stats().paused for gw in rig.gateways]
        rig.ingest.start()
        rig.run_for(100)
        rig.settle()
        count, alarms = rig.count(), rig.alarm_report()
        generated_equals_stored(rig)
        broker_log = rig.servers.mq_log.read_text(errors="replace")
    assert made > 4 * 600 and kept > made - 600, (made, kept)  # the gateways kept what the broker could not
    assert paused == [True, True]
    assert "Outgoing messages are being dropped" not in broker_log
    every_reading_once(count, at_least=2 * 280 * 350)
    alarms_once(alarms, DESAT)


def test_6_the_modem_fails_then_times_out_then_recovers_and_escalation_keeps_its_time(tmp_path: Path) -> None:
    """The GSM modem answers no network (+CMS ERROR 331), then swallows a text without an answer
    (a timeout), then network timeout (332): the primary's SMS goes out once the modem recovers,
    exactly once; the backup's step still fires 120 s after the alarm, as scheduled."""
    modem = start_modem(tmp_path, errors=[331, -1, 332])
    oncall = OncallConfig(
        people={"aisha": PersonConfig(phone="+923001111111"), "bilal": PersonConfig(phone="+923002222222")},
        rotations=[RotationConfig(role="primary", members=["aisha"], start="2026-11-02T08:00"),
                   RotationConfig(role="backup", members=["bilal"], start="2026-11-02T08:00")],
    )  # fmt: skip
    two_steps = EscalationPolicy(
        steps=[
            EscalationStep(after_s=0.0, notify=["primary"]),
            EscalationStep(after_s=120.0, notify=["backup"]),
        ]
    )
    long_desat = [
        scenario("desaturation", 10.0, hold_s=240.0),
        "normal",
    ]  # still low when the backup's turn comes
    options = RigOptions(
        scenarios=long_desat, speed=10.0, oncall=oncall,
        escalation=EscalationConfig(high=two_steps, medium=two_steps, low=two_steps),
        alerts={"notifiers": ["gsm"], "retry_min_s": 5.0, "retry_max_s": 40.0},
    )  # fmt: skip
    from alerts.gsm import GsmNotifier

    gsm = GsmNotifier(
        ModemConfig(port=modem.port, command_timeout_s=1.0, send_timeout_s=1.0, max_per_minute=60)
    )
    try:
        with Rig(tmp_path, options, notifiers=[gsm]) as rig:
            rig.run_for(40)
            wait_until(lambda: any(a["kind"] == "spo2_low" for a in rig.alerts.store.alarms()), 30)
            (alarm,) = [a for a in rig.alerts.store.alarms() if a["kind"] == "spo2_low"]
            rig.wait_sim(alarm["raised_at"] + 150.0)
            wait_until(lambda: len(modem.sms()) >= 2, 30, "the SMS did not go out")
            rig.settle()
            count, report = rig.count(), rig.alarm_report()
            queue = rig.alerts.store._rows(
                "SELECT person, created_at FROM queue WHERE alarm_id = ?", (alarm["alarm_id"],)
            )
            (alarm,) = [a for a in rig.alerts.store.alarms() if a["kind"] == "spo2_low"]
    finally:
        modem.stop()
    every_reading_once(count, at_least=2 * 180 * 350)
    entries = modem.entries()
    assert [e.get("code") for e in entries if "refused" in e] == [331, 332]
    assert len([e for e in entries if "swallowed" in e]) == 1  # the timeout
    sms = modem.sms()
    assert sorted(s["to"] for s in sms) == ["+923001111111", "+923002222222"]  # each once, no more
    assert all("ACK" in s["text"] and "SpO2" in s["text"] for s in sms)
    steps = {person: at for person, at in queue}
    assert abs(steps["bilal"] - (alarm["raised_at"] + 120.0)) <= 2 * rig.o.speed  # one tick: a second
    assert alarm["notified_at"] > alarm["raised_at"] + 5.0  # the first SMS waited for the modem...
    assert [a["sms"] for a in report["alarms"]] == [2]  # ...and the alarm was texted once per person
    # 331, the time-out, one refused at once while the modem backed off after it, 332
    assert report["sms_failed_attempts"] == 4
