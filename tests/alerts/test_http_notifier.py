"""The HTTP SMS notifier against a local HTTP server: a JSON webhook and a Twilio-compatible form API."""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from alerts.notify import HttpSmsNotifier
from nabz.broker import free_port
from nabz.config import SmsHttpConfig
from tests.alerts.helpers import T0


class Provider:
    """A local SMS provider: records requests, answers with the next scripted status."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status = outer.statuses.pop(0) if outer.statuses else 201
                answer = json.dumps({"sid": f"SM{len(outer.requests):04d}", "status": "queued"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def provider() -> Iterator[Provider]:
    p = Provider()
    yield p
    p.server.shutdown()
    p.server.server_close()


def test_json_webhook_with_bearer_token_and_idempotency_key(provider: Provider) -> None:
    n = HttpSmsNotifier(SmsHttpConfig(url=f"{provider.url}/sms", token="s3cret", sender="NABZ"))
    d = n.send("+923001234567", "NABZ HIGH p-0002: آکسیجن کم 84%", "nabz-7-1", T0)
    assert d.ok and d.ref == "SM0001"
    (req,) = provider.requests
    assert req["path"] == "/sms" and req["headers"]["Authorization"] == "Bearer s3cret"
    assert req["headers"]["Idempotency-Key"] == "nabz-7-1"
    assert json.loads(req["body"]) == {"to": "+923001234567", "text": "NABZ HIGH p-0002: آکسیجن کم 84%",
                                       "key": "nabz-7-1", "from": "NABZ"}  # fmt: skip


def test_twilio_compatible_form_with_basic_auth(provider: Provider) -> None:
    url = f"{provider.url}/2010-04-01/Accounts/AC123/Messages.json"
    n = HttpSmsNotifier(
        SmsHttpConfig(url=url, kind="twilio", account="AC123", token="tok", sender="+15005550006")
    )
    assert n.send("+923001234567", "hello", "k", T0).ok
    (req,) = provider.requests
    assert req["headers"]["Authorization"] == "Basic " + base64.b64encode(b"AC123:tok").decode()
    assert urllib.parse.parse_qs(req["body"].decode()) == {
        "To": ["+923001234567"], "Body": ["hello"], "From": ["+15005550006"]
    }  # fmt: skip


def test_server_trouble_is_retryable_a_refusal_is_not(provider: Provider) -> None:
    n = HttpSmsNotifier(SmsHttpConfig(url=provider.url))
    provider.statuses = [503, 429, 400, 401]
    assert [(d.ok, d.retryable) for d in (n.send("+92300", "x", "k", T0) for _ in range(4))] == [
        (False, True), (False, True), (False, False), (False, False),
    ]  # fmt: skip
    gone = HttpSmsNotifier(SmsHttpConfig(url="http://127.0.0.1:9/", timeout_s=1.0))
    d = gone.send("+92300", "x", "k", T0)
    assert (d.ok, d.retryable) == (False, True)
