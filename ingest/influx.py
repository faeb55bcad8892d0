"""The InfluxDB sink: line protocol through influxdb-client's write API (`/api/v2/write`).

Wraps influxdb-client once, behind `SinkError`. Writes are synchronous per chunk of `batch_size`
lines, so the caller knows a batch is in the database before it acknowledges the MQTT messages;
transient failures (timeouts, connection errors, 5xx, 429) are retried with backoff here, and a
failure that outlasts the retries is raised for the caller to retry the whole batch later.
"""

from __future__ import annotations

import logging
import time

from influxdb_client import InfluxDBClient  # type: ignore[attr-defined]
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from nabz.config import InfluxConfig

__all__ = ["InfluxSink", "SinkError"]

log = logging.getLogger(__name__)


class SinkError(Exception):
    """The time-series database did not take a batch; nothing of it can be assumed written."""


class InfluxSink:
    def __init__(self, config: InfluxConfig, *, retries: int = 3, backoff_s: float = 0.2) -> None:
        if not config.url:
            raise SinkError("no InfluxDB URL configured (influx.url)")
        self.config = config
        self.retries = retries
        self.backoff_s = backoff_s
        self.client = InfluxDBClient(url=config.url, token=config.token or "", org=config.org, timeout=10_000)
        self.api = self.client.write_api(write_options=SYNCHRONOUS)
        self.points_written = 0

    def write(self, lines: list[str]) -> None:
        size = max(1, self.config.batch_size)
        for start in range(0, len(lines), size):
            self._write_chunk(lines[start : start + size])

    def _write_chunk(self, chunk: list[str]) -> None:
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                self.api.write(bucket=self.config.bucket, org=self.config.org, record="\n".join(chunk))
                self.points_written += len(chunk)
                return
            except ApiException as exc:
                retryable = exc.status is None or exc.status >= 500 or exc.status == 429
                if not retryable or attempt == self.retries:
                    raise SinkError(
                        f"InfluxDB refused {len(chunk)} points: {exc.status} {exc.reason}"
                    ) from exc
                why = f"{exc.status} {exc.reason}"
            except Exception as exc:  # urllib3 connection errors and timeouts come in many types
                if attempt == self.retries:
                    raise SinkError(f"InfluxDB unreachable at {self.config.url}: {exc}") from exc
                why = str(exc)
            log.warning("InfluxDB write failed (%s); retry %d in %.1f s", why, attempt + 1, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]
