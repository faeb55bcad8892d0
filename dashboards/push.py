"""`nabz dashboards push`: put the dashboards into a running Grafana through its HTTP API.

Two endpoints are all it takes (create the folder if missing, then POST /api/dashboards/db per
dashboard), so this uses the standard library rather than a Grafana client package: grafana-api
has had no release since 2020, and grafana-client depends on urllib3-future, which replaces the
urllib3 that influxdb-client needs in the same environment (REALPARTS.md).

A push replaces each dashboard whole (`overwrite`), edits made in Grafana's UI included: it says
which it replaced, the version it replaced and who saved that version, which Grafana's version
history keeps (dashboard settings, Versions: restore or compare it there).
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
            status, ctype, raw = resp.status, resp.headers.get_content_type(), resp.read()
    except urllib.error.HTTPError as exc:
        status, ctype, raw = exc.code, exc.headers.get_content_type(), exc.read()
        if ctype != "application/json":
            return status, None  # a proxy's error page: the status says enough
    except (urllib.error.URLError, OSError) as exc:
        raise PushError(f"cannot reach Grafana at {base}: {exc}") from exc
    try:
        if ctype != "application/json":
            raise ValueError(ctype)
        return status, json.loads(raw or b"null")
    except ValueError:
        # 200 with HTML: a proxy's login page, a wrong port, another web server
        raise PushError(
            f"{base.rstrip('/')}{path} answered HTTP {status} with {ctype}, not Grafana's JSON API: "
            "is the URL Grafana's own address (not a login page or proxy in front of it)?"
        ) from None


def _replaced(base: str, token: str | None, uid: str) -> str | None:
    """How the dashboard `uid` stands in Grafana before the push (version, who saved it, when),
    or None if it has none."""
    status, body = _request(base, token, "GET", f"/api/dashboards/uid/{uid}")
    if status == 404:
        return None
    if status != 200 or not isinstance(body, dict):
        raise PushError(f"reading dashboard {uid}: HTTP {status} {body or ''}".rstrip())
    meta, dash = body.get("meta"), body.get("dashboard")
    meta = meta if isinstance(meta, dict) else {}
    version = (dash if isinstance(dash, dict) else {}).get("version", meta.get("version", "?"))
    return f"version {version}, saved by {meta.get('updatedBy', '?')} at {meta.get('updated', '?')}"


def push(
    base_url: str, token: str | None, dashboards: dict[str, dict[str, Any]], folder: str = "Nabz"
) -> list[str]:
    """Create the folder if needed and import every dashboard, replacing one of the same uid;
    returns a line per dashboard: "created <url>" or "replaced <url> (<what it replaced>)"."""
    status, _ = _request(base_url, token, "GET", f"/api/folders/{FOLDER_UID}")
    if status == 404:
        status, body = _request(base_url, token, "POST", "/api/folders", {"uid": FOLDER_UID, "title": folder})
        if status not in (200, 409, 412):
            raise PushError(f"creating folder {folder!r}: HTTP {status} {body}")
    elif status != 200:
        raise PushError(f"reading folder {FOLDER_UID!r}: HTTP {status}")
    lines = []
    for uid, dashboard in dashboards.items():
        before = _replaced(base_url, token, uid)
        payload = {
            "dashboard": {**dashboard, "id": None},
            "folderUid": FOLDER_UID,
            "overwrite": True,
            "message": "nabz dashboards push",
        }
        status, body = _request(base_url, token, "POST", "/api/dashboards/db", payload)
        if status != 200:
            raise PushError(f"dashboard {uid}: HTTP {status} {body}")
        url = str(body.get("url", uid)) if isinstance(body, dict) else uid
        if before is None:
            lines.append(f"created {url}")
        else:
            lines.append(f"replaced {url} ({before}; kept in Grafana's version history)")
    return lines
