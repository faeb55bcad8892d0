"""A scripted HTTP server on a free loopback port, recording every request (tests only).

It stands in for InfluxDB 2 where only the request shapes can be checked: no InfluxDB 2 server can
run here (docs: REALPARTS). Responses are scripted per (method, path) as a list consumed in order;
the last one repeats.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Stub:
    routes: dict[tuple[str, str], list[tuple[int, Any]]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                u = urlparse(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stub.requests.append(
                    Request(self.command, u.path, parse_qs(u.query), dict(self.headers.items()), body)
                )
                script = stub.routes.get((self.command, u.path)) or [(404, {"message": "no route"})]
                status, payload = script.pop(0) if len(script) > 1 else script[0]
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _serve

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
