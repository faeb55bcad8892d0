"""`nabz ingest ...`, `nabz enrol`, `nabz deadletter`."""

from __future__ import annotations

import argparse
from typing import Any

from nabz.cli import add_config_option, load_config, serve

__all__ = ["register"]


def register(sub: Any, bench: Any) -> None:
    ing = sub.add_parser("ingest", help="the server's ingest worker")
    ing_sub = ing.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = ing_sub.add_parser("run", help="subscribe, validate, store, derive vitals")
    add_config_option(run)
    run.set_defaults(handler=_run)

    enrol = sub.add_parser("enrol", help="enrol a device to a patient in the ingest store")
    add_config_option(enrol)
    enrol.add_argument("device")
    enrol.add_argument("patient")
    enrol.set_defaults(handler=_enrol)

    dl = sub.add_parser("deadletter", help="show messages ingest could not accept, with the reason")
    add_config_option(dl)
    dl.add_argument("--limit", type=int, default=20)
    dl.set_defaults(handler=_deadletter)


def _run(args: argparse.Namespace) -> int:
    from ingest.service import IngestService

    return serve(IngestService(load_config(args)))


def _enrol(args: argparse.Namespace) -> int:
    from ingest.store import Store

    Store(load_config(args).ingest.store_path).enrol(args.device, args.patient)
    print(f"{args.device} -> {args.patient}")
    return 0


def _deadletter(args: argparse.Namespace) -> int:
    from ingest.store import Store

    for d in Store(load_config(args).ingest.store_path).dead_letters()[-args.limit :]:
        print(f"{d.received_at:.3f} {d.reason:20s} {d.topic} {d.detail} {d.payload[:120]!r}")
    return 0
