"""SMS texts: short, priority first, the patient as configured, values, local time, the ack code.

Rules of this file:
- Pure: alarms in, strings out.
- A text is GSM-7 if every character is in the GSM 03.38 default alphabet, else UCS-2. Extension
  characters (`{}[]~|^€\\`) and "Ξ" force UCS-2: in text mode their bytes (ESC 0x1B, 0x1A) would
  abort or end the message at the modem. One SMS holds 160 GSM-7 or 70 UCS-2 characters;
  a longer text is split at word boundaries into parts marked "(1/2)", each within the limit
  (text mode cannot send concatenated SMS, which need PDU mode and a user-data header).
- No personal data beyond the patient label the site configured (default: the patient id).
- Urdu texts (a person's `language = "ur"`) keep numbers, units and "ACK" in Latin script so the
  reply is the same for everyone.
- Data that came late (a gateway's spool after an outage) raise alarms minutes after the event:
  the alarm's message says so (`late_note`, written by alerts.engine), and then the SMS gives the
  start to the second and, in Urdu too, how late the data were.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from alerts.rules import UNCALIBRATED

__all__ = [
    "Line", "compose", "encoding_of", "gsm7_length", "split", "gsm7_encode", "gsm7_decode", "SMS_LIMIT",
    "late_note",
]  # fmt: skip

_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_EXT = {
    "\f": 0x0A,
    "^": 0x14,
    "{": 0x28,
    "}": 0x29,
    "\\": 0x2F,
    "[": 0x3C,
    "~": 0x3D,
    "]": 0x3E,
    "|": 0x40,
    "€": 0x65,
}
_BASIC_CODE = {c: i for i, c in enumerate(_BASIC) if c != "\x1b"}
_EXT_CHAR = {v: k for k, v in _EXT.items()}
SMS_LIMIT = {"gsm7": 160, "ucs2": 70}

_PRIORITY_WORD = {
    "en": {"high": "HIGH", "medium": "MEDIUM", "low": "LOW"},
    "ur": {"high": "فوری", "medium": "جلد", "low": "اطلاع"},
}
_KIND_UR = {
    "spo2_low": "آکسیجن کم", "hr_high": "دل کی دھڑکن تیز", "hr_low": "دل کی دھڑکن سست",
    "asystole": "دل کی دھڑکن بند", "pause": "دھڑکن میں وقفہ", "af_suspected": "بے ترتیب دھڑکن",
    "news2": "NEWS2 سکور زیادہ", "sensor_off": "آکسی میٹر اترا ہوا", "leads_off": "ECG لیڈز اتری ہوئی",
    "ecg_poor_signal": "ECG سگنل خراب", "ppg_poor_signal": "آکسی میٹر سگنل خراب",
    "stale_data": "ڈیٹا بند", "gateway_offline": "گیٹ وے بند", "device_offline": "آلہ منقطع",
    "battery_low": "بیٹری کم", "data_gap": "ڈیٹا ضائع", "gateway_data_gap": "ڈیٹا ضائع",
    "device_fault": "آلے کا سینسر خراب",
}  # fmt: skip
_LATE_UR = " (ڈیٹا {} دیر سے)"  # "(data {} late)": UCS-2 leaves 70 characters; the start follows
# what `late_note` writes; group 1: it is the clearing data's, 2: their local time, 3: how late
_LATE = re.compile(r"(; ended)? \(data from (\d\d:\d\d:\d\d), ([0-9.]+ (?:s|min|h)) late\)")
_REASON = {
    "en": {"repeat": "REPEAT ", "escalation": "ESCALATED ", "worse": "WORSE ", "cleared": "CLEARED "},
    "ur": {"repeat": "دوبارہ ", "escalation": "آگے بھیجا ", "worse": "بدتر ", "cleared": "ٹھیک "},
}


@dataclass(frozen=True, slots=True)
class Line:
    """One alarm's part of an SMS."""

    patient_label: str
    kind: str
    priority: str
    message: str
    since: float  # condition start, epoch s
    ack_code: str
    reason: str  # new, worse, escalation, repeat, cleared
    value: float | None = None
    unit: str = ""


def _hhmm(t: float, tz: str, seconds: bool = False) -> str:
    local = datetime.fromtimestamp(t, UTC).astimezone(ZoneInfo(tz))
    return f"{local:%H:%M:%S} {local.tzname()}" if seconds else f"{local:%H:%M} {local.tzname()}"


def _late_for(late_s: float) -> str:
    if late_s < 90.0:
        return f"{late_s:.0f} s"
    if late_s < 90 * 60.0:
        return f"{late_s / 60.0:.0f} min"
    return f"{late_s / 3600.0:.1f} h"


