"""SMS through a GSM modem: 3GPP TS 27.005 text mode over a serial port (pyserial).

Rules of this file:
- The parsing is pure and lives in `alerts.atparse` (re-exported here); `GsmNotifier` only moves
  bytes and keeps time limits. Unsolicited results (+CMTI new SMS, +CDS
  delivery report, and vendors' own: Huawei "^RSSI: 14", Quectel "+QIND: ...", SIMCom "SMS Ready")
  may arrive between or in the middle of command responses: they are set aside; `poll` handles
  +CMTI and +CDS and drops the others.
- Sending: AT+CSCS "GSM" (or "UCS2" for text outside the GSM alphabet, e.g. Urdu; the number is
  then UCS-2 hex as well), AT+CSMP (status report requested, 24 h validity, data coding 0 or 8),
  AT+CMGS="<number>",145, wait for the "> " prompt, the text, Ctrl-Z; then "+CMGS: <mr>" and OK,
  or "+CMS ERROR: <n>". ESC aborts a message after a timeout.
- After any time-out the modem's state is unknown and its answer may still come: it is initialised
  afresh before the next command, and initialising first reads away what the line holds until it
  goes quiet (a late "+CMGS: 7 / OK" must not pass for the answer to AT, shifting every answer by
  one). An answer to AT+CPIN? without a +CPIN: line is such a shift, not a SIM fault: retryable.
- A modem that times out or cannot be initialised is down for a back-off (30 s doubling to 10 min,
  on the caller's clock): `send` refuses at once and `poll` leaves it alone. A hung modem then costs
  one time limit per back-off, not one per SMS and per poll on the dispatcher's single thread.
- Received SMS: +CMTI -> AT+CMGR, and at start and every few minutes AT+CMGL="REC UNREAD" for those
  whose +CMTI nobody heard (stored while the service was down, or lost in a reset). A message is
  deleted from the SIM only at the `poll` after the one that handed it over; one that cannot be
  parsed stays on the SIM and is logged. A reply's text may itself read "OK": in a message's text
  the final result is the last OK/ERROR line before the modem goes quiet.
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
from typing import Any

from alerts.atparse import (
    ModemError,
    ModemTimeout,
    classify,
    cms_retryable,
    error,
    fields,
    parse_cds,
    parse_cmgl,
    parse_cmgr,
    result,
    ucs2_hex,
)
from alerts.notify import Delivery, DeliveryReport, Incoming
from alerts.smstext import encoding_of, gsm7_encode
from nabz.config import ModemConfig

__all__ = [
    "GsmNotifier", "ModemError", "ModemTimeout", "classify", "parse_cds", "parse_cmgr", "parse_cmgl",
    "cms_retryable", "ucs2_hex",
]  # fmt: skip

log = logging.getLogger(__name__)

CTRL_Z = b"\x1a"
ESC = b"\x1b"
_QUIET_S = 0.25  # no byte for this long: the modem has said all it had (115200 baud: ~2,900 bytes)
_BACKOFF_MIN_S = 30.0
_BACKOFF_MAX_S = 120.0  # also how long doctors' replies may wait unread
_SWEEP_S = 300.0  # AT+CMGL for replies whose +CMTI was missed
_REREAD_S = 30.0  # after a failed AT+CMGR: the message is still unread, the next sweep this soon
_INVALID_INDEX = "+CMS ERROR: 321"  # nothing at that index (a +CMTI for a message already deleted)


class GsmNotifier:
    """A GSM modem as a notifier (sends) and an inbox (`poll`: replies and delivery reports)."""

    name = "gsm"

    def __init__(
        self,
        cfg: ModemConfig,
        *,
        port: Any = None,
        monotonic: Callable[[], float] = time.monotonic,
        backoff_min_s: float = _BACKOFF_MIN_S,
        backoff_max_s: float = _BACKOFF_MAX_S,
    ) -> None:
        self.cfg = cfg
        self.port: Any = port
        self.monotonic = monotonic  # for the time limits; a fuzzer's modem answers without waiting
        self.ready = False
        self.sent_at: deque[float] = deque()
        self.urcs: list[str] = []
        self._buf = b""
        self.charset = ""
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        # Down: on the caller's clock (`at` of send/poll), for the service's health and heartbeat.
        self.down_until: float | None = None
        self.down_reason = ""
        self._down_for = 0.0
        self._backoff_s = backoff_min_s  # the next back-off
        self._failed_in_init = False
        self._sweep_at: float | None = None  # AT+CMGL due at this time; None: at the next poll
        self._handed: set[int] = set()  # SIM indexes poll returned: deleted at the next poll

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

    def _drain(self) -> None:
        """Read what the line holds until the modem has been quiet for `_QUIET_S`.

        Answers to commands we gave up on are thrown away; URCs among them are kept. (Reading,
        rather than the port's reset_input_buffer, is what keeps a +CDS or +CMTI that came in
        with them.) A modem that never stops talking is cut off after the command time limit.
        """
        limit = self.monotonic() + self.cfg.command_timeout_s
        quiet_at = self.monotonic() + _QUIET_S
        while True:
            had = len(self._buf)
            self._read_some()
            now = self.monotonic()
            if len(self._buf) > had:
                quiet_at = now + _QUIET_S
            if now >= quiet_at or now >= limit:
                break
        stale, self._buf = self._buf, b""
        for raw in stale.split(b"\r\n"):
            line = raw.decode("latin-1").strip()
            if classify(line) == "urc":
                self.urcs.append(line)
            elif line:
                log.info("modem: a late answer thrown away: %r", line[:80])

    def command(
        self, cmd: str, timeout_s: float | None = None, *, text_after: str | None = None
    ) -> list[str]:
        """Send one AT command; its information lines (URCs set aside). Raises ModemError.

        `text_after`: the header after which lines are message text (see `_final`).
        """
        self._write(cmd.encode("latin-1") + b"\r")
        return self._final(cmd, self.monotonic() + (timeout_s or self.cfg.command_timeout_s), text_after)

    def _final(self, cmd: str, deadline: float, text_after: str | None = None) -> list[str]:
        """The information lines up to the final result; a time-out leaves the modem to be initialised.

        After a `text_after` header (+CMGR:, +CMGL:) the lines are an SMS's text, and a doctor may
        well write "OK" on a line of his own: there an OK or ERROR line is the final result only
        when the modem says nothing more (but URCs) for `_QUIET_S`; text after it makes it text.
        """
        info: list[str] = []
        in_text = False
        pending: str | None = None  # a final-looking line inside message text
        quiet_at = deadline
        while True:
            line = self._line(deadline if pending is None else min(deadline, quiet_at))
            if line is None:
                if pending is not None:
                    return result(cmd, pending, info)
                self.ready = False
                raise ModemTimeout(f"{cmd}: no answer from the modem")
            kind = classify(line)
            if kind == "urc":
                self.urcs.append(line)
                continue
            if kind != "info" and not in_text:
                return result(cmd, line, info)
            if pending is not None:
                info.append(pending)
                pending = None
            if kind != "info":
                pending, quiet_at = line, self.monotonic() + _QUIET_S
            elif text_after is not None and line.startswith(text_after):
                in_text = True
                info.append(line)
            elif in_text or line != cmd:  # an echo, if the modem echoes
                info.append(line)

    # --- session -------------------------------------------------------------------------------
    def init(self) -> None:
        self._open()
        self._drain()
        self.command("AT")
        self.command("ATE0")
        self.command("AT+CMEE=1")
        answer = self.command("AT+CPIN?")
        pin = " ".join(line for line in answer if line.startswith("+CPIN:"))
        if not pin:  # another command's answer (one that came late): the line is out of step
            raise ModemError(f"AT+CPIN?: no +CPIN in the answer {answer!r}"[:200], retryable=True)
        state = pin.split(":", 1)[1].strip().upper()
        if state == "SIM PIN":
            if not self.cfg.sim_pin:
                raise ModemError("the SIM needs its PIN and modem.sim_pin is not set", retryable=False)
            try:
                self.command(f'AT+CPIN="{self.cfg.sim_pin}"')
            except ModemError as exc:  # its text echoes the command: keep the PIN out of logs and audit
                raise ModemError(str(exc).replace(str(self.cfg.sim_pin), "****"), exc.retryable) from None
        elif "PUK" in state or state.startswith("PH-"):  # blocked SIM, or one locked to a network
            raise ModemError(f"the SIM needs a person: {pin}", retryable=False)
        elif state != "READY":  # "NOT READY" (and "NOT INSERTED") for a moment after a reset: retryable
            raise ModemError(f"SIM not ready: {pin}", retryable=True)
        self.command("AT+CMGF=1")
        self.command("AT+CNMI=2,1,0,1,0")  # +CMTI for new SMS, +CDS for delivery reports
        self.charset = ""
        self._sweep_at = None  # what came while nobody listened: at the next poll
        self.ready = True

    def close(self) -> None:
        self.ready = False
        if self.port is not None:
            try:
                self.port.close()
            except OSError:
                pass
        self.port = None

    # --- back-off ------------------------------------------------------------------------------
    def is_down(self, now: float) -> bool:
        """Whether the modem is backing off at `now` (`send` refuses, `poll` leaves it alone)."""
        if self.down_until is None:
            return False
        # The caller's clock is wall time: stepped back (NTP at boot), it must not hold the modem
        # down for hours.
        self.down_until = min(self.down_until, now + self._down_for)
        return now < self.down_until

    def _back_off(self, now: float, exc: ModemError, in_init: bool) -> None:
        self._down_for = self._backoff_s
        self.down_until = now + self._down_for
        self.down_reason = str(exc)
        self._failed_in_init = in_init
        self._backoff_s = min(self._backoff_s * 2.0, self.backoff_max_s)
        log.warning("modem: left alone for %.0f s after: %s", self._down_for, exc)

    def _ready(self) -> None:
        """Initialise if needed; the back-off ends when the step that failed works again.

        A modem that answers AT but swallows every SMS must not be tried at the shortest interval
        for ever: a successful initialisation resets the back-off only when initialising failed.
        """
        if self.ready:
            return
        self.init()
        self.down_until = None
        if self._failed_in_init:
            self._backoff_s = self.backoff_min_s
            self._failed_in_init = False

    # --- sending -------------------------------------------------------------------------------
    def _charset(self, cs: str) -> None:
        if self.charset != cs:
            self.command(f'AT+CSCS="{cs}"')
            fo = 49 if self.cfg.delivery_reports else 17  # 49: SMS-SUBMIT asking for a status report
            self.command(f"AT+CSMP={fo},167,0,{8 if cs == 'UCS2' else 0}")
            self.charset = cs

    def send(self, to: str, text: str, key: str, at: float) -> Delivery:
        if self.is_down(at) and self.down_until is not None:
            # Always worth trying again: whatever failed may have passed by the end of the back-off
            # (a modem that reset answers "SIM not ready" for a few seconds), and an SMS given up
            # here would be lost for a failure nobody has looked at again.
            return Delivery(
                False,
                retryable=True,
                detail=f"modem backing off for {self.down_until - at:.0f} s after: {self.down_reason}",
            )
        while self.sent_at and self.sent_at[0] <= at - 60.0:
            self.sent_at.popleft()
        if len(self.sent_at) >= self.cfg.max_per_minute:
            return Delivery(
                False, retryable=True, detail=f"rate cap: {self.cfg.max_per_minute} SMS per minute"
            )
        initialising = not self.ready
        try:
            self._ready()
            initialising = False
            ucs2 = encoding_of(text) == "ucs2"
            self._charset("UCS2" if ucs2 else "GSM")
            number = ucs2_hex(to) if ucs2 else to
            mr = self._cmgs(number, ucs2_hex(text).encode() if ucs2 else gsm7_encode(text))
        except ModemError as exc:
            log.warning("modem: %s", exc)
            if initialising or isinstance(exc, ModemTimeout):
                self._back_off(at, exc, initialising)
            return Delivery(False, retryable=exc.retryable, detail=str(exc))
        self.sent_at.append(at)
        self._backoff_s, self._failed_in_init = self.backoff_min_s, False
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
                raise ModemTimeout("AT+CMGS: no '> ' prompt from the modem")
            self._read_some()
        self._write(body + CTRL_Z)
        info = self._final("AT+CMGS", self.monotonic() + self.cfg.send_timeout_s)
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
            raise error("AT+CMGS", line)
        if classify(line) == "urc":
            self.urcs.append(line)

    # --- receiving -----------------------------------------------------------------------------
    def poll(self, at: float) -> list[Incoming | DeliveryReport]:
        """Unsolicited results so far (delivery reports, new SMS) and, every few minutes, unread SMS.

        What this returns is handed over; its messages are deleted from the SIM at the next call.
        """
        out: list[Incoming | DeliveryReport] = []
        if self.is_down(at):
            return out
        initialising = not self.ready
        urcs: list[str] = []
        try:
            self._ready()
            initialising = False
            self._delete_handed()
            self._read_some()
            while b"\r\n" in self._buf:
                line = self._line(self.monotonic())
                if line is not None and classify(line) == "urc":
                    self.urcs.append(line)
            if self._sweep_at is None or at >= self._sweep_at:
                self._sweep_at = at + _SWEEP_S  # before: a listing that fails waits its turn too
                out += self._list_unread()
            urcs, self.urcs = self.urcs, []
            while urcs:
                u = urcs[0]
                if u.startswith("+CDS:"):
                    cds = parse_cds(u)
                    if cds is not None:
                        st = cds.status
                        status = "delivered" if st < 32 else "pending" if st < 64 else f"failed ({st})"
                        out.append(DeliveryReport(str(cds.mr), st < 32, status))
                elif u.startswith("+CMTI:"):
                    msg = self._read_new(fields(u[6:])[-1], at)
                    if msg is not None:
                        out.append(msg)
                urcs.pop(0)
        except ModemError as exc:
            log.warning("modem poll: %s", exc)
            self.urcs[:0] = urcs  # not handled yet: the next poll takes them up
            if initialising or isinstance(exc, ModemTimeout):
                self._back_off(at, exc, initialising)
        return out

    def _read_new(self, index: str, at: float) -> Incoming | None:
        """AT+CMGR of a +CMTI's index. An error leaves the message unread on the SIM for a sweep."""
        if not (index.isascii() and index.isdigit() and len(index) <= 5):
            log.warning("modem: +CMTI without a readable index: %r", index)
            return None
        i = int(index)
        if i in self._handed:  # already read (by a sweep), not deleted yet
            return None
        try:
            lines = self.command(f"AT+CMGR={i}", text_after="+CMGR:")
        except ModemTimeout:
            raise
        except ModemError as exc:
            if not str(exc).endswith(_INVALID_INDEX):
                log.warning("modem: %s; left unread on the SIM for the next listing", exc)
                if self._sweep_at is not None:
                    self._sweep_at = min(self._sweep_at, at + _REREAD_S)
            return None
        msg = parse_cmgr(lines, self.charset == "UCS2")
        if msg is None:
            log.warning("modem: SMS %d could not be parsed, kept on the SIM: %r", i, lines[:4])
            return None
        self._handed.add(i)
        return msg

    def _list_unread(self) -> list[Incoming]:
        """AT+CMGL="REC UNREAD": replies whose +CMTI nobody heard. A refusal waits for the next sweep."""
        stat = ucs2_hex("REC UNREAD") if self.charset == "UCS2" else "REC UNREAD"  # strings follow +CSCS
        try:
            lines = self.command(f'AT+CMGL="{stat}"', text_after="+CMGL:")
        except ModemTimeout:
            raise
        except ModemError as exc:
            log.warning("modem: %s", exc)
            return []
        out: list[Incoming] = []
        for i, msg in parse_cmgl(lines, self.charset == "UCS2"):
            if i in self._handed:
                continue
            if msg is None:
                log.warning("modem: SMS %d could not be parsed, kept on the SIM", i)
                continue
            self._handed.add(i)
            out.append(msg)
        return out

    def _delete_handed(self) -> None:
        for i in sorted(self._handed):
            try:
                self.command(f"AT+CMGD={i}")
            except ModemTimeout:
                raise
            except ModemError as exc:  # read already: it stays on the SIM, never handed over twice
                log.warning("modem: %s; SMS %d stays on the SIM", exc, i)
            self._handed.discard(i)
