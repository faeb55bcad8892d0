"""The nurse station's web app (Starlette): pages, server-sent events, alarm commands, health.

Rules of this file:
- Every page and API call goes through `guarded`: a valid session (cookie → SHA-256 → the
  station's database; automatic logoff after `session_idle_s` without a user action and after
  `session_max_s`), a role allowed the action (auth.PERMISSIONS), and for anything that changes
  something the session's CSRF token and a same-origin request.
- Every action a user takes is audited (StationDB.audit): logins and failures, logoffs, pages
  with patient data, strips, acknowledgements, silences, refusals.
- Alarm commands go to the alerts service the supported way, MQTT `nabz/v1/<site>/alerts/command`
  (docs/alerts.md "Commands"): the alerts service stays the only writer of alarm state, and an
  acknowledgement from this page takes the same path through the lifecycle as one by SMS.
- Blocking work (SQLite, argon2, PUBACK waits) runs in threads, never on the event loop that
  feeds the live pages.
- A login counts against the rate limit from the moment it arrives, before its password is
  checked (auth.RateLimiter), and at most _LOGIN_CHECKS passwords are checked at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import ipaddress
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlparse
from zoneinfo import ZoneInfo

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dashboards.station import auth
from dashboards.station.data import Records, Waves
from dashboards.station.db import Session, StationDB, User
from dashboards.station.influxstrips import InfluxStrips, StripReadError
from dashboards.station.live import Hub, sse
from dashboards.station.strips import Mark, render_strip
from dashboards.station.trends import PRIORITY_COLOURS, Panel, Series, TrendMark, render_trends
from dashboards.station.ward import PRIORITY_RANK
from nabz.config import Config
from nabz.contract import ID_PATTERN

__all__ = ["create_app", "Station", "StationApp", "COOKIE"]

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
COOKIE = "nabz_session"
TREND_HOURS = (1, 6, 24, 72)
_STRIP_READ_S = 8.0  # a strip's waveforms (both streams, read side by side) or the page says why not
# Passwords checked at once. Each argon2 check takes 64 MiB and, with its 4 lanes, every core of a
# small server for ~0.1 s: a flood of logins waits its turn here, holding neither memory nor one of
# the threads that every page's session check runs in.
_LOGIN_CHECKS = 2
# Audit actions by what the admin page shows of them: rows about patients without their target
# and detail (which patient, which alarm, why); rows about accounts and sessions whole. Every
# action the station audits is in one of the two (tests/dashboards/station/test_db.py checks).
AUDIT_ABOUT_PATIENTS = frozenset({"view_ward", "view_patient", "view_trends", "view_strip", "ack", "ack_failed",
                                  "ack_refused", "ack_unconfirmed", "silence", "silence_failed", "unsilence"})  # fmt: skip
AUDIT_ABOUT_ACCOUNTS = frozenset({"login", "login_failed", "login_blocked", "logout", "logoff_auto", "denied",
                                  "view_audit", "user_add", "user_disable", "user_enable", "user_passwd"})  # fmt: skip
_STRIP_BEFORE_MAX_S = 60.0  # a strip reaches back to the condition's onset, but no further than this
SILENCE_CHOICES_S = (15 * 60, 30 * 60, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 24 * 3600)
_ID = re.compile(ID_PATTERN)
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


@dataclass(frozen=True, slots=True)
class Ctx:
    session: Session
    user: User


class Station:
    """Everything the routes share: configuration, the station's database, the live hub, counters."""

    def __init__(self, config: Config, db: StationDB, records: Records, clock: Callable[[], float]) -> None:
        self.config = config
        self.db = db
        self.records = records
        self.clock = clock
        self.hub = Hub(config, records, clock=clock)
        sc = config.station
        self.by_user = auth.RateLimiter(sc.login_max_failures, sc.login_window_s)
        self.by_address = auth.RateLimiter(sc.login_max_failures * 4, sc.login_window_s)
        self.login_checks = asyncio.Semaphore(_LOGIN_CHECKS)
        self.logins_failed = 0
        self.logins_blocked = 0
        self.logins = 0
        self.tz = config.alerts.timezone
        self.secure = bool(sc.cookie_secure or sc.tls_cert_file)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.filters["local"] = self.local
        self.templates.env.filters["ago"] = lambda t: _ago(self.clock() - t) if t else "-"
        # Strips read their waveforms here, not in the default thread pool that every request's
        # session check uses: a database that hangs holds up strips, not the ward.
        self.strip_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="nabz-strip")

    def local(self, t: float | None, fmt: str = "%Y-%m-%d %H:%M:%S %Z") -> str:
        if t is None:
            return "-"
        return datetime.fromtimestamp(t, UTC).astimezone(ZoneInfo(self.tz)).strftime(fmt)

    def audit(
        self, ctx: Ctx | None, request: Request, action: str, target: str = "", detail: Any = ""
    ) -> Awaitable[None]:
        user = ctx.user.username if ctx else "-"
        return asyncio.to_thread(self.db.audit, self.clock(), user, action, target, detail, _address(request))

    def authenticate(self, request: Request) -> tuple[Ctx | None, str]:
        """The request's session and user, or None and why ("", "idle", "expired", "disabled")."""
        token = request.cookies.get(COOKIE)
        if not token:
            return None, ""
        s = self.db.session(token)
        if s is None:
            return None, ""
        user = self.db.user(s.username)
        if user is None or user.disabled:
            self.db.end_session(s)
            return None, "disabled"
        now = self.clock()
        sc = self.config.station
        state = auth.session_state(s.created_at, s.last_active_at, now, sc.session_idle_s, sc.session_max_s)
        if state != "ok":
            self.db.end_session(s)
            self.db.audit(now, s.username, "logoff_auto", "", {"reason": state}, _address(request))
            return None, state
        return Ctx(s, user), ""


