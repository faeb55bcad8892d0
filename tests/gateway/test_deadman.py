"""The gateway's dead-man switch: when the server falls silent, a gateway with its own GSM modem
texts the on-call number; once when it happens, a reminder if it lasts, and once when the server
is heard again. Pure rules first (time injected), then real parts: mosquitto, the real ingest and
alerts services publishing heartbeats, and a scripted modem on a pty."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from alerts.notify import OutboxNotifier
from alerts.service import AlertService
from gateway.deadman import DeadMan, HeartbeatWatch, recipients
from gateway.service import Gateway
from gateway.virtual import VirtualTransport
from hardware import make_patients
from ingest.service import IngestService
from nabz import contract
from nabz.config import (
    AlertsConfig,
    Config,
    DeadmanConfig,
    GatewayConfig,
    IngestConfig,
    ModemConfig,
    MqttConfig,
    OncallConfig,
    PersonConfig,
    RotationConfig,
)
from nabz.contract import Heartbeat
from tests.gateway.helpers import running
from tests.modem import start_modem
from tests.servers import Mosquitto

T0 = 1_795_597_200.0  # 14:00 PKT


def beat(service: str, t: float, state: str = "ok", detail: str | None = None) -> tuple[str, bytes]:
    hb = Heartbeat(site="demo", service=service, instance=f"nabz-{service}", t=datetime.fromtimestamp(t, UTC),  # type: ignore[arg-type]
                   interval_s=10.0, state=state, detail=detail)  # type: ignore[arg-type]  # fmt: skip
    return contract.heartbeat_topic("demo", f"nabz-{service}"), contract.encode(hb)


def test_silence_from_the_start_is_texted_once_reminded_and_cleared() -> None:
    watch = HeartbeatWatch(["ingest", "alerts"], after_s=600.0, started_at=T0)
    dm = DeadMan("demo", "gw-0001", repeat_s=3600.0)
    assert dm.step(T0 + 599, watch.silence(T0 + 599), broker_connected=False) == []
    (first,) = dm.step(T0 + 600, watch.silence(T0 + 600), broker_connected=False)
    assert first.startswith(
        "NABZ SERVER SILENT demo/gw-0001: no heartbeat from ingest; no heartbeat from alerts"
    )
    assert "since this gateway started" in first and "cannot reach the broker" in first
    assert dm.step(T0 + 900, watch.silence(T0 + 900), broker_connected=False) == []  # no repeat yet
    (again,) = dm.step(T0 + 4200, watch.silence(T0 + 4200), broker_connected=False)
    assert again.startswith("NABZ STILL SERVER SILENT")
    for service in ("ingest", "alerts"):
        watch.feed(*beat(service, T0 + 4300), T0 + 4300)
    (back,) = dm.step(T0 + 4300, watch.silence(T0 + 4300), broker_connected=True)
    assert "heard again" in back
    assert dm.step(T0 + 4400, watch.silence(T0 + 4400), broker_connected=True) == []


def test_an_alerts_service_that_cannot_send_sms_counts_as_silent_with_its_reason() -> None:
    watch = HeartbeatWatch(["ingest", "alerts"], after_s=60.0, started_at=T0)
    dm = DeadMan("demo", "gw-0001")
    for k in range(0, 200, 10):
        watch.feed(*beat("ingest", T0 + k), T0 + k)
        watch.feed(*beat("alerts", T0 + k, "degraded", "gsm: +CMS ERROR: 331"), T0 + k)
        texts = dm.step(T0 + k, watch.silence(T0 + k), broker_connected=True)
        if k < 60:
            assert texts == []
    assert dm.texts == 1 and dm.state == "silent"
    silence = watch.silence(T0 + 190)
    assert silence is not None and silence.names == ["alerts"]
    assert "alerts cannot do its job (gsm: +CMS ERROR: 331)" in silence.services[0][2]
    assert watch.feed("nabz/v1/demo/server/x/heartbeat", b"\xff{", T0) == "malformed"


def test_the_texts_go_to_the_configured_numbers_or_else_to_who_is_on_call() -> None:
    oncall = OncallConfig(
        people={"aisha": PersonConfig(phone="+923001111111"), "bilal": PersonConfig(phone="+923002222222")},
        rotations=[RotationConfig(role="primary", members=["aisha"], start="2026-11-02T08:00"),
                   RotationConfig(role="backup", members=["bilal"], start="2026-11-02T08:00")],
    )  # fmt: skip
    assert recipients(["+923009999999"], oncall, [], T0) == ["+923009999999"]
    assert recipients([], oncall, [], T0) == ["+923001111111", "+923002222222"]
    assert recipients([], OncallConfig(), ["+923003333333"], T0) == ["+923003333333"]


def test_a_gateway_with_a_modem_texts_when_ingest_stops_and_when_the_broker_goes_and_comes_back(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    modem = start_modem(tmp_path)
    mqtt = MqttConfig(url=mosquitto.url, reconnect_min_s=0.2, reconnect_max_s=0.5)
    server = Config(
        site="demo",
        mqtt=mqtt,
        ingest=IngestConfig(store_path=str(tmp_path / "ingest.sqlite"), heartbeat_s=0.3),
        alerts=AlertsConfig(store_path=str(tmp_path / "alerts.sqlite"), heartbeat_s=0.3),
    )
    cfg = Config(
        site="demo",
        mqtt=mqtt,
        gateway=GatewayConfig(
            id="gw-0001", spool_path=str(tmp_path / "spool.sqlite"), status_interval_s=1.0,
            # 4 s: a busy test box can hold a heartbeat up for 2 s (a flap, two texts more, once
            # in six full runs with 2 s); a real gateway waits minutes.
            deadman=DeadmanConfig(after_s=4.0, modem=True, phones=["+923001111111"]),
        ),
        modem=ModemConfig(port=modem.port, command_timeout_s=3.0),
    )  # fmt: skip
    gw = Gateway(cfg, VirtualTransport(make_patients(1, seed=8)[0].devices))
    ingest = IngestService(server, client_id="dm-ingest")
    alerts = AlertService(server, notifiers=[OutboxNotifier(tmp_path / "o.jsonl")], client_id="dm-alerts")
    ingest.start()
    alerts.start()

    def wait_sms(n: int, timeout: float = 15.0) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout
        while len(modem.sms()) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        return modem.sms()

    try:
        with running(gw):
            time.sleep(5.0)  # both services beat: nothing to say
            assert modem.sms() == [] and gw.deadman.state == "heard"
            ingest.stop()  # ingest dies; the broker and alerts carry on
            silent = wait_sms(1)[0]
            assert silent["to"] == "+923001111111"
            assert "SERVER SILENT demo/gw-0001: no heartbeat from ingest" in str(silent["text"])
            assert "reaches the broker" in str(silent["text"])
            ingest = IngestService(server, client_id="dm-ingest")
            ingest.start()
            assert "heard again" in str(wait_sms(2)[1]["text"])
            mosquitto.stop()  # now the broker goes: this gateway hears nobody
            down = wait_sms(3)[2]
            assert "cannot reach the broker" in str(down["text"]) and "no heartbeat from" in str(down["text"])
            mosquitto.start()
            assert "heard again" in str(wait_sms(4)[3]["text"])
            time.sleep(1.0)
        assert len(modem.sms()) == 4  # once per change, nothing more
        assert (
            gw.stats().spool_depth >= 0 and gw.deadman_sender is not None and gw.deadman_sender.failed == []
        )
    finally:
        gw.stop()
        ingest.stop()
        alerts.stop()
        modem.stop()
