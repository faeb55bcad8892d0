"""`/metrics` (Prometheus text format 0.0.4) and `/healthz` for a service, on the standard library.

Rules of this file:
- The service hands in two callables: `metrics()` returns `Metric`s (read at each scrape, so they
  are never stale), `health()` returns the reasons it is unhealthy (empty: healthy). Neither may
  block for long: they read counters the service keeps.
- `/healthz` answers 200 `{"ok": true}` or 503 `{"ok": false, "problems": [...]}`, so a load
  balancer, systemd watchdog script or Kubernetes probe can act on the status code alone.
- Listens on loopback by default (`host:port`); these pages say how the service is doing, not
  who the patients are, but put them behind the same network rules as the broker all the same.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["Metric", "HealthServer", "render", "parse_listen"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric family: its samples as (labels, value)."""

    name: str
    help: str
    kind: str  # counter | gauge
    samples: Sequence[tuple[dict[str, str], float]] = field(default_factory=tuple)

    @classmethod
    def one(cls, name: str, help: str, kind: str, value: float, **labels: str) -> Metric:
        return cls(name, help, kind, ((labels, value),))


def _label_value(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(x: float) -> str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


def render(metrics: Iterable[Metric]) -> str:
    """Prometheus text exposition format."""
    out: list[str] = []
    for m in metrics:
        out.append(f"# HELP {m.name} {m.help}")
        out.append(f"# TYPE {m.name} {m.kind}")
        for labels, value in m.samples:
            text = ",".join(f'{k}="{_label_value(v)}"' for k, v in sorted(labels.items()))
            out.append(f"{m.name}{{{text}}} {_number(value)}" if text else f"{m.name} {_number(value)}")
    return "\n".join(out) + "\n"


def parse_listen(text: str, offset: int = 0) -> tuple[str, int]:
    """'127.0.0.1:9108' (or ':9108', or '9108') -> (host, port + offset)."""
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"metrics_listen {text!r}: expected host:port") from None
    return host or "127.0.0.1", number + offset


class HealthServer:
    """A daemon thread serving /metrics and /healthz until `stop()`."""

    def __init__(
        self,
        listen: str,
        metrics: Callable[[], Iterable[Metric]],
        health: Callable[[], list[str]],
        *,
        port_offset: int = 0,
    ) -> None:
        host, port = parse_listen(listen, port_offset)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the standard library's name
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/metrics":
                        body = render(owner.metrics()).encode()
                        self._send(200, "text/plain; version=0.0.4; charset=utf-8", body)
                    elif path == "/healthz":
                        problems = owner.health()
                        body = json.dumps({"ok": not problems, "problems": problems}).encode()
                        self._send(503 if problems else 200, "application/json", body)
                    else:
                        self._send(404, "text/plain", b"not found: try /metrics or /healthz\n")
                except Exception as exc:  # a broken metric must say so, not hang the scraper
                    log.exception("health endpoint %s", path)
                    self._send(500, "text/plain", f"{type(exc).__name__}\n".encode())

            def _send(self, status: int, ctype: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                log.debug("health: " + format, *args)

        self.metrics = metrics
        self.health = health
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.host = host
        self._thread = threading.Thread(target=self.server.serve_forever, name="nabz-health", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        log.info("metrics on %s/metrics, health on %s/healthz", self.url, self.url)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
