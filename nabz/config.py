"""Configuration: TOML file, then environment overrides, on top of defaults that work with no file.

Lookup: `--config PATH`, else `$NABZ_CONFIG`, else `./nabz.toml` if it exists, else defaults only.
Environment overrides use `NABZ_<SECTION>__<KEY>` (double underscore between levels), e.g.
`NABZ_MQTT__URL=mqtts://broker:8883` or `NABZ_ALERTS__SPO2_LOW_PCT=88`; values are read as TOML
values when they parse as one (numbers, booleans, arrays) and as strings otherwise.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import msgspec

__all__ = [
    "Config",
    "MqttConfig",
    "GatewayConfig",
    "BleConfig",
    "SerialConfig",
    "EnrolledDevice",
    "load",
    "ConfigError",
    "redacted",
]

ENV_PREFIX = "NABZ_"


class ConfigError(Exception):
    """The configuration cannot be used; the message says which setting and why."""


class MqttConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: str = "mqtt://127.0.0.1:1883"  # mqtts:// for TLS
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None  # CA that signed the broker's certificate (TLS)
    cert_file: str | None = None  # client certificate, when the broker authenticates by certificate
    key_file: str | None = None
    protocol: Literal["3.1.1", "5"] = "5"
    keepalive_s: int = 30
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 60.0

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parsed = urlparse(self.url)
        return parsed.port or (8883 if parsed.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlparse(self.url).scheme == "mqtts"


class EnrolledDevice(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A wearable this gateway serves (its allowlist): matched by BLE address or advertised name."""

    id: str  # the device id in topics, e.g. "ecg-0001"
    address: str | None = None  # e.g. "C4:DE:E2:11:22:33" (case does not matter)
    name: str | None = None  # advertised local name, e.g. "Nabz ecg-0001"


class BleConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """BLE transport (docs/gateway.md): bleak on the OS stack (BlueZ), or bumble on an HCI transport."""

    backend: Literal["bleak", "bumble"] = "bleak"
    hci: str = "usb:0"  # bumble only: usb:0, serial:/dev/ttyAMA0,1000000, tcp-client:127.0.0.1:9000
    mtu: int = 247
    connect_timeout_s: float = 20.0
    retry_min_s: float = 1.0  # reconnect ladder: backoff from here...
    retry_max_s: float = 30.0  # ...doubling up to here, with jitter
    reset_after_failures: int = 3  # then drop the connection state and rediscover the device
    lost_after_s: float = 60.0  # then report the device lost (and keep retrying)


class SerialConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Serial transport for wired sensors (line protocol in docs/contract.md)."""

    port: str = "/dev/ttyUSB0"
    baudrate: int = 115200


class GatewayConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: str = "gw-0001"
    spool_path: str = "var/gateway-spool.sqlite"
    spool_max_mb: int = 512
    max_inflight: int = 100  # unacknowledged QoS 1 publishes at once
    status_interval_s: float = 30.0
    transport: Literal["virtual", "ble", "serial"] = "virtual"
    devices: list[EnrolledDevice] = msgspec.field(default_factory=list)
    resend_timeout_s: float = 10.0  # a requested waveform range not back by then is a gap
    ble: BleConfig = msgspec.field(default_factory=BleConfig)
    serial: SerialConfig = msgspec.field(default_factory=SerialConfig)


class InfluxConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: str | None = None  # e.g. http://127.0.0.1:8086; unset = no InfluxDB sink
    token: str | None = None
    org: str = "nabz"
    bucket: str = "nabz"
    batch_size: int = 5000
    flush_interval_ms: int = 1000


class IngestConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    store_path: str = "var/nabz.sqlite"  # embedded store: readings, dead letters, dedup, enrolment
    dedup_window_h: float = 24.0 * 7
    client_id: str = "nabz-ingest"


class AlertsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    spo2_low_pct: float = 90.0
    spo2_delay_s: float = 15.0  # at the threshold; shorter the deeper the desaturation (see alerts.rules)
    spo2_min_delay_s: float = 5.0
    hr_high_bpm: float = 130.0
    hr_low_bpm: float = 40.0
    hr_delay_s: float = 10.0
    clear_after_s: float = 10.0
    stale_after_s: float = 300.0
    store_path: str = "var/alerts.sqlite"  # open alarms, audit log, notifications
    outbox_path: str = "var/outbox/sms.jsonl"
    on_call: list[str] = msgspec.field(default_factory=lambda: ["+923000000000"])
    timezone: str = "Asia/Karachi"


class GrafanaConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: str | None = None  # e.g. http://127.0.0.1:3000, for `nabz dashboards push`
    token: str | None = None  # a service-account token with Editor on the folder
    folder: str = "Nabz"


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    site: str = "demo"
    mqtt: MqttConfig = msgspec.field(default_factory=MqttConfig)
    gateway: GatewayConfig = msgspec.field(default_factory=GatewayConfig)
    ingest: IngestConfig = msgspec.field(default_factory=IngestConfig)
    influx: InfluxConfig = msgspec.field(default_factory=InfluxConfig)
    alerts: AlertsConfig = msgspec.field(default_factory=AlertsConfig)
    grafana: GrafanaConfig = msgspec.field(default_factory=GrafanaConfig)
    enrolment: dict[str, str] = msgspec.field(default_factory=dict)  # device id -> patient id


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"x = {text}")["x"]
    except tomllib.TOMLDecodeError:
        return text


def _apply_env(data: dict[str, Any], environ: dict[str, str]) -> None:
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "NABZ_CONFIG":
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: '{part}' is a value, not a section")
            node = child
        node[path[-1]] = _env_value(text)


def load(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Config:
    """Read the configuration (see module docstring for the lookup order)."""
    env = dict(os.environ if environ is None else environ)
    chosen = Path(path) if path else Path(env["NABZ_CONFIG"]) if env.get("NABZ_CONFIG") else None
    if chosen is None and Path("nabz.toml").exists():
        chosen = Path("nabz.toml")
    data: dict[str, Any] = {}
    if chosen is not None:
        try:
            data = tomllib.loads(chosen.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration file not found: {chosen}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{chosen}: not valid TOML: {exc}") from exc
    _apply_env(data, env)
    try:
        return msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{chosen or 'environment'}: {exc}") from exc


_SECRET_KEYS = {"password", "token"}


def redacted(config: Config) -> dict[str, Any]:
    """The configuration as plain data with secrets replaced, for `nabz config show` and logs."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: ("***" if k in _SECRET_KEYS and v else walk(v)) for k, v in node.items()}
        return node

    result: dict[str, Any] = walk(msgspec.to_builtins(config))
    return result
