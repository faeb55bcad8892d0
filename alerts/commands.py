"""`nabz alerts ...` and `nabz bench alarms`.

Commands that change alarms (ack, silence, unsilence) are written to the alert store's command
table; the running service applies them within a second, in order, as the only writer of alarm
state. They wait a little for its answer and say so if no service picked them up.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from nabz.cli import add_config_option, load_config, serve

__all__ = ["register"]


def register(sub: Any, bench: Any) -> None:
    al = sub.add_parser("alerts", help="the alarm service and its alarms, silences, on-call and SMS")
    al_sub = al.add_subparsers(dest="action", required=True, metavar="ACTION")

    def cmd(name: str, help_text: str, handler: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = al_sub.add_parser(name, help=help_text, description=help_text)
        add_config_option(p)
        p.set_defaults(handler=handler)
        return p

    cmd("run", "evaluate rules on derived vitals and gateway status, escalate, send SMS", _run)
    cmd("list", "open alarms with their acknowledgement codes", _list)
    p = cmd("ack", "acknowledge one alarm by its code (or alarm id)", _ack)
    p.add_argument("code")
    p.add_argument("--by", required=True, metavar="NAME", help="who acknowledges (recorded in the audit log)")
    p.add_argument("--wait", type=float, default=5.0, metavar="SECONDS", help="wait for the service's answer")
    p = cmd("silence", "hold back notifications for a patient (and kind) for a while", _silence)
    p.add_argument("patient", help='patient id, or "*" for every patient')
    p.add_argument("kind", nargs="?", default="*", help='alarm kind (default "*": every kind)')
    p.add_argument("--for", dest="duration", required=True, metavar="DURATION", help="e.g. 30m, 2h")
    p.add_argument("--by", required=True, metavar="NAME")
    p.add_argument("--reason", default="")
    p.add_argument("--wait", type=float, default=5.0, metavar="SECONDS")
    p = cmd("unsilence", "end a silence early", _unsilence)
    p.add_argument("silence_id")
    p.add_argument("--wait", type=float, default=5.0, metavar="SECONDS")
    cmd("silences", "silences in force", _silences)
    p = cmd("oncall", "who is on call (primary, backup, team) now or at a given time", _oncall)
    p.add_argument("--at", metavar="TIME", help="local date-time, e.g. 2026-11-25T22:00 (default: now)")
    p = cmd(
        "test-sms",
        "send one SMS through the configured notifiers now (stop the service first if it owns the modem)",
        _test_sms,
    )
    p.add_argument("to", metavar="NUMBER")
    p.add_argument("--text", default="NABZ test message: SMS from the alerts service reach you.")
    p = cmd("audit", "the append-only audit log, newest last", _audit)
    p.add_argument("--limit", type=int, default=50)

    b = bench.add_parser(
        "alarms",
        help="replay scripted clinical and technical events on simulated patients: sensitivity, false alarms, latency",
        description="Simulated patients with noise and motion artefacts through the real DSP and the alert engine.",
    )
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.add_argument("--patients", type=int, default=40, help="patients per scenario round (default 40)")
    b.add_argument("--minutes", type=float, default=30.0, help="simulated minutes per patient (default 30)")
    b.add_argument("--seed", type=int, default=1)
    b.add_argument("--workers", type=int, default=0, help="processes (default: one per CPU)")
    b.add_argument(
        "--broker", metavar="URL", help="also measure end-to-end latency under load on this MQTT broker"
    )
    b.add_argument(
        "--load-patients",
        type=int,
        default=1000,
        help="patients' vitals published with --broker (default 1000)",
    )
    b.add_argument("--load-seconds", type=int, default=30, help="seconds of load with --broker (default 30)")
    b.set_defaults(handler=_bench)


def _run(args: argparse.Namespace) -> int:
    from alerts.service import AlertService, demo_recipients
    from nabz.config import ConfigError

    cfg = load_config(args)
    try:
        service = AlertService(cfg)
    except ValueError as exc:  # what the configuration asks cannot be done (nobody to text, ...)
        raise ConfigError(str(exc)) from exc
    if not service.phone_notifier and demo_recipients(cfg):
        # The demo's own setup, which the service leaves unsaid; `nabz alerts run` is never the demo.
        logging.getLogger("alerts.service").warning(
            "alerts: no notifier reaches a phone and nobody is on call ([oncall.people] and [alerts] "
            "on_call unset): alarms go to the outbox file only (%s), addressed to the demo's number",
            cfg.alerts.outbox_path,
        )
    return serve(service)


def _store(args: argparse.Namespace, cfg: Any = None) -> Any:
    """The alerts service's store, or None (said on stderr) if there is none at the configured path.

    Only `nabz alerts run` makes the store: opening it here would create an empty one wherever
    this command runs (a relative store_path is taken from the working directory), and its
    "no open alarms" would hide the real ones."""
    from pathlib import Path

    from alerts.store import AlertStore

    path = Path((cfg or load_config(args)).alerts.store_path)
    if not path.exists():
        where = "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        print(
            f"nabz alerts {args.action}: no alerts store at {path.absolute()}{where}: check [alerts] "
            "store_path in the configuration the alerts service runs with (--config), or run this "
            "from its working directory",
            file=sys.stderr,
        )
        return None
    return AlertStore(path)


def _local(t: float, tz: str) -> str:
    return datetime.fromtimestamp(t, UTC).astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M:%S %Z")


def _list(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = _store(args, cfg)
    if store is None:
        return 2
    alarms = store.open_alarms()
    for a in alarms:
        print(f"{a.ack_code}  {a.priority:6s} {a.state:12s} {a.patient:10s} {a.kind:16s} "
              f"{_local(a.raised_at, cfg.alerts.timezone)}  {a.message}")  # fmt: skip
    if not alarms:
        print("no open alarms")
    return 0


def _submit(args: argparse.Namespace, action: str, payload: dict[str, Any]) -> int:
    store = _store(args)
    if store is None:
        return 2
    seq = store.add_command(time.time(), action, payload, "cli")
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        result = store.command_result(seq)
        if result is not None:
            print(result)
            return 1 if result.startswith("error") else 0
        time.sleep(0.1)
    print(f"queued as command {seq}; no alerts service answered within {args.wait:g} s "
          "(`nabz alerts run` applies it when it runs)")  # fmt: skip
    return 0


def _ack(args: argparse.Namespace) -> int:
    return _submit(args, "ack", {"code": args.code, "by": args.by})


def _silence(args: argparse.Namespace) -> int:
    from alerts.silences import parse_duration

    payload = {"patient": args.patient, "kind": args.kind, "duration_s": parse_duration(args.duration),
               "by": args.by, "reason": args.reason}  # fmt: skip
    return _submit(args, "silence", payload)


def _unsilence(args: argparse.Namespace) -> int:
    return _submit(args, "unsilence", {"silence_id": args.silence_id})


def _silences(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = _store(args, cfg)
    if store is None:
        return 2
    for s in store.silences(time.time()):
        print(f"{s.silence_id}  {s.patient} {s.kind}  until {_local(s.ends_at, cfg.alerts.timezone)}  "
              f"by {s.created_by} {s.reason}")  # fmt: skip
    return 0


def _oncall(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    from alerts.oncall import Schedule

    tz = ZoneInfo(cfg.oncall.timezone)
    at = time.time()
    if args.at:
        dt = datetime.fromisoformat(args.at)
        at = (dt if dt.tzinfo else dt.replace(tzinfo=tz)).timestamp()
    schedule = Schedule(cfg.oncall, cfg.alerts.on_call)
    print(f"on call at {_local(at, cfg.oncall.timezone)}:")
    for role, people in schedule.describe(at).items():
        print(f"  {role:8s} {', '.join(people) or '-'}")
    return 0


def _test_sms(args: argparse.Namespace) -> int:
    from alerts.dispatch import build_notifiers
    from alerts.smstext import split

    cfg = load_config(args)
    _, parts = split(args.text)
    for n in build_notifiers(cfg):
        results = [
            n.send(args.to, part, f"test-{int(time.time())}-{i}", time.time()) for i, part in enumerate(parts)
        ]
        bad = [d for d in results if not d.ok]
        if not bad:
            print(f"sent through {n.name}: {', '.join(d.detail or 'ok' for d in results)}")
            return 0
        print(f"{n.name} failed ({'retryable' if bad[0].retryable else 'not retryable'}): {bad[0].detail}")
    return 1


def _audit(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = _store(args, cfg)
    if store is None:
        return 2
    for a in store.audit()[-args.limit :]:
        detail = a["detail"] if len(a["detail"]) < 160 else a["detail"][:157] + "..."
        print(
            f"{_local(a['at'], cfg.alerts.timezone)}  {a['what']:12s} {a['state']:12s} {a['alarm_id'][:8]:8s} {detail}"
        )
    return 0


def _bench(args: argparse.Namespace) -> int:
    from alerts.bench import run_bench

    result: dict[str, Any] = {}
    if args.patients > 0:
        result = run_bench(args.patients, args.minutes, args.seed, args.workers or None)
    if args.broker:
        from alerts.loadbench import live_latency

        result.update(live_latency(args.broker, args.load_patients, args.load_seconds, seed=args.seed))
    print(json.dumps(result, indent=2) if args.json else _summary(result))
    return 0


def _summary(r: dict[str, Any]) -> str:
    if "events" not in r:
        return str(r)
    return (
        f"events {r['events']}, detected {r['detected']} (sensitivity {r['sensitivity']:.3f}); "
        f"false alarms {r['false_alarms_per_patient_day']:.2f} per patient-day; "
        f"latency p99 {r['latency_p99_s']:.3f} s"
    )
