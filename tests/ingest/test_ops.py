"""What ingest tells operators, on real parts (mosquitto, VictoriaMetrics): the operations board's
`ingest_stats`, `gateway_status` and `device_status` points land in the time-series server, `/metrics` and
`/healthz` answer, the heartbeat says when InfluxDB is down, and a message ingest itself fails on
is dead-lettered `internal_error` instead of holding up the messages behind it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest

import ingest.pipeline
import ingest.service
from gateway.decode import Decoder, Notification
from hardware import make_patients
from ingest.opsstats import GatewayState, Totals, ops_lines
from ingest.service import IngestService
from ingest.store import Store
from nabz import contract
from nabz.config import Config, InfluxConfig, IngestConfig, MqttConfig
from nabz.contract import DeviceHealth, GatewayStatus, Rejected
from tests.servers import Mosquitto, VictoriaMetrics

T0_US = 1_795_597_200_000_000


def _wait(what: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _readings(seconds: int) -> list[tuple[str, bytes, int]]:
    (p,) = make_patients(1, seed=9)
    dec = Decoder("test", "gw-0001")
    out = []
    for s in range(seconds):
        for d in p.devices:
            for n in d.advance(1.0):
                r = dec.decode(Notification(n.device_id, n.char_uuid, n.data, T0_US + s * 1_000_000))
                assert not isinstance(r, Rejected)
                topic = contract.reading_topic("test", "gw-0001", r.device, contract.stream_of(r))
                out.append((topic, contract.encode(r), contract.reading_count(r)))
    return out


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(f"{name}{{{want}}}")


class Rig:
    def __init__(self, mosquitto: Mosquitto, victoria: VictoriaMetrics, tmp_path: Path) -> None:
        self.cfg = Config(
            site="test",
            mqtt=MqttConfig(url=mosquitto.url, reconnect_min_s=0.2, reconnect_max_s=0.5),
            ingest=IngestConfig(
                store_path=str(tmp_path / "ingest.sqlite"), heartbeat_s=0.3, stats_interval_s=0.5,
                metrics_listen="127.0.0.1:0",
            ),
            influx=InfluxConfig(url=victoria.url, token="t", spill_dir=str(tmp_path / "spill")),
            enrolment={"ecg-0001": "p-0001", "oxi-0001": "p-0001"},
        )  # fmt: skip
        self.ingest = IngestService(self.cfg, client_id="ops-ingest")
        self.heartbeats: list[dict[str, object]] = []
        self.pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="ops-pub")
        self.pub.on_message = lambda _c, _u, m: self.heartbeats.append(json.loads(m.payload))
        self.pub.connect("127.0.0.1", mosquitto.port)
        self.pub.subscribe(contract.heartbeat_filter("test"))
        self.pub.loop_start()

    def status(
        self,
        gateway: str,
        state: str,
        depth: int | None,
        health: tuple[DeviceHealth, ...] = (),
        held: tuple[str, ...] = (),
    ) -> None:
        s = GatewayStatus(site="test", gateway=gateway, state=state, spool_depth=depth, health=list(health),  # type: ignore[arg-type]
                          held=list(held))  # fmt: skip
        self.pub.publish(
            contract.status_topic("test", gateway), contract.encode(s), qos=1, retain=True
        ).wait_for_publish(5)

    def close(self) -> None:
        self.ingest.stop()
        self.pub.loop_stop()
        self.pub.disconnect()


def test_the_operations_board_data_lands_in_the_time_series_server_and_metrics_answer(
    mosquitto: Mosquitto, victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    rig = Rig(mosquitto, victoria, tmp_path)
    health = (
        DeviceHealth(device="ecg-0001", state="connected", battery_pct=87, rssi_dbm=-61, device_state="ok"),
        DeviceHealth(
            device="oxi-0001", state="lost", battery_pct=12, gap_frames=40, device_state="sensor_fault"
        ),
    )
    rig.status(
        "gw-0001", "online", 12, health, held=("oxi-0009",)
    )  # retained before ingest starts: it must read it on subscribe
    rig.status("gw-0002", "offline", None)
    rig.ingest.start()
    try:
        assert rig.ingest.subscribed.wait(10)
        readings = _readings(5)
        for topic, payload, _ in readings:
            rig.pub.publish(topic, payload, qos=1)
        rig.pub.publish(readings[0][0], b'{"v": 1, "stream": "ecg"}', qos=1)  # one for the dead-letter count
        total = sum(n for _, _, n in readings)
        _wait(lambda: rig.ingest.totals.stored_readings == total and rig.ingest.totals.dead_lettered == 1)
        time.sleep(1.2)  # two stats intervals

        def last(series: str, **labels: str) -> float:
            sel = ",".join([f'__name__="{series}"', *(f'{k}="{v}"' for k, v in labels.items())])
            (s,) = victoria.export("{" + sel + "}")
            return float(s["values"][-1])

        _wait(lambda: bool(victoria.export('{__name__="ingest_stats_stored_readings"}')))
        _wait(lambda: last("ingest_stats_stored_readings", site="test", worker="0") == total)
        assert last("ingest_stats_stored_messages", site="test", worker="0") == len(readings)
        assert last("ingest_stats_dead_letters", site="test", worker="0") == 1
        assert last("ingest_stats_duplicates", site="test", worker="0") == 0
        assert last("gateway_status_online", site="test", gateway="gw-0001") == 1
        assert last("gateway_status_spool_depth", site="test", gateway="gw-0001") == 12
        assert last("gateway_status_online", site="test", gateway="gw-0002") == 0
        # a wearable nobody on the server takes (not enrolled, or no ingest subscribed): unmonitored
        assert last("gateway_status_held", site="test", gateway="gw-0001") == 1
        assert last("gateway_status_held", site="test", gateway="gw-0002") == 0
        # each wearable of an online gateway, as the operations board draws it
        assert last("device_status_link", device="ecg-0001", gateway="gw-0001") == 1  # connected
        assert last("device_status_link", device="oxi-0001", gateway="gw-0001") == 3  # lost
        assert last("device_status_device_state", device="oxi-0001") == 3  # sensor fault
        assert last("device_status_battery_pct", device="ecg-0001") == 87
        assert last("device_status_gap_frames", device="oxi-0001") == 40
        assert not victoria.export('{__name__="device_status_rssi_dbm",device="oxi-0001"}')  # unknown: not 0

        health = rig.ingest.health
        assert health is not None
        status, body = _get(f"{health.url}/metrics")
        assert status == 200
        assert _metric(body, "nabz_ingest_stored_readings_total", worker="0") == total
        assert _metric(body, "nabz_ingest_dead_letters_total", worker="0") == 1
        assert _metric(body, "nabz_ingest_store_dead_letters_total", reason="missing_id") == 1
        assert _metric(body, "nabz_gateway_online", site="test", gateway="gw-0002") == 0
        assert _metric(body, "nabz_gateway_spool_depth", site="test", gateway="gw-0001") == 12
        assert _metric(body, "nabz_gateway_held_devices", site="test", gateway="gw-0001") == 1
        assert _metric(body, "nabz_ingest_lag_seconds", worker="0") == 0
        assert _get(f"{health.url}/healthz") == (200, '{"ok": true, "problems": []}')
        assert (
            rig.heartbeats
            and rig.heartbeats[-1]["service"] == "ingest"
            and rig.heartbeats[-1]["state"] == "ok"
        )

        victoria.stop()  # the database goes away: the heartbeat says so (alarms still work)
        for topic, payload, _ in _readings(1):
            rig.pub.publish(topic, payload.replace(b'"id":"', b'"id":"again'), qos=1)
        _wait(lambda: rig.heartbeats[-1]["state"] == "degraded", 30)
        assert "InfluxDB down" in str(rig.heartbeats[-1]["detail"])
        assert _metric(_get(f"{health.url}/metrics")[1], "nabz_ingest_influx_spill_lines", worker="0") > 0
    finally:
        rig.close()


def test_healthz_says_when_the_broker_is_away(
    mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest.service, "_DISCONNECTED_S", 0.5)
    cfg = Config(
        site="test",
        mqtt=MqttConfig(url=mosquitto.url, reconnect_min_s=0.2, reconnect_max_s=0.5),
        ingest=IngestConfig(store_path=str(tmp_path / "i.sqlite"), metrics_listen="127.0.0.1:0"),
    )
    svc = IngestService(cfg, client_id="health-ingest")
    svc.start()
    try:
        assert svc.subscribed.wait(10)
        assert svc.health is not None and _get(f"{svc.health.url}/healthz")[0] == 200
        mosquitto.stop()
        time.sleep(1.5)
        status, body = _get(f"{svc.health.url}/healthz")
        assert status == 503 and "not connected to the broker" in json.loads(body)["problems"][0]
        assert _metric(_get(f"{svc.health.url}/metrics")[1], "nabz_ingest_broker_connected", worker="0") == 0
        mosquitto.start()
        _wait(lambda: _get(f"{svc.health.url}/healthz")[0] == 200)
    finally:
        svc.stop()


def test_after_a_long_broker_outage_ingest_is_back_within_its_short_server_back_off(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Ingest sits next to the broker: its waits between attempts stop at server_reconnect_max_s
    (5 s; 1.5 here), not at the gateways' reconnect_max_s (60 s), which after a broker restart
    held every patient's data and alarm up to a minute longer (its waits here were 1, 2, 4, 8 s)."""
    cfg = Config(
        site="test",
        mqtt=MqttConfig(
            url=mosquitto.url, reconnect_min_s=1.0, reconnect_max_s=60.0, server_reconnect_max_s=1.5
        ),
        ingest=IngestConfig(store_path=str(tmp_path / "i.sqlite")),
    )
    svc = IngestService(cfg, client_id="backoff-ingest")
    svc.start()
    try:
        assert svc.subscribed.wait(10)
        mosquitto.stop()
        _wait(lambda: len(svc.client.reconnect_waits) >= 5, 20.0)
        waits = list(svc.client.reconnect_waits)
        assert len(waits) >= 5 and max(waits) <= 1.5, waits
        svc.subscribed.clear()
        mosquitto.start()
        back = time.monotonic()
        assert svc.subscribed.wait(10)
        assert time.monotonic() - back < 3.0
    finally:
        svc.stop()


