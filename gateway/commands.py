"""`nabz gateway ...`."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from nabz.cli import add_config_option, load_config

__all__ = ["register"]


def register(sub: Any, bench: Any) -> None:
    gw = sub.add_parser("gateway", help="the home gateway")
    gw_sub = gw.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = gw_sub.add_parser(
        "run",
        help="run a gateway: transport -> spool -> MQTT",
        description="Run one gateway. The virtual transport serves simulated wearables (for trying "
        "the system without hardware).",
    )
    add_config_option(run)
    run.add_argument("--transport", choices=["virtual"], default="virtual")
    run.add_argument("--patients", type=int, default=1, help="virtual transport: simulated patients")
    run.add_argument("--seed", type=int, default=1, help="virtual transport: seed")
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from gateway.service import Gateway
    from gateway.virtual import VirtualTransport
    from hardware import make_patients

    cfg = load_config(args)
    patients = make_patients(args.patients, args.seed)
    gateway = Gateway(cfg, VirtualTransport([d for p in patients for d in p.devices]))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    gateway.start()
    try:
        gateway.run(stop)
    except KeyboardInterrupt:
        pass
    gateway.stop()
    return 0
