"""The modem's side of TS 27.005/27.007 text mode, read without I/O: which lines are final results,
unsolicited results or text, what an error means for a retry, and the fields of +CDS, +CMGR and
+CMGL answers (alerts.gsm moves the bytes).

Rules of this file:
- Pure functions of the lines a modem sent; nothing here reads a port or a clock.
- Unsolicited results (+CMTI new SMS, +CDS delivery report, and vendors' own: Huawei "^RSSI: 14",
  Quectel "+QIND: ...", SIMCom "SMS Ready") are named as such wherever they arrive, so a reply's
  text never includes one and one never passes for an answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from alerts.notify import Incoming

__all__ = [
    "ModemError", "ModemTimeout", "classify", "parse_cds", "parse_cmgr", "parse_cmgl", "cms_retryable",
    "ucs2_hex", "result", "error", "fields",
]  # fmt: skip

_NOT_RETRYABLE_CMS = {301, 303, 304, 305, 310, 311, 312, 313, 315, 316, 317, 318, 321, 330}
# Standard URCs, then vendors' (Huawei's all begin with "^"; Quectel, SIMCom at boot). "+CPIN:" is
# not here although SIMCom also sends it unasked: it is the answer AT+CPIN? must find.
_URC_PREFIXES = (
    "+CMTI:", "+CDS:", "+CDSI:", "RING", "+CREG:", "+CMT:", "+CGREG:", "+CEREG:", "+CIEV:", "+CUSD:",
    "^", "+QIND:", "+QUSIM:", "RDY", "SMS Ready", "Call Ready", "+CFUN:", "+PACSP",
)  # fmt: skip


class ModemError(Exception):
    def __init__(self, detail: str, retryable: bool) -> None:
        super().__init__(detail)
        self.retryable = retryable


class ModemTimeout(ModemError):
    """No (complete) answer in time: the modem may be hung, or answer later than we waited."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, retryable=True)


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


def fields(text: str) -> list[str]:
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
    f = fields(line[5:])
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


def _incoming(f: list[str], phone_at: int, body: list[str], ucs2: bool) -> Incoming | None:
    if len(f) <= phone_at or not f[phone_at]:
        return None
    phone = _maybe_ucs2(f[phone_at]) if ucs2 else f[phone_at]
    # A vendor's unsolicited line can land inside the text (Huawei's ^RSSI every few seconds): it
    # is not the doctor's. The cost: a text line that itself begins like one ("RING...") is lost.
    text = "\n".join(line for line in body if classify(line) != "urc")
    return Incoming(phone, _maybe_ucs2(text) if ucs2 else text)


def parse_cmgr(lines: list[str], ucs2: bool = False) -> Incoming | None:
    """`+CMGR: "REC UNREAD","+92300...",,"26/11/25,14:00:00+20"` then the text line(s).

    Lines before the header are not the message (unsolicited lines a modem put first); None when
    no header with a number is found: the caller keeps such a message on the SIM.
    """
    for i, line in enumerate(lines):
        if line.startswith("+CMGR:"):
            return _incoming(fields(line[6:]), 1, lines[i + 1 :], ucs2)
    return None


def parse_cmgl(lines: list[str], ucs2: bool = False) -> list[tuple[int, Incoming | None]]:
    """`+CMGL: <index>,"REC UNREAD","+92300...",,"<scts>"` then its text, for each message listed.

    (index, None) for a header without a number (kept on the SIM by the caller); a header without
    a readable index is left out, as nothing could read or delete that message by its index.
    """
    heads = [i for i, line in enumerate(lines) if line.startswith("+CMGL:")]
    out: list[tuple[int, Incoming | None]] = []
    for k, i in enumerate(heads):
        f = fields(lines[i][6:])
        index = f[0]
        if not (index.isascii() and index.isdigit() and len(index) <= 5):
            continue
        end = heads[k + 1] if k + 1 < len(heads) else len(lines)
        out.append((int(index), _incoming(f, 2, lines[i + 1 : end], ucs2)))
    return out


def result(cmd: str, line: str, info: list[str]) -> list[str]:
    if classify(line) == "final_ok":
        return info
    raise error(cmd, line)


def error(cmd: str, line: str) -> ModemError:
    if line.startswith(("+CMS ERROR:", "+CME ERROR:")):
        tail = line.split(":", 1)[1].strip()
        try:
            code = int(tail)
        except ValueError:
            return ModemError(f"{cmd}: {line}", retryable=True)
        if line.startswith("+CME ERROR:"):
            # 10 (no SIM) and 13 (SIM failure) are also what a modem says for a moment after it resets
            return ModemError(f"{cmd}: {line}", retryable=code not in (11, 12, 15, 16))
        return ModemError(f"{cmd}: {line}", retryable=cms_retryable(code))
    return ModemError(f"{cmd}: {line}", retryable=True)
