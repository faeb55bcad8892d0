"""The BLE transport through bleak's public API on bumble's virtual controller (synthetic
wearables): four at once, a drop-out filled by RESEND, a device that vanishes (reported lost, gaps
counted) and returns on a new connection, and off-the-shelf standard devices decoded."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from firmware import nabz_codec as codec
from gateway.ble import BleTransport
from gateway.decode import Decoder
from gateway.service import Gateway
from hardware import make_patients
from hardware.ble_peripherals import NabzPeripheral, VirtualRadio, peripheral_address
from hardware.ble_standard import HeartRateStrap, StandardOximeter
from nabz.broker import free_port
from nabz.config import EnrolledDevice
from nabz.contract import EcgReading
from tests.gateway.helpers import Collector, gateway_config, health, running
from tests.servers import Mosquitto

WAVES = ("ecg", "ppg")


@pytest.fixture
def radio() -> Iterator[VirtualRadio]:
    r = VirtualRadio(speed=1.0)
    yield r
    r.close()


def _gateway(
    radio: VirtualRadio,
    mosquitto: Mosquitto,
    tmp_path: Path,
    peripherals: list[Any],
    resend_timeout_s: float = 6.0,
) -> Gateway:
    enrolled = [EnrolledDevice(id=p.device_id, address=p.address) for p in peripherals]
    transport = BleTransport(
        enrolled,
        backend="bumble",
        link=radio.link,
        loop=radio.loop,
        connect_timeout_s=1.0,
        retry_min_s=0.2,
        retry_max_s=1.0,
        reset_after_failures=3,
        lost_after_s=3.0,
    )
    cfg = gateway_config(
        mosquitto.url, spool_path=str(tmp_path / "spool.sqlite"), resend_timeout_s=resend_timeout_s
    )
    return Gateway(cfg, transport, gateway_id="gw-ble")


def _all_connected(seen: Collector, peripherals: list[Any]) -> bool:
    return all(health(seen.last_status(), p.device_id)["state"] == "connected" for p in peripherals)


def _expected(p: NabzPeripheral, waves_from: str = "generated") -> Counter[tuple[str, str]]:
    """What must arrive from a wearable: every waveform reading it generated (RESEND fills
    drop-outs), every vital sign it sent while connected, and a battery reading per connection
    (read on connect) on top of those it notified."""
    out: Counter[tuple[str, str]] = Counter()
    for stream, n in getattr(p, waves_from).items():
        if stream in WAVES:
            out[(p.device_id, stream)] += n
    for stream, n in p.heard.items():
        if stream not in WAVES:
            out[(p.device_id, stream)] += n
    out[(p.device_id, "battery")] += p.connections_made
    return out


def _settle(
    radio: VirtualRadio, seen: Collector, peripherals: list[NabzPeripheral], timeout_s: float = 20
) -> None:
    """Stop the wearables and wait until what they sent has arrived."""
    radio.paused = True
    time.sleep(0.3)
    want = sum((_expected(p) for p in peripherals), Counter[tuple[str, str]]())
    seen.wait_for(lambda: seen.tally() == want, timeout_s)


def test_four_wearables_at_once_every_reading_arrives_with_mtu_rssi_and_battery(
    radio: VirtualRadio, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    peripherals = radio.add_wearables([d for p in make_patients(2, seed=21) for d in p.devices])
    gw = _gateway(radio, mosquitto, tmp_path, peripherals)
    seen = Collector("127.0.0.1", mosquitto.port)
    try:
        with running(gw):
            assert seen.wait_for(lambda: _all_connected(seen, peripherals), 20), seen.last_status()
            radio.start()  # the wearables start streaming once all four are subscribed
            time.sleep(5)
            _settle(radio, seen, peripherals)
        want = sum((_expected(p) for p in peripherals), Counter())
        assert seen.tally() == want
        assert all(seen.tally()[(p.device_id, "ecg" if p.is_ecg else "ppg")] > 400 for p in peripherals)
        status = seen.last_status()
        for p in peripherals:
            h = health(status, p.device_id)
            assert h["mtu"] == 247 and h["rssi_dbm"] == -50 and h["battery_pct"] == bytes(p.battery.value)[0]
            assert p.connected and p.connections_made == 1
        assert seen.frames_twice() == []
        info = gw.transport.device_info("ecg-0001")  # type: ignore[attr-defined]
        assert info["model"] == "Nabz ECG patch" and info["serial"] == "ecg-0001"
    finally:
        gw.stop()
        seen.close()


def test_the_state_a_wearable_is_in_when_it_connects_is_read_not_missed(
    radio: VirtualRadio, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A wearable notifies its status on connection, before the gateway has subscribed (it does so
    after discovery and its reads): lost. The gateway reads the control characteristic once
    subscribed, so one already in sensor_fault raises the technical alarm at once."""
    peripherals = radio.add_wearables(make_patients(1, seed=25)[0].devices)
    ecg, oxi = peripherals
    oxi.state = codec.DEVICE_STATE_SENSOR_FAULT  # failing before the gateway comes
    gw = _gateway(radio, mosquitto, tmp_path, peripherals)
    seen = Collector("127.0.0.1", mosquitto.port)
    try:
        with running(gw):
            assert seen.wait_for(lambda: _all_connected(seen, peripherals), 20), seen.last_status()
            assert seen.wait_for(
                lambda: health(seen.last_status(), oxi.device_id).get("device_state") == "sensor_fault", 10
            ), seen.last_status()
            assert health(seen.last_status(), ecg.device_id).get("device_state") == "ok"
    finally:
        gw.stop()
        seen.close()