def _wait_text(s: float) -> str:
    return f"{max(1, round(s))} s" if s < 90 else f"{round(s / 60)} min"


def _ago(s: float) -> str:
    s = max(0.0, s)
    if s < 90:
        return f"{s:.0f} s ago"
    if s < 5400:
        return f"{s / 60:.0f} min ago"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h ago"
    return f"{s / 86400:.1f} days ago"


def _address(request: Request) -> str:
    """The client's IP address. Behind a proxy uvicorn takes it from X-Forwarded-For, whatever the
    text (docs/dashboards.md): anything that is not an address is audited and counted as one key."""
    host = request.client.host if request.client else ""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return "(invalid)" if host else "-"


def _same_origin(request: Request, public_origin: str | None) -> bool:
    """A state-changing request must come from a page of this server (CSRF, with SameSite cookies):
    its Origin is `[station] public_origin` when set (behind a proxy that passes its own Host),
    else the Host the request was sent to."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return False
    if public_origin:
        try:
            return _origin_key(origin) == _origin_key(public_origin)
        except ValueError:  # a port that is not a number: not this page
            return False
    return urlparse(origin).netloc == request.headers.get("host", "")


def _origin_key(url: str) -> tuple[str, str, int | None]:
    """An origin as browsers compare it: scheme and host in lower case, the default port made explicit."""
    u = urlparse(url if "://" in url else f"https://{url}")
    scheme = u.scheme.lower()
    return scheme, (u.hostname or "").lower(), u.port or {"https": 443, "http": 80}.get(scheme)


Endpoint = Callable[[Request, Ctx], Awaitable[Response]]


def guarded(
    st: Station, action: str | None, *, api: bool = False, touch: bool = True, change: bool = False
) -> Callable[[Endpoint], Callable[[Request], Awaitable[Response]]]:
    def wrap(fn: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            ctx, why = await asyncio.to_thread(st.authenticate, request)
            if ctx is None:
                if api:
                    return JSONResponse({"error": "not logged in", "reason": why or "login"}, status_code=401)
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                reason = f"&why={why}" if why else ""
                return RedirectResponse(f"/login?next={quote(target, safe='/')}{reason}", status_code=303)
            if action is not None and not auth.allowed(ctx.user.role, action):
                await st.audit(
                    ctx, request, "denied", request.url.path, {"action": action, "role": ctx.user.role}
                )
                if api:
                    return JSONResponse(
                        {"error": f"a {ctx.user.role} may not {action.replace('_', ' ')}"}, 403
                    )
                return st.templates.TemplateResponse(
                    request, "denied.html", {"ctx": ctx, "action": action}, status_code=403
                )
            if change and (
                request.headers.get("x-csrf-token") != ctx.session.csrf
                or not _same_origin(request, st.config.station.public_origin)
            ):
                await st.audit(ctx, request, "denied", request.url.path, {"reason": "csrf"})
                return JSONResponse({"error": "refused: the request did not come from this page"}, 403)
            if touch:
                await asyncio.to_thread(st.db.touch, ctx.session, st.clock())
            return await fn(request, ctx)

        return endpoint

    return wrap


def _worsened(alarm: dict[str, Any], seen: str) -> str:
    return (
        f"not acknowledged: this alarm is now {alarm['priority'].upper()}, worse than the "
        f"{seen.upper()} you saw ({alarm.get('message', '')}); look at it again"
    )


def _known_patient(st: Station, pid: str) -> bool:
    return bool(_ID.match(pid)) and pid in st.hub.ward.patients


def _page(st: Station, request: Request, name: str, ctx: Ctx | None, **context: Any) -> Response:
    context.update(ctx=ctx, tz=st.tz, stale_after_s=st.config.station.stale_after_s)
    r = st.templates.TemplateResponse(request, name, context)
    r.headers["cache-control"] = "no-store"
    return r


def create_app(
    config: Config,
    *,
    db: StationDB | None = None,
    records: Records | None = None,
    clock: Callable[[], float] = time.time,
) -> StationApp:
    st = Station(
        config,
        db or StationDB(config.station.db_path),
        records
        or Records(
            config.ingest.store_path,
            config.alerts.store_path,
            InfluxStrips(config.influx) if config.influx.url else None,
        ),
        clock,
    )
    missing = st.records.missing_alerts_store()
    if missing:
        log.warning("station: %s", missing)

    # --- login ----------------------------------------------------------------------------------
    async def login_page(request: Request) -> Response:
        why = request.query_params.get("why", "")
        return _page(
            st, request, "login.html", None, next=request.query_params.get("next", "/"), why=why, error=""
        )

    async def login(request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode(errors="replace")).items()}
        typed = form.get("username", "").strip().lower()[:64]
        try:
            username, valid = auth.check_username(typed), True
        except auth.AuthError:
            # No account has such a name (accounts are made through check_username): audited and
            # counted under one name, so it cannot carry terminal escapes into `nabz station audit`.
            username, valid = "(invalid)", False
        password = form.get("password", "")
        nxt = form.get("next", "/")
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = "/"
        addr = _address(request)
        now = st.clock()

        def again(error: str, status: int) -> Response:
            r = _page(st, request, "login.html", None, next=nxt, why="", error=error)
            r.status_code = status
            return r

        if not _same_origin(request, st.config.station.public_origin):
            return again("Refused: the form did not come from this page.", 403)
        wait = max(st.by_user.blocked(username, now), st.by_address.blocked(addr, now))
        if wait > 0:
            st.logins_blocked += 1
            await asyncio.to_thread(
                st.db.audit, now, username, "login_blocked", "", {"wait_s": round(wait)}, addr
            )
            r = again(f"Too many failed logins. Try again in {_wait_text(wait)}.", 429)
            r.headers["retry-after"] = str(int(wait) + 1)
            return r
        # Counted before the first await, so that logins sent in parallel each see those before
        # them: at most login_max_failures passwords of a name are checked, however many arrive.
        st.by_user.attempt(username, now)
        async with st.login_checks:
            # An address counts failures only (shared by a ward behind one NAT): looked at again
            # here, after the wait for a turn, so that a flood of names from one address is held too.
            wait = st.by_address.blocked(addr, st.clock())
            if wait > 0:
                st.logins_blocked += 1
                r = again(f"Too many failed logins. Try again in {_wait_text(wait)}.", 429)
                r.headers["retry-after"] = str(int(wait) + 1)
                return r
            user = await asyncio.to_thread(st.db.user, username) if valid else None
            ok = await asyncio.to_thread(auth.verify_password, user.password_hash if user else None, password)
            rehash = None
            if ok and user is not None and not user.disabled and auth.needs_rehash(user.password_hash):
                rehash = await asyncio.to_thread(auth.hash_password, password)
        if not ok or user is None or user.disabled:
            st.by_address.attempt(addr, st.clock())  # when checked: a queued flood stays blocked
            st.logins_failed += 1
            why = "disabled" if ok and user is not None else "bad password or unknown user"
            await asyncio.to_thread(st.db.audit, now, username, "login_failed", "", {"why": why}, addr)
            return again("Wrong user name or password.", 401)
        st.by_user.clear(username)
        st.logins += 1
        if rehash is not None:
            await asyncio.to_thread(st.db.set_password, username, rehash, now)
        token, _ = await asyncio.to_thread(st.db.new_session, username, now, addr)
        await asyncio.to_thread(st.db.audit, now, username, "login", "", {"role": user.role}, addr)
        if user.role == "admin" and nxt == "/":
            nxt = "/admin"
        r = RedirectResponse(nxt, status_code=303)
        r.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=st.secure, path="/")
        return r

    @guarded(st, None, touch=False, change=True, api=True)
    async def logout(request: Request, ctx: Ctx) -> Response:
        await asyncio.to_thread(st.db.end_session, ctx.session)
        await st.audit(ctx, request, "logout")
        r = JSONResponse({"ok": True})
        r.delete_cookie(COOKIE, path="/")
        return r

    # --- pages ----------------------------------------------------------------------------------
    @guarded(st, None)
    async def ward(request: Request, ctx: Ctx) -> Response:
        if ctx.user.role == "admin":
            return RedirectResponse("/admin", status_code=303)
        await st.audit(ctx, request, "view_ward")
        return _page(st, request, "ward.html", ctx)

    @guarded(st, "view_patients")
    async def patient(request: Request, ctx: Ctx) -> Response:
        pid = request.path_params["patient"]
        if not _known_patient(st, pid):
            return PlainTextResponse("no such patient", 404)
        hours = _hours(request)
        now = st.clock()
        alarms = await asyncio.to_thread(st.records.alarms, pid)
        silences = await asyncio.to_thread(st.records.silences, now, pid)
        await st.audit(ctx, request, "view_patient", pid, {"hours": hours})
        kinds = sorted({a["kind"] for a in alarms} | set(st.hub.ward.patients[pid].alarms))
        return _page(
            st, request, "patient.html", ctx, patient=pid, label=st.hub.ward.labels.get(pid, pid), hours=hours,
            trend_hours=TREND_HOURS, alarms=alarms, silences=silences, kinds=kinds,
            silence_choices=SILENCE_CHOICES_S, colours=PRIORITY_COLOURS,
        )  # fmt: skip

    @guarded(st, "view_patients")
    async def trends_svg(request: Request, ctx: Ctx) -> Response:
        pid = request.path_params["patient"]
        if not _known_patient(st, pid):
            return PlainTextResponse("no such patient", 404)
        hours = _hours(request)
        end = st.clock()
        start = end - hours * 3600
        bucket = max(5.0, hours * 3600 / 300)
        data = await asyncio.to_thread(st.records.trend, pid, start, end, bucket)
        alarms = await asyncio.to_thread(st.records.alarms, pid)
        await st.audit(ctx, request, "view_trends", pid, {"hours": hours})
        svg = render_trends(start, end, _panels(data, st.config), [
            TrendMark(a["raised_at"], a["priority"], f"{a['kind']} {a['priority']}: {a['message']}") for a in alarms
        ], bucket_s=bucket, tz=st.tz)  # fmt: skip
        return Response(svg, media_type="image/svg+xml", headers={"cache-control": "no-store"})

    async def _strip(request: Request, ctx: Ctx) -> tuple[dict[str, Any], str] | Response:
        pid, alarm_id = request.path_params["patient"], request.path_params["alarm"]
        if not _known_patient(st, pid) or not _ID.match(alarm_id):
            return PlainTextResponse("no such patient", 404)
        a = await asyncio.to_thread(st.records.alarm, alarm_id)
        if a is None or a["patient"] != pid:
            return PlainTextResponse("no such alarm", 404)
        sc = st.config.station
        start = a["raised_at"] - sc.strip_before_s
        began = a.get("condition_started_at")
        if began is not None and began - 2 < start:  # the onset too (SpO2 and lead alarms wait 15-30 s)
            start = max(began - 2, a["raised_at"] - _STRIP_BEFORE_MAX_S)
        end = min(a["raised_at"] + sc.strip_after_s, st.clock())
        loop = asyncio.get_running_loop()
        reads = [
            loop.run_in_executor(st.strip_pool, st.records.waveforms, pid, s, start, end)
            for s in ("ecg", "ppg")
        ]
        got: list[Waves | BaseException]
        try:  # each stream on its own: one that cannot be read leaves the other drawn
            got = await asyncio.wait_for(asyncio.gather(*reads, return_exceptions=True), _STRIP_READ_S)
        except TimeoutError:
            where = "InfluxDB" if st.records.influx is not None else "the ingest store"
            got = [TimeoutError(f"no answer from {where} within {_STRIP_READ_S:g} s")] * 2
        errors = [str(g) for g in got if isinstance(g, StripReadError | TimeoutError)]
        for g in got:
            if isinstance(g, BaseException) and not isinstance(g, StripReadError | TimeoutError):
                raise g  # a bug, not an unreadable database
        ecg_w, ppg_w = (g if isinstance(g, Waves) else Waves(None, [], 0, None) for g in got)
        read_error = "; ".join(dict.fromkeys(errors)) or None
        if read_error:
            log.warning("station: strip of %s: %s", alarm_id, read_error)
        marks = [Mark(a["raised_at"], f"alarm raised {st.local(a['raised_at'], '%H:%M:%S')}")]
        if began is not None and start <= began < a["raised_at"] - 0.5:
            marks.append(Mark(began, "condition began", "#7a4b00", dashed=True))
        elif began is not None and began < start:  # longer ago than a strip shows: said, not drawn
            marks.append(
                Mark(
                    start,
                    f"condition began {st.local(began, '%H:%M:%S')}, before this strip",
                    "#7a4b00",
                    dashed=True,
                )
            )
        title = (
            f"{st.hub.ward.labels.get(pid, pid)} · {a['kind']} ({a['priority']}) · {st.local(a['raised_at'])}"
        )
        svg = render_strip(start, end, ecg_w.segments, ppg_w.segments, marks=marks, title=title, tz=st.tz)
        info = {
            "alarm": a,
            "ecg_device": ecg_w.device,
            "ppg_device": ppg_w.device,
            # None: this store keeps no waveforms (with InfluxDB as the store) and none is configured
            "payloads_missing": None
            if ecg_w.missing is None or ppg_w.missing is None
            else ecg_w.missing + ppg_w.missing,
            "from_influxdb": "influxdb" in (ecg_w.source, ppg_w.source),
            "read_error": read_error,
        }
        return info, svg

    @guarded(st, "view_patients")
    async def strip_page(request: Request, ctx: Ctx) -> Response:
        got = await _strip(request, ctx)
        if isinstance(got, Response):
            return got
        info, svg = got
        await st.audit(
            ctx, request, "view_strip", info["alarm"]["alarm_id"], {"patient": info["alarm"]["patient"]}
        )
        return _page(st, request, "strip.html", ctx, svg=svg, patient=info["alarm"]["patient"],
                     label=st.hub.ward.labels.get(info["alarm"]["patient"], info["alarm"]["patient"]), **info)  # fmt: skip

    @guarded(st, "view_patients")
    async def strip_svg(request: Request, ctx: Ctx) -> Response:
        got = await _strip(request, ctx)
        if isinstance(got, Response):
            return got
        info, svg = got
        await st.audit(
            ctx, request, "view_strip", info["alarm"]["alarm_id"], {"patient": info["alarm"]["patient"]}
        )
        return Response(svg, media_type="image/svg+xml", headers={"cache-control": "no-store"})

    @guarded(st, "read_audit")
    async def admin(request: Request, ctx: Ctx) -> Response:
        users = await asyncio.to_thread(st.db.users)
        rows = await asyncio.to_thread(st.db.audit_rows, 300)
        broken = await asyncio.to_thread(functools.partial(st.db.verify_audit, whole=False))
        await st.audit(ctx, request, "view_audit")
        # an administrator sees who did what and when, not about which patient or why
        shown = [r if r.action not in AUDIT_ABOUT_PATIENTS else dataclasses.replace(r, target="(patient)", detail="")
                 for r in reversed(rows)]  # fmt: skip
        return _page(st, request, "admin.html", ctx, users=users, rows=shown, broken=broken)

    # --- live -----------------------------------------------------------------------------------
    @guarded(st, "view_patients", touch=False)
    async def events(request: Request, ctx: Ctx) -> Response:
        pid = request.query_params.get("patient") or None
        if pid is not None and not _known_patient(st, pid):
            return PlainTextResponse("no such patient", 404)
        client = st.hub.subscribe(pid)
        hello = {
            "user": ctx.user.username,
            "role": ctx.user.role,
            "stale_after_s": st.config.station.stale_after_s,
        }

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n\n"
                yield sse("hello", {**hello, "now": st.clock()})
                yield sse("snapshot", st.hub.snapshot(pid))
                every = st.hub.ping_s
                next_check = time.monotonic() + every
                while True:
                    try:
                        frame = await client.take(every)
                    except TimeoutError:
                        frame = ""
                    if frame is None:
                        return  # dropped for falling behind: the browser reconnects
                    if frame:
                        yield frame
                    if time.monotonic() >= next_check:  # automatic logoff reaches open pages too
                        next_check = time.monotonic() + every
                        still, why = await asyncio.to_thread(st.authenticate, request)
                        if still is None:
                            yield sse("logout", {"reason": why or "logged out"})
                            return
            finally:
                st.hub.unsubscribe(client)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    # --- commands ---------------------------------------------------------------------------------
    @guarded(st, "ack", api=True, change=True)
    async def ack(request: Request, ctx: Ctx) -> Response:
        """Acknowledge one open alarm at the priority the nurse saw (the page sends it): an alarm
        that worsened since is not acknowledged, here or by the alerts service if it worsens while
        the command is on its way; the answer is 200 only once the alarm is acknowledged."""
        alarm_id = request.path_params["alarm"]
        events = st.hub.follow(alarm_id)  # first: nothing that happens to it from now on is missed
        try:
            return await _acknowledge(request, ctx, alarm_id, events)
        finally:
            st.hub.unfollow(alarm_id, events)

    async def _acknowledge(
        request: Request, ctx: Ctx, alarm_id: str, events: asyncio.Queue[dict[str, Any] | None]
    ) -> Response:
        a = st.hub.ward.open_alarm(alarm_id)
        if a is None:
            await st.audit(ctx, request, "ack_refused", alarm_id, {"reason": "not open"})
            return JSONResponse({"error": "this alarm is not open any more"}, 409)
        try:
            body = json.loads(await request.body() or b"{}")
            seen = str(body.get("priority") or a["priority"])
        except (ValueError, AttributeError):
            return JSONResponse({"error": "the body is a JSON object"}, 400)
        if seen not in PRIORITY_RANK:
            return JSONResponse({"error": f"unknown priority {seen[:20]!r}"}, 400)
        detail = {"patient": a["patient"], "kind": a["kind"], "priority": a["priority"], "state": a["state"]}
        if PRIORITY_RANK[a["priority"]] > PRIORITY_RANK[seen]:
            await st.audit(ctx, request, "ack_refused", alarm_id, {**detail, "reason": f"seen at {seen}"})
            return JSONResponse({"error": _worsened(a, seen), "alarm": a}, 409)
        await st.audit(ctx, request, "ack", alarm_id, detail)
        command = {"action": "ack", "code": alarm_id, "by": ctx.user.username, "priority": seen}
        if not await asyncio.to_thread(st.hub.publish_command, command):
            await st.audit(ctx, request, "ack_failed", alarm_id, {"reason": "broker not reachable"})
            return JSONResponse(
                {"error": "the alarm service cannot be reached: not acknowledged (it will not act on "
                          "this later); acknowledge by SMS"},
                503,
            )  # fmt: skip
        deadline = time.monotonic() + 5.0
        while True:
            try:
                state = await asyncio.wait_for(events.get(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                await st.audit(ctx, request, "ack_unconfirmed", alarm_id, {"waited_s": 5})
                return JSONResponse(
                    {"state": "sent", "detail": "sent, but the alarm service has not confirmed it: "
                                                "it is not acknowledged until the alarm shows it"},
                    202,
                )  # fmt: skip
            if state is None or state["state"] == "acknowledged":
                return JSONResponse({"state": "cleared" if state is None else "acknowledged", "alarm": state})
            if PRIORITY_RANK[state["priority"]] > PRIORITY_RANK[seen]:
                await st.audit(ctx, request, "ack_refused", alarm_id, {**detail, "reason": "worsened"})
                return JSONResponse({"error": _worsened(state, seen), "alarm": state}, 409)
            # another event of the alarm (an SMS recorded): keep waiting for the acknowledgement

    @guarded(st, "silence", api=True, change=True)
    async def silence(request: Request, ctx: Ctx) -> Response:
        try:
            body = json.loads(await request.body())
            pid, kind = str(body["patient"]), str(body.get("kind", "*"))
            duration = int(body["duration_s"])
            reason = str(body.get("reason", ""))[:200]
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "patient, kind and duration_s are needed"}, 400)
        if (
            not _known_patient(st, pid)
            or not (kind == "*" or _ID.match(kind))
            or duration not in SILENCE_CHOICES_S
        ):
            return JSONResponse({"error": "unknown patient, kind or duration"}, 400)
        cmd = {"action": "silence", "patient": pid, "kind": kind, "duration_s": duration, "reason": reason,
               "by": ctx.user.username}  # fmt: skip
        await st.audit(ctx, request, "silence", pid, {"kind": kind, "duration_s": duration, "reason": reason})
        if not await asyncio.to_thread(st.hub.publish_command, cmd):
            await st.audit(ctx, request, "silence_failed", pid, {"reason": "broker not reachable"})
            return JSONResponse({"error": "the alarm service cannot be reached"}, 503)
        return JSONResponse({"state": "sent"}, 202)

    @guarded(st, "silence", api=True, change=True)
    async def unsilence(request: Request, ctx: Ctx) -> Response:
        sid = request.path_params["silence"]
        if not _ID.match(sid):
            return JSONResponse({"error": "bad silence id"}, 400)
        await st.audit(ctx, request, "unsilence", sid)
        if not await asyncio.to_thread(
            st.hub.publish_command, {"action": "unsilence", "silence_id": sid, "by": ctx.user.username}
        ):
            return JSONResponse({"error": "the alarm service cannot be reached"}, 503)
        return JSONResponse({"state": "sent"}, 202)

    # --- operations -------------------------------------------------------------------------------
    async def healthz(request: Request) -> Response:
        st.records.missing_alerts_store()
        unreadable = dict(st.records.unreadable)  # a damaged store: history and strips are missing
        ok = st.hub.connected and not unreadable
        body = {"status": "ok" if ok else "degraded", "mqtt": "connected" if st.hub.connected else "disconnected",
                "patients": len(st.hub.ward.patients), "sse_clients": len(st.hub.clients),
                "unreadable_stores": unreadable}  # fmt: skip
        return JSONResponse(body, 200 if ok else 503)

    async def metrics(request: Request) -> Response:
        now = st.clock()
        s = st.hub.ward.summary(now)
        lines = [
            "# HELP nabz_station_open_alarms Open alarms shown on the ward overview, by priority.",
            "# TYPE nabz_station_open_alarms gauge",
            *(f'nabz_station_open_alarms{{priority="{p}"}} {n}' for p, n in sorted(s["open_alarms"].items())),
            "# HELP nabz_station_tiles Patient tiles on the ward overview.",
            "# TYPE nabz_station_tiles gauge",
            f"nabz_station_tiles {s['patients']}",
            "# HELP nabz_station_tiles_stale Tiles without vitals for longer than station.stale_after_s.",
            "# TYPE nabz_station_tiles_stale gauge",
            f"nabz_station_tiles_stale {s['stale']}",
            "# HELP nabz_station_sse_clients Browsers connected to the live stream.",
            "# TYPE nabz_station_sse_clients gauge",
            f"nabz_station_sse_clients {len(st.hub.clients)}",
            "# HELP nabz_station_logins_failed_total Failed login attempts (wrong password, unknown or disabled user).",
            "# TYPE nabz_station_logins_failed_total counter",
            f"nabz_station_logins_failed_total {st.logins_failed}",
            "# HELP nabz_station_logins_blocked_total Login attempts refused by the rate limit.",
            "# TYPE nabz_station_logins_blocked_total counter",
            f"nabz_station_logins_blocked_total {st.logins_blocked}",
            "# HELP nabz_station_logins_total Successful logins.",
            "# TYPE nabz_station_logins_total counter",
            f"nabz_station_logins_total {st.logins}",
            "# HELP nabz_station_mqtt_connected 1 while connected to the broker.",
            "# TYPE nabz_station_mqtt_connected gauge",
            f"nabz_station_mqtt_connected {int(st.hub.connected)}",
            "# HELP nabz_station_mqtt_messages_total MQTT messages received (vitals and alarm events).",
            "# TYPE nabz_station_mqtt_messages_total counter",
            f"nabz_station_mqtt_messages_total {st.hub.messages}",
            "# HELP nabz_station_commands_total Alarm commands published to the alerts service, by action.",
            "# TYPE nabz_station_commands_total counter",
            *(
                f'nabz_station_commands_total{{action="{a}"}} {st.hub.commands_sent.get(a, 0)}'
                for a in ("ack", "silence", "unsilence")
            ),  # fmt: skip
        ]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await st.hub.start()
        prune = asyncio.create_task(_prune(st))
        try:
            yield
        finally:
            prune.cancel()
            await st.hub.stop()
            st.strip_pool.shutdown(wait=False, cancel_futures=True)  # a hung read ends by its timeout

    routes = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", ward),
        Route("/events", events),
        Route("/patient/{patient}", patient),
        Route("/patient/{patient}/trends.svg", trends_svg),
        Route("/patient/{patient}/alarm/{alarm}", strip_page),
        Route("/patient/{patient}/alarm/{alarm}/strip.svg", strip_svg),
        Route("/api/alarms/{alarm}/ack", ack, methods=["POST"]),
        Route("/api/silences", silence, methods=["POST"]),
        Route("/api/silences/{silence}/end", unsilence, methods=["POST"]),
        Route("/admin", admin),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    return StationApp(Starlette(routes=routes, lifespan=lifespan), st)


async def _prune(st: Station) -> None:
    sc = st.config.station
    while True:
        now = st.clock()
        await asyncio.to_thread(st.db.prune_sessions, now, sc.session_idle_s, sc.session_max_s)
        st.by_user.prune(now)  # names and addresses tried once, long ago
        st.by_address.prune(now)
        await asyncio.sleep(300)


def _hours(request: Request) -> int:
    try:
        h = int(request.query_params.get("hours", "6"))
    except ValueError:
        h = 6
    return h if h in TREND_HOURS else 6


def _panels(data: dict[str, list[tuple[float, float, float, float]]], config: Config) -> list[Panel]:
    a = config.alerts
    red, amber = PRIORITY_COLOURS["high"], PRIORITY_COLOURS["medium"]
    panels = [
        Panel("Heart rate /min", 40, 140, [
            Series("ECG", "#c0392b", data.get("ecg.hr_bpm", [])),
            Series("ECG patch", "#e67e22", data.get("device.hr_bpm", [])),
            Series("pulse (oximeter)", "#2c3e91", data.get("device.pr_bpm", [])),
            Series("pulse (PPG)", "#16a085", data.get("ppg.pr_bpm", [])),
        ], bands=[(0, a.hr_low_bpm, amber), (a.hr_high_bpm, 400, amber)]),
        Panel("SpO2 % (PPG estimate uncalibrated)", 80, 100, [
            Series("oximeter", "#2c3e91", data.get("device.spo2_pct", [])),
            Series("PPG (uncalibrated)", "#16a085", data.get("ppg.spo2_pct", [])),
        ], bands=[(0, a.spo2_critical_pct, red), (a.spo2_critical_pct, a.spo2_low_pct, amber)]),
        Panel("Signal quality (0-1)", 0, 1, [
            Series("ECG", "#c0392b", data.get("ecg.sqi", [])),
            Series("PPG", "#16a085", data.get("ppg.sqi", [])),
        ], bands=[(0, a.min_sqi, amber)]),
        Panel("Battery %", 0, 100, [Series("lowest device", "#555555", data.get("device.battery_pct", []))],
              bands=[(0, a.battery_low_pct, amber)]),
    ]  # fmt: skip
    resp = data.get("ecg.resp_bpm", []) + data.get("ppg.resp_bpm", [])
    if resp:
        panels.insert(2, Panel("Respiration /min", 8, 30, [
            Series("from ECG", "#c0392b", data.get("ecg.resp_bpm", [])),
            Series("from PPG", "#16a085", data.get("ppg.resp_bpm", [])),
        ]))  # fmt: skip
    return panels


class StationApp:
    """The ASGI app, with headers on every response (no framing, no sniffing, no referrer, a
    strict CSP), and its `station` for the runner and tests."""

    def __init__(self, app: ASGIApp, station: Station) -> None:
        self.app = app
        self.station = station

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", _CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin"),
                ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