def test_a_message_ingest_fails_on_is_dead_lettered_and_the_rest_are_stored(
    mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ingest.pipeline._implausible

    def buggy(r: contract.Reading, stream: str, t: float, received_at: float) -> Rejected | None:
        if isinstance(r, contract.BatteryReading):
            raise ZeroDivisionError("a bug that only battery readings meet")
        return real(r, stream, t, received_at)

    monkeypatch.setattr(ingest.pipeline, "_implausible", buggy)
    cfg = Config(
        site="test",
        mqtt=MqttConfig(url=mosquitto.url),
        ingest=IngestConfig(store_path=str(tmp_path / "i.sqlite")),
        enrolment={"ecg-0001": "p-0001", "oxi-0001": "p-0001"},
    )
    svc = IngestService(cfg, client_id="poison-ingest")
    svc.start()
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="poison-pub")
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    try:
        assert svc.subscribed.wait(10)
        readings = _readings(3)
        batteries = [r for r in readings if r[0].endswith("/battery")]
        assert batteries
        for topic, payload, _ in readings:
            pub.publish(topic, payload, qos=1)
        others = sum(n for t, _, n in readings if not t.endswith("/battery"))
        _wait(
            lambda: svc.store.count_readings() == others and len(svc.store.dead_letters()) == len(batteries)
        )
        letters = svc.store.dead_letters()
        assert {d.reason for d in letters} == {"internal_error"}
        assert "ZeroDivisionError: a bug that only battery readings meet" in letters[0].detail
        assert svc.internal_errors == len(batteries)
    finally:
        svc.stop()
        pub.loop_stop()
        pub.disconnect()


