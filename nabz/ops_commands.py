"""`nabz broker config`, `nabz bench soak`, `nabz bench fuzz`: the commands of docs/security.md and
the fault and fuzzing work (docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nabz.broker_config import BrokerFiles

__all__ = ["register"]


def register(sub: Any, bench: Any) -> None:
    broker = sub.add_parser("broker", help="the MQTT broker: a production mosquitto configuration")
    broker_sub = broker.add_subparsers(dest="action", required=True, metavar="ACTION")
    conf = broker_sub.add_parser(
        "config",
        help="write mosquitto.conf and an ACL file (TLS only, no anonymous clients, per-gateway ACLs)",
        description="A production mosquitto configuration for the Nabz topic tree (docs/security.md): "
        "TLS listeners only, allow_anonymous false, passwords or client certificates, and an ACL "
        "that lets each gateway write only under its own topics, ingest read the gateways and write "
        "vitals, alerts read vitals and write alarms, and the nurse station read derived topics and "
        "write nurse commands. Without --out the files are printed. With --passwords a password is "
        "generated for every account into files created 0600 (never printed); run again with one more "
        "--gateway, it adds that account and keeps every existing password (--rotate replaces them all).",
    )
    conf.add_argument("--site", action="append", required=True, help="site id (repeat for several)")
    conf.add_argument("--gateway", action="append", default=[], metavar="ID", help="gateway id (repeat)")
    conf.add_argument("--auth", choices=["password", "certificate", "both"], default="password")
    conf.add_argument("--bind", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    conf.add_argument("--port", type=int, default=8883, help="TLS port (default 8883)")
    conf.add_argument("--cert-port", type=int, default=8884, help="client-certificate port with --auth both")
    conf.add_argument("--cafile", default="/etc/mosquitto/certs/ca.crt")
    conf.add_argument("--certfile", default="/etc/mosquitto/certs/server.crt")
    conf.add_argument("--keyfile", default="/etc/mosquitto/certs/server.key")
    conf.add_argument("--password-file", default="/etc/mosquitto/passwd")
    conf.add_argument("--acl-file", default="/etc/mosquitto/nabz.acl")
    conf.add_argument("--persistence-dir", default="/var/lib/mosquitto/")
    conf.add_argument("--out", metavar="DIR", help="write mosquitto.conf and nabz.acl here (and passwords)")
    conf.add_argument(
        "--passwords",
        action="store_true",
        help="with --out: generate a password per account into passwd (hashed) and accounts.toml (0600); "
        "accounts already in DIR/passwd keep theirs, only new ones (a gateway added) get one",
    )
    conf.add_argument(
        "--rotate",
        action="store_true",
        help="with --passwords: make every account's password anew, the existing ones too "
        "(every service and gateway then needs its new line of accounts.toml)",
    )
    conf.set_defaults(handler=_broker_config)

    soak = bench.add_parser(
        "soak",
        help="the whole pipeline on real processes for N minutes with faults injected: nothing lost or doubled",
        description="Simulated patients -> gateways -> mosquitto -> ingest -> VictoriaMetrics -> alerts, "
        "for --minutes of wall time, on a compressed clock, while faults are injected in turn (broker "
        "restart, ingest SIGKILL, time-series server down, SMS notifier errors, uplink cut, a gateway "
        "crash restarted on its spool). Counts readings by message id at both ends and alarms notified. JSON keys: "
        "readings_sent, readings_stored, duplicates, lost, alarms_expected, alarms_notified.",
    )
    soak.add_argument("--minutes", type=float, default=5.0, help="wall-clock minutes (default 5)")
    soak.add_argument("--patients", type=int, default=4, help="simulated patients (default 4)")
    soak.add_argument("--speed", type=float, default=10.0, help="simulated seconds per second (default 10)")
    soak.add_argument("--seed", type=int, default=1)
    soak.add_argument("--json", action="store_true", help="print the result as JSON")
    soak.set_defaults(handler=_soak)

    fuzz = bench.add_parser(
        "fuzz",
        help="mutated input into every parser of outside bytes: cases, crashes (must be 0), rejections by reason",
        description="BLE frames and standard characteristics, the serial framing, MQTT payloads, AT "
        "command responses and configuration files, each fed mutated valid input. Prints the seed; "
        "a crash is replayed with --seed S --target T --replay CASE.",
    )
    fuzz.add_argument("--cases", type=int, default=100_000)
    fuzz.add_argument("--seed", type=int, default=None, help="run seed (default: random, printed)")
    fuzz.add_argument("--target", action="append", help="only these targets (repeat); default all")
    fuzz.add_argument("--replay", type=int, metavar="CASE", help="run one case again with its traceback")
    fuzz.add_argument("--json", action="store_true", help="print the result as JSON")
    fuzz.set_defaults(handler=_fuzz)


def _broker_config(args: argparse.Namespace) -> int:
    from nabz.broker_config import BrokerPlan, render_acl, render_conf, write_broker_files

    try:
        plan = BrokerPlan(
            sites=args.site, gateways=args.gateway, auth=args.auth, bind=args.bind, port=args.port,
            cert_port=args.cert_port, cafile=args.cafile, certfile=args.certfile, keyfile=args.keyfile,
            password_file=args.password_file, acl_file=args.acl_file, persistence_dir=args.persistence_dir,
        )  # fmt: skip
    except ValueError as exc:
        print(f"nabz broker config: {exc}", file=sys.stderr)
        return 2
    if args.rotate and not args.passwords:
        print("nabz broker config: --rotate needs --passwords", file=sys.stderr)
        return 2
    if args.out:
        try:
            done = write_broker_files(plan, Path(args.out), passwords=args.passwords, rotate=args.rotate)
        except ValueError as exc:
            print(f"nabz broker config: {exc}", file=sys.stderr)
            return 2
        for path in done.written:
            mode = path.stat().st_mode & 0o777
            print(f"wrote {path} ({mode:04o})")
        if args.passwords:
            _report_passwords(done, Path(args.out))
        return 0
    if args.passwords:
        print("nabz broker config: --passwords needs --out (passwords are never printed)", file=sys.stderr)
        return 2
    print(render_conf(plan))
    print("# ---- nabz.acl ----")
    print(render_acl(plan))
    return 0


def _report_passwords(done: BrokerFiles, out: Path) -> None:
    """What changed in passwd, and what the installer does next."""
    if done.kept:
        print(f"kept the passwords in {out / 'passwd'} of: {', '.join(done.kept)}")
    if done.added:
        print(f"new passwords for: {', '.join(done.added)}")
        print(
            "install passwd as password_file (then reload mosquitto) and hand each new account "
            f"its line of {out / 'accounts.toml'}"
        )
    else:
        print("every account already has a password: passwd and accounts.toml left as they were")
    for name in done.stale:
        print(
            f"{out / 'passwd'} still has {name}, which this ACL no longer names: "
            f"remove it with mosquitto_passwd -D {out / 'passwd'} {name}"
        )


def _fuzz(args: argparse.Namespace) -> int:
    from nabz.fuzz import replay, run_fuzz
    from nabz.fuzz_targets import targets

    try:
        chosen = targets(args.target)
    except ValueError as exc:
        print(f"nabz bench fuzz: {exc}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    logging.disable(logging.CRITICAL)  # the parsers log what they reject: millions of lines here
    try:
        if args.replay is not None:
            if len(chosen) != 1:
                print("nabz bench fuzz: --replay needs exactly one --target", file=sys.stderr)
                return 2
            result = replay(chosen[0], seed, args.replay)
            print(json.dumps(result, indent=2) if args.json else _replay_text(result))
            return 1 if result["error"] else 0
        print(f"nabz bench fuzz: seed {seed}", file=sys.stderr)
        report = run_fuzz(chosen, args.cases, seed, progress=lambda s: print(s, file=sys.stderr))
    finally:
        logging.disable(logging.NOTSET)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(f"seed {seed}: {report['cases']} cases, {report['crashes']} crashes, {report['seconds']} s")
        for reason, n in sorted(report["rejected_by_reason"].items(), key=lambda kv: -kv[1]):
            print(f"  {n:7d}  {reason}")
        for e in report["crash_examples"]:
            print(f"CRASH {e['target']} case {e['case']}: {e['error']}\n  replay: {e['replay']}")
    return 1 if report["crashes"] else 0


def _replay_text(r: dict[str, Any]) -> str:
    head = f"target {r['target']} seed {r['seed']} case {r['case']}\ninput: {r['input']}\n"
    return head + (f"outcome: {r['outcome']}" if r["error"] is None else r["error"])


def _soak(args: argparse.Namespace) -> int:
    from nabz.soak import run_soak

    started = time.monotonic()
    result = run_soak(minutes=args.minutes, patients=args.patients, speed=args.speed, seed=args.seed)
    result["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2) if args.json else " ".join(f"{k}={v}" for k, v in result.items()))
    return 0 if result["lost"] == 0 and result["duplicates_stored"] == 0 and result["alarms_ok"] else 1
