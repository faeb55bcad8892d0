"""`nabz influx setup`: the InfluxDB 2 bucket, its retention, a trends bucket and the downsampling task.

Idempotent: run it again after changing the retention and it updates what exists (HTTP API v2:
`/api/v2/orgs`, `/api/v2/buckets`, `/api/v2/tasks`; token needs write access to buckets and
tasks of the org, e.g. an operator token, used once at installation).

- ``<bucket>``: raw readings (waveforms, device vitals, derived vitals), kept `retention_days`.
- ``<bucket>-trends``: one-minute means of the vitals measurements, kept `trends_days`.
- Task ``nabz-downsample-1m``: every minute, the last minute of ``vitals`` and ``device_vitals``
  aggregated into the trends bucket, for queries beyond the raw retention (the shipped Grafana
  dashboards read the raw bucket only; docs/dashboards.md).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from nabz.config import InfluxConfig

__all__ = ["InfluxSetupError", "setup_influx", "downsample_flux", "TASK_NAME"]

TASK_NAME = "nabz-downsample-1m"


class InfluxSetupError(Exception):
    """The server refused a setup request; the message says which and why."""


def downsample_flux(bucket: str, trends: str, org: str) -> str:
    """The Flux of the downsampling task (one-minute means of the vitals measurements)."""
    return (
        f'option task = {{name: "{TASK_NAME}", every: 1m, offset: 15s}}\n\n'
        f'from(bucket: "{bucket}")\n'
        "  |> range(start: -task.every)\n"
        '  |> filter(fn: (r) => r._measurement == "vitals" or r._measurement == "device_vitals")\n'
        '  |> filter(fn: (r) => r._field != "spo2_calibrated")\n'
        "  |> aggregateWindow(every: 1m, fn: mean, createEmpty: false)\n"
        f'  |> to(bucket: "{trends}", org: "{org}")\n'
    )


class _Api:
    def __init__(self, config: InfluxConfig) -> None:
        if not config.url:
            raise InfluxSetupError("influx.url is not set")
        self.base = config.url.rstrip("/")
        self.token = config.token or ""

    def call(self, method: str, path: str, query: dict[str, str] | None = None, body: Any = None) -> Any:
        url = self.base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        # Not along a redirect: the token is for `[influx] url` only (docs/security.md section 4).
        req.add_unredirected_header("Authorization", f"Token {self.token}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                text = resp.read()
        except urllib.error.HTTPError as exc:
            raise InfluxSetupError(f"{method} {path}: {exc.code} {exc.read()[:300]!r}") from exc
        except OSError as exc:
            raise InfluxSetupError(f"{method} {path}: {exc}") from exc
        return json.loads(text) if text else None


def _bucket(api: _Api, org_id: str, name: str, days: float) -> str:
    rules = [{"type": "expire", "everySeconds": round(days * 86400)}]
    found = api.call("GET", "/api/v2/buckets", {"name": name, "orgID": org_id}).get("buckets") or []
    if found:
        api.call("PATCH", f"/api/v2/buckets/{found[0]['id']}", body={"retentionRules": rules})
        return f"bucket {name}: retention set to {days:g} days"
    api.call("POST", "/api/v2/buckets", body={"orgID": org_id, "name": name, "retentionRules": rules})
    return f"bucket {name}: created, retention {days:g} days"


def setup_influx(
    config: InfluxConfig, *, retention_days: float = 30.0, trends_days: float = 730.0
) -> Iterator[str]:
    """Create or update the buckets and the task; yields one line per thing done."""
    api = _Api(config)
    orgs = api.call("GET", "/api/v2/orgs", {"org": config.org}).get("orgs") or []
    if not orgs:
        raise InfluxSetupError(f"organisation {config.org!r} not found")
    org_id = orgs[0]["id"]
    trends = f"{config.bucket}-trends"
    yield _bucket(api, org_id, config.bucket, retention_days)
    yield _bucket(api, org_id, trends, trends_days)
    flux = downsample_flux(config.bucket, trends, config.org)
    tasks = api.call("GET", "/api/v2/tasks", {"name": TASK_NAME, "orgID": org_id}).get("tasks") or []
    if tasks:
        api.call("PATCH", f"/api/v2/tasks/{tasks[0]['id']}", body={"flux": flux, "status": "active"})
        yield f"task {TASK_NAME}: updated"
    else:
        api.call("POST", "/api/v2/tasks", body={"orgID": org_id, "flux": flux, "status": "active"})
        yield f"task {TASK_NAME}: created"
