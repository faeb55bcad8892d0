"""`nabz`: one command for every part of the system. `nabz <command> --help` tells more."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from nabz import config as config_mod

__all__ = ["main", "build_parser"]

log = logging.getLogger("nabz")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="TOML configuration (default: $NABZ_CONFIG, else ./nabz.toml, else built-in defaults); "
        "NABZ_<SECTION>__<KEY> environment variables override it",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nabz",
        description="Nabz: home vital-signs monitoring. Wearables -> gateway -> MQTT -> ingest -> alerts.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run the whole system in one process on embedded defaults",
        description="Simulated patients, an embedded MQTT broker, the embedded store, SMS to an outbox "
        "file, and a live console view. Stops after --duration seconds or on Ctrl-C, then drains "
        "everything in flight and (with --report) writes a JSON report.",
    )
    demo.add_argument("--patients", type=int, default=5, metavar="N", help="simulated patients (default 5)")
    demo.add_argument(
        "--duration", type=float, default=None, metavar="SECONDS", help="run time (default: until Ctrl-C)"
    )
    demo.add_argument("--seed", type=int, default=1, help="seed for the simulated patients (default 1)")
    demo.add_argument(
        "--broker", metavar="URL", help="use this MQTT broker (mqtt://host:port) instead of the embedded one"
    )
    demo.add_argument(
        "--influx", metavar="URL", help="also write to this InfluxDB-compatible server (/api/v2/write)"
    )
    demo.add_argument("--influx-token", metavar="TOKEN", default=None, help="token for --influx")
    demo.add_argument("--report", metavar="FILE", help="write a JSON report of readings, alarms and SMS here")
    demo.add_argument(
        "--data-dir",
        metavar="DIR",
        default="var/demo",
        help="where the demo keeps its files (emptied at start)",
    )
    demo.add_argument("--no-live", action="store_true", help="plain log lines instead of the live table")

    gw = sub.add_parser("gateway", help="the home gateway")
    gw_sub = gw.add_subparsers(dest="action", required=True, metavar="ACTION")
    gw_run = gw_sub.add_parser(
        "run",
        help="run a gateway: transport -> spool -> MQTT",
        description="Run one gateway. The virtual transport serves simulated wearables (for trying "
        "the system without hardware).",
    )
    _add_config(gw_run)
    gw_run.add_argument("--transport", choices=["virtual"], default="virtual")
    gw_run.add_argument("--patients", type=int, default=1, help="virtual transport: simulated patients")
    gw_run.add_argument("--seed", type=int, default=1, help="virtual transport: seed")

    ing = sub.add_parser("ingest", help="the server's ingest worker")
    ing_sub = ing.add_subparsers(dest="action", required=True, metavar="ACTION")
    ing_run = ing_sub.add_parser("run", help="subscribe, validate, store, derive vitals")
    _add_config(ing_run)

    al = sub.add_parser("alerts", help="the alarm service")
    al_sub = al.add_subparsers(dest="action", required=True, metavar="ACTION")
    al_run = al_sub.add_parser("run", help="evaluate rules on derived vitals and notify")
    _add_config(al_run)

    enrol = sub.add_parser("enrol", help="enrol a device to a patient in the ingest store")
    _add_config(enrol)
    enrol.add_argument("device")
    enrol.add_argument("patient")

    dl = sub.add_parser("deadletter", help="show messages ingest could not accept, with the reason")
    _add_config(dl)
    dl.add_argument("--limit", type=int, default=20)

    cfg = sub.add_parser("config", help="show the effective configuration (secrets redacted)")
    _add_config(cfg)
    return parser


def _serve(start_stop: tuple[object, ...]) -> int:
    """Run services until SIGINT/SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    for s in start_stop:
        s.start()  # type: ignore[attr-defined]
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    for s in reversed(start_stop):
        s.stop()  # type: ignore[attr-defined]
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # paho reports connection trouble that our own callbacks already log in plain words.
    logging.getLogger("paho").setLevel(logging.DEBUG if args.verbose >= 2 else logging.CRITICAL)
    try:
        return _dispatch(args)
    except config_mod.ConfigError as exc:
        print(f"nabz: configuration error: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from nabz.demo import DemoOptions, run_demo

        report = run_demo(
            DemoOptions(
                patients=args.patients,
                duration_s=args.duration,
                seed=args.seed,
                broker=args.broker,
                influx=args.influx,
                influx_token=args.influx_token,
                report=args.report,
                data_dir=args.data_dir,
                live=not args.no_live,
            )
        )
        r = report["readings"]
        print(
            f"readings generated {r['generated']}, published {r['published']}, stored {r['stored']}, "
            f"dead-lettered {r['dead_lettered']}; alarms {len(report['alarms'])}; "
            f"SMS {len(report['notifications'])}"
        )
        return 0 if r["generated"] == r["stored"] else 1

    cfg = config_mod.load(getattr(args, "config", None))
    if args.command == "config":
        print(json.dumps(config_mod.redacted(cfg), indent=2))
        return 0
    if args.command == "enrol":
        from ingest.store import Store

        store = Store(cfg.ingest.store_path)
        store.enrol(args.device, args.patient)
        print(f"{args.device} -> {args.patient}")
        return 0
    if args.command == "deadletter":
        from ingest.store import Store

        for d in Store(cfg.ingest.store_path).dead_letters()[-args.limit :]:
            print(f"{d.received_at:.3f} {d.reason:20s} {d.topic} {d.detail} {d.payload[:120]!r}")
        return 0
    if args.command == "ingest":
        from ingest.service import IngestService

        return _serve((IngestService(cfg),))
    if args.command == "alerts":
        from alerts.service import AlertService

        return _serve((AlertService(cfg),))
    if args.command == "gateway":
        from gateway.service import Gateway
        from gateway.virtual import VirtualTransport
        from hardware import make_patients

        patients = make_patients(args.patients, args.seed)
        transport = VirtualTransport([d for p in patients for d in p.devices])
        gateway = Gateway(cfg, transport)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        gateway.start()
        try:
            gateway.run(stop)
        except KeyboardInterrupt:
            pass
        gateway.stop()
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
