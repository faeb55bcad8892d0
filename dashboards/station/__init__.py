"""The nurse station: a web page served by the server process with live patient tiles, alarms,
acknowledgement and silences, trends, and ECG/PPG strips around each alarm (docs/dashboards.md).

Pure parts: `auth` (roles, hashing, rate limit, session expiry), `ward` (tiles from messages),
`strips` and `trends` (SVG). Shell: `db` (the station's SQLite file), `data` (read-only views of
the ingest and alert stores), `live` (MQTT in, server-sent events out), `app` (Starlette) and
`server` (uvicorn on a thread).
"""

from dashboards.station.server import StationError, StationServer

__all__ = ["StationServer", "StationError"]
