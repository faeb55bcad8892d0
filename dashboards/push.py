"""`nabz dashboards push`: put the dashboards into a running Grafana through its HTTP API.

Two endpoints are all it takes (create the folder if missing, then POST /api/dashboards/db per
dashboard), so this uses the standard library rather than a Grafana client package: grafana-api
has had no release since 2020, and grafana-client depends on urllib3-future, which replaces the
urllib3 that influxdb-client needs in the same environment (REALPARTS.md).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

__all__ = ["push", "PushError", "FOLDER_UID"]

FOLDER_UID = "nabz"


class PushError(Exception):
    """Grafana refused a request; the message carries the status and Grafana's own words."""


def _request(
    base: str, token: str | None, method: str, path: str, body: Any | None = None
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{base.rstrip('/')}{path}", data=data, method=method)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        # Not along a redirect: the token is for `[grafana] url` only.
        req.add_unredirected_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(
            exc.read() or b"null"
        ) if exc.headers.get_content_type() == "application/json" else None
    except (urllib.error.URLError, OSError) as exc:
        raise PushError(f"cannot reach Grafana at {base}: {exc}") from exc


def push(
    base_url: str, token: str | None, dashboards: dict[str, dict[str, Any]], folder: str = "Nabz"
) -> list[str]:
    """Create the folder if needed and import every dashboard (overwriting); returns their URLs."""
    status, _ = _request(base_url, token, "GET", f"/api/folders/{FOLDER_UID}")
    if status == 404:
        status, body = _request(base_url, token, "POST", "/api/folders", {"uid": FOLDER_UID, "title": folder})
        if status not in (200, 409, 412):
            raise PushError(f"creating folder {folder!r}: HTTP {status} {body}")
    elif status != 200:
        raise PushError(f"reading folder {FOLDER_UID!r}: HTTP {status}")
    urls = []
    for uid, dashboard in dashboards.items():
        payload = {
            "dashboard": {**dashboard, "id": None},
            "folderUid": FOLDER_UID,
            "overwrite": True,
            "message": "nabz dashboards push",
        }
        status, body = _request(base_url, token, "POST", "/api/dashboards/db", payload)
        if status != 200:
            raise PushError(f"dashboard {uid}: HTTP {status} {body}")
        urls.append(str(body.get("url", uid)) if isinstance(body, dict) else uid)
    return urls