def late_note(data_t: float, late_s: float, tz: str = "Asia/Karachi", *, ended: bool = False) -> str:
    """What an alarm's message adds when the data that raised or worsened it are `late_s` behind
    the service's clock: " (data from 14:06:46, 4 min late)", the data's local time to the second;
    with `ended`, for the data that cleared it: "; ended (data from 14:08:10, 3 min late)"."""
    local = datetime.fromtimestamp(data_t, UTC).astimezone(ZoneInfo(tz))
    return f"{'; ended' if ended else ''} (data from {local:%H:%M:%S}, {_late_for(late_s)} late)"


def _late_ur(message: str, cleared: bool) -> str:
    """The late-data note of `message` in Urdu: of the data that cleared it for an all-clear, else
    of those that raised it; "" if the data were not late."""
    for m in _LATE.finditer(message):
        if bool(m.group(1)) == cleared:
            return _LATE_UR.format(m.group(3))
    return ""


def compose(lines: list[Line], tz: str = "Asia/Karachi", language: str = "en") -> str:
    """The text of one SMS about one patient's alarms (highest priority first)."""
    lang = language if language in _PRIORITY_WORD else "en"
    rank = {"high": 0, "medium": 1, "low": 2}
    ordered = sorted(lines, key=lambda x: (x.reason == "cleared", rank.get(x.priority, 3), x.since))
    head = ordered[0]
    words = _PRIORITY_WORD[lang]
    label = head.patient_label
    parts: list[str] = []
    for i, x in enumerate(ordered):
        what = x.message
        if lang == "ur":  # short: UCS-2 leaves 70 characters
            what = _KIND_UR.get(x.kind, x.kind) + (
                "" if x.value is None else f" {x.value:.0f}{x.unit.strip()}"
            )
            if UNCALIBRATED in x.message:  # the server's PPG estimate, never calibrated here
                what += " (غیر کیلیبریٹڈ)"
            what += _late_ur(x.message, x.reason == "cleared")
        tag = _REASON[lang].get(x.reason, "")
        if x.reason == "cleared":
            parts.append(f"{tag}{what}")
            continue
        prio = "" if i == 0 else f"{words.get(x.priority, x.priority)} "
        # raised on late data: when it began, to the second, not just "14:06" beside "4 min late"
        when = _hhmm(x.since, tz, seconds=_LATE.search(x.message) is not None)
        since = when if lang == "ur" else f"since {when}"
        parts.append(f"{tag}{prio}{what}, {since}. ACK {x.ack_code}")
    if head.reason == "cleared":
        return f"NABZ {label}: " + "; ".join(parts)
    return f"NABZ {words.get(head.priority, head.priority)} {label}: " + "; ".join(parts)


_TEXT_MODE_SAFE = frozenset(_BASIC_CODE) - {"Ξ"}


def encoding_of(text: str) -> str:
    return "gsm7" if all(c in _TEXT_MODE_SAFE for c in text) else "ucs2"


def gsm7_length(text: str) -> int:
    return sum(2 if c in _EXT else 1 for c in text)


def _length(text: str, enc: str) -> int:
    return gsm7_length(text) if enc == "gsm7" else len(text.encode("utf-16-be")) // 2


def split(text: str) -> tuple[str, list[str]]:
    """(encoding, parts): the text as SMS that each fit one message."""
    enc = encoding_of(text)
    limit = SMS_LIMIT[enc]
    if _length(text, enc) <= limit:
        return enc, [text]
    for total in range(2, 100):
        parts = _pack(text.split(), enc, limit - len(f" ({total}/{total})"))
        if len(parts) <= total:
            n = len(parts)
            return enc, [f"{p} ({i}/{n})" for i, p in enumerate(parts, start=1)]
    raise ValueError("text too long for SMS")


def _pack(words: list[str], enc: str, room: int) -> list[str]:
    parts: list[str] = []
    cur = ""
    for w in words:
        while _length(w, enc) > room:  # a word longer than a part: cut it
            head = w
            while _length(head, enc) > room - (_length(cur, enc) + 1 if cur else 0):
                head = head[:-1]
            if not head:
                parts.append(cur)
                cur = ""
                continue
            parts.append(f"{cur} {head}" if cur else head)
            cur, w = "", w[len(head) :]
        cand = f"{cur} {w}" if cur else w
        if _length(cand, enc) <= room:
            cur = cand
        else:
            parts.append(cur)
            cur = w
    if cur:
        parts.append(cur)
    return parts


def gsm7_encode(text: str) -> bytes:
    """GSM 03.38 septets, one per byte (as a modem's "GSM" character set takes them)."""
    out = bytearray()
    for c in text:
        if c in _EXT:
            out += bytes((0x1B, _EXT[c]))
        elif c in _BASIC_CODE:
            out.append(_BASIC_CODE[c])
        else:
            out.append(_BASIC_CODE["?"])
    return bytes(out)


def gsm7_decode(data: bytes) -> str:
    out: list[str] = []
    esc = False
    for b in data:
        if esc:
            out.append(_EXT_CHAR.get(b, " "))
            esc = False
        elif b == 0x1B:
            esc = True
        elif b < len(_BASIC):
            out.append(_BASIC[b])
    return "".join(out)
