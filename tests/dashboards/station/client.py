"""A small HTTP client for the station's tests: cookies, same-origin headers, CSRF, event streams."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from typing import Any

__all__ = ["Agent", "Events"]


class Agent:
    """A cookie-keeping HTTP client that sends same-origin headers like a browser's page would."""

    def __init__(self, base: str, origin: str | None = None) -> None:
        self.base = base
        self.origin = origin or base  # what a page behind a proxy would send instead
        self.jar = CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.csrf = ""

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                timeout: float = 10) -> tuple[int, dict[str, str], str, str]:  # fmt: skip
        h = {"Origin": self.origin, **(headers or {})}
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=h)
        try:
            with self.opener.open(req, timeout=timeout) as r:
                text = r.read().decode()
                return r.status, dict(r.headers), text, r.url
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read().decode(), e.url

    def login(self, user: str, password: str) -> tuple[int, dict[str, str], str, str]:
        form = urllib.parse.urlencode({"username": user, "password": password, "next": "/"}).encode()
        got = self.request("POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"})
        m = re.search(r'name="csrf" content="([^"]+)"', got[2])
        self.csrf = m.group(1) if m else ""
        return got

    def post_json(
        self, path: str, payload: dict[str, Any] | None = None, csrf: bool = True
    ) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json", **({"X-CSRF-Token": self.csrf} if csrf else {})}
        status, _, text, _ = self.request("POST", path, json.dumps(payload or {}).encode(), headers)
        return status, json.loads(text) if text.startswith("{") else text


class Events:
    """Reads a text/event-stream response event by event."""

    def __init__(self, agent: Agent, path: str) -> None:
        req = urllib.request.Request(agent.base + path, headers={"Accept": "text/event-stream"})
        self.resp = agent.opener.open(req, timeout=5)
        assert self.resp.headers["content-type"].startswith("text/event-stream")

    def next(self) -> tuple[str, Any]:
        event, data = "", ""
        while True:
            line = self.resp.readline().decode()
            if line == "":
                return "", None  # the server ended the stream
            line = line.rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and event:
                return event, json.loads(data)

    def until(self, event: str, pred: Any = lambda d: True, limit: int = 50) -> Any:
        for _ in range(limit):
            e, d = self.next()
            if e == event and pred(d):
                return d
            if e == "":
                raise AssertionError(f"stream ended waiting for {event}")
        raise AssertionError(f"no {event} in {limit} events")