def test_a_gateway_binding_added_while_ingest_runs_is_enforced_within_seconds(
    mosquitto: Mosquitto, victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    """One worker (no subscription sync): the binding of an already enrolled wearable is read
    again on its own, so a reading from the wrong gateway is refused without a restart."""
    rig = Rig(mosquitto, victoria, tmp_path)
    rig.ingest.start()
    try:
        assert rig.ingest.subscribed.wait(10)
        first = _readings(1)
        for topic, payload, _ in first:
            rig.pub.publish(topic, payload, qos=1)
        _wait(lambda: rig.ingest.totals.stored == len(first))  # from gw-0001, unbound: taken
        Store(tmp_path / "ingest.sqlite").enrol("oxi-0001", "p-0001", gateway="gw-0002")
        time.sleep(2.5)  # the enrolment is read again every 2 s
        for topic, payload, _ in _readings(2)[len(first) :]:
            if "/oxi-0001/" in topic:
                rig.pub.publish(topic, payload, qos=1)
        _wait(lambda: rig.ingest.totals.dead_lettered > 0)
        assert {d.reason for d in rig.ingest.store.dead_letters()} == {"wrong_gateway"}
    finally:
        rig.close()


def test_an_offline_gateway_writes_no_rows_for_the_wearables_it_last_listed() -> None:
    health = (DeviceHealth(device="oxi-0001", state="connected", battery_pct=50),)
    online = GatewayState("test", "gw-0001", True, 0, 0.0, devices=health)
    offline = GatewayState("test", "gw-0002", False, 0, 0.0, devices=health)
    lines = ops_lines("test", 0, Totals(), [online, offline], 1)
    assert [ln.split(" ")[0] for ln in lines if ln.startswith("device_status")] == [
        "device_status,device=oxi-0001,gateway=gw-0001,site=test"
    ]
