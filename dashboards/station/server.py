"""The station's runner: uvicorn serving the app on its own thread, for `nabz station run`, the
demo and the tests (the one place that knows uvicorn)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

import uvicorn

from dashboards.station.app import StationApp, create_app
from dashboards.station.data import Records
from dashboards.station.db import StationDB
from nabz.config import Config

__all__ = ["StationServer", "StationError"]

log = logging.getLogger(__name__)


class StationError(Exception):
    """The station could not start (the port is taken, the TLS files are missing, ...)."""


class StationServer:
    def __init__(
        self,
        config: Config,
        *,
        host: str | None = None,
        port: int | None = None,
        db: StationDB | None = None,
        records: Records | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        sc = config.station
        self.host = host or sc.host
        self.port = sc.port if port is None else port  # 0: any free port (see `url` once started)
        self.app: StationApp = create_app(config, db=db, records=records, clock=clock)
        self._tls = bool(sc.tls_cert_file)
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host=self.host,
                port=self.port,
                log_level="warning",
                access_log=False,
                lifespan="on",
                ssl_certfile=sc.tls_cert_file,
                ssl_keyfile=sc.tls_key_file,
                timeout_graceful_shutdown=2,
            )
        )
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{'https' if self._tls else 'http'}://{host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> None:
        # Bind here, before anything starts: a taken port is a clear error, not a thread dying later.
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise StationError(
                f"the nurse station could not listen on {self.host}:{self.port}: {exc}"
            ) from exc
        self.port = int(sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, args=(sock,), name="nabz-station", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise StationError(f"the nurse station did not start on {self.url}; see the log")
            time.sleep(0.02)
        log.info("nurse station on %s", self.url)

    def _serve(self, sock: socket.socket) -> None:
        try:
            self._server.run(sockets=[sock])
        except SystemExit:  # uvicorn exits on a failed start; `start` reports it
            log.error("nurse station: the server stopped at start-up")

    def stop(self) -> None:
        self.app.station.hub.close_all()
        time.sleep(0.05)  # let the streams write their end
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.app.station.db.close()
