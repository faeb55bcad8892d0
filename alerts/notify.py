"""Notifiers: where SMS go. Each returns a `Delivery` saying whether the message was accepted and,
if not, whether trying again later may help (a full disk, a provider's 503 or no network may; an
invalid number or a refused login will not).

- `OutboxNotifier`: one JSON line per SMS in a file, and the log (the demo's stand-in for a modem).
- `HttpSmsNotifier`: an SMS provider over HTTP, either a generic JSON webhook or a
  Twilio-compatible form API (`POST .../Messages.json`, basic auth, form fields To/From/Body).
- `alerts.gsm.GsmNotifier`: a GSM modem on a serial port.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from nabz.config import SmsHttpConfig
from nabz.secrets import create_private

__all__ = [
    "Notifier",
    "Pollable",
    "Delivery",
    "Incoming",
    "DeliveryReport",
    "OutboxNotifier",
    "HttpSmsNotifier",
    "reaches_phone",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Delivery:
    ok: bool
    retryable: bool = False
    detail: str = ""
    ref: str | None = None  # the provider's or modem's reference, for delivery reports


@dataclass(frozen=True, slots=True)
class Incoming:
    """An SMS received (e.g. a doctor's "ACK 4821")."""

    phone: str
    text: str


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    ref: str
    delivered: bool
    status: str


class Notifier(Protocol):
    """Where SMS go. A notifier without `reaches_phone = False` is taken to reach a phone."""

    name: str

    def send(self, to: str, text: str, key: str, at: float) -> Delivery:
        """Hand one SMS (one part) to the network. `key` is unique per part: an idempotency key."""
        ...


def reaches_phone(n: object) -> bool:
    """Whether a notifier delivers to a phone (`reaches_phone = False` says it does not: the
    outbox, a test's recorder standing in for it)."""
    return bool(getattr(n, "reaches_phone", True))


@runtime_checkable
class Pollable(Protocol):
    def poll(self, at: float) -> list[Incoming | DeliveryReport]: ...


class OutboxNotifier:
    """Appends one JSON line per SMS to a file and logs it. It reaches no phone: beside a modem or a
    provider it keeps a copy of what they could not send, and never counts as a delivery."""

    name = "outbox"
    reaches_phone = False

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def send(self, to: str, text: str, key: str, at: float) -> Delivery:
        record = {
            "to": to,
            "text": text,
            "key": key,
            "sent_at": datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z"),
        }
        try:
            # Patient ids and ACK codes: 0600 whatever the umask, like the stores (docs/security.md I7).
            create_private(self.path)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            return Delivery(False, retryable=True, detail=str(exc))
        log.warning("SMS to %s: %s", to, text)
        return Delivery(True, ref=key)


_RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}


class HttpSmsNotifier:
    """An HTTP SMS provider (see the module docstring)."""

    name = "http"
    reaches_phone = True

    def __init__(self, cfg: SmsHttpConfig) -> None:
        if not cfg.url:
            raise ValueError("sms_http.url is not set")
        self.cfg = cfg

    def _request(self, to: str, text: str, key: str) -> urllib.request.Request:
        c = self.cfg
        assert c.url is not None
        headers = {"Idempotency-Key": key, "User-Agent": "nabz-alerts"}
        if c.kind == "twilio":
            form = {"To": to, "Body": text}
            if c.sender:
                form["From"] = c.sender
            user = f"{c.account or ''}:{c.token or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(user).decode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            body = urllib.parse.urlencode(form).encode()
        else:
            payload = {"to": to, "text": text, "key": key}
            if c.sender:
                payload["from"] = c.sender
            if c.token:
                headers["Authorization"] = f"Bearer {c.token}"
            headers["Content-Type"] = "application/json"
            body = json.dumps(payload, ensure_ascii=False).encode()
        auth = headers.pop("Authorization", None)
        req = urllib.request.Request(c.url, data=body, headers=headers, method="POST")
        if auth is not None:  # for `sms_http.url` only: urllib drops it when it follows a redirect
            req.add_unredirected_header("Authorization", auth)
        return req

    def send(self, to: str, text: str, key: str, at: float) -> Delivery:
        try:
            with urllib.request.urlopen(self._request(to, text, key), timeout=self.cfg.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = f"HTTP {exc.code}: {exc.read()[:200].decode(errors='replace')}"
            return Delivery(False, retryable=exc.code in _RETRYABLE_HTTP, detail=detail)
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            return Delivery(False, retryable=True, detail=f"no answer: {exc}")
        ref: str | None = None
        try:
            answer = json.loads(raw or b"{}")
            if isinstance(answer, dict):
                found = answer.get("sid") or answer.get("id") or answer.get("message_id")
                ref = None if found is None else str(found)
        except ValueError:
            pass
        return Delivery(True, detail="accepted", ref=ref)
