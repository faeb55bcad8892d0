"""The Nabz serial line protocol for wired sensors (docs/contract.md "Serial line protocol").

Rules of this file:
- Pure: bytes in, frames out (`LineReader`); frames in, decisions out (`SerialLink`). The pyserial
  runner (gateway.serial_transport) and the simulated sensor (hardware.serial_sensor) only move
  bytes. Nothing here raises on bad input: a bad line becomes a `BadLine` with a reason.
- One frame per line, ASCII, LF-terminated (a CR before the LF is ignored), at most
  `MAX_LINE` bytes. Every line ends in `*` and a CRC-16/CCITT-FALSE of everything before the `*`
  (4 hex digits; poly 0x1021, init 0xFFFF; "123456789" -> 29B1).
- Sensor to gateway:
    `N1,<session>,<lseq>,<device>,<characteristic>,<payload hex>*<crc>`  a notification
    `R1,<session>,<first lseq>*<crc>`                                    "replaying from here"
  Gateway to sensor:
    `C1,REPLAY,<session>,<from lseq>*<crc>`                             send again from lseq on
    `C1,WRITE,<device>,<characteristic>,<payload hex>*<crc>`              a characteristic write
- `session` is 8 hex digits the sensor picks at boot; `lseq` counts notification lines from 0 at
  boot (decimal, wraps at 2**32). The payload is exactly what the BLE notification would carry,
  so the same codec decodes both. The gateway accepts notification lines strictly in lseq order
  (go-back-N): a line ahead of the expected one is dropped and a REPLAY asked for, so a sensor
  that keeps its last lines can make the link exactly-once even across a gateway kill -9 (the
  gateway stores (session, next lseq) with the readings it spools).
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass

__all__ = [
    "MAX_LINE",
    "Notify",
    "ReplayStart",
    "Command",
    "BadLine",
    "LineReader",
    "SerialLink",
    "Decision",
    "encode_notify",
    "encode_replay_start",
    "encode_replay",
    "encode_write",
    "parse_line",
    "crc16",
]

MAX_LINE = 1024
_MOD = 1 << 32
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CHAR = re.compile(
    r"^(?:[0-9a-fA-F]{4}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
)
_SESSION = re.compile(r"^[0-9a-fA-F]{8}$")
_HEX = re.compile(r"^(?:[0-9a-fA-F]{2})*$")


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (binascii's C implementation of CRC-CCITT, seeded 0xFFFF)."""
    return binascii.crc_hqx(data, 0xFFFF)


@dataclass(frozen=True, slots=True)
class Notify:
    session: str
    lseq: int
    device: str
    char: str
    data: bytes


@dataclass(frozen=True, slots=True)
class ReplayStart:
    session: str
    first: int


@dataclass(frozen=True, slots=True)
class Command:
    op: str  # "REPLAY" or "WRITE"
    session: str = ""
    lseq: int = 0
    device: str = ""
    char: str = ""
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class BadLine:
    reason: str  # too_long, not_ascii, no_checksum, bad_checksum, bad_fields, bad_hex, unknown_type
    line: bytes  # the first bytes of the line, for the dead-letter table


Frame = Notify | ReplayStart | Command | BadLine


# --- encoding ------------------------------------------------------------------------------------
def _seal(body: str) -> bytes:
    raw = body.encode("ascii")
    return raw + b"*%04X\n" % crc16(raw)


def encode_notify(session: str, lseq: int, device: str, char: str, data: bytes) -> bytes:
    return _seal(f"N1,{session},{lseq % _MOD},{device},{char},{data.hex()}")


def encode_replay_start(session: str, first: int) -> bytes:
    return _seal(f"R1,{session},{first % _MOD}")


def encode_replay(session: str, from_lseq: int) -> bytes:
    return _seal(f"C1,REPLAY,{session},{from_lseq % _MOD}")


def encode_write(device: str, char: str, data: bytes) -> bytes:
    return _seal(f"C1,WRITE,{device},{char},{data.hex()}")