def test_an_error_the_ble_stack_does_not_document_is_retried_not_fatal(
    radio: VirtualRadio, mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BlueZ has raised KeyError from `connect` (bleak issue #1435). The first attempts fail so;
    the device is still tried again, and its readings flow once the stack behaves."""
    import bleak

    real_connect = bleak.BleakClient.connect
    failures = {"left": 3}

    async def connect(self: bleak.BleakClient, **kwargs: Any) -> None:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise KeyError("org.bluez.GattService1")
        await real_connect(self, **kwargs)

    monkeypatch.setattr(bleak.BleakClient, "connect", connect)
    peripherals = radio.add_wearables([make_patients(1, seed=5)[0].devices[0]])
    gw = _gateway(radio, mosquitto, tmp_path, peripherals)
    seen = Collector("127.0.0.1", mosquitto.port)
    try:
        with running(gw):
            assert seen.wait_for(lambda: _all_connected(seen, peripherals), 30), seen.last_status()
            radio.start()
            assert seen.wait_for(lambda: sum(seen.tally().values()) > 0, 20)
        assert failures["left"] == 0
    finally:
        gw.stop()
        seen.close()


def test_a_drop_out_is_reconnected_and_the_missed_frames_come_back_by_resend(
    radio: VirtualRadio, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    peripherals = radio.add_wearables(make_patients(1, seed=22)[0].devices)
    ecg = peripherals[0]
    gw = _gateway(radio, mosquitto, tmp_path, peripherals)
    seen = Collector("127.0.0.1", mosquitto.port)
    try:
        with running(gw):
            assert seen.wait_for(lambda: _all_connected(seen, peripherals), 20)
            radio.start()
            time.sleep(3.5)  # the links have held lost_after_s (3 s here): stable, so this is a drop-out
            radio.leave(ecg)  # a second out of range: shorter than lost_after, inside the resend buffer
            transport = gw.transport
            assert isinstance(transport, BleTransport)
            assert seen.wait_for(lambda: transport.health(0)[ecg.device_id].state == "reconnecting", 5)
            time.sleep(1.0)
            radio.come_back(ecg)
            assert seen.wait_for(
                lambda: health(seen.last_status(), ecg.device_id)["state"] == "connected", 10
            )
            time.sleep(2)
            _settle(radio, seen, peripherals)
            assert seen.wait_for(lambda: health(seen.last_status(), ecg.device_id)["resent_frames"] > 0, 5)
        h = health(seen.last_status(), ecg.device_id)
        assert (h["gap_events"], h["gap_frames"], h["reconnects"]) == (1, 0, 1)
        assert ecg.resend_requests >= 1 and ecg.connections_made == 2
        assert ecg.heard["ecg"] < ecg.generated["ecg"]  # something really was missed on air...
        assert seen.tally() == _expected(ecg) + _expected(peripherals[1])  # ...and came back
        assert seen.frames_twice() == []
        resent = [b for b in seen.of(ecg.device_id, "ecg") if "resent" in b.get("flags", [])]
        assert len(resent) == h["resent_frames"]
    finally:
        gw.stop()
        seen.close()


def _small_resend_buffer(p: NabzPeripheral, frames: int) -> None:
    # The firmware keeps 60 s; a short buffer lets a test outlast it in seconds.
    p.sim._resend = deque(maxlen=frames)


def test_a_vanished_device_is_reported_lost_its_gap_counted_and_it_returns_on_a_new_connection(
    radio: VirtualRadio, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    peripherals = radio.add_wearables(make_patients(1, seed=23)[0].devices)
    oxi = peripherals[1]
    _small_resend_buffer(oxi, 8)  # 8 PPG frames: about 3 s
    # The gap is settled by the wearable's RESEND report, not by waiting out a timeout.
    gw = _gateway(radio, mosquitto, tmp_path, peripherals, resend_timeout_s=3600.0)
    seen = Collector("127.0.0.1", mosquitto.port)
    try:
        with running(gw):
            assert seen.wait_for(lambda: _all_connected(seen, peripherals), 20)
            radio.start()
            time.sleep(1.5)
            radio.leave(oxi)
            assert seen.wait_for(lambda: health(seen.last_status(), oxi.device_id)["state"] == "lost", 10)
            lost = seen.last_status()
            transport = gw.transport
            assert isinstance(transport, BleTransport)
            failures = transport.health(0)[oxi.device_id].reason
            assert "advertising" in failures or "Error" in failures
            time.sleep(2)  # still trying while lost: no restart needed
            radio.come_back(oxi)
            assert seen.wait_for(
                lambda: health(seen.last_status(), oxi.device_id)["state"] == "connected", 10
            )
            time.sleep(1.5)
            radio.paused = True
            assert seen.wait_for(lambda: health(seen.last_status(), oxi.device_id)["gap_frames"] > 0, 20)
            frame = oxi.sim.frame_samples
            key = (oxi.device_id, "ppg")
            # Every PPG sample generated either arrived or is counted in the gap, exactly.
            assert seen.wait_for(
                lambda: seen.tally()[key] + gw.stats().gap_frames * frame == oxi.generated["ppg"], 10
            ), (seen.tally()[key], gw.stats().gap_frames, oxi.generated["ppg"])
            others = _expected(peripherals[0]) + Counter(
                {k: n for k, n in _expected(oxi).items() if k != key}
            )
            # The report settles the gap at once: give the patch's last frames their time to land too.
            seen.wait_for(lambda: seen.tally() - Counter({key: seen.tally()[key]}) == others, 10)
        assert lost is not None and health(lost, peripherals[0].device_id)["state"] == "connected"
        h = health(seen.last_status(), oxi.device_id)
        assert h["reconnects"] == 1 and oxi.connections_made == 2
        assert h["gap_frames"] == gw.stats().gap_frames
        assert seen.tally() - Counter({key: seen.tally()[key]}) == others
        assert h["resent_frames"] > 0  # the newest frames of the outage did come back
        assert seen.frames_twice() == []
    finally:
        gw.stop()
        seen.close()


def test_off_the_shelf_chest_strap_and_oximeter_are_decoded(mosquitto: Mosquitto, tmp_path: Path) -> None:
    radio = VirtualRadio(speed=12.0)  # standard devices send once a second: 12 s per second here
    try:
        strap = radio.add(lambda link: HeartRateStrap(link, "strap-0001", peripheral_address(900)))
        oxi = radio.add(lambda link: StandardOximeter(link, "po60-0001", peripheral_address(901)))
        assert isinstance(strap, HeartRateStrap) and isinstance(oxi, StandardOximeter)
        gw = _gateway(radio, mosquitto, tmp_path, [strap, oxi])
        seen = Collector("127.0.0.1", mosquitto.port)
        try:
            with running(gw):
                assert seen.wait_for(lambda: _all_connected(seen, [strap, oxi]), 20)
                radio.start()
                assert seen.wait_for(lambda: len(seen.of("po60-0001", "spo2")) >= 80, 30)
                radio.paused = True
                time.sleep(0.5)
                hr = seen.of("strap-0001", "hr")
                spo2 = seen.of("po60-0001", "spo2")
                assert seen.wait_for(lambda: len(seen.of("strap-0001", "hr")) == _count(strap, "2a37"), 5)
        finally:
            gw.stop()
            seen.close()
    finally:
        radio.close()
    _check_strap(strap, seen.of("strap-0001", "hr"))
    _check_oximeter(oxi, seen.of("po60-0001", "spo2"))
    assert seen.of("strap-0001", "battery")[0]["battery_pct"] == 100  # read on connect
    assert hr and spo2


def _count(p: HeartRateStrap | StandardOximeter, char: str) -> int:
    return sum(1 for c, _ in p.sent if c == char)


def _check_strap(strap: HeartRateStrap, got: list[dict[str, Any]]) -> None:
    sent = [v for c, v in strap.sent if c == "2a37"]
    assert len(got) == len(sent) > 60
    wide = contactless = energy = 0
    for value, r in zip(sent, got, strict=True):
        flags = value[0]
        hr = int.from_bytes(value[1:3], "little") if flags & 1 else value[1]
        assert r["hr_bpm"] == hr
        wide += flags & 1
        if not flags & 0x02:
            contactless += 1
            assert r["contact"] is False and r.get("rr_ms", []) == []
        else:
            assert r["contact"] is True
            rr = round(60.0 / hr * 1024) * 1000 / 1024
            assert r["rr_ms"] and all(abs(x - rr) < 1e-9 for x in r["rr_ms"])
        if flags & 0x08:
            energy += 1
            assert r["energy_kj"] > 0
    assert wide and contactless and energy  # every layout variant was exercised


def _check_oximeter(oxi: StandardOximeter, got: list[dict[str, Any]]) -> None:
    sent = [(c, v) for c, v in oxi.sent if c in ("2a5f", "2a5e")]
    assert len(got) == len(sent)
    seen_kinds: Counter[str] = Counter()
    for (char, value), r in zip(sent, got, strict=True):
        if char == "2a5e":
            seen_kinds["spot"] += 1
            assert r["mode"] == "spot" and r["spo2_pct"] == 96.5 and r["pr_bpm"] == 71.0
            assert r["meas_status"] == ["validated"]
        elif value[1:3] == b"\xff\x07":  # NaN: the finger is out
            seen_kinds["finger_out"] += 1
            assert r["spo2_pct"] is None and r["pr_bpm"] is None
            assert r["meas_status"] == ["unavailable"] and r["sensor_status"] == [
                "sensor_unconnected_to_user"
            ]
        elif value[1:3] == b"\x00\x08":  # NRes: settling
            seen_kinds["nres"] += 1
            assert r["spo2_pct"] is None and r["meas_status"] == ["ongoing"]
        else:
            seen_kinds["value"] += 1
            assert 94 <= r["spo2_pct"] <= 98 and 70 <= r["pr_bpm"] <= 74 and r.get("pi_pct")
            if "questionable" in r.get("meas_status", []):
                seen_kinds["questionable"] += 1
    assert set(seen_kinds) == {"spot", "finger_out", "nres", "value", "questionable"}, seen_kinds


def test_a_radio_that_appears_late_is_waited_for_and_its_wearables_connect_across_processes() -> None:
    """The gateway's HCI controller is in another process (TCP, as a dongle on USB) that starts
    after the gateway: the devices are reported lost meanwhile, then connect and stream."""
    port = free_port()
    transport = BleTransport(
        [EnrolledDevice(id=i, address=peripheral_address(n)) for n, i in enumerate(("ecg-0001", "oxi-0001"))],
        backend="bumble",
        hci=f"tcp-client:127.0.0.1:{port}",
        connect_timeout_s=1.0,
        retry_min_s=0.2,
        retry_max_s=0.5,
        lost_after_s=1.5,
    )
    transport.start(0)
    radio: subprocess.Popen[bytes] | None = None
    try:
        time.sleep(2.5)
        assert {h.state for h in transport.health(0).values()} == {"lost"}
        assert "adapter not available" in transport.health(0)["ecg-0001"].reason
        radio = subprocess.Popen(
            [sys.executable, "-m", "hardware.ble_peripherals", "--patients", "1", "--hci-port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=Path(__file__).parents[2],
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while {h.state for h in transport.health(0).values()} != {"connected"}:
            assert time.monotonic() < deadline, transport.health(0)
            time.sleep(0.1)
        time.sleep(2.0)
        notes = transport.poll(0)
        kinds = {(n.device, n.char) for n in notes}
        assert ("ecg-0001", "6e61627a-0101-4000-8000-00805f9b34fb") in kinds
        assert ("oxi-0001", "6e61627a-0102-4000-8000-00805f9b34fb") in kinds
        events = [(e.device, e.kind) for e in transport.take_events()]
        assert ("ecg-0001", "lost") in events and ("ecg-0001", "found") in events
    finally:
        transport.stop()
        if radio is not None:
            radio.send_signal(signal.SIGINT)
            radio.wait(10)


def test_after_an_unexpected_error_the_ladder_is_moved_on_by_the_state_it_is_in() -> None:
    """The error can come while connected (the scan restarted after a drop-out) or between
    attempts: telling the ladder "attempt failed" then was itself an error, and ended the task."""
    import asyncio

    from gateway.ble import _Device
    from gateway.ladder import Ladder

    t = BleTransport([EnrolledDevice(id="ecg-0001", address="AA:BB:CC:DD:EE:FF")], lost_after_s=60.0)
    dev = _Device(EnrolledDevice(id="ecg-0001", address="AA:BB:CC:DD:EE:FF"), Ladder(0.0, lost_after_s=60.0))
    dev.ladder.on_attempt(0.0)
    dev.ladder.on_connected(0.0)
    asyncio.run(t._recover(dev, "KeyError: 'org.bluez.GattService1'"))  # noqa: SLF001
    assert dev.ladder.state == "reconnecting"
    asyncio.run(t._recover(dev, "again"))  # noqa: SLF001 - between attempts: it just waits
    assert dev.ladder.state == "reconnecting"
    dev.ladder.on_attempt(1.0)
    asyncio.run(t._recover(dev, "during an attempt"))  # noqa: SLF001
    assert dev.ladder.state == "reconnecting" and dev.ladder.failures == 1


# --- an NTP step of the wall clock (a Pi has no real-time clock) ---------------------------------
_LOST_AFTER_S = 5.0  # and so stable after 5 s too; the wearable is away shorter than that


class _SteppedWall:
    """The wall clock of a Pi whose NTP daemon steps it: real time plus an offset the test sets."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset_s


def _until(cond: Callable[[], bool], timeout_s: float, what: Callable[[], object]) -> float:
    """Wait (the radio runs in real time) until `cond()`; returns how long it took."""
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < timeout_s, what()
        time.sleep(0.05)
    return time.monotonic() - start


def _stepped_transport(radio: VirtualRadio, p: NabzPeripheral, wall: _SteppedWall) -> BleTransport:
    return BleTransport(
        [EnrolledDevice(id=p.device_id, address=p.address)],
        backend="bumble", link=radio.link, loop=radio.loop, connect_timeout_s=1.0, retry_min_s=0.2,
        retry_max_s=1.0, reset_after_failures=3, lost_after_s=_LOST_AFTER_S, clock=wall,
        monotonic=time.monotonic,
    )  # fmt: skip


def _stable_then_away(radio: VirtualRadio, transport: BleTransport, p: NabzPeripheral) -> None:
    """Connect, hold the link until it is stable, then lose it: reconnecting."""
    _until(lambda: _state(transport, p) == "connected", 20, lambda: transport.health(0))
    time.sleep(_LOST_AFTER_S + 0.5)
    radio.leave(p)
    _until(lambda: _state(transport, p) == "reconnecting", 5, lambda: transport.health(0))


def _state(transport: BleTransport, p: NabzPeripheral) -> str:
    return transport.health(0)[p.device_id].state


def test_an_ntp_step_forward_during_a_drop_out_does_not_report_the_wearable_lost(radio: VirtualRadio) -> None:
    """A Pi's clock set 2 hours forward by NTP while a wearable was out of range for a second:
    measured on the wall clock, its absence had lasted 2 hours, it was reported lost at once and
    the server raised device_offline to the nurses for a wearable that came straight back."""
    p = radio.add_wearables([make_patients(1, seed=26)[0].devices[0]])[0]
    wall = _SteppedWall()
    transport = _stepped_transport(radio, p, wall)
    transport.start(0)
    try:
        _stable_then_away(radio, transport, p)
        wall.offset_s += 2 * 3600  # NTP steps the clock
        time.sleep(1.0)  # retries go on meanwhile (and find it away)
        radio.come_back(p)
        _until(lambda: _state(transport, p) == "connected", 10, lambda: transport.health(0))
        time.sleep(0.5)
        events = [(e.kind, e.at_us) for e in transport.take_events()]
        assert [k for k, _ in events] == ["connected", "disconnected", "connected"], events
        # What goes out stays on the wall clock: the new connection is dated after the step.
        assert events[2][1] / 1e6 > time.time() + 2 * 3600 - 10
        assert transport.health(0)[p.device_id].since_us == events[2][1]
    finally:
        transport.stop()


def test_a_real_loss_is_reported_on_time_and_retried_despite_an_ntp_step_back(radio: VirtualRadio) -> None:
    """NTP stepping a Pi's clock back an hour just after a wearable went away: measured on the
    wall clock, it was reported lost an hour late, and its retries waited an hour as well."""
    p = radio.add_wearables([make_patients(1, seed=27)[0].devices[0]])[0]
    wall = _SteppedWall()
    transport = _stepped_transport(radio, p, wall)
    transport.start(0)
    try:
        _stable_then_away(radio, transport, p)
        wall.offset_s -= 3600
        took = _until(lambda: _state(transport, p) == "lost", 10, lambda: "not reported lost")
        assert took < _LOST_AFTER_S + 2.0  # plus an attempt of the ladder (1 s) and a margin
        lost = [e for e in transport.take_events() if e.kind == "lost"]
        assert len(lost) == 1
        assert abs(lost[0].at_us / 1e6 - (time.time() - 3600)) < 5  # dated on the wall clock
        radio.come_back(p)
        _until(lambda: p.connected, 5, lambda: "not retried")  # shown lost until the link holds
        _until(lambda: _state(transport, p) == "connected", _LOST_AFTER_S + 3, lambda: "not found")
        assert [e.kind for e in transport.take_events()] == ["connected", "found"]
    finally:
        transport.stop()


def test_waveforms_follow_an_ntp_step_of_the_wall_clock_at_once(radio: VirtualRadio) -> None:
    """NTP setting a Pi's clock 2 hours forward while an ECG patch streams: the frames that follow
    are dated on the new clock from the first one (each notification carries the wall and the
    monotonic clocks, and the decoder sees the step between them), neither 2 hours in the past for
    a while nor for good."""
    p = radio.add_wearables([make_patients(1, seed=28)[0].devices[0]])[0]
    wall = _SteppedWall()
    transport = _stepped_transport(radio, p, wall)
    decoder = Decoder("demo", "gw-0001")
    frames: list[EcgReading] = []

    def take(n: int) -> bool:
        frames.extend(r for r in map(decoder.decode, transport.poll(0)) if isinstance(r, EcgReading))
        return len(frames) >= n

    transport.start(0)
    try:
        _until(lambda: _state(transport, p) == "connected", 20, lambda: transport.health(0))
        radio.start()
        _until(lambda: take(10), 20, lambda: "no frames")
        before = len(frames)
        wall.offset_s += 2 * 3600
        _until(lambda: take(before + 10), 10, lambda: "no frames after the step")
    finally:
        transport.stop()
    late = [round((r.rx - r.t).total_seconds(), 2) for r in frames]
    assert all(0 < s < 3 for s in late), late  # received within a frame and a radio's delay of its start
    assert decoder.clock.steps == 1
