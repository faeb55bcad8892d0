"""SMS through a GSM modem: 3GPP TS 27.005 text mode over a serial port (pyserial).

Rules of this file:
- The parsing is pure (`classify`, `parse_cds`, `parse_cmgr`, `cms_retryable`); `GsmNotifier` only
  moves bytes and keeps time limits. Unsolicited results (+CMTI new SMS, +CDS delivery report)
  may arrive between or in the middle of command responses: they are set aside and handled by
  `poll`.
- Sending: AT+CSCS "GSM" (or "UCS2" for text outside the GSM alphabet, e.g. Urdu; the number is
  then UCS-2 hex as well), AT+CSMP (status report requested, 24 h validity, data coding 0 or 8),
  AT+CMGS="<number>",145, wait for the "> " prompt, the text, Ctrl-Z; then "+CMGS: <mr>" and OK,
  or "+CMS ERROR: <n>". ESC aborts a message after a timeout.
- A failure is retryable when waiting may cure it (no network, network timeout, SIM busy,
  memory full, timeouts, the port missing); not when it needs a person (no SIM, SIM PIN needed
  without one configured, SMSC unknown, bad parameters).
- Operators block SIMs that send too fast: at most `max_per_minute` messages per rolling minute,
  counted on the clock the caller passes in; beyond that, a retryable refusal.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from alerts.notify import Delivery, DeliveryReport, Incoming
from alerts.smstext import encoding_of, gsm7_encode
from nabz.config import ModemConfig

__all__ = ["GsmNotifier", "ModemError", "classify", "parse_cds", "parse_cmgr", "cms_retryable", "ucs2_hex"]

log = logging.getLogger(__name__)

CTRL_Z = b"\x1a"
ESC = b"\x1b"
_NOT_RETRYABLE_CMS = {301, 303, 304, 305, 310, 311, 312, 313, 315, 316, 317, 318, 321, 330}
_URC_PREFIXES = ("+CMTI:", "+CDS:", "+CDSI:", "RING", "+CREG:", "+CMT:")


class ModemError(Exception):
    def __init__(self, detail: str, retryable: bool) -> None:
        super().__init__(detail)
        self.retryable = retryable


def cms_retryable(code: int) -> bool:
    return code not in _NOT_RETRYABLE_CMS


def classify(line: str) -> str:
    """'final_ok', 'final_error', 'urc' or 'info' for one response line."""
    if line == "OK":
        return "final_ok"
    if line == "ERROR" or line.startswith(("+CMS ERROR:", "+CME ERROR:")):
        return "final_error"
    if line.startswith(_URC_PREFIXES):
        return "urc"
    return "info"


def _fields(text: str) -> list[str]:
    out: list[str] = []
    cur = ""
    quoted = False
    for c in text:
        if c == '"':
            quoted = not quoted
        elif c == "," and not quoted:
            out.append(cur.strip())
            cur = ""
        else:
            cur += c
    out.append(cur.strip())
    return out


@dataclass(frozen=True, slots=True)
class _Cds:
    mr: int
    status: int


def parse_cds(line: str) -> _Cds | None:
    """`+CDS: <fo>,<mr>,[<ra>],[<tora>],<scts>,<dt>,<st>` (text mode) -> message reference, status."""
    if not line.startswith("+CDS:"):
        return None
    f = _fields(line[5:])
    try:
        return _Cds(int(f[1]), int(f[-1]))
    except (IndexError, ValueError):
        return None


def ucs2_hex(text: str) -> str:
    return text.encode("utf-16-be").hex().upper()


def _maybe_ucs2(text: str) -> str:
    t = text.strip()
    if len(t) >= 4 and len(t) % 4 == 0 and all(c in "0123456789ABCDEFabcdef" for c in t):
        try:
            return bytes.fromhex(t).decode("utf-16-be")
        except ValueError:
            return text
    return text


def parse_cmgr(lines: list[str], ucs2: bool = False) -> Incoming | None:
    """`+CMGR: "REC UNREAD","+92300...",,"26/11/25,14:00:00+20"` then the text line(s)."""
    if not lines or not lines[0].startswith("+CMGR:"):
        return None
    f = _fields(lines[0][6:])
    if len(f) < 2:
        return None
    phone = _maybe_ucs2(f[1]) if ucs2 else f[1]
    body = "\n".join(lines[1:])
    return Incoming(phone, _maybe_ucs2(body) if ucs2 else body)


class GsmNotifier:
    """A GSM modem as a notifier (sends) and an inbox (`poll`: replies and delivery reports)."""

    name = "gsm"

    def __init__(
        self, cfg: ModemConfig, *, port: Any = None, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.cfg = cfg
        self.port: Any = port
        self.monotonic = monotonic  # for the time limits; a fuzzer's modem answers without waiting
        self.ready = False
        self.sent_at: deque[float] = deque()
        self.urcs: list[str] = []
        self._buf = b""
        self.charset = ""

    # --- bytes ---------------------------------------------------------------------------------
    def _open(self) -> None:
        if self.port is None:
            import serial

            try:
                self.port = serial.serial_for_url(self.cfg.port, baudrate=self.cfg.baudrate, timeout=0.05)
            except (serial.SerialException, OSError) as exc:
                raise ModemError(f"cannot open {self.cfg.port}: {exc}", retryable=True) from exc

    def _read_some(self) -> None:
        try:
            data = self.port.read(max(1, self.port.in_waiting))
        except OSError as exc:
            self.close()
            raise ModemError(f"serial port error: {exc}", retryable=True) from exc
        self._buf += data

    def _line(self, deadline: float) -> str | None:
        while True:
            while b"\r\n" in self._buf:
                raw, self._buf = self._buf.split(b"\r\n", 1)
                line = raw.decode("latin-1").strip()
                if line:
                    return line
            if self.monotonic() >= deadline:
                return None
            self._read_some()

    def _write(self, data: bytes) -> None:
        try:
            self.port.write(data)
            self.port.flush()
        except OSError as exc:
            self.close()
            raise ModemError(f"serial port error: {exc}", retryable=True) from exc

    def command(self, cmd: str, timeout_s: float | None = None) -> list[str]:
        """Send one AT command; its information lines (URCs set aside). Raises ModemError."""
        self._write(cmd.encode("latin-1") + b"\r")
        return self._final(cmd, self.monotonic() + (timeout_s or self.cfg.command_timeout_s))

    def _final(self, cmd: str, deadline: float) -> list[str]:
        info: list[str] = []
        while True:
            line = self._line(deadline)
            if line is None:
                raise ModemError(f"{cmd}: no answer from the modem", retryable=True)
            kind = classify(line)
            if kind == "final_ok":
                return info
            if kind == "final_error":
                raise _error(cmd, line)
            if kind == "urc":
                self.urcs.append(line)
            elif line != cmd:  # an echo, if the modem echoes
                info.append(line)

    # --- session -------------------------------------------------------------------------------
    def init(self) -> None:
        self._open()
        self._buf = b""
        self.command("AT")
        self.command("ATE0")
        self.command("AT+CMEE=1")
        pin = " ".join(self.command("AT+CPIN?"))
        if "SIM PIN" in pin:
            if not self.cfg.sim_pin:
                raise ModemError("the SIM needs its PIN and modem.sim_pin is not set", retryable=False)
            try:
                self.command(f'AT+CPIN="{self.cfg.sim_pin}"')
            except ModemError as exc:  # its text echoes the command: keep the PIN out of logs and audit
                raise ModemError(str(exc).replace(str(self.cfg.sim_pin), "****"), exc.retryable) from None
        elif "READY" not in pin:
            raise ModemError(f"SIM not ready: {pin}", retryable=False)
        self.command("AT+CMGF=1")
        self.command("AT+CNMI=2,1,0,1,0")  # +CMTI for new SMS, +CDS for delivery reports
        self.charset = ""
        self.ready = True

    def close(self) -> None:
        self.ready = False
        if self.port is not None:
            try:
                self.port.close()
            except OSError:
                pass
        self.port = None

    def _charset(self, cs: str) -> None:
        if self.charset != cs:
            self.command(f'AT+CSCS="{cs}"')
            fo = 49 if self.cfg.delivery_reports else 17  # 49: SMS-SUBMIT asking for a status report
            self.command(f"AT+CSMP={fo},167,0,{8 if cs == 'UCS2' else 0}")
            self.charset = cs

    def send(self, to: str, text: str, key: str, at: float) -> Delivery:
        while self.sent_at and self.sent_at[0] <= at - 60.0:
            self.sent_at.popleft()
        if len(self.sent_at) >= self.cfg.max_per_minute:
            return Delivery(
                False, retryable=True, detail=f"rate cap: {self.cfg.max_per_minute} SMS per minute"
            )
        try:
            if not self.ready:
                self.init()
            ucs2 = encoding_of(text) == "ucs2"
            self._charset("UCS2" if ucs2 else "GSM")
            number = ucs2_hex(to) if ucs2 else to
            mr = self._cmgs(number, ucs2_hex(text).encode() if ucs2 else gsm7_encode(text))
        except ModemError as exc:
            log.warning("modem: %s", exc)
            return Delivery(False, retryable=exc.retryable, detail=str(exc))
        self.sent_at.append(at)
        if mr is None:  # OK is what counts: the modem took the message; only its reference is lost
            return Delivery(True, detail="+CMGS without a readable reference")
        return Delivery(True, detail=f"+CMGS: {mr}", ref=str(mr))

    def _cmgs(self, number: str, body: bytes) -> int | None:
        toa = 145 if number.startswith("+") or number.startswith("002B") else 129
        self._write(f'AT+CMGS="{number}",{toa}\r'.encode("latin-1"))
        deadline = self.monotonic() + self.cfg.command_timeout_s
        while True:
            if b"> " in self._buf:
                before, self._buf = self._buf.split(b"> ", 1)
                for raw in before.split(b"\r\n"):
                    self._side_line(raw.decode("latin-1").strip())
                break
            if b"\r\n" in self._buf:
                raw, self._buf = self._buf.split(b"\r\n", 1)
                self._side_line(raw.decode("latin-1").strip())
                continue
            if self.monotonic() >= deadline:
                self._write(ESC)
                self.ready = False
                raise ModemError("AT+CMGS: no '> ' prompt from the modem", retryable=True)
            self._read_some()
        self._write(body + CTRL_Z)
        try:
            info = self._final("AT+CMGS", self.monotonic() + self.cfg.send_timeout_s)
        except ModemError:
            self.ready = False  # state unknown after a timeout: initialise again next time
            raise
        for line in info:
            if line.startswith("+CMGS:"):
                mr = line[6:].strip().split(",")[0]
                return (
                    int(mr) if mr.isascii() and mr.isdigit() and len(mr) <= 3 else None
                )  # found by nabz bench fuzz, twice
        raise ModemError("AT+CMGS: OK without +CMGS", retryable=True)

    def _side_line(self, line: str) -> None:
        """A line while waiting for the prompt: an error ends the command, a URC is kept."""
        if not line:
            return
        if classify(line) == "final_error":
            raise _error("AT+CMGS", line)
        if classify(line) == "urc":
            self.urcs.append(line)

    def poll(self, at: float) -> list[Incoming | DeliveryReport]:
        """Unsolicited results so far: read new SMS (then delete them) and delivery reports."""
        out: list[Incoming | DeliveryReport] = []
        try:
            if not self.ready:
                self.init()
            self._read_some()
            while b"\r\n" in self._buf:
                line = self._line(self.monotonic())
                if line is not None and classify(line) == "urc":
                    self.urcs.append(line)
            urcs, self.urcs = self.urcs, []
            for u in urcs:
                if u.startswith("+CDS:"):
                    cds = parse_cds(u)
                    if cds is not None:
                        st = cds.status
                        status = "delivered" if st < 32 else "pending" if st < 64 else f"failed ({st})"
                        out.append(DeliveryReport(str(cds.mr), st < 32, status))
                elif u.startswith("+CMTI:"):
                    index = _fields(u[6:])[-1]
                    lines = self.command(f"AT+CMGR={index}")
                    msg = parse_cmgr(lines, self.charset == "UCS2")
                    if msg is not None:
                        out.append(msg)
                    self.command(f"AT+CMGD={index}")
        except ModemError as exc:
            log.warning("modem poll: %s", exc)
        return out


def _error(cmd: str, line: str) -> ModemError:
    if line.startswith(("+CMS ERROR:", "+CME ERROR:")):
        tail = line.split(":", 1)[1].strip()
        try:
            code = int(tail)
        except ValueError:
            return ModemError(f"{cmd}: {line}", retryable=True)
        if line.startswith("+CME ERROR:"):
            return ModemError(f"{cmd}: {line}", retryable=code not in (10, 11, 12, 13, 15, 16))
        return ModemError(f"{cmd}: {line}", retryable=cms_retryable(code))
    return ModemError(f"{cmd}: {line}", retryable=True)
