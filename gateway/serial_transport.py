"""The serial transport: wired sensors speaking the Nabz serial line protocol, through pyserial.

Rules of this file:
- A reader thread only moves bytes: it reads the port and queues (receive time, bytes). Framing,
  checksums and the in-order link (gateway.serial_protocol) run in `poll`, on the gateway's
  thread, so the link position handed to the spool (`checkpoint`) matches exactly the
  notifications returned so far.
- Bad lines are counted by reason, handed to the gateway's dead-letter table (`take_rejects`) and
  skipped; they are never fatal. A port that fails (a USB adapter pulled out) is reopened along the
  reconnect ladder (gateway.ladder) and never needs a restart.
- Two clocks: the wall clock (`clock`) dates what goes out (receive times, link events, `since`);
  silences and the ladder's waits are measured on the monotonic one (`mono`), so an NTP step of a
  Pi's wall clock neither makes a streaming sensor lost nor keeps a closed port closed.
- The link is judged by what comes over it, not by the port opening: it is reported lost once
  `lost_after_s` have passed without a valid line (an `N1` line of an enrolled device, or an `R1`)
  - a silent or hung sensor, the wrong device on the port, or the port gone - and found again
  at the next valid line. A reopened port starts with an empty line reader: the partial line
  left by the old port never ends, and joined to the new port's first line would make a bad one.
- The serial port must not be the gateway's GSM modem's (`modem_port`): two USB serial adapters
  may swap /dev/ttyUSBn names between boots, so the two are compared after resolving symlinks
  and the transport refuses to be built when they are the same device.
- After a (re)start the gateway asks the sensor to replay from the first line it has not spooled,
  so the link loses nothing across a gateway kill -9, if the sensor still holds those lines.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import serial

from gateway.decode import Notification
from gateway.ladder import Ladder
from gateway.serial_protocol import (
    BadLine,
    Command,
    LineReader,
    Notify,
    ReplayStart,
    SerialLink,
    encode_replay,
    encode_write,
)
from gateway.transport import LinkEvent, LinkHealth, LinkState, Reject, Transport, TransportError

__all__ = ["SerialTransport"]

log = logging.getLogger(__name__)

OpenPort = Callable[[str, int], Any]
# Bytes read but not yet polled. Beyond this the reader stops reading and the line's own flow
# control (the OS buffer, then the sensor's) holds the rest: memory stays bounded on a small
# gateway, and less is lost with the process if it is killed.
_MAX_BUFFERED = 1 << 20


def _open_port(port: str, baudrate: int) -> Any:
    return serial.serial_for_url(port, baudrate=baudrate, timeout=0.05, write_timeout=2.0)


def same_device(a: str, b: str) -> bool:
    """Whether two port names are the same device (/dev/serial/by-id/... links resolved)."""
    return os.path.realpath(a) == os.path.realpath(b)


class SerialTransport(Transport):
    """Notifications from wired sensors on one serial port."""

    def __init__(
        self,
        port: str,
        baudrate: int = 115200,
        devices: Sequence[str] = (),
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] | None = None,
        replay_timeout_s: float = 2.0,
        retry_min_s: float = 0.5,
        retry_max_s: float = 10.0,
        lost_after_s: float = 60.0,
        open_port: OpenPort = _open_port,
        rand: Callable[[], float] = random.random,
        modem_port: str | None = None,
    ) -> None:
        if modem_port is not None and same_device(port, modem_port):
            # Sensor lines read from the modem would be dead letters, and the dead-man's texts
            # would go to a sensor: fail at start, where the installer sees it.
            raise TransportError(
                f"serial transport: the sensors' port {port} is the GSM modem's port {modem_port} "
                f"({os.path.realpath(port)}); name each by its /dev/serial/by-id/... link"
            )
        self.port_name = port
        self.baudrate = baudrate
        self.allowlist = list(devices)
        self.clock = clock
        # Silences and the reopening's pacing are measured on this (default time.monotonic; the
        # clock itself when a simulated one is given): an NTP step of the wall clock must neither
        # make a streaming sensor "lost" nor keep a closed port closed for the size of the step.
        self.mono: Callable[[], float] = monotonic or (time.monotonic if clock is time.time else clock)
        self.open_port = open_port
        self.link = SerialLink(replay_timeout_s=replay_timeout_s)
        self.reader = LineReader()
        self.bad_lines: dict[str, int] = {}
        self.unknown_devices = 0
        self._key = f"serial:{port}"
        self._seen: list[str] = []
        self._chunks: deque[tuple[int, int, float, bytes]] = deque()  # (port generation, rx µs, mono, bytes)
        self._generation = 0  # +1 at each port opened
        self._reader_generation = 0
        self._buffered = 0
        self._events: list[LinkEvent] = []
        self._rejects: list[Reject] = []
        self._lock = threading.Lock()  # _chunks, _events, ladder, port and silence state
        self._write_lock = threading.Lock()
        self._ladder = Ladder(
            self.mono(),
            min_s=retry_min_s,
            max_s=retry_max_s,
            reset_after=3,
            lost_after_s=lost_after_s,
            rand=rand,
            wall=clock(),
        )
        self.lost_after_s = lost_after_s
        self._heard_at = self.mono()  # the last valid line (or the start), monotonic
        self._lost = False
        self._lost_reason = ""
        self._since = self._ladder.since  # when lost or found was last reported (wall clock)
        self._port: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._resume_sent_for: Any = None

    # --- Transport ---------------------------------------------------------------------------
    @property
    def devices(self) -> list[str]:
        return list(self.allowlist) if self.allowlist else list(self._seen)

    def start(self, now_us: int) -> None:
        self._heard_at, self._since = self.mono(), self.clock()  # the silence is counted from the start
        self._thread = threading.Thread(target=self._run, name=f"nabz-serial-{self.port_name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._close()

    def restore(self, marks: Mapping[str, str]) -> None:
        if self._key in marks:
            self.link.restore(marks[self._key])

    def checkpoint(self) -> dict[str, str]:
        return {self._key: self.link.checkpoint()} if self.link.session else {}

    def poll(self, now_us: int) -> list[Notification]:
        with self._lock:
            chunks = list(self._chunks)
            self._chunks.clear()
            self._buffered = 0
            port = self._port
        if port is not None and port is not self._resume_sent_for:
            # A freshly opened port: ask the sensor to continue right after what the spool holds.
            self._resume_sent_for = port
            resume = self.link.resume_request()
            if resume is not None:
                log.info("serial %s: asking the sensor to replay from line %d", self.port_name, resume[1])
                self._send(encode_replay(*resume))
        out: list[Notification] = []
        distinct = self.mono is not self.clock  # a simulated clock is both: no step to see between them
        for generation, rx_us, mono, data in chunks:
            if generation != self._reader_generation:
                self._reader_generation = generation
                dropped = self.reader.reset()
                if dropped:
                    log.info(
                        "serial %s: %d bytes of a line cut by the reopening dropped", self.port_name, dropped
                    )
            for frame in self.reader.feed(data):
                if isinstance(frame, Notify):
                    if not self.allowlist or frame.device in self.allowlist:
                        self._heard(rx_us / 1e6, mono)
                    self._notify(frame, rx_us, int(mono * 1_000_000) if distinct else None, out)
                elif isinstance(frame, ReplayStart):
                    self._heard(rx_us / 1e6, mono)
                    self.link.on_replay_start(frame)
                elif isinstance(frame, BadLine):
                    self._bad(frame.reason, frame.line)
                elif isinstance(frame, Command):
                    self._bad("unexpected_command", frame.op.encode())
        self._check_silence()
        return out

    def write(self, device: str, char: str, data: bytes) -> bool:
        return self._send(encode_write(device, char, data))

    def health(self, now_us: int) -> dict[str, LinkHealth]:
        self._check_silence()  # as of now, even if nothing was polled meanwhile
        with self._lock:
            lad = self._ladder
            state: LinkState = "lost" if self._lost else lad.state
            since = self._since if self._lost else max(self._since, lad.since)
            h = LinkHealth(
                state,
                since_us=int(since * 1e6),
                reconnects=lad.reconnects,
                reason=self._lost_reason if self._lost else lad.last_reason,
            )
        return {d: h for d in self.devices}

    def take_events(self) -> list[LinkEvent]:
        with self._lock:
            out, self._events = self._events, []
        return out

    def take_rejects(self) -> list[Reject]:
        out, self._rejects = self._rejects, []
        return out

    # --- poll helpers (gateway thread) -------------------------------------------------------
    def _heard(self, at: float, mono: float) -> None:
        """A valid line arrived at `at` (wall; `mono` monotonic): the link works (found again if
        it had been lost)."""
        with self._lock:
            self._heard_at = max(self._heard_at, mono)
            found = self._lost
            if found:
                self._lost, self._since = False, max(at, self._since)
                self._events.extend(LinkEvent(d, "found", int(at * 1e6)) for d in self.devices)
        if found:
            log.warning("serial %s: valid lines again", self.port_name)

    def _check_silence(self) -> None:
        """No valid line for `lost_after_s`: report the link lost, whatever the port does."""
        mono, now = self.mono(), self.clock()
        with self._lock:
            if self._lost or mono - self._heard_at < self.lost_after_s:
                return
            if self._port is not None:
                why = f"no valid line for {mono - self._heard_at:.0f} s (a silent sensor, or another device)"
            else:
                why = f"port closed: {self._ladder.last_reason or 'not opened yet'}"
            self._lost, self._since, self._lost_reason = True, now, why
            detail = f"serial port {self.port_name}: {why}"
            self._events.extend(LinkEvent(d, "lost", int(now * 1e6), detail) for d in self.devices)
        log.error("serial %s: link lost: %s", self.port_name, why)

    def _notify(self, frame: Notify, rx_us: int, mono_us: int | None, out: list[Notification]) -> None:
        decision = self.link.on_notify(frame, rx_us / 1e6)
        if decision.replay_from is not None and self.link.session is not None:
            log.info(
                "serial %s: lines from %d missing (%s); asking for a replay",
                self.port_name,
                decision.replay_from,
                decision.note,
            )
            self._send(encode_replay(self.link.session, decision.replay_from))
        if not decision.accept:
            return
        if self.allowlist and frame.device not in self.allowlist:
            self.unknown_devices += 1
            self._rejects.append(
                Reject(frame.device, frame.char, frame.data, "unknown_device", "not on this gateway's list")
            )
            return
        if frame.device not in self._seen:
            self._seen.append(frame.device)
        out.append(Notification(frame.device, frame.char, frame.data, rx_us, mono_us))

    def _bad(self, reason: str, line: bytes) -> None:
        self.bad_lines[reason] = self.bad_lines.get(reason, 0) + 1
        self._rejects.append(
            Reject(f"serial:{self.port_name}", "", line, f"serial_{reason}", line[:40].hex())
        )

    def _send(self, line: bytes) -> bool:
        port = self._port
        if port is None:
            return False
        try:
            with self._write_lock:
                port.write(line)
            return True
        except (serial.SerialException, OSError) as exc:
            log.warning("serial %s: write failed: %s", self.port_name, exc)
            return False

    # --- reader thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            now, wall = self.mono(), self.clock()
            with self._lock:
                for action in self._ladder.tick(now, wall):
                    self._event(action)
                due = self._port is None and self._ladder.attempt_due(now)
                if due:
                    self._ladder.on_attempt(now, wall)
            if due:
                self._try_open(now, wall)
            port = self._port
            if port is None:
                self._stop.wait(0.05)
                continue
            if self._buffered > _MAX_BUFFERED:
                self._stop.wait(0.005)
                continue
            try:
                data = port.read(max(1, min(65536, port.in_waiting)))
            except (serial.SerialException, OSError, TypeError) as exc:
                self._lost_port(str(exc))
                continue
            if data:
                with self._lock:
                    self._chunks.append((self._generation, int(self.clock() * 1_000_000), self.mono(), data))
                    self._buffered += len(data)

    def _try_open(self, now: float, wall: float) -> None:
        """Open the port (the ladder said it is time; `now` monotonic, `wall` the wall clock)."""
        try:
            port = self.open_port(self.port_name, self.baudrate)
        except (serial.SerialException, OSError, ValueError) as exc:
            with self._lock:
                for action in self._ladder.on_failed(now, str(exc), wall):
                    self._event(action)
            log.warning("serial %s: cannot open: %s", self.port_name, exc)
            return
        with self._lock:
            self._port = port
            self._generation += 1
            for action in self._ladder.on_connected(now, wall):
                self._event(action)
            self._events.extend(LinkEvent(d, "connected", int(wall * 1e6)) for d in self.devices)
        log.info("serial %s: open at %d baud", self.port_name, self.baudrate)

    def _lost_port(self, reason: str) -> None:
        now, wall = self.mono(), self.clock()
        self._close()
        with self._lock:
            for action in self._ladder.on_disconnected(now, reason, wall):
                self._event(action)
            self._events.extend(LinkEvent(d, "disconnected", int(wall * 1e6), reason) for d in self.devices)
        log.warning("serial %s: port failed (%s); reopening", self.port_name, reason)

    def _close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError):
                pass

    def _event(self, action: str) -> None:
        # The ladder only paces the reopening of the port. Lost and found are decided by the lines
        # (`_check_silence`, `_heard`): a port that opens is not yet a sensor that talks, and one
        # closed for `lost_after_s` has been silent at least that long.
        if action == "reset":
            log.info("serial %s: %d failed openings in a row", self.port_name, self._ladder.failures)
