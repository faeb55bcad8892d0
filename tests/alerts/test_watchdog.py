"""The site watchdog: a whole site that goes quiet is one high alarm with the likely cause, its
patients' own "no data" alarms are held back behind it, and it clears on the first data. Pure on
an injected clock, then through the real service on mosquitto."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as paho

from alerts.service import AlertService
from alerts.watchdog import SiteWatch, site_patient
from nabz import contract
from nabz.config import AlertsConfig, MqttConfig
from nabz.contract import Heartbeat
from tests.alerts.helpers import T0, Recorder, Rig, config, v
from tests.servers import Mosquitto


def test_a_quiet_site_raises_once_names_the_cause_and_clears_on_the_next_data() -> None:
    w = SiteWatch(after_s=120.0)
    w.watch("demo")
    w.start(T0)
    w.heartbeat(Heartbeat(site="demo", service="ingest", instance="nabz-ingest",
                          t=datetime.fromtimestamp(T0, UTC), interval_s=10.0), T0 + 10)  # fmt: skip
    w.seen("demo", T0 + 30)
    assert w.tick(T0 + 149) == []
    (raised,) = w.tick(T0 + 150)
    assert (raised.patient, raised.kind, raised.active, raised.priority) == (
        "site-demo",
        "site_quiet",
        True,
        "high",
    )
    assert raised.started_at == T0 + 30
    assert "no data from any patient for 2 min; ingest last heard 140 s ago (ok)" in raised.message
    assert w.tick(T0 + 400) == []  # one alarm, not one per tick
    w.seen("demo", T0 + 401)
    (cleared,) = w.tick(T0 + 402)
    assert not cleared.active and cleared.patient == site_patient("demo")


def test_while_the_site_is_quiet_its_patients_stale_data_alarms_are_raised_but_not_texted(
    tmp_path: Path,
) -> None:
    cfg = config(AlertsConfig(stale_after_s=300.0, site_quiet_after_s=120.0),
                 enrolment={"oxi-0001": "p-0001", "oxi-0002": "p-0002"})  # fmt: skip
    rig = Rig(tmp_path, cfg)
    watch = SiteWatch(cfg.alerts.site_quiet_after_s)
    watch.watch("demo")
    for k in range(10):  # both patients send, then everything stops (ingest died)
        for p in ("p-0001", "p-0002"):
            x = v(T0 + k, patient=p, source="device", device=f"oxi-{p[-4:]}", spo2_pct=97.0)
            watch.seen(x.site, T0 + k)
            rig.feed([x])
    events = []
    for t in range(int(T0) + 10, int(T0) + 700, 5):
        events += rig.engine.external(watch.tick(float(t)), float(t))
        events += rig.at(float(t))
    raised = {(e.patient, e.kind) for e in events if e.state == "active"}
    assert raised == {("site-demo", "site_quiet"), ("p-0001", "stale_data"), ("p-0002", "stale_data")}
    texts = rig.notifier.texts()
    first = [
        t for t in texts if "no data from any patient" in t and "REPEAT" not in t and "ESCALATED" not in t
    ]
    assert len(first) == 1 and first[0].startswith("NABZ HIGH site-demo: no data from any patient for 2 min")
    assert not any("no data for" in t for t in texts)  # the per-patient alarms stay quiet behind it


def test_the_service_raises_site_quiet_when_nothing_arrives_and_clears_it_when_vitals_do(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    cfg = config(
        AlertsConfig(store_path=str(tmp_path / "a.sqlite"), stale_after_s=1e7, site_quiet_after_s=1.5, heartbeat_s=0.2),
        enrolment={"oxi-0001": "p-0001"},
        mqtt=MqttConfig(url=mosquitto.url),
    )  # fmt: skip
    rec = Recorder()
    svc = AlertService(cfg, notifiers=[rec], client_id="wd-alerts")
    beats: list[dict[str, object]] = []
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="wd-sub")
    sub.on_message = lambda _c, _u, m: beats.append(json.loads(m.payload))
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe(contract.heartbeat_filter("demo"))
    sub.loop_start()
    svc.start()
    try:
        deadline = time.monotonic() + 10
        while (
            not any(a.kind == "site_quiet" for a in svc.engine.open.values()) and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        (quiet,) = [a for a in svc.engine.open.values() if a.kind == "site_quiet"]
        assert (
            quiet.patient == "site-demo" and quiet.priority == "high" and "ingest not heard" in quiet.message
        )
        while not rec.sent and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any("site-demo: no data from any patient" in t for t in rec.texts())
        x = v(time.time(), source="device", spo2_pct=97.0)
        ((topic, batch),) = contract.vitals_messages([x])
        sub.publish(topic, contract.encode(batch), qos=1)
        while any(a.kind == "site_quiet" for a in svc.engine.open.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(a.kind == "site_quiet" for a in svc.engine.open.values())
        assert beats and {b["service"] for b in beats} == {"alerts"}
        assert beats[-1]["state"] == "ok" and beats[-1]["instance"] == "wd-alerts"
    finally:
        svc.stop()
        sub.loop_stop()
        sub.disconnect()
