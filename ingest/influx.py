"""The InfluxDB sink: line protocol through influxdb-client's write API (`/api/v2/write`).

Wraps influxdb-client once, behind `SinkError`.

Rules of this file:
- `write` returns only when the lines are durable: in the database, or (when it is down) in the
  disk spill (`ingest.spill`). The caller acknowledges MQTT messages after that, so a database
  outage moves data from the broker to the spill instead of stopping ingest, and nothing is lost.
- Lines go in chunks of `batch_size` (5,000 by default). What the server's answer means is the
  table `_ANSWERS` below: timeouts, connection errors, 408, 429 and 5xx are an outage; 401, 403,
  404 and every other 4xx not named there are a configuration fault (token, org, bucket, URL or a
  proxy): the data is good, so both are retried with backoff (`retries` times), then spilled and
  retried from the spill; a configuration fault is logged as an error each time, and the spill
  retries it with a backoff growing to `_CONFIG_FAULT_MAX_WAIT_S`.
- A chunk the server refuses as too large (413, from InfluxDB or a proxy) is split in halves,
  each sent again, down to single lines; only a single line refused as too large is set aside.
- A chunk the server refuses as malformed (400, 422) cannot succeed by retrying: it goes to
  ``<spill_dir>/rejected.lp`` with the server's reason and is counted, so it never blocks ingest.
  Nothing replays rejected.lp: an operator reads it.
- While the spill holds anything, new lines go straight to it (no waiting on a dead server), and a
  background thread, alive from the first spill until `close`, replays it oldest first. It
  survives every error (a full disk included): it logs and tries again later.
- Points are idempotent: a redelivered message rewrites the same series and timestamps.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from influxdb_client import InfluxDBClient  # type: ignore[attr-defined]
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from ingest.spill import Spill, SpillBusy
from nabz.config import InfluxConfig

__all__ = ["InfluxSink", "SinkError"]

log = logging.getLogger(__name__)

# What an HTTP answer from the write API means. A status not listed: 5xx is an outage, any other
# 4xx a configuration fault. Setting data aside is kept for answers that say the data itself is
# bad; any other refusal keeps it in the spill until someone fixes the configuration.
_OUTAGE, _CONFIG, _TOO_LARGE, _MALFORMED = "outage", "config", "too large", "malformed"
_ANSWERS = {
    400: _MALFORMED,  # line protocol InfluxDB cannot parse
    422: _MALFORMED,  # parsed, but refused (e.g. a field's type changed, outside retention)
    413: _TOO_LARGE,  # request body over the server's (or a proxy's) limit: split and resend
    408: _OUTAGE,
    429: _OUTAGE,
    401: _CONFIG,  # wrong token
    403: _CONFIG,  # token without write access to the bucket
    404: _CONFIG,  # no such org or bucket
}
_CONFIG_FAULT_MAX_WAIT_S = 60.0


def _meaning(status: int | None) -> str:
    if status is None or status >= 500:
        return _OUTAGE
    return _ANSWERS.get(status, _CONFIG if 400 <= status < 500 else _OUTAGE)


class SinkError(Exception):
    """Lines could be put neither in the database nor in the spill (e.g. the disk is full)."""


class _Down(Exception):
    """The database did not take these lines (after retries); the data itself is fine."""

    def __init__(self, why: str, unsent: list[str], *, config: bool = False) -> None:
        super().__init__(why)
        self.unsent = unsent
        self.config = config  # refused by configuration (401, 403, 404, ...), not unreachable


class _Refused(Exception):
    """The database refused a chunk for its content or size; `kind` is _MALFORMED or _TOO_LARGE."""

    def __init__(self, why: str, kind: str) -> None:
        super().__init__(why)
        self.kind = kind


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
        try:
            self.spill = Spill(spill_dir or config.spill_dir or "var/influx-spill")
        except SpillBusy as exc:
            raise SinkError(str(exc)) from exc
        stranded = sorted(self.spill.dir.parent.glob("*.spill"))
        self.stranded = len(stranded)  # /healthz says so until they are moved (and ingest restarted)
        if stranded:
            # Segments left in a configured spill_dir itself by versions that put every worker
            # there (each worker now has a subdirectory): nothing replays them where they are.
            log.error(
                "%d spill segments in %s are not replayed: with ingest stopped, move them into %s",
                len(stranded), self.spill.dir.parent, self.spill.dir,
            )  # fmt: skip
        try:
            self.client = InfluxDBClient(
                url=config.url, token=config.token or "", org=config.org, timeout=config.timeout_ms
            )
            self.api = self.client.write_api(write_options=SYNCHRONOUS)
        except BaseException:
            self.spill.close()  # release the directory: this sink never runs
            raise
        self.points_written = 0
        self.spilled_lines = 0
        self.rejected_lines = 0
        self.replay_every_s = replay_every_s
        self._config_faults = 0  # consecutive replays refused by configuration: their backoff
        self._stop = threading.Event()
        self._replayer: threading.Thread | None = None
        self._replayer_lock = threading.Lock()
        if self.spill:
            log.warning("InfluxDB spill holds %d lines from before; replaying", self.spill.pending_lines)
            self._start_replayer()

    # --- the caller's path -----------------------------------------------------------------------
    def write(self, lines: list[str]) -> None:
        """Make `lines` durable (database or spill); raises SinkError only if both fail."""
        size = max(1, self.config.batch_size)
        try:
            for start in range(0, len(lines), size):
                chunk = lines[start : start + size]
                if self.spill:  # the database is known to be down: do not wait on it
                    self._to_spill(chunk)
                    continue
                try:
                    self._send(chunk, self.retries)
                except _Down as exc:
                    if exc.config:
                        log.error(
                            "InfluxDB refuses writes (%s): check influx.url, token, org and bucket; "
                            "spilling to %s until it takes them",
                            exc, self.spill.dir,
                        )  # fmt: skip
                    else:
                        log.error("InfluxDB down (%s): spilling to %s until it is back", exc, self.spill.dir)
                    self._to_spill(exc.unsent)
                except OSError as exc:  # rejected.lp could not be written
                    raise SinkError(f"InfluxDB refused lines and they could not be set aside: {exc}") from exc
        finally:
            if self.spill:  # also revives a replayer that is gone, whatever took it
                self._start_replayer()

    def _to_spill(self, chunk: list[str]) -> None:
        try:
            self.spill.append(chunk)
        except OSError as exc:
            raise SinkError(f"InfluxDB is down and the spill failed: {exc}") from exc
        self.spilled_lines += len(chunk)

    def _reject(self, chunk: list[str], why: str) -> None:
        log.error("InfluxDB refused %d lines: %s (kept in rejected.lp)", len(chunk), why)
        with (self.spill.dir / "rejected.lp").open("a", encoding="utf-8") as f:
            f.write(f"# {time.time():.3f} {why}\n" + "\n".join(chunk) + "\n")
            f.flush()
            os.fsync(f.fileno())  # the messages are acknowledged next: this is their only copy
        self.rejected_lines += len(chunk)

    def _send(self, chunk: list[str], retries: int) -> None:
        """Write `chunk`, halving it while the server says it is too large and setting aside what
        it refuses; raises _Down carrying the lines not yet in the database."""
        try:
            self._write_chunk(chunk, retries)
        except _Refused as exc:
            if exc.kind == _MALFORMED or len(chunk) == 1:
                self._reject(chunk, str(exc))
                return
            log.warning(
                "InfluxDB refused %d lines as too large (%s): sending them in halves (lower influx.batch_size)",
                len(chunk),
                exc,
            )
            mid = len(chunk) // 2
            halves = [chunk[:mid], chunk[mid:]]
            for i, half in enumerate(halves):
                try:
                    self._send(half, retries)
                except _Down as down:
                    down.unsent = down.unsent + [line for h in halves[i + 1 :] for line in h]
                    raise

    def _write_chunk(self, chunk: list[str], retries: int) -> None:
        delay = self.backoff_s
        config = False
        for attempt in range(retries + 1):
            try:
                self.api.write(bucket=self.config.bucket, org=self.config.org, record="\n".join(chunk))
                self.points_written += len(chunk)
                return
            except ApiException as exc:
                why = f"{exc.status} {exc.reason}"
                meaning = _meaning(exc.status)
                if meaning in (_MALFORMED, _TOO_LARGE):
                    raise _Refused(f"{why}: {str(exc.body)[:300]}", meaning) from exc
                config = meaning == _CONFIG
            except Exception as exc:  # urllib3 connection errors and timeouts come in many types
                why = f"{type(exc).__name__}: {exc}"
                config = False
            if attempt == retries:
                raise _Down(why, chunk, config=config)
            log.log(
                logging.ERROR if config else logging.WARNING,
                "InfluxDB write failed (%s); retry %d in %.1f s", why, attempt + 1, delay,
            )  # fmt: skip
            if self._stop.wait(delay):
                raise _Down("sink closing", chunk)
            delay = min(delay * 2, 5.0)

    # --- replay ----------------------------------------------------------------------------------
    def _start_replayer(self) -> None:
        with self._replayer_lock:
            if self._stop.is_set() or (self._replayer is not None and self._replayer.is_alive()):
                return
            self._replayer = threading.Thread(
                target=self._replay_loop, name="nabz-influx-replay", daemon=True
            )
            self._replayer.start()

    def _replay_loop(self) -> None:
        # Lives until close, empty spill or not: a thread that ended with the spill empty would
        # race a caller spilling at that moment, and leave the spill with no one to replay it.
        while not self._stop.wait(self._replay_wait()):
            if not self.spill:
                continue
            try:
                self.replay_once()
            except Exception:  # the spill drains only through this thread: it must not die
                log.exception("InfluxDB spill replay failed; trying again")

    def _replay_wait(self) -> float:
        backoff = self.replay_every_s * 2.0 ** min(self._config_faults, 16)
        return min(max(self.replay_every_s, _CONFIG_FAULT_MAX_WAIT_S), backoff)

    def replay_once(self) -> int:
        """Replay the spill oldest first until it is empty or a write fails; returns lines written."""
        written = 0

        def write(chunk: list[str]) -> None:
            nonlocal written
            if self._stop.is_set():  # closing: the rest waits in the spill for the next process
                raise _Down("ingest is stopping", chunk)
            self._send(chunk, retries=0)
            written += len(chunk)

        try:
            self.spill.replay(write)
        except _Down as exc:
            self._config_faults = self._config_faults + 1 if exc.config else 0
            if exc.config:
                log.error(
                    "InfluxDB refuses writes (%s): check influx.url, token, org and bucket; %d lines "
                    "wait in the spill (next try in %.0f s)",
                    exc, self.spill.pending_lines, self._replay_wait(),
                )  # fmt: skip
            else:
                log.info(
                    "InfluxDB still down (%s); %d lines wait in the spill", exc, self.spill.pending_lines
                )
            return written
        except OSError as exc:  # the spill's disk (or rejected.lp's): keep the data, try again later
            log.error(
                "InfluxDB spill replay failed on disk (%s); %d lines wait", exc, self.spill.pending_lines
            )
            return written
        finally:
            if written:
                log.warning("InfluxDB is back: replayed %d spilled lines", written)
        self._config_faults = 0
        return written

    def close(self) -> None:
        self._stop.set()
        with self._replayer_lock:
            replayer = self._replayer
        if replayer is not None:
            replayer.join(timeout=10)
        self.client.close()  # type: ignore[no-untyped-call]
        if replayer is None or not replayer.is_alive():
            self.spill.close()
        else:  # a write hung past the join: the directory stays locked until this process ends
            log.error("InfluxDB spill replay did not stop; %s stays locked by this process", self.spill.dir)
