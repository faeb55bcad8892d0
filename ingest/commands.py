"""`nabz ingest ...`, `nabz enrol`, `nabz deadletter`, `nabz influx setup`, `nabz bench dsp|ingest`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from nabz.cli import add_config_option, load_config, serve

__all__ = ["register"]


def register(sub: Any, bench: Any) -> None:
    ing = sub.add_parser("ingest", help="the server's ingest worker")
    ing_sub = ing.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = ing_sub.add_parser("run", help="subscribe, validate, store, derive vitals")
    add_config_option(run)
    run.set_defaults(handler=_run)

    enrol = sub.add_parser(
        "enrol",
        help="enrol a device to a patient in the ingest store",
        description="Enrol a device to a patient. With --gateway, ingest accepts the device's readings only "
        "from that gateway and dead-letters others as wrong_gateway (a gateway's account cannot speak for "
        "another home's wearables); --any-gateway lifts the binding. Without either, a binding is kept while "
        "the patient stays the same.",
    )
    add_config_option(enrol)
    enrol.add_argument("device")
    enrol.add_argument("patient")
    where = enrol.add_mutually_exclusive_group()
    where.add_argument("--gateway", help="the gateway id (its MQTT topic segment) the device is read by")
    where.add_argument(
        "--any-gateway", action="store_true", help="accept the device from any gateway of the site"
    )
    enrol.set_defaults(handler=_enrol)

    dl = sub.add_parser("deadletter", help="show messages ingest could not accept, with the reason")
    add_config_option(dl)
    dl.add_argument("--limit", type=int, default=20)
    dl.set_defaults(handler=_deadletter)

    dsp = bench.add_parser(
        "dsp",
        help="ECG detector: EC57 scoring on MIT-BIH record 100 (clean, 24/12/6 dB); HR error and the AF "
        "suspicion score on simulated scenarios (tachycardia, bradycardia, a pause, atrial fibrillation)",
    )
    dsp.add_argument("--json", action="store_true", help="print the result as JSON")
    dsp.add_argument("--mitdb", metavar="DIR", help="directory with record 100 (default: the tests' copy)")
    dsp.add_argument(
        "--seed", type=int, default=20261125, help="seed of the added noise and of the simulated patients"
    )
    dsp.set_defaults(handler=_bench_dsp)

    load = bench.add_parser(
        "ingest",
        help="full ingest on real mosquitto and VictoriaMetrics: patients kept in real time, vs broker and naive",
    )
    load.add_argument("--json", action="store_true", help="print the result as JSON")
    load.add_argument("--workers", type=int, default=2, help="ingest worker processes (default 2)")
    load.add_argument("--seconds", type=int, default=20, help="length of each real-time run (default 20)")
    load.add_argument(
        "--start", type=int, default=None, metavar="N", help="patients in the first real-time run"
    )
    load.add_argument("--max-patients", type=int, default=4000)
    load.add_argument(
        "--messages",
        choices=("frame", "second"),
        default="frame",
        help="waveform per message: one BLE frame as the gateway sends (default), or a second's frames joined",
    )
    load.set_defaults(handler=_bench_ingest)

    influx = sub.add_parser("influx", help="InfluxDB 2 administration")
    influx_sub = influx.add_subparsers(dest="action", required=True, metavar="ACTION")
    setup = influx_sub.add_parser(
        "setup", help="create the bucket with its retention, the trends bucket and the downsampling task"
    )
    add_config_option(setup)
    setup.add_argument("--retention-days", type=float, default=30.0, help="raw data retention (default 30)")
    setup.add_argument(
        "--trends-days", type=float, default=730.0, help="1-minute trends retention (default 730)"
    )
    setup.set_defaults(handler=_influx_setup)


def _run(args: argparse.Namespace) -> int:
    from ingest.service import IngestService

    return serve(IngestService(load_config(args)))


def _enrol(args: argparse.Namespace) -> int:
    import re

    from ingest.store import Store
    from nabz.contract import ID_PATTERN

    for name in (args.device, args.patient, *([args.gateway] if args.gateway is not None else [])):
        if not re.match(ID_PATTERN, name):
            print(
                f"nabz enrol: {name!r} is not an id (letters, digits, '_', '.', '-'; up to 64)",
                file=sys.stderr,
            )
            return 2
    path = Path(load_config(args).ingest.store_path)
    new = not path.exists()
    store = Store(path)
    store.enrol(args.device, args.patient, args.gateway, any_gateway=args.any_gateway)
    gateway = store.enrolment_gateways().get(args.device)
    print(
        f"{args.device} -> {args.patient}"
        + (f" (read by gateway {gateway} only)" if gateway is not None else " (any gateway)")
        + f" in {path.absolute()}"
    )
    if new:  # enrolling before ingest's first start is fine; enrolling into the wrong file is not
        print(
            f"nabz enrol: there was no ingest store at {path.absolute()}{_relative(path)}: made a new "
            "one. Ingest reads enrolments from the store it runs with: check [ingest] store_path in "
            "its configuration (--config)",
            file=sys.stderr,
        )
    return 0


def _relative(path: Path) -> str:
    return "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()})"


def _deadletter(args: argparse.Namespace) -> int:
    from ingest.store import Store

    path = Path(load_config(args).ingest.store_path)
    if not path.exists():  # opening it would make an empty store here and show nothing
        print(
            f"nabz deadletter: no ingest store at {path.absolute()}{_relative(path)}: check [ingest] "
            "store_path in the configuration ingest runs with (--config), or run this from its "
            "working directory",
            file=sys.stderr,
        )
        return 2
    for d in Store(path).dead_letters()[-args.limit :]:
        print(f"{d.received_at:.3f} {d.reason:20s} {d.topic} {d.detail} {d.payload[:120]!r}")
    return 0


def _bench_dsp(args: argparse.Namespace) -> int:
    from ingest.dsp.bench import run_dsp_bench

    result = run_dsp_bench(args.mitdb, args.seed)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    for name, c in result["conditions"].items():
        print(
            f"{name:6s} Se {c['se']:6.2f} %  +P {c['ppv']:6.2f} %  SQI-unusable {c['unusable_pct']:5.1f} %  "
            f"usable: Se {c['se_usable']:6.2f} %  +P {c['ppv_usable']:6.2f} %"
        )
    for name, s in result["scenarios"].items():
        print(
            f"{name:16s} HR error median {s['hr_abs_err_median_bpm']} p95 {s['hr_abs_err_p95_bpm']} "
            f"max {s['hr_abs_err_max_bpm']} bpm; Se {s['se']} +P {s['ppv']}; longest pause {s['max_pause_reported_s']} s; "
            f"AF score in sinus rhythm at most {s['af_score_max']}"
        )
        if "af_score_onset_s" in s:
            print(
                f"{'':16s} AF score >= 0.7 {s['af_score_onset_s']} s after the AF began, "
                f"{s['af_score_above_threshold_pct']} % of the time from a minute in, "
                f"last {s['af_score_above_threshold_until_s']} s after it ended"
            )
    return 0


def _bench_ingest(args: argparse.Namespace) -> int:
    from ingest.benchload import run_ingest_bench

    result = run_ingest_bench(
        workers=args.workers,
        seconds=args.seconds,
        start_patients=args.start,
        max_patients=args.max_patients,
        messages=args.messages,
    )
    print(json.dumps(result, indent=2) if args.json else " ".join(f"{k}={v}" for k, v in result.items()))
    return 0


def _influx_setup(args: argparse.Namespace) -> int:
    from ingest.influxsetup import InfluxSetupError, setup_influx

    try:
        for line in setup_influx(
            load_config(args).influx, retention_days=args.retention_days, trends_days=args.trends_days
        ):
            print(line)
    except InfluxSetupError as exc:
        print(f"nabz influx setup: {exc}", file=sys.stderr)
        return 1
    return 0
