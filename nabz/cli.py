"""`nabz`: one command for every part of the system. `nabz <command> --help` tells more.

Each package adds its own commands in its `commands` module (`register(sub, bench)`), so the
parts stay separate; each command's handler takes the parsed arguments and returns an exit code.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from nabz import config as config_mod
from nabz.secrets import UnsafeFileError

__all__ = ["main", "build_parser", "add_config_option", "load_config", "serve", "Service"]

# The modules that add commands, in the order their commands are listed in --help.
COMMAND_MODULES = (
    "nabz.commands",
    "gateway.commands",
    "ingest.commands",
    "alerts.commands",
    "dashboards.commands",
    "dashboards.station_commands",
    "nabz.ops_commands",
)

Handler = Callable[[argparse.Namespace], int]


class Service(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


def add_config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="TOML configuration (default: $NABZ_CONFIG, else ./nabz.toml, else built-in defaults); "
        "NABZ_<SECTION>__<KEY> environment variables override it",
    )


def load_config(args: argparse.Namespace) -> config_mod.Config:
    """The configuration; from here on its secrets are written as *** in every log line."""
    import msgspec

    from nabz.secrets import redact_logs

    cfg = config_mod.load(getattr(args, "config", None))
    redact_logs(msgspec.to_builtins(cfg))
    return cfg


def serve(*services: Service) -> int:
    """Start services, run until SIGINT or SIGTERM, stop them in reverse order.

    Both signals are handled here whatever this process inherited: a shell starts a background
    job with SIGINT ignored, and Python keeps an inherited "ignore" (Ctrl-C would do nothing)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    for s in services:
        s.start()
    quiet_gc()
    while not stop.wait(0.5):
        pass
    for s in reversed(services):
        s.stop()
    return 0


# Look for cycles after 50,000 new container objects instead of CPython's 700, and in the older
# generations after 20 and 10 collections of the younger one instead of 10 and 10.
GC_THRESHOLDS = (50_000, 20, 10)


def quiet_gc() -> None:
    """Make the cyclic garbage collector a small cost for a service that handles messages.

    A batch of a thousand MQTT messages keeps tens of thousands of container objects alive (the
    decoded readings with their sample lists, the rows for the store) that reference counting
    frees when the batch is done; with CPython's defaults the collector walks them dozens of times
    a batch, and with them every sample of every list: 7-9 % of an ingest worker's pipeline,
    measured in one process at 1,000 patients (docs/benchmarks.md). Objects that exist once the
    services have started (modules, configuration) are moved out of the collector's way for good
    (`gc.freeze`). Cycles are still collected, just later; Nabz code makes few.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nabz",
        description="Nabz: home vital-signs monitoring. Wearables -> gateway -> MQTT -> ingest -> alerts.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench_parser = sub.add_parser(
        "bench",
        help="benchmarks (results as JSON; see docs/benchmarks.md)",
        description="Benchmarks report ratios and counts measured in one run; docs/benchmarks.md records results.",
    )
    bench = bench_parser.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    for name in COMMAND_MODULES:
        module: Any = importlib.import_module(name)
        module.register(sub, bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # paho reports connection trouble that our own callbacks already log in plain words.
    logging.getLogger("paho").setLevel(logging.DEBUG if args.verbose >= 2 else logging.CRITICAL)
    handler: Handler = args.handler
    try:
        return handler(args)
    except config_mod.ConfigError as exc:
        print(f"nabz: configuration error: {exc}", file=sys.stderr)
        return 2
    except UnsafeFileError as exc:
        # Typically root running a command on a store the service user owns (docs/security.md).
        line = shlex.join(sys.argv[1:] if argv is None else argv)
        print(
            f"nabz: {exc}. To use a service's files, run this as the user they belong to, "
            f"e.g. sudo -u nabz nabz {line}",
            file=sys.stderr,
        )
        return 2
    except Exception as exc:
        what = (args.command, getattr(args, "action", None))
        if what not in MACHINE_HINTS or not _machine_error(exc):
            raise
        print(f"nabz {' '.join(what)}: {exc or type(exc).__name__}: {MACHINE_HINTS[what]}", file=sys.stderr)
        return 2


# Commands that need something of the machine which may be missing, and what to do then: one
# line instead of a traceback from deep inside a library.
MACHINE_HINTS = {
    ("gateway", "scan"): "Bluetooth is not reachable: through BlueZ (the default), is bluetoothd running "
    "and this user in the bluetooth group? with --hci, is that HCI transport there?",
}


def _machine_error(exc: BaseException) -> bool:
    """Whether `exc` says something is missing on this machine (a socket, device or file; the
    Bluetooth stack's own errors), rather than a fault of Nabz, which keeps its traceback."""
    return isinstance(exc, OSError) or type(exc).__module__.partition(".")[0] in ("bleak", "dbus_fast")


if __name__ == "__main__":
    sys.exit(main())
