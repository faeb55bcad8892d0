"""The gateway against mosquitto as deployed: TLS with CA verification, passwords or client
certificates, per-gateway ACLs, a retained birth and Last Will, and reconnection with jittered
backoff. What the broker refuses stays in the spool."""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.service import Gateway
from gateway.virtual import VirtualTransport
from hardware import make_patients
from nabz.config import Config, GatewayConfig, MqttConfig
from tests.gateway.helpers import Collector, health, running
from tests.servers import SecureMosquitto, make_pki

USERS = {"gw-0001": "s3cret-1", "gw-0002": "s3cret-2", "ingest": "s3cret-ingest"}
# Each gateway writes only under its own id (its username or certificate name); ingest reads all.
ACL = "user ingest\ntopic read nabz/v1/#\n\npattern write nabz/v1/+/gw/%u/#\n"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[SecureMosquitto]:
    server = SecureMosquitto(tmp_path / "mosquitto", make_pki(tmp_path / "pki"), USERS, ACL)
    server.start()
    yield server
    server.stop()


def _gateway(tmp_path: Path, mqtt: MqttConfig, gateway_id: str = "gw-0001", seed: int = 5) -> Gateway:
    cfg = Config(
        site="test",
        mqtt=mqtt,
        gateway=GatewayConfig(
            id=gateway_id,
            spool_path=str(tmp_path / f"spool-{gateway_id}-{seed}.sqlite"),
            status_interval_s=1.0,
        ),
    )
    return Gateway(cfg, VirtualTransport(make_patients(1, seed)[0].devices))


def _ingest(broker: SecureMosquitto) -> Collector:
    return Collector(
        "127.0.0.1", broker.port, ca=str(broker.pki.ca), username="ingest", password=USERS["ingest"]
    )


def _mqtt(broker: SecureMosquitto, **kw: object) -> MqttConfig:
    opts: dict[str, object] = dict(
        url=broker.url, ca_file=str(broker.pki.ca), reconnect_min_s=0.2, reconnect_max_s=1.0
    )
    opts.update(kw)
    return MqttConfig(**opts)  # type: ignore[arg-type]


def test_over_tls_with_a_password_readings_arrive_and_the_last_will_reports_a_vanished_gateway(
    broker: SecureMosquitto, tmp_path: Path
) -> None:
    gw = _gateway(tmp_path, _mqtt(broker, username="gw-0001", password=USERS["gw-0001"]))
    seen = _ingest(broker)
    try:
        with running(gw):
            assert seen.wait_for(lambda: (seen.last_status() or {}).get("state") == "online", 10)
            time.sleep(1.5)
            # The network drops under the gateway: no DISCONNECT reaches the broker.
            sock = gw.client.socket()
            assert isinstance(sock, socket.socket)
            sock.shutdown(socket.SHUT_RDWR)
            assert seen.wait_for(
                lambda: any(s.get("reason") == "connection lost (last will)" for s in seen.statuses), 10
            )
            # ...and it comes back by itself, says so, and delivers what waited in the spool.
            will_at = max(i for i, s in enumerate(seen.statuses) if s["state"] == "offline")
            assert seen.wait_for(lambda: any(s["state"] == "online" for s in seen.statuses[will_at:]), 10)
            time.sleep(1.0)
            gw.transport.stop()
            assert gw.drain(10)
            generated = gw.stats().generated
            assert seen.wait_for(lambda: sum(seen.tally().values()) == generated, 10)
        online = [s for s in seen.statuses if s["state"] == "online"]
        assert health(online[-1], "ecg-0001")["state"] == "connected"
        assert online[-1]["spool_depth"] is not None and online[-1]["refused"] == 0
        assert seen.frames_twice() == []
    finally:
        gw.stop()
        seen.close()


def test_a_client_certificate_authenticates_a_gateway_without_a_password(
    broker: SecureMosquitto, tmp_path: Path
) -> None:
    cert, key = broker.pki.client("gw-0002")
    gw = _gateway(
        tmp_path, _mqtt(broker, url=broker.cert_url, cert_file=str(cert), key_file=str(key)), "gw-0002"
    )
    seen = _ingest(broker)
    try:
        with running(gw):
            assert seen.wait_for(lambda: sum(seen.tally().values()) > 500, 15)
        assert all(body["gateway"] == "gw-0002" for body in seen.bodies.values())
    finally:
        gw.stop()
        seen.close()


