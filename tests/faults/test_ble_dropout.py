"""Fault 5: a BLE drop-out of 60 s. The ECG patch goes out of range (bumble's virtual radio: the
peripheral drops the link as a real one does at range, and stops advertising) and comes back a
minute later, while its patient desaturates; the whole pipeline runs on real processes (nabz.faults)
on a clock 10 times faster, the gateway's BLE central talking HCI/L2CAP/ATT/GATT to the
peripherals through bleak and the bumble backend.

What must happen: the device is reported lost and found; on reconnection the gateway asks for the
missing frames (RESEND), the patch sends what its 60 s buffer still holds (as the firmware does)
and then its report of what is not coming, which the gateway counts as a gap (`gap_frames`) at
once. Every waveform sample generated either arrives exactly once or is counted as a gap, never
silently; vital-sign notifications are not resent (docs/gateway.md): those sent while away are
lost, the rest arrive once. Alarms, each texted exactly once: the desaturation and the device
lost; a waveform gap only if it is worth an alarm (20 frames or more, alerts/technical.py): the
buffer covers the minute away, so what is lost is the reconnection's few seconds at most."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from gateway.ble import BleTransport
from gateway.service import Gateway
from hardware import scenario
from hardware.ble_peripherals import NabzPeripheral, VirtualRadio
from nabz.config import EnrolledDevice
from nabz.faults import Rig, RigOptions, wait_until
from tests.faults.checks import alarms_once, every_reading_once

SPEED = 10.0
WAVES = ("ecg", "ppg")


def _expected(p: NabzPeripheral) -> Counter[tuple[str, str]]:
    """Every waveform sample generated (before gaps), vitals sent to the subscribed gateway, and a
    battery reading per connection (read on connect) on top of those notified."""
    out: Counter[tuple[str, str]] = Counter()
    for stream, n in p.generated.items():
        if stream in WAVES:
            out[(p.device_id, stream)] += n
    for stream, n in p.heard.items():
        if stream not in WAVES:
            out[(p.device_id, stream)] += n
    out[(p.device_id, "battery")] += p.connections_made
    return out


def _state(gw: Gateway, device: str) -> str:
    return gw.transport.health(0)[device].state


def test_5_a_ble_drop_out_of_60_s(tmp_path: Path) -> None:
    options = RigOptions(
        patients=1,
        scenarios=[scenario("desaturation", 30.0, hold_s=40.0)],
        speed=SPEED,
        virtual_gateways=False,
    )
    radio = VirtualRadio(speed=SPEED)
    gw: Gateway | None = None
    try:
        with Rig(tmp_path, options) as rig:
            peripherals: list[Any] = radio.add_wearables(rig.people[0].devices)
            ecg, oxi = peripherals
            transport = BleTransport(
                [EnrolledDevice(id=p.device_id, address=p.address) for p in peripherals],
                backend="bumble", link=radio.link, loop=radio.loop, clock=rig.clock,
                # on the simulated clock: 2-10 s between attempts, lost after 20 s
                connect_timeout_s=1.0, retry_min_s=2.0, retry_max_s=10.0, reset_after_failures=3, lost_after_s=20.0,
            )  # fmt: skip
            cfg = rig.gateway_config("gw-ble")
            cfg.gateway.resend_timeout_s = 60.0
            gw = Gateway(cfg, transport, clock=rig.clock)
            rig.add_gateway(gw)
            gw.start()
            wait_until(
                lambda: all(_state(gw, p.device_id) == "connected" for p in peripherals), 30, "not connected"
            )
            radio.start()  # the wearables stream once both are subscribed
            rig.run_for(40)  # the desaturation is under way
            radio.leave(ecg)
            left = rig.clock()
            wait_until(lambda: _state(gw, ecg.device_id) == "lost", 15, "never reported lost")
            rig.wait_sim(left + 60.0)
            radio.come_back(ecg)
            wait_until(lambda: _state(gw, ecg.device_id) == "connected", 20, "did not come back")
            rig.run_for(40)
            radio.paused = True
            time.sleep(8.0 / SPEED * 2)  # the last notifications and resent frames arrive
            wait_until(lambda: not gw.gaps.pending(), 20, "a RESEND never settled")
            rig.run_for(20)  # the gateway says so in its status, the alarm goes out
            rig.settle()
            count, alarms = rig.count(), rig.alarm_report()
            stored = rig.stored_by_stream()
            gap_frames = gw.stats().gap_frames
            resent = gw.stats().resent_frames
    finally:
        if gw is not None:
            gw.transport.stop()
        radio.close()

    every_reading_once(count, at_least=100 * 350)
    assert ecg.connections_made == 2 and oxi.connections_made == 1 and ecg.resend_requests >= 1
    assert resent * ecg.sim.frame_samples >= 55 * 250  # most of the minute away came back
    assert gap_frames * ecg.sim.frame_samples <= 10 * 250  # the rest: the reconnection's seconds
    want = _expected(ecg) + _expected(oxi)
    want[(ecg.device_id, "ecg")] -= gap_frames * ecg.sim.frame_samples  # counted, not silently lost
    assert stored == want
    assert ecg.heard["hr"] < ecg.generated["hr"]  # heart-rate notifications sent while away are gone
    expected = {("p-0001", "spo2_low"), ("p-0001", "device_offline")}
    alarms_once(alarms, expected | ({("p-0001", "gateway_data_gap")} if gap_frames >= 20 else set()))
