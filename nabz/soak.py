"""`nabz bench soak`: the fault suite's pipeline (nabz.faults) for as long as asked, with faults
injected in turn, counted at the end: nothing lost, nothing stored twice, every alarm texted once.

Faults, one every `every_s` of wall time, in this order, round and round:
1. the broker restarted (down 3 s);
2. ingest killed with SIGKILL and started again 2 s later;
3. the time-series server down for 5 s;
4. the SMS notifier failing (every SMS refused as if there were no network) until `every_s` + 15 s
   later, so that the alarms of the next fault are raised while it fails: retried, then delivered;
5. the homes' uplink cut for 8 s (the gateways' connections die; their Last Wills go out);
6. a gateway crashing: its in-memory state dropped with no goodbye to the broker, a new gateway
   started on the same spool (a real SIGKILL of a gateway process is fault 4 in tests/faults).

Patients: p-0001 desaturates every 10 simulated minutes, p-0002 has a tachycardia every 15; the
others stay well. `alarms_expected` counts the episodes scripted (none starts in the last 150
simulated seconds, so each has time to raise its alarm); `alarms_notified` the alarms of those kinds whose first notice went in exactly one SMS.
A tachycardia that deepens past the high limit sends one more notice, "WORSE", by design
(`alarms_worsened_notified`); the same notice twice is a failure (`alarms_texted_twice`). Faults
of a few seconds, on a clock `speed` times faster, are minutes of simulated time: a cut uplink
raises `gateway_offline`; such technical alarms are reported apart (`alarms_technical`), and
each of them too must be texted once (`alarms_technical_notified`).
"""

from __future__ import annotations

import re
import socket
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from nabz.faults import Rig, RigOptions, wait_until

__all__ = ["run_soak"]

_DESAT_EVERY_S = 600.0
_TACHY_EVERY_S = 900.0
_PHYSIOLOGICAL = {"spo2_low", "hr_high"}


_ENDS_BEFORE_S = 150.0  # no episode starts this close to the end: each has time to raise its alarm


def _episodes(sim_s: float, start: float, every: float) -> list[float]:
    """When the episodes of one patient start in a soak of `sim_s` simulated seconds."""
    out, t = [], start
    while t <= sim_s - _ENDS_BEFORE_S:
        out.append(t)
        t += every
    return out


def _scenarios(patients: int, sim_s: float) -> tuple[list[Any], int]:
    """Each patient's script, and how many alarms they must raise."""
    from hardware import scenario
    from hardware.scenario import Scenario

    desat, tachy = Scenario("soak-desat"), Scenario("soak-tachy")
    desats, tachys = _episodes(sim_s, 60.0, _DESAT_EVERY_S), _episodes(sim_s, 120.0, _TACHY_EVERY_S)
    for t in desats:
        desat = desat + scenario("desaturation", t)
    for t in tachys:
        tachy = tachy + scenario("tachycardia", t)
    return [desat, tachy, *(["normal"] * max(0, patients - 2))][:patients], len(desats) + len(tachys)


_NOTICE = re.compile(r"^(?P<what>REPEAT |ESCALATED |WORSE )?.*ACK (?P<code>\w+)$")


def _notices(sms: list[dict[str, Any]], alarms: list[dict[str, Any]]) -> dict[str, Counter[str]]:
    """alarm id -> how many sent SMS carried each notice of it: "first" (raised), "worse" (a higher
    priority), "repeat", "escalated", found by the alarm's ACK code in each part of the text."""
    by_code: dict[str, set[str]] = {}  # codes are short: an old alarm's may come back
    for a in alarms:
        by_code.setdefault(a["ack_code"], set()).add(a["alarm_id"])
    out: dict[str, Counter[str]] = {}
    for s in sms:
        if s["status"] != "sent":
            continue
        for part in s["text"].split(": ", 1)[-1].split("; "):
            m = _NOTICE.match(part)
            if m is None:
                continue
            for alarm_id in by_code.get(m.group("code"), set()) & set(s["alarm_ids"]):
                out.setdefault(alarm_id, Counter())[(m.group("what") or "first ").strip().lower()] += 1
    return out