def test_refused_connections_keep_retrying_with_jitter_and_the_spool_keeps_everything(
    broker: SecureMosquitto, tmp_path: Path
) -> None:
    wrong = {
        "wrong CA": _mqtt(
            broker, ca_file=str(broker.pki.other_ca), username="gw-0001", password=USERS["gw-0001"]
        ),
        "wrong password": _mqtt(broker, username="gw-0001", password="guess"),
        "plain TCP to the TLS port": _mqtt(
            broker, url=f"mqtt://127.0.0.1:{broker.port}", username="gw-0001", password=USERS["gw-0001"]
        ),
        "no credentials": _mqtt(broker),
    }
    gateways = [_gateway(tmp_path, mqtt, seed=i) for i, mqtt in enumerate(wrong.values())]
    try:
        for gw in gateways:
            gw.start()
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            for gw in gateways:
                gw.step()
            time.sleep(0.02)
        for why, gw in zip(wrong, gateways, strict=True):
            stats = gw.stats()
            assert not stats.connected and stats.published == 0, why
            assert stats.spool_depth > 5, why  # everything waits on disk
            waits = list(gw.client.reconnect_waits)
            assert len(waits) >= 3, (why, waits)  # it keeps trying...
            # ...never in lock-step: a fixed schedule repeats its waits exactly, jittered ones
            # never do (rounded to the millisecond, two of eight can meet by chance)
            assert len(set(waits)) == len(waits), (why, waits)
        firsts = [gw.client.reconnect_waits[0] for gw in gateways]
        assert len(set(firsts)) == len(firsts), firsts  # nor in step with one another
    finally:
        for gw in gateways:
            gw.stop()


def test_a_gateway_cannot_publish_as_another_and_refused_messages_stay_in_the_spool(
    broker: SecureMosquitto, tmp_path: Path
) -> None:
    # gw-0001's credentials, but configured (by mistake or malice) as gw-0002.
    gw = _gateway(tmp_path, _mqtt(broker, username="gw-0001", password=USERS["gw-0001"]), "gw-0002")
    seen = _ingest(broker)
    try:
        with running(gw):
            assert seen.wait_for(lambda: gw.stats().refused > 20, 10)
            depth = gw.stats().spool_depth
        assert gw.stats().connected and gw.stats().published == 0
        assert depth >= gw.stats().refused  # refused (MQTT v5 "not authorized"), not deleted
        assert seen.bodies == {} and seen.statuses == []
    finally:
        gw.stop()
        seen.close()


def test_a_refused_message_is_sent_again_later_not_only_after_a_restart(
    broker: SecureMosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal may pass (a quota, an ACL being fixed): the refused rows are sent again after a
    minute, then 2, 4 ... 15 (here shortened), and stay in the spool meanwhile."""
    import gateway.service as service

    monkeypatch.setattr(service, "_RETRY_FIRST_S", 0.3)
    monkeypatch.setattr(service, "_RETRY_MAX_S", 0.6)
    gw = _gateway(tmp_path, _mqtt(broker, username="gw-0001", password=USERS["gw-0001"]), "gw-0002")
    sent: Counter[bytes] = Counter()
    publish = gw.client.publish

    def counting(topic: str, payload: bytes, *a: object, **kw: object) -> object:
        if "/gw/" in topic and not topic.endswith("/status"):
            sent[bytes(payload)] += 1
        return publish(topic, payload, *a, **kw)  # type: ignore[arg-type]

    gw.client.publish = counting  # type: ignore[method-assign]
    try:
        with running(gw):
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and max(sent.values(), default=0) < 3:
                time.sleep(0.1)
        assert max(sent.values()) >= 3  # the same reading refused, sent again, refused again ...
        assert gw.stats().published == 0 and gw.stats().spool_depth >= len(sent)
    finally:
        gw.stop()