# --- decoding ------------------------------------------------------------------------------------
def _lseq(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 10 and int(text) < _MOD else None


def parse_line(line: bytes) -> Frame:
    """One line without its LF (a trailing CR is allowed) -> a frame, or a BadLine with the reason."""
    if line.endswith(b"\r"):
        line = line[:-1]
    head = line[:80]
    if len(line) > MAX_LINE:
        return BadLine("too_long", head)
    if not line.isascii():
        return BadLine("not_ascii", head)
    star = line.rfind(b"*")
    if star < 0 or len(line) - star != 5:
        return BadLine("no_checksum", head)
    try:
        want = int(line[star + 1 :], 16)
    except ValueError:
        return BadLine("no_checksum", head)
    body = line[:star]
    if crc16(body) != want:
        return BadLine("bad_checksum", head)
    f = body.decode("ascii").split(",")
    kind = f[0]
    if kind == "N1":
        if len(f) != 6:
            return BadLine("bad_fields", head)
        _, session, lseq_text, device, char, hexdata = f
        lseq = _lseq(lseq_text)
        if lseq is None or not _SESSION.match(session) or not _ID.match(device) or not _CHAR.match(char):
            return BadLine("bad_fields", head)
        if not _HEX.match(hexdata):
            return BadLine("bad_hex", head)
        return Notify(session.lower(), lseq, device, char.lower(), bytes.fromhex(hexdata))
    if kind == "R1":
        first = _lseq(f[2]) if len(f) == 3 else None
        if first is None or not _SESSION.match(f[1]):
            return BadLine("bad_fields", head)
        return ReplayStart(f[1].lower(), first)
    if kind == "C1" and len(f) >= 2:
        if f[1] == "REPLAY" and len(f) == 4:
            start = _lseq(f[3])
            if start is None or not _SESSION.match(f[2]):
                return BadLine("bad_fields", head)
            return Command("REPLAY", session=f[2].lower(), lseq=start)
        if f[1] == "WRITE" and len(f) == 5:
            if not _ID.match(f[2]) or not _CHAR.match(f[3]):
                return BadLine("bad_fields", head)
            if not _HEX.match(f[4]):
                return BadLine("bad_hex", head)
            return Command("WRITE", device=f[2], char=f[3].lower(), data=bytes.fromhex(f[4]))
        return BadLine("bad_fields", head)
    return BadLine("unknown_type", head)


class LineReader:
    """Bytes as they come off the wire -> complete frames. Resynchronises on the next LF after
    any damage, so one bad byte costs one line."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skipping = False  # inside a line that is already too long

    def reset(self) -> int:
        """Forget a partial line (the port was closed and opened again: its end will never come,
        and joined to the new port's first line it would make one bad line of two). Returns how
        many bytes were dropped."""
        dropped = len(self._buf)
        self._buf.clear()
        self._skipping = False
        return dropped

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        out: list[Frame] = []
        start = 0
        while True:
            end = self._buf.find(b"\n", start)
            if end < 0:
                break
            line = bytes(self._buf[start:end])
            start = end + 1
            if self._skipping:
                self._skipping = False
                continue
            if line.strip(b"\r"):
                out.append(parse_line(line))
        del self._buf[:start]
        if len(self._buf) > MAX_LINE:
            if not self._skipping:
                out.append(BadLine("too_long", bytes(self._buf[:80])))
            self._skipping = True
            self._buf.clear()
        return out


# --- the link: strictly in-order, exactly-once delivery of notification lines ------------------
@dataclass(frozen=True, slots=True)
class Decision:
    accept: bool
    replay_from: int | None = None  # send `C1,REPLAY,<session>,<replay_from>` now
    note: str = ""


@dataclass
class SerialLink:
    """Which notification lines to accept; pure, with `now` injected (seconds).

    `checkpoint()` is stored with the readings spooled from the accepted lines; `restore()` at the
    next start resumes exactly after them.
    """

    replay_timeout_s: float = 2.0
    max_tries: int = 3
    session: str | None = None
    next_lseq: int = 0
    waiting_until: float | None = None
    tries: int = 0
    accepted: int = 0
    duplicates: int = 0
    lost_lines: int = 0  # asked for, never came back (older than the sensor's buffer)
    restarts: int = 0
    replays: int = 0

    def on_notify(self, n: Notify, now: float) -> Decision:
        if self.session is None:
            self.session, self.next_lseq = n.session, n.lseq
        elif n.session != self.session:
            # The sensor restarted (new session): its lines from 0 up to this one are wanted too.
            self.restarts += 1
            self.session, self.next_lseq, self.waiting_until, self.tries = n.session, 0, None, 0
        ahead = (n.lseq - self.next_lseq) % _MOD
        if ahead == 0:
            self.next_lseq = (n.lseq + 1) % _MOD
            self.accepted += 1
            self.waiting_until, self.tries = None, 0
            return Decision(True)
        if ahead >= 1 << 31:
            self.duplicates += 1
            return Decision(False, note="duplicate")
        # Ahead: lines next_lseq..lseq-1 are missing. Go back to them.
        if self.waiting_until is None or now >= self.waiting_until:
            if self.tries >= self.max_tries:
                self.lost_lines += ahead
                self.next_lseq = (n.lseq + 1) % _MOD
                self.accepted += 1
                self.waiting_until, self.tries = None, 0
                return Decision(True, note=f"gave up on {ahead} lines")
            self.tries += 1
            self.replays += 1
            self.waiting_until = now + self.replay_timeout_s
            return Decision(False, replay_from=self.next_lseq, note="gap")
        return Decision(False, note="waiting for replay")

    def on_replay_start(self, r: ReplayStart) -> None:
        """The sensor replays from `first`; anything before it is gone from its buffer."""
        if r.session != self.session:
            return
        ahead = (r.first - self.next_lseq) % _MOD
        if 0 < ahead < 1 << 31:
            self.lost_lines += ahead
            self.next_lseq = r.first
        self.waiting_until, self.tries = None, 0

    def resume_request(self) -> tuple[str, int] | None:
        """After a restart of the gateway: (session, next lseq) to ask the sensor to replay from."""
        return (self.session, self.next_lseq) if self.session is not None else None

    def checkpoint(self) -> str:
        return f"{self.session or ''}:{self.next_lseq}"

    def restore(self, text: str) -> None:
        session, _, lseq = text.partition(":")
        if _SESSION.match(session) and lseq.isascii() and lseq.isdigit():
            self.session, self.next_lseq = session, int(lseq) % _MOD
