"""A simulated wired sensor hub: virtual wearables' notifications on a serial line, in the Nabz
serial line protocol (docs/contract.md), with the sensor side of replay and RESEND.

Rules of this file:
- The hub writes to a file descriptor (one end of a pty pair, from `pty.openpty()` or socat) and
  reads commands from it on a thread of its own. It keeps its last `ring` lines, so that a gateway
  that restarts can ask for everything after what it stored (`C1,REPLAY`), and forwards
  `C1,WRITE` to the wearable (the control characteristic's RESEND).
- Device time advances only as fast as the line takes the bytes (blocking writes): a gateway that
  stops reading stops the simulation, like a UART with hardware flow control.
- `tally` counts what was generated, by (device, stream), the way docs/contract.md counts.

Try it by hand: `python -m hardware.serial_sensor --patients 1` prints the pty to point
`nabz gateway run --transport serial` at.
"""

from __future__ import annotations

import argparse
import logging
import os
import pty
import random
import threading
import time
import tty
from collections import Counter, deque
from collections.abc import Sequence

from gateway.serial_protocol import Command, LineReader, encode_notify, encode_replay_start
from hardware import _codec as codec
from hardware.wearables import Notification as SimNotification
from hardware.wearables import VirtualDevice

__all__ = ["SerialSensor", "open_pty_pair"]

log = logging.getLogger(__name__)

_STREAM = {"2a37": "hr", "2a5f": "spo2", "2a19": "battery"}


def open_pty_pair() -> tuple[int, int, str]:
    """(master fd, slave fd, slave path): a pty in raw mode, no echo. Keep the slave fd open for as
    long as the line should keep its buffered bytes across a reader that restarts."""
    master, slave = pty.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    return master, slave, os.ttyname(slave)


def stream_of(char: str, data: bytes) -> tuple[str, int]:
    """(stream, readings) of one notification, counted as docs/contract.md counts."""
    if char in (codec.NABZ_ECG_WAVEFORM, codec.NABZ_PPG_WAVEFORM):
        return ("ecg" if data[1] == codec.WAVE_KIND_ECG else "ppg"), data[3]
    return _STREAM[char], 1


class SerialSensor:
    """Virtual wearables behind one serial line."""

    def __init__(
        self,
        fd: int,
        wearables: Sequence[VirtualDevice],
        *,
        session: str | None = None,
        ring: int = 20_000,
        seed: int = 0,
        damage: Sequence[int] = (),
    ) -> None:
        self.fd = fd
        self.damage = set(damage)  # line numbers whose first sending gets one bit flipped
        self.wearables = {w.device_id: w for w in wearables}
        self.session = session or f"{random.Random(seed).getrandbits(32):08x}"
        self.lseq = 0
        self.ring: deque[tuple[int, bytes]] = deque(maxlen=ring)
        self.tally: Counter[tuple[str, str]] = Counter()
        self.lines_sent = 0
        self.replays = 0
        self.writes = 0
        self.bad_commands = 0
        self._lock = threading.Lock()  # one writer at a time: live lines, replays, resent frames
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read_commands, name="serial-sensor", daemon=True)
        self._reader.start()

    # --- generating ------------------------------------------------------------------------------
    def advance(self, seconds: float) -> int:
        """Every wearable sends `seconds` of notifications down the line; returns lines written."""
        lines = 0
        for w in self.wearables.values():
            for n in w.advance(seconds):
                stream, readings = stream_of(n.char_uuid, n.data)
                self.tally[(n.device_id, stream)] += readings
                self._send(n)
                lines += 1
        return lines

    def run(self, seconds: float, step_s: float = 1.0, speed: float | None = None) -> None:
        """Advance `seconds` of device time in steps, optionally paced to `speed` x real time."""
        start = time.monotonic()
        done = 0.0
        while done < seconds and not self._stop.is_set():
            step = min(step_s, seconds - done)
            self.advance(step)
            done += step
            if speed:
                ahead = start + done / speed - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)

    def send_raw(self, data: bytes) -> None:
        """Bytes as they are, e.g. a damaged line for a test."""
        with self._lock:
            self._write(data)

    def close(self) -> None:
        self._stop.set()

    # --- internals -------------------------------------------------------------------------------
    def _send(self, n: SimNotification) -> None:
        with self._lock:
            line = encode_notify(self.session, self.lseq, n.device_id, n.char_uuid, n.data)
            self.ring.append((self.lseq, line))
            if self.lseq in self.damage:
                self.damage.discard(self.lseq)
                line = line[:12] + bytes([line[12] ^ 0x04]) + line[13:]  # noise on the wire
            self.lseq = (self.lseq + 1) & 0xFFFFFFFF
            self._write(line)
            self.lines_sent += 1

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                k = os.write(self.fd, view)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            view = view[k:]

    def _read_commands(self) -> None:
        reader = LineReader()
        while not self._stop.is_set():
            try:
                data = os.read(self.fd, 4096)
            except OSError:
                if self._stop.wait(0.05):
                    return
                continue
            if not data:
                self._stop.wait(0.01)
                continue
            for frame in reader.feed(data):
                if isinstance(frame, Command):
                    self._command(frame)
                else:
                    self.bad_commands += 1

    def _command(self, c: Command) -> None:
        if c.op == "REPLAY":
            if c.session != self.session:
                return  # a request for a previous life of this sensor: nothing to replay
            with self._lock:
                lines = [(s, line) for s, line in self.ring if (s - c.lseq) & 0xFFFFFFFF < 1 << 31]
                first = lines[0][0] if lines else self.lseq
                self._write(encode_replay_start(self.session, first))
                for _, line in lines:
                    self._write(line)
                self.replays += 1
            log.info("sensor: replayed %d lines from %d (asked from %d)", len(lines), first, c.lseq)
        elif c.op == "WRITE":
            w = self.wearables.get(c.device)
            if w is None:
                return
            try:
                resent = w.write(c.char, c.data)
            except ValueError:
                self.bad_commands += 1
                return
            self.writes += 1
            for n in resent:
                self._send(n)


def main(argv: Sequence[str] | None = None) -> int:
    from hardware import make_patients

    ap = argparse.ArgumentParser(description="A simulated wired sensor hub on a pty (Nabz serial protocol).")
    ap.add_argument("--patients", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--speed", type=float, default=1.0, help="device time per real second")
    ap.add_argument("--seconds", type=float, default=3600.0)
    args = ap.parse_args(argv)
    master, _slave, path = open_pty_pair()
    devices = [d for p in make_patients(args.patients, args.seed) for d in p.devices]
    sensor = SerialSensor(master, devices, seed=args.seed)
    print(f"serial sensor on {path}: nabz gateway run --transport serial --serial-port {path}", flush=True)
    try:
        sensor.run(args.seconds, speed=args.speed)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
