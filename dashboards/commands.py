"""`nabz dashboards build|push`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from nabz.cli import add_config_option, load_config

__all__ = ["register", "JSON_DIR"]

JSON_DIR = Path(__file__).resolve().parent / "json"


def register(sub: Any, bench: Any) -> None:
    dash = sub.add_parser("dashboards", help="Grafana dashboards as code")
    dash_sub = dash.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = dash_sub.add_parser(
        "build",
        help="write the dashboard JSON for Grafana's file provisioning",
        description="Regenerate dashboards/json/*.json from dashboards/grafana.py (needs the "
        "'dashboards' extra: grafana-foundation-sdk pinned to Grafana 11.6).",
    )
    build.add_argument("--out", type=Path, default=JSON_DIR, help=f"directory (default {JSON_DIR})")
    build.set_defaults(handler=_build)
    push = dash_sub.add_parser(
        "push",
        help="import the dashboards into a running Grafana through its HTTP API",
        description="Uses [grafana] url and token from the configuration (NABZ_GRAFANA__URL, "
        "NABZ_GRAFANA__TOKEN); the token needs the Editor role on the folder. Replaces dashboards of "
        "the same uid whole, edits made in Grafana's UI included, and prints which it created and "
        "which it replaced (the version replaced stays in Grafana's version history).",
    )
    add_config_option(push)
    push.add_argument("--url", help="Grafana base URL (overrides [grafana] url)")
    push.set_defaults(handler=_push)


def _build(args: argparse.Namespace) -> int:
    from dashboards.grafana import build_all

    args.out.mkdir(parents=True, exist_ok=True)
    for uid, d in build_all().items():
        path = args.out / f"{uid}.json"
        path.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
        print(path)
    return 0


def _push(args: argparse.Namespace) -> int:
    from dashboards.push import PushError, push

    cfg = load_config(args)
    url = args.url or cfg.grafana.url
    if not url:
        print("nabz: no Grafana URL (--url or [grafana] url)", file=sys.stderr)
        return 2
    dashboards = {p.stem: json.loads(p.read_text()) for p in sorted(JSON_DIR.glob("*.json"))}
    try:
        for line in push(url, cfg.grafana.token, dashboards, cfg.grafana.folder):
            print(line)
    except PushError as exc:
        print(f"nabz: {exc}", file=sys.stderr)
        return 1
    return 0
