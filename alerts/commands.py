"""`nabz alerts ...`."""

from __future__ import annotations

import argparse
from typing import Any

from nabz.cli import add_config_option, load_config, serve

__all__ = ["register"]


def register(sub: Any, bench: Any) -> None:
    al = sub.add_parser("alerts", help="the alarm service")
    al_sub = al.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = al_sub.add_parser("run", help="evaluate rules on derived vitals and notify")
    add_config_option(run)
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from alerts.service import AlertService

    return serve(AlertService(load_config(args)))
