"""`nabz station run|user|audit`: the nurse station and its accounts.

Passwords are read without echo (getpass, asked twice) or, for scripts, as one line on standard
input (`--password-stdin`); they are never printed, logged or taken as an argument (arguments
show in `ps` and shell history). The station's database, which holds the hashes, is created 0600.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

from nabz.cli import add_config_option, load_config, serve

__all__ = ["register"]


def register(sub: Any, bench: Any) -> None:
    st = sub.add_parser("station", help="the nurse station web page and its user accounts")
    st_sub = st.add_subparsers(dest="action", required=True, metavar="ACTION")

    run = st_sub.add_parser(
        "run",
        help="serve the nurse station (live ward, alarms, acknowledgement, strips)",
        description="Reads [station], [mqtt], [ingest] store_path and [alerts] store_path from the "
        "configuration, and [influx] (url, bucket, token, waveforms) to draw strips from InfluxDB when "
        "the ingest store does not hold them (none kept, or an alarm older than the dedup window): give "
        "the station a read token through NABZ_INFLUX__TOKEN. "
        "Create accounts first with `nabz station user add`.",
    )
    add_config_option(run)
    run.add_argument("--host", help="listen address (default [station] host)")
    run.add_argument("--port", type=int, help="port (default [station] port)")
    run.set_defaults(handler=_run)

    user = st_sub.add_parser("user", help="add, list and change accounts (roles: nurse, doctor, admin)")
    user_sub = user.add_subparsers(dest="user_action", required=True, metavar="ACTION")

    def ucmd(name: str, help_text: str, handler: Any, *, named: bool = True) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = user_sub.add_parser(name, help=help_text, description=help_text)
        add_config_option(p)
        if named:
            p.add_argument("name", help="user name: lower-case letters, digits, '.', '_' or '-'")
        p.set_defaults(handler=handler)
        return p

    p = ucmd("add", "create an account (asks for its password twice, without echo)", _add)
    p.add_argument("--role", required=True, choices=("nurse", "doctor", "admin"))
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password as one line on standard input"
    )
    p = ucmd("passwd", "set a new password (ends the user's sessions)", _passwd)
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password as one line on standard input"
    )
    ucmd(
        "disable",
        "lock an account out at once (ends its sessions); the audit log keeps its history",
        _disable,
    )
    ucmd("enable", "allow a disabled account to log in again", _enable)
    ucmd("list", "accounts, roles and whether they are disabled", _list, named=False)

    audit = st_sub.add_parser("audit", help="the station's append-only audit log, newest last")
    add_config_option(audit)
    audit.add_argument("--limit", type=int, default=50)
    audit.add_argument("--user", help="only this user's actions")
    audit.set_defaults(handler=_audit)


def _db(args: argparse.Namespace) -> Any:
    from dashboards.station.db import StationDB

    return StationDB(load_config(args).station.db_path)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (containers)
        return f"cli:uid{os.getuid()}"


def _read_password(args: argparse.Namespace, username: str) -> str | None:
    from dashboards.station.auth import AuthError, check_new_password

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            print("nabz: no terminal to ask for the password on; use --password-stdin", file=sys.stderr)
            return None
        password = getpass.getpass(f"password for {username}: ")
        if getpass.getpass("again: ") != password:
            print("nabz: the two passwords differ; nothing changed", file=sys.stderr)
            return None
    try:
        check_new_password(username, password)
    except AuthError as exc:
        print(f"nabz: {exc}; nothing changed", file=sys.stderr)
        return None
    return password


def _add(args: argparse.Namespace) -> int:
    from dashboards.station.auth import AuthError, check_username, hash_password

    try:
        name = check_username(args.name)
    except AuthError as exc:
        print(f"nabz: {exc}", file=sys.stderr)
        return 2
    db = _db(args)
    if db.user(name) is not None:
        print(f"nabz: user {name} exists already (use `nabz station user passwd {name}`)", file=sys.stderr)
        return 1
    password = _read_password(args, name)
    if password is None:
        return 1
    now = time.time()
    db.add_user(name, args.role, hash_password(password), now)
    db.audit(now, _actor(), "user_add", name, {"role": args.role})
    print(f"added {args.role} {name} to {db.path}")
    return 0


def _passwd(args: argparse.Namespace) -> int:
    from dashboards.station.auth import hash_password

    db = _db(args)
    if db.user(args.name) is None:
        print(f"nabz: no user {args.name}", file=sys.stderr)
        return 1
    password = _read_password(args, args.name)
    if password is None:
        return 1
    now = time.time()
    db.set_password(args.name, hash_password(password), now)
    db.audit(now, _actor(), "user_passwd", args.name)
    print(f"password of {args.name} changed; their sessions have ended")
    return 0


def _set_disabled(args: argparse.Namespace, disabled: bool) -> int:
    db = _db(args)
    if not db.set_disabled(args.name, disabled):
        print(f"nabz: no user {args.name}", file=sys.stderr)
        return 1
    db.audit(time.time(), _actor(), "user_disable" if disabled else "user_enable", args.name)
    print(f"{args.name} {'disabled' if disabled else 'enabled'}")
    return 0


def _disable(args: argparse.Namespace) -> int:
    return _set_disabled(args, True)


def _enable(args: argparse.Namespace) -> int:
    return _set_disabled(args, False)


def _list(args: argparse.Namespace) -> int:
    users = _db(args).users()
    for u in users:
        created = datetime.fromtimestamp(u.created_at, UTC).strftime("%Y-%m-%d")
        print(f"{u.username:24s} {u.role:7s} {'disabled' if u.disabled else 'active':8s} created {created}")
    if not users:
        print("no accounts yet: nabz station user add NAME --role nurse")
    return 0


def _shown(text: str) -> str:
    """`text` safe to print on a terminal: control and format characters (escape sequences, carriage
    returns, right-to-left overrides) written as Python escapes, so a row cannot rewrite the rows
    around it. An audit row holds whatever a login form or a proxy header sent."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _audit(args: argparse.Namespace) -> int:
    db = _db(args)
    rows = [r for r in db.audit_rows() if args.user is None or r.username == args.user][-args.limit :]
    for r in rows:
        at = datetime.fromtimestamp(r.at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        user, action, target, detail, address = map(
            _shown, (r.username, r.action, r.target, r.detail, r.address)
        )
        print(f"{r.seq:6d} {at} {user:16s} {action:16s} {target:20s} {detail} {address}")
    broken = db.verify_audit()
    if broken is not None:
        print(f"nabz: the audit chain is broken at entry {broken}", file=sys.stderr)
        return 1
    return 0


def _run(args: argparse.Namespace) -> int:
    from dashboards.station import StationError, StationServer

    cfg = load_config(args)
    server = StationServer(cfg, host=args.host, port=args.port)
    if not server.app.station.db.users():
        print(
            "nabz: no accounts yet; create one with `nabz station user add NAME --role nurse`",
            file=sys.stderr,
        )
    try:
        return serve(_Announce(server))
    except StationError as exc:
        print(f"nabz: {exc}", file=sys.stderr)
        return 1


class _Announce:
    def __init__(self, server: Any) -> None:
        self.server = server

    def start(self) -> None:
        self.server.start()
        print(f"nurse station on {self.server.url}", flush=True)

    def stop(self) -> None:
        self.server.stop()
