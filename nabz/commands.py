"""`nabz demo` and `nabz config`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from nabz import config as config_mod
from nabz.cli import add_config_option, load_config

__all__ = ["register"]


def register(sub: Any, bench: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the whole system in one process on embedded defaults",
        description="Simulated patients, an embedded MQTT broker, the embedded store, SMS to an outbox "
        "file, and a live console view. Stops after --duration seconds or on Ctrl-C, then drains "
        "everything in flight and (with --report) writes a JSON report. Exit status 1 if fewer "
        "readings were stored than generated.",
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
    demo.add_argument(
        "--station-port",
        type=int,
        default=8080,
        metavar="PORT",
        help="nurse page on 127.0.0.1:PORT (default 8080; a free port if it is taken)",
    )
    demo.add_argument("--no-live", action="store_true", help="plain log lines instead of the live table")
    demo.set_defaults(handler=_demo)

    cfg = sub.add_parser("config", help="show the effective configuration (secrets redacted)")
    add_config_option(cfg)
    cfg.set_defaults(handler=_config)


def _demo(args: argparse.Namespace) -> int:
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
            station_port=args.station_port,
        )
    )
    r = report["readings"]
    print(
        f"readings generated {r['generated']}, published {r['published']}, stored {r['stored']}, "
        f"dead-lettered {r['dead_lettered']}; alarms {len(report['alarms'])}; "
        f"SMS {len(report['notifications'])}"
    )
    return 0 if r["generated"] <= r["stored"] else 1


def _config(args: argparse.Namespace) -> int:
    print(json.dumps(config_mod.redacted(load_config(args)), indent=2))
    return 0
