"""The InfluxDB sink: line protocol through influxdb-client's write API (`/api/v2/write`).

Wraps influxdb-client once, behind `SinkError`.

Rules of this file:
- `write` returns only when the lines are durable: in the database, or (when it is down) in the
  disk spill (`ingest.spill`). The caller acknowledges MQTT messages after that, so a database
  outage moves data from the broker to the spill instead of stopping ingest, and nothing is lost.
- Lines go in chunks of `batch_size` (5,000 by default). Timeouts, connection errors, 5xx and 429
  are retried with exponential backoff (`retries` times); 401/403/404 (wrong token, org or bucket)
  are treated like an outage: spilled and retried later, because the data is good.
- While the spill holds anything, new lines go straight to it (no waiting on a dead server), and a
  background thread replays it oldest first as soon as a probe write succeeds.
- A chunk the server refuses as malformed (400, 422) cannot succeed by retrying: it goes to
  ``<spill_dir>/rejected.lp`` with the server's reason and is counted, so it never blocks ingest.
- Points are idempotent: a redelivered message rewrites the same series and timestamps.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from influxdb_client import InfluxDBClient  # type: ignore[attr-defined]
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from ingest.spill import Spill
from nabz.config import InfluxConfig

__all__ = ["InfluxSink", "SinkError"]

log = logging.getLogger(__name__)

_OUTAGE_STATUS = {401, 403, 404, 408, 429}


class SinkError(Exception):
    """Lines could be put neither in the database nor in the spill (e.g. the disk is full)."""


class _Down(Exception):
    """The database did not take a chunk (after retries); the data itself is fine."""


class _Malformed(Exception):
    """The database refused a chunk as malformed; retrying cannot help."""


class InfluxSink:
    def __init__(
        self,
        config: InfluxConfig,
        *,
        retries: int = 3,
        backoff_s: float = 0.2,
        spill_dir: str | Path | None = None,
        replay_every_s: float = 2.0,
    ) -> None:
        if not config.url:
            raise SinkError("no InfluxDB URL configured (influx.url)")
        self.config = config
        self.retries = retries
        self.backoff_s = backoff_s
        self.client = InfluxDBClient(
            url=config.url, token=config.token or "", org=config.org, timeout=config.timeout_ms
        )
        self.api = self.client.write_api(write_options=SYNCHRONOUS)
        self.spill = Spill(spill_dir or config.spill_dir or "var/influx-spill")
        self.points_written = 0
        self.spilled_lines = 0
        self.rejected_lines = 0
        self.replay_every_s = replay_every_s
        self._stop = threading.Event()
        self._replayer: threading.Thread | None = None
        if self.spill:
            log.warning("InfluxDB spill holds %d lines from before; replaying", self.spill.pending_lines)
            self._start_replayer()

    # --- the caller's path -----------------------------------------------------------------------
    def write(self, lines: list[str]) -> None:
        """Make `lines` durable (database or spill); raises SinkError only if both fail."""
        size = max(1, self.config.batch_size)
        for start in range(0, len(lines), size):
            chunk = lines[start : start + size]
            if self.spill:  # the database is known to be down: do not wait on it
                self._to_spill(chunk)
                continue
            try:
                self._write_chunk(chunk, self.retries)
            except _Down as exc:
                log.error("InfluxDB down (%s): spilling to %s until it is back", exc, self.spill.dir)
                self._to_spill(chunk)
                self._start_replayer()
            except _Malformed as exc:
                self._reject(chunk, str(exc))

    def _to_spill(self, chunk: list[str]) -> None:
        try:
            self.spill.append(chunk)
        except OSError as exc:
            raise SinkError(f"InfluxDB is down and the spill failed: {exc}") from exc
        self.spilled_lines += len(chunk)

    def _reject(self, chunk: list[str], why: str) -> None:
        log.error("InfluxDB refused %d lines as malformed: %s (kept in rejected.lp)", len(chunk), why)
        with (self.spill.dir / "rejected.lp").open("a", encoding="utf-8") as f:
            f.write(f"# {time.time():.3f} {why}\n" + "\n".join(chunk) + "\n")
        self.rejected_lines += len(chunk)

    def _write_chunk(self, chunk: list[str], retries: int) -> None:
        delay = self.backoff_s
        for attempt in range(retries + 1):
            try:
                self.api.write(bucket=self.config.bucket, org=self.config.org, record="\n".join(chunk))
                self.points_written += len(chunk)
                return
            except ApiException as exc:
                status = exc.status
                why = f"{status} {exc.reason}"
                if status in (400, 413, 422):
                    raise _Malformed(f"{why}: {str(exc.body)[:300]}") from exc
                if status is not None and status < 500 and status not in _OUTAGE_STATUS:
                    raise _Malformed(why) from exc
            except Exception as exc:  # urllib3 connection errors and timeouts come in many types
                why = f"{type(exc).__name__}: {exc}"
            if attempt == retries:
                raise _Down(why)
            log.warning("InfluxDB write failed (%s); retry %d in %.1f s", why, attempt + 1, delay)
            if self._stop.wait(delay):
                raise _Down("sink closing")
            delay = min(delay * 2, 5.0)

    # --- replay ----------------------------------------------------------------------------------
    def _start_replayer(self) -> None:
        if self._replayer is not None and self._replayer.is_alive():
            return
        self._replayer = threading.Thread(target=self._replay_loop, name="nabz-influx-replay", daemon=True)
        self._replayer.start()

    def _replay_loop(self) -> None:
        while self.spill and not self._stop.wait(self.replay_every_s):
            self.replay_once()

    def replay_once(self) -> int:
        """Replay the spill oldest first until it is empty or a write fails; returns lines written."""

        def write(chunk: list[str]) -> None:
            try:
                self._write_chunk(chunk, retries=0)
            except _Malformed as exc:
                self._reject(chunk, str(exc))

        try:
            n = self.spill.replay(write)
        except _Down as exc:
            log.info("InfluxDB still down (%s); %d lines wait in the spill", exc, self.spill.pending_lines)
            return 0
        if n:
            log.warning("InfluxDB is back: replayed %d spilled lines", n)
        return n

    def close(self) -> None:
        self._stop.set()
        if self._replayer is not None:
            self._replayer.join(timeout=10)
        self.client.close()  # type: ignore[no-untyped-call]
