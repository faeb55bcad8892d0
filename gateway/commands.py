"""`nabz gateway run|status|scan|unit` and `nabz bench gateway`."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

from nabz.cli import add_config_option, load_config
from nabz.config import Config, EnrolledDevice

__all__ = ["register", "build_transport"]


def register(sub: Any, bench: Any) -> None:
    gw = sub.add_parser("gateway", help="the home gateway")
    gw_sub = gw.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = gw_sub.add_parser(
        "run",
        help="run a gateway: transport -> decode -> spool -> MQTT",
        description="Run one gateway (docs/gateway.md). The transport comes from [gateway] transport "
        "in the configuration unless --transport says otherwise: 'ble' (the default) for enrolled "
        "wearables ([[gateway.devices]]), 'serial' for wired sensors, 'virtual' for simulated "
        "wearables (a demonstration or a test: never on a patient's gateway).",
    )
    add_config_option(run)
    run.add_argument("--transport", choices=["virtual", "ble", "serial"], help="override [gateway] transport")
    run.add_argument("--serial-port", metavar="PORT", help="serial transport: override [gateway.serial] port")
    run.add_argument(
        "--hci", metavar="SPEC", help="BLE on bumble: override [gateway.ble] hci (implies bumble)"
    )
    run.add_argument("--patients", type=int, default=1, help="virtual transport: simulated patients")
    run.add_argument("--seed", type=int, default=1, help="virtual transport: seed")
    run.add_argument(
        "--log-format", choices=["text", "json"], default="text", help="json: one JSON object per line"
    )
    run.set_defaults(handler=_run)

    status = gw_sub.add_parser(
        "status",
        help="what the local gateway is doing (read from its spool; works while it runs)",
        description="Spool depth and age, deliveries, and each device's link, battery, RSSI and gaps "
        "as of the gateway's last heartbeat. Exit status 0 when the gateway is running (a fresh "
        "heartbeat), connected to the broker and no device is lost; 1 otherwise.",
    )
    add_config_option(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_status)

    scan = gw_sub.add_parser(
        "scan",
        help="list BLE devices in range and whether they are enrolled",
        description="Scan for BLE advertisements for a few seconds and list every device seen: address, "
        "name, RSSI, advertised services, and the enrolled device it matches. Enrolled devices not "
        "seen are listed too. Use it to find a new wearable's address for [[gateway.devices]].",
    )
    add_config_option(scan)
    scan.add_argument("--seconds", type=float, default=8.0)
    scan.add_argument("--hci", metavar="SPEC", help="scan with bumble on this HCI transport")
    scan.add_argument("--json", action="store_true")
    scan.set_defaults(handler=_scan)

    unit = gw_sub.add_parser(
        "unit",
        help="print the systemd unit for this installation",
        description="Print nabz-gateway.service with this installation's paths (docs/gateway.md): "
        "nabz gateway unit --config /etc/nabz/gateway.toml | sudo tee /etc/systemd/system/nabz-gateway.service",
    )
    unit.add_argument("--config", metavar="FILE", default="/etc/nabz/gateway.toml")
    unit.add_argument("--user", default="nabz")
    unit.set_defaults(handler=_unit)

    b = bench.add_parser(
        "gateway",
        help="gateway memory, CPU and drain rate with 4 virtual BLE wearables (docs/benchmarks.md)",
        description="Runs a real `nabz gateway run --transport ble` process against four virtual "
        "wearables (ECG 250 Hz, PPG 2 x 100 Hz) on a virtual radio in another process and a "
        "mosquitto broker, then cuts the broker off for --outage-s and measures how fast the "
        "backlog drains. Prints JSON: rss_mb, cpu_percent (of one core, at the live rate), "
        "live_readings_per_s, drain_readings_per_s and their ratio.",
    )
    b.add_argument("--live-s", type=float, default=30.0, help="seconds of live streaming to measure CPU over")
    b.add_argument("--outage-s", type=float, default=60.0, help="seconds the broker is away")
    b.add_argument("--transport", choices=["ble", "virtual"], default="ble")
    b.add_argument("--json", action="store_true", help="JSON only (default prints JSON too)")
    b.set_defaults(handler=_bench)


def build_transport(cfg: Config, kind: str, args: argparse.Namespace | None = None) -> Any:
    """The transport `kind` configured from `cfg` (and command-line overrides)."""
    from gateway.transport import make_transport

    g = cfg.gateway
    if kind == "virtual":
        from hardware import make_patients

        patients = make_patients(getattr(args, "patients", 1), getattr(args, "seed", 1))
        return make_transport("virtual", wearables=[d for p in patients for d in p.devices])
    if kind == "serial":
        port = getattr(args, "serial_port", None) or g.serial.port
        return make_transport(
            "serial",
            port=port,
            baudrate=g.serial.baudrate,
            devices=[d.id for d in g.devices],
            lost_after_s=g.serial.lost_after_s,
            modem_port=cfg.modem.port if g.deadman.modem else None,  # refused if the same device
        )
    if kind == "ble":
        hci = getattr(args, "hci", None)
        return make_transport(
            "ble",
            devices=g.devices,
            backend="bumble" if hci else g.ble.backend,
            hci=hci or g.ble.hci,
            mtu=g.ble.mtu,
            connect_timeout_s=g.ble.connect_timeout_s,
            retry_min_s=g.ble.retry_min_s,
            retry_max_s=g.ble.retry_max_s,
            reset_after_failures=g.ble.reset_after_failures,
            lost_after_s=g.ble.lost_after_s,
        )
    raise SystemExit(f"nabz gateway: unknown transport {kind!r}")


def _run(args: argparse.Namespace) -> int:
    import logging

    from gateway.service import Gateway
    from gateway.transport import TransportError

    if args.log_format == "json":
        from gateway.logs import use_json_logs

        use_json_logs()
    if logging.getLogger().level > logging.INFO and args.log_format == "json":
        logging.getLogger().setLevel(logging.INFO)  # a service's journal wants its INFO lines
    cfg = load_config(args)
    kind = args.transport or cfg.gateway.transport
    try:
        transport = build_transport(cfg, kind, args)
    except TransportError as exc:
        print(f"nabz gateway: {exc}", file=sys.stderr)
        return 2
    if kind == "virtual":
        logging.getLogger("gateway").warning(
            "gateway %s: the wearables are SIMULATED (transport 'virtual'): their readings are made "
            "up; never run this on a patient's gateway",
            cfg.gateway.id,
        )
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


def _status(args: argparse.Namespace) -> int:
    from gateway.spool import snapshot

    cfg = load_config(args)
    try:
        snap = snapshot(cfg.gateway.spool_path)
    except FileNotFoundError as exc:
        print(
            f"nabz gateway status: {exc} (has the gateway ever run with this configuration?)", file=sys.stderr
        )
        return 1
    local: dict[str, Any] = json.loads(snap.status) if snap.status else {}
    status: dict[str, Any] = local.get("status", {})
    now = time.time()
    age = now - snap.status_at if snap.status_at is not None else None
    problems = []
    server: dict[str, Any] = local.get("server", {})
    if local.get("stopped"):
        problems.append("the gateway was stopped")
    elif age is None or age > 3 * cfg.gateway.status_interval_s + 5:
        problems.append("no recent heartbeat: the gateway is not running")
    if not local.get("mqtt", {}).get("connected"):
        problems.append("not connected to the broker")
    lost = [h["device"] for h in status.get("health", []) if h.get("state") == "lost"]
    if lost:
        problems.append(f"lost: {', '.join(lost)}")
    if server.get("silent"):
        problems.append("the server is silent: alarms for this home may not reach the doctors")
    if server.get("modem_error"):
        problems.append(f"the dead man's switch cannot text: {server['modem_error']}")
    undelivered = server.get("texts_undelivered", [])
    if undelivered:
        problems.append(
            f"{len(undelivered)} dead-man text(s) not delivered yet: {undelivered[-1].get('error')}"
        )
    failed = server.get("texts_failed", [])
    if failed:
        problems.append(f"{len(failed)} dead-man text(s) failed for good: {failed[-1].get('error')}")
    if status.get("paused") and status.get("behind"):
        problems.append(
            f"ingest ({', '.join(status['behind'])}) is far behind: readings are kept in the spool until it"
            " has caught up (not sent)"
        )
    elif status.get("paused"):
        problems.append("ingest is not heard: readings are kept in the spool until it is (not sent)")
    held = status.get("held", [])
    if held:
        problems.append(f"nobody on the server takes the readings of {', '.join(held)} (not enrolled?): kept")
    report = {
        "ok": not problems,
        "problems": problems,
        "heartbeat_age_s": round(age, 1) if age is not None else None,
        "spool": {
            "messages": snap.depth,
            "held_messages": snap.held,  # of those: readings nobody on the server takes yet
            "payload_bytes": snap.payload_bytes,
            "file_bytes": snap.file_bytes,
            "oldest_age_s": round(now - snap.oldest_created, 1) if snap.oldest_created else None,
            "published_readings": snap.counters.get("published_readings", 0),
            "dropped_readings": snap.counters.get("dropped_readings", 0),
            "dropped_held_messages": snap.counters.get("dropped_held", 0),
            "dead_letters": snap.counters.get("dead_letters", 0),
        },
        "mqtt": local.get("mqtt", {}),
        "server": server,
        "devices": status.get("health", []),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_status(cfg, report)
    return 0 if not problems else 1


def _print_status(cfg: Config, r: dict[str, Any]) -> None:
    s = r["spool"]
    print(f"gateway {cfg.gateway.id} at {cfg.site}: {'OK' if r['ok'] else 'ATTENTION'}")
    for p in r["problems"]:
        print(f"  ! {p}")
    print(f"  heartbeat: {r['heartbeat_age_s']} s ago; broker {cfg.mqtt.url}: "
          f"{'connected' if r['mqtt'].get('connected') else 'not connected'}")  # fmt: skip
    held = f", {s['held_messages']} of them held" if s["held_messages"] else ""
    print(f"  spool: {s['messages']} messages{held} ({s['payload_bytes'] / 1e6:.1f} MB, file {s['file_bytes'] / 1e6:.1f} MB), "
          f"oldest {s['oldest_age_s']} s; published {s['published_readings']} readings; "
          f"dropped {s['dropped_readings']}; dead letters {s['dead_letters']}")  # fmt: skip
    print(
        f"  {'device':<14}{'state':<14}{'battery':>8}{'rssi':>6}{'mtu':>5}{'reconn':>7}{'gaps':>6}{'resent':>8}{'lost fr':>8}  last seen"
    )
    for h in r["devices"]:
        print(
            f"  {h['device']:<14}{h['state']:<14}{_s(h.get('battery_pct')):>8}{_s(h.get('rssi_dbm')):>6}"
            f"{_s(h.get('mtu')):>5}{h.get('reconnects', 0):>7}{h.get('gap_events', 0):>6}"
            f"{h.get('resent_frames', 0):>8}{h.get('gap_frames', 0):>8}  {h.get('last_seen') or '-'}"
        )


def _s(v: object) -> str:
    return "-" if v is None else str(v)


def _scan(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    found = asyncio.run(
        _scan_async(
            cfg,
            args.seconds,
            args.hci or (cfg.gateway.ble.hci if cfg.gateway.ble.backend == "bumble" else None),
        )
    )
    enrolled = cfg.gateway.devices
    rows: list[dict[str, Any]] = []
    for address, (name, rssi, uuids) in sorted(found.items(), key=lambda kv: -(kv[1][1] or -999)):
        match = next((d.id for d in enrolled if _matches(d, address, name)), None)
        rows.append(
            {"address": address, "name": name, "rssi_dbm": rssi, "services": uuids, "enrolled_as": match}
        )
    missing = [d.id for d in enrolled if not any(r["enrolled_as"] == d.id for r in rows)]
    if args.json:
        print(json.dumps({"seen": rows, "enrolled_not_seen": missing}, indent=2))
        return 0
    for r in rows:
        tag = f"enrolled as {r['enrolled_as']}" if r["enrolled_as"] else "not enrolled"
        print(
            f"{r['address']}  {r['rssi_dbm']:>4} dBm  {r['name'] or '-':<24} {_kinds(r['services']):<28} {tag}"
        )
    for m in missing:
        print(f"(enrolled device {m} was not seen)")
    return 0


def _matches(d: EnrolledDevice, address: str, name: str | None) -> bool:
    return bool((d.address and d.address.upper() == address.upper()) or (d.name and d.name == name))


def _kinds(uuids: list[str]) -> str:
    from firmware import nabz_codec as codec

    names = {
        f"0000{codec.UUID_HEART_RATE_SERVICE:04x}-0000-1000-8000-00805f9b34fb": "heart rate",
        f"0000{codec.UUID_PULSE_OXIMETER_SERVICE:04x}-0000-1000-8000-00805f9b34fb": "pulse oximeter",
        codec.NABZ_WAVEFORM_SERVICE: "nabz waveform",
    }
    return ", ".join(names.get(u, u[4:8] if u.startswith("0000") else u[:8]) for u in uuids) or "-"


async def _scan_async(
    cfg: Config, seconds: float, hci: str | None
) -> dict[str, tuple[str | None, int, list[str]]]:
    from bleak import BleakScanner
    from bleak.backends.device import BLEDevice
    from bleak.backends.scanner import AdvertisementData

    found: dict[str, tuple[str | None, int, list[str]]] = {}

    def seen(device: BLEDevice, adv: AdvertisementData) -> None:
        found[device.address] = (adv.local_name or device.name, adv.rssi, list(adv.service_uuids))

    kwargs: dict[str, Any] = {}
    adapter = None
    if hci:
        from gateway.ble_bumble import BumbleAdapter, BumbleScanner

        adapter = await BumbleAdapter.open(hci)
        kwargs = {"backend": BumbleScanner, "bumble": adapter}
    scanner = BleakScanner(seen, **kwargs)
    await scanner.start()
    await asyncio.sleep(seconds)
    await scanner.stop()
    if adapter is not None:
        await adapter.close()
    return found


def _unit(args: argparse.Namespace) -> int:
    text = resources.files("gateway").joinpath("nabz-gateway.service").read_text(encoding="utf-8")
    nabz = Path(sys.executable).with_name("nabz")
    text = text.replace("/opt/nabz/venv/bin/nabz", str(nabz)).replace("/etc/nabz/gateway.toml", args.config)
    print(text.replace("User=nabz", f"User={args.user}").replace("Group=nabz", f"Group={args.user}"), end="")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from gateway.bench import run_bench

    result = run_bench(live_s=args.live_s, outage_s=args.outage_s, transport=args.transport)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0
