"""Wired sensors over a real pty pair (socat): every reading arrives once, damaged lines are counted
and skipped, and a serial line that disappears and comes back loses nothing. On injected ports and
an injected clock: a silent sensor or the wrong device on the port is reported lost, a line cut by
a reopened port is not a dead letter, and the sensors' port may not be the GSM modem's."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import serial

from gateway.commands import build_transport
from gateway.decode import Notification
from gateway.serial_protocol import encode_notify
from gateway.serial_transport import SerialTransport
from gateway.service import Gateway
from gateway.transport import Reject, TransportError
from hardware import make_patients
from hardware.serial_sensor import SerialSensor
from nabz.config import Config, DeadmanConfig, GatewayConfig, ModemConfig, SerialConfig
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


# --- the reader's logic on injected ports and an injected clock (synthetic lines) ----------------
class FakePort:
    """A serial port whose bytes the test hands over; an exception queued is raised by `read`."""

    def __init__(self) -> None:
        self.incoming: queue.Queue[bytes | Exception] = queue.Queue()
        self.written: list[bytes] = []

    @property
    def in_waiting(self) -> int:
        return self.incoming.qsize()

    def read(self, n: int) -> bytes:
        try:
            item = self.incoming.get(timeout=0.01)
        except queue.Empty:
            return b""
        if isinstance(item, Exception):
            raise item
        return item

    def write(self, data: bytes) -> int:
        self.written.append(data)
        return len(data)

    def close(self) -> None:
        pass


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _until(cond: Callable[[], bool], what: str) -> None:
    """Waits for the reader thread to move bytes (not for time to pass: the clock is injected)."""
    deadline = time.monotonic() + 5
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def _line(lseq: int, device: str = "ecg-0001") -> bytes:
    return encode_notify("0000abcd", lseq, device, "2a37", bytes([0, 60 + lseq]))


def _transport(
    clock: Clock, ports: list[FakePort], opened: list[FakePort], mono: Clock | None = None
) -> SerialTransport:
    def open_port(name: str, baudrate: int) -> FakePort:
        opened.append(ports[len(opened)])
        return opened[-1]

    return SerialTransport(
        "/dev/fake", devices=["ecg-0001"], clock=clock, monotonic=mono, lost_after_s=60.0, retry_min_s=0.5,
        retry_max_s=10.0, open_port=open_port, rand=lambda: 1.0,
    )  # fmt: skip


def _drain(
    tr: SerialTransport, notes: int = 0, rejects: int = 0, *, either: bool = False
) -> tuple[list[Notification], list[Reject]]:
    """Poll until the reader thread has handed over that many notifications and (or, `either`)
    rejects."""
    got: tuple[list[Notification], list[Reject]] = ([], [])

    def done() -> bool:
        got[0].extend(tr.poll(0))
        got[1].extend(tr.take_rejects())
        enough = (len(got[0]) >= notes, len(got[1]) >= rejects)
        return any(enough) if either else all(enough)

    _until(done, f"{notes} notifications, {rejects} rejects")
    return got


def test_a_sensor_that_falls_silent_or_the_wrong_device_on_the_port_is_reported_lost() -> None:
    # Before 2026-11-27 an open port was "connected" forever, whatever came over it.
    clock, port, opened = Clock(1000.0), FakePort(), []
    tr = _transport(clock, [port], opened)
    tr.start(0)
    try:
        _until(lambda: bool(opened), "port opened")
        port.incoming.put(_line(0))
        assert [n.data for n in _drain(tr, notes=1)[0]] == [bytes([0, 60])]
        assert tr.health(0)["ecg-0001"].state == "connected"
        clock.t = 1030.0  # a modem answering, a GPS, line noise, another gateway's sensor
        port.incoming.put(b"\r\nOK\r\n$GPGGA,123519,4807.038,N*47\r\n" + _line(1, "ecg-0099"))
        notes, rejects = _drain(tr, rejects=3)
        assert (
            notes == []
            and [r.reason for r in rejects][:2] == ["serial_no_checksum"] * 2
            and rejects[2].reason == "unknown_device"
        )
        clock.t = 1059.9
        assert tr.poll(0) == [] and tr.health(0)["ecg-0001"].state == "connected"
        assert [e.kind for e in tr.take_events()] == ["connected"]
        clock.t = 1060.0  # 60 s after the last valid line of an enrolled device
        tr.poll(0)
        lost = tr.take_events()
        assert [(e.device, e.kind, e.at_us) for e in lost] == [("ecg-0001", "lost", 1_060_000_000)]
        assert "no valid line for 60 s" in lost[0].detail
        h = tr.health(0)["ecg-0001"]
        assert (h.state, h.since_us) == ("lost", 1_060_000_000) and "no valid line" in h.reason
        clock.t = 1200.0  # still silent: said once
        assert tr.poll(0) == [] and tr.take_events() == [] and tr.health(0)["ecg-0001"].state == "lost"
        port.incoming.put(_line(2))  # the sensor talks again
        assert [n.data for n in _drain(tr, notes=1)[0]] == [bytes([0, 62])]
        assert [(e.kind, e.at_us) for e in tr.take_events()] == [("found", 1_200_000_000)]
        h = tr.health(0)["ecg-0001"]
        assert (h.state, h.since_us) == ("connected", 1_200_000_000)
    finally:
        tr.stop()


def test_a_wall_clock_step_neither_loses_a_streaming_sensor_nor_delays_a_real_loss() -> None:
    """NTP setting a Pi's clock 45 min forward after boot made a streaming sensor "lost" (and the
    server raised device_offline at once); a step back delayed a real loss by the step."""
    wall, mono, port, opened = Clock(1000.0), Clock(50.0), FakePort(), []
    tr = _transport(wall, [port], opened, mono)
    tr.start(0)
    try:
        _until(lambda: bool(opened), "port opened")
        port.incoming.put(_line(0))
        (before,), _ = _drain(tr, notes=1)
        wall.t += 45 * 60  # the step
        mono.t += 1.0
        port.incoming.put(_line(1))
        (after,), _ = _drain(tr, notes=1)
        # each notification carries both clocks: the decoder moves the device clocks' offsets with
        # the wall clock's step (gateway.decode.ClockSync)
        assert before.mono_us is not None and after.mono_us is not None
        assert (after.rx_us - after.mono_us) - (before.rx_us - before.mono_us) == (45 * 60 - 1) * 1_000_000
        assert tr.health(0)["ecg-0001"].state == "connected" and [e.kind for e in tr.take_events()] == [
            "connected"
        ]
        wall.t -= 75 * 60  # a step back, and the sensor falls silent
        mono.t += 59.9
        assert tr.health(0)["ecg-0001"].state == "connected"
        mono.t += 0.1
        wall.t += 60.0
        assert tr.health(0)["ecg-0001"].state == "lost"  # 60 s after its last line, not 76 min
    finally:
        tr.stop()


def test_a_closed_port_is_reopened_on_time_despite_a_wall_clock_step_back() -> None:
    """The reopening of a failed port was paced on the wall clock: NTP stepping a Pi's clock back
    an hour while the adapter was out kept the port closed an hour - the sensor "lost" the while -
    although the adapter was back within a second."""
    wall, mono, first, second, opened = Clock(1_800_000_000.0), Clock(50.0), FakePort(), FakePort(), []
    tr = _transport(wall, [first, second], opened, mono)
    tr.start(0)
    try:
        _until(lambda: bool(opened), "port opened")
        first.incoming.put(serial.SerialException("device disconnected"))
        _until(lambda: tr.health(0)["ecg-0001"].state == "reconnecting", "port failed")
        wall.t -= 3600.0  # the step
        mono.t += 1.0  # the ladder's first retry is due (within retry_min_s)
        _until(lambda: len(opened) == 2, "port not reopened a second after it failed")
        second.incoming.put(_line(0))
        assert [n.data for n in _drain(tr, notes=1)[0]] == [bytes([0, 60])]
        events = [(e.kind, e.at_us) for e in tr.take_events()]
        assert [k for k, _ in events] == ["connected", "disconnected", "connected"]
        assert events[2][1] == 1_799_996_400_000_000  # reported on the wall clock, as it now reads
        assert tr.health(0)["ecg-0001"].state == "connected"
    finally:
        tr.stop()


def test_a_port_that_never_delivers_a_valid_line_is_lost_after_lost_after_s_from_the_start() -> None:
    clock, port, opened = Clock(1000.0), FakePort(), []
    tr = _transport(clock, [port], opened)
    tr.start(0)
    try:
        _until(lambda: bool(opened), "port opened")
        clock.t = 1059.0
        assert tr.health(0)["ecg-0001"].state == "connected"
        clock.t = 1060.0
        assert tr.health(0)["ecg-0001"].state == "lost"
        assert [e.kind for e in tr.take_events()] == ["connected", "lost"]
    finally:
        tr.stop()


def test_a_line_cut_by_a_reopened_port_is_not_joined_to_the_next_one() -> None:
    # Before 2026-11-27 the reader kept the old port's half line: joined to the new port's first
    # line it made one bad_checksum dead letter, and that line was asked for again.
    clock, first, second, opened = Clock(1000.0), FakePort(), FakePort(), []
    tr = _transport(clock, [first, second], opened)
    tr.start(0)
    try:
        _until(lambda: bool(opened), "port opened")
        first.incoming.put(_line(0) + _line(1)[:9])
        first.incoming.put(serial.SerialException("device reports readiness to read but returned no data"))
        _until(lambda: tr.health(0)["ecg-0001"].state == "reconnecting", "port failed")
        clock.t = 1001.0  # the ladder's first retry is due (within retry_min_s)
        _until(lambda: len(opened) == 2, "port reopened")
        second.incoming.put(_line(1) + _line(2))  # the sensor sends the cut line again, whole
        got, rejects = _drain(tr, notes=3, rejects=1, either=True)
        assert [(r.reason, r.data) for r in rejects] == [] and tr.bad_lines == {}  # no dead letter
        assert [n.data for n in got] == [bytes([0, 60]), bytes([0, 61]), bytes([0, 62])]
        assert tr.link.replays == 0 and tr.health(0)["ecg-0001"].state == "connected"
    finally:
        tr.stop()


def test_the_sensors_port_and_the_modems_port_being_one_device_is_refused_at_start(tmp_path: Path) -> None:
    # /dev/ttyUSB0 and /dev/ttyUSB1 may swap between boots; a by-id link names the adapter.
    real = tmp_path / "ttyUSB0"
    real.touch()
    by_id = tmp_path / "usb-FTDI_FT232R_USB_UART_A10K1234-if00-port0"
    by_id.symlink_to(real)
    with pytest.raises(TransportError, match="GSM modem"):
        SerialTransport(str(by_id), modem_port=str(real))

    def config(modem: bool, sensor: Path, modem_port: Path) -> Config:
        return Config(
            gateway=GatewayConfig(serial=SerialConfig(port=str(sensor)), deadman=DeadmanConfig(modem=modem)),
            modem=ModemConfig(port=str(modem_port)),
        )

    with pytest.raises(TransportError, match=str(real)):
        build_transport(config(True, by_id, real), "serial")
    other = tmp_path / "ttyUSB1"
    other.touch()
    assert isinstance(build_transport(config(True, other, by_id), "serial"), SerialTransport)
    # Without a modem on the gateway its [modem] port is not used, whatever it says.
    assert isinstance(build_transport(config(False, real, real), "serial"), SerialTransport)


def test_a_quiet_spot_check_sensor_gets_a_longer_silence_from_the_configuration(tmp_path: Path) -> None:
    """A wired spot-check oximeter sends a reading every few minutes and nothing between: with
    the fixed 60 s it would be lost and found between every two readings."""
    port = tmp_path / "ttyUSB0"
    port.touch()
    cfg = Config(gateway=GatewayConfig(serial=SerialConfig(port=str(port), lost_after_s=900.0)))
    tr = build_transport(cfg, "serial")
    assert isinstance(tr, SerialTransport) and tr.lost_after_s == 900.0