class _Soak:
    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.injected: Counter[str] = Counter()
        self.notifier_down_until = 0.0
        self.every_s = 15.0

    def broker(self) -> None:
        self.rig.servers.stop_mosquitto()
        time.sleep(3.0)
        self.rig.servers.start_mosquitto()

    def ingest(self) -> None:
        assert self.rig.ingest is not None
        self.rig.ingest.kill()
        time.sleep(2.0)
        self.rig.ingest.start()

    def victoria(self) -> None:
        self.rig.servers.stop_victoria()
        time.sleep(5.0)
        self.rig.servers.start_victoria()

    def uplink(self) -> None:
        self.rig.servers.cut_uplink()
        time.sleep(8.0)
        self.rig.servers.start_uplink()

    def gateway(self) -> None:
        from gateway.service import Gateway

        rig = self.rig
        rig._paused.set()  # noqa: SLF001 - the rig's own switch: nobody steps the gateways now
        time.sleep(0.1)
        old = rig.gateways[0]
        sock = old.client.socket()
        if isinstance(sock, socket.socket):
            sock.shutdown(socket.SHUT_RDWR)  # gone without a DISCONNECT: the broker sends its Will
        old.client.loop_stop()
        old.spool.close()
        new = Gateway(old.config, old.transport, clock=rig.clock, gateway_id=old.id)
        rig._record_sent(new)  # noqa: SLF001
        new.start()
        rig.gateways[0] = new
        rig._paused.clear()  # noqa: SLF001

    def notifier(self) -> None:
        self.notifier_down_until = time.monotonic() + self.every_s + 15.0


def run_soak(*, minutes: float, patients: int = 4, speed: float = 10.0, seed: int = 1) -> dict[str, Any]:
    wall_s = minutes * 60.0
    sim_s = wall_s * speed
    work = Path(tempfile.mkdtemp(prefix="nabz-soak-"))
    scenarios, expected = _scenarios(max(2, patients), sim_s)
    options = RigOptions(
        patients=max(2, patients), scenarios=scenarios, speed=speed,
        sim_span_s=sim_s + 3600, seed=seed,
        # One phone covers every patient here and time runs `speed` times faster: the hourly cap
        # (tested on its own in tests/alerts) would hold alarms back to the end of the hour.
        alerts={"max_sms_per_hour": 100_000},
    )  # fmt: skip
    rig = Rig(work, options)
    soak = _Soak(rig)
    rig.book.failing = lambda _at: time.monotonic() < soak.notifier_down_until
    faults = [soak.broker, soak.ingest, soak.victoria, soak.notifier, soak.uplink, soak.gateway]
    every_s = soak.every_s = max(15.0, wall_s / 12)
    rig.start()
    started = time.monotonic()
    sim_start = rig.clock()
    try:
        k = 0
        while (k + 2) * every_s <= wall_s:  # fault k at (k + 1) × every_s; quiet for the last one
            time.sleep(max(0.0, started + (k + 1) * every_s - time.monotonic()))
            fault = faults[k % len(faults)]
            fault()
            soak.injected[fault.__name__] += 1
            k += 1
        time.sleep(max(0.0, wall_s - (time.monotonic() - started)))
        wait_until(lambda: time.monotonic() > soak.notifier_down_until, 120)
        sim_end = rig.clock()  # the wearables stop now (settle)
        rig.settle(timeout_s=600, alarms_quiet_s=3.0)
        count = rig.count()
        report = rig.alarm_report()
        notices = _notices(rig.alerts.store.sms(), rig.alerts.store.alarms())
    finally:
        rig.close()
    sim = sim_end - sim_start
    alarms = [dict(a, notices=notices.get(a["alarm_id"], Counter())) for a in report["alarms"]]
    physiological = [a for a in alarms if a["kind"] in _PHYSIOLOGICAL]
    technical = [a for a in alarms if a["kind"] not in _PHYSIOLOGICAL]
    doubled = [a for a in alarms if any(n > 1 for n in a["notices"].values())]
    return {
        "minutes": minutes,
        "patients": options.patients,
        "speed": speed,
        "simulated_s": round(sim),
        "faults": dict(soak.injected),
        "readings_sent": count.sent_readings,
        "readings_stored": count.stored_readings,
        "messages_sent": count.sent_messages,
        "messages_stored": count.stored_messages,
        "duplicates": count.duplicates,  # redeliveries ingest recognised and did not store again
        "duplicates_stored": count.stored_messages - (count.sent_messages - count.lost_messages),
        "lost": count.lost_readings,
        "vm_points_expected": count.vm_expected,
        "vm_points_stored": count.vm_stored,
        "vm_points_missing": sum(count.vm_missing.values()),
        "vm_points_doubled": count.vm_doubled,
        "alarms_expected": expected,
        "alarms_notified": sum(1 for a in physiological if a["notices"]["first"] == 1),
        "alarms_raised": len(physiological),
        "alarms_worsened_notified": sum(a["notices"]["worse"] for a in alarms),
        "alarms_texted_twice": len(doubled),  # the same notice for the same alarm in two SMS
        "alarms_technical": dict(Counter(a["kind"] for a in technical)),
        "alarms_technical_notified": sum(1 for a in technical if a["notices"]["first"] == 1),
        "sms_sent": report["sms_sent"],
        "sms_failed_attempts": report["sms_failed_attempts"],  # refused while the notifier failed
        "sms_refused": rig.book.refused,
        "alarms_ok": len(physiological) == expected
        and not doubled
        and all(a["notices"]["first"] == 1 for a in alarms),
        "work_dir": str(work),
    }
