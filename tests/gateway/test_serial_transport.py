"""Wired sensors over a real pty pair (socat): every reading arrives once, damaged lines are counted
and skipped, and a serial line that disappears and comes back loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.serial_transport import SerialTransport
from gateway.service import Gateway
from hardware import make_patients
from hardware.serial_sensor import SerialSensor
from tests.gateway.helpers import Collector, gateway_config, health, running
from tests.servers import Mosquitto, require


class SocatPair:
    """`socat pty,raw,echo=0,link=A pty,raw,echo=0,link=B`: two ptys joined, like a cable."""

    def __init__(self, workdir: Path) -> None:
        self.binary = require("socat", "socat")
        self.sensor_end = workdir / "tty-sensor"
        self.gateway_end = workdir / "tty-gateway"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        for p in (self.sensor_end, self.gateway_end):
            p.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"pty,raw,echo=0,link={self.sensor_end}",
                f"pty,raw,echo=0,link={self.gateway_end}",
            ],
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not (self.sensor_end.exists() and self.gateway_end.exists()):
            assert time.monotonic() < deadline, "socat did not create its ptys"
            time.sleep(0.02)
        fd = os.open(self.sensor_end, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(fd)
        return fd

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None


@pytest.fixture
def socat(tmp_path: Path) -> Iterator[SocatPair]:
    pair = SocatPair(tmp_path)
    yield pair
    pair.stop()


def _gateway(mosquitto: Mosquitto, tmp_path: Path, port: Path, devices: list[str]) -> Gateway:
    cfg = gateway_config(mosquitto.url, spool_path=str(tmp_path / "spool.sqlite"))
    transport = SerialTransport(
        str(port), devices=devices, retry_min_s=0.1, retry_max_s=0.5, lost_after_s=2.0
    )
    return Gateway(cfg, transport, gateway_id="gw-serial")


def test_damaged_lines_are_counted_and_skipped_and_every_reading_still_arrives_once(
    mosquitto: Mosquitto, socat: SocatPair, tmp_path: Path
) -> None:
    fd = socat.start()
    devices = [d for p in make_patients(1, seed=3) for d in p.devices]
    # Noise flips a bit in lines 5, 40 and 41 (they come back by replay); garbage arrives between.
    sensor = SerialSensor(fd, devices, seed=3, damage=[5, 40, 41])
    gw = _gateway(mosquitto, tmp_path, socat.gateway_end, [d.device_id for d in devices])
    seen = Collector("127.0.0.1", mosquitto.port)
    try:
        with running(gw):
            for second in range(30):
                sensor.advance(1.0)
                if second % 10 == 3:
                    sensor.send_raw(b"\x00\xfe\xff line noise \x07\n")
                    sensor.send_raw(b"N1,not,a,valid,frame*0000\n")
                time.sleep(0.01)
            want = sensor.tally
            assert seen.wait_for(lambda: seen.tally() == want, 30), (seen.tally(), want)
        transport = gw.transport
        assert isinstance(transport, SerialTransport)
        assert transport.bad_lines == {"bad_checksum": 3 + 3, "not_ascii": 3}
        assert transport.link.replays >= 2 and transport.link.lost_lines == 0
        assert seen.frames_twice() == []
        assert gw.stats().dead_letters == 9
    finally:
        gw.stop()
        sensor.close()
        seen.close()


def test_a_serial_line_that_disappears_is_reopened_and_nothing_is_lost(
    mosquitto: Mosquitto, socat: SocatPair, tmp_path: Path
) -> None:
    fd = socat.start()
    devices = [d for p in make_patients(1, seed=4) for d in p.devices]
    ids = [d.device_id for d in devices]
    sensor = SerialSensor(fd, devices, seed=4)
    gw = _gateway(mosquitto, tmp_path, socat.gateway_end, ids)
    seen = Collector("127.0.0.1", mosquitto.port)
    try:
        with running(gw):
            for _ in range(10):
                sensor.advance(1.0)
            socat.stop()  # the USB adapter is pulled out: lines still in socat's buffers are gone
            os.close(fd)
            assert seen.wait_for(lambda: health(seen.last_status(), ids[0])["state"] == "lost", 15)
            sensor.fd = socat.start()  # plugged back in (a new pty behind the same name)
            for _ in range(10):
                sensor.advance(1.0)
            want = sensor.tally
            assert seen.wait_for(lambda: seen.tally() == want, 30), (seen.tally(), want)
            assert seen.wait_for(lambda: health(seen.last_status(), ids[0])["state"] == "connected", 10)
        assert health(seen.last_status(), ids[0])["reconnects"] >= 1
        assert seen.frames_twice() == []
    finally:
        gw.stop()
        sensor.close()
        seen.close()
