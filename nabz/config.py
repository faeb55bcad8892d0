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
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import msgspec

from nabz.contract import ID_PATTERN
from nabz.secrets import SECRET_KEYS, permission_problem

# Ids that go into MQTT topics (site, gateway, device, patient): the contract's pattern, checked
# when the configuration is read (an id with '+', '#' or '/' would make every publish fail).
TopicId = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]

__all__ = [
    "Config",
    "MqttConfig",
    "GatewayConfig",
    "BleConfig",
    "SerialConfig",
    "EnrolledDevice",
    "DeadmanConfig",
    "StationConfig",
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
    # The server's own processes (ingest, alerts, the nurse station) sit next to the broker and are
    # few: nothing to spread out, and every patient's data and alarm waits for them after a broker
    # restart. Their back-off stops here (or at reconnect_max_s, if that is less).
    server_reconnect_max_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0

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

    id: TopicId  # the device id in topics, e.g. "ecg-0001"
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
    # No valid line for this long and the port's devices are reported lost (a sensor must send at
    # least this often: raise it for a spot-check device that is quiet between readings).
    lost_after_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0


class DeadmanConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The gateway's watch on the server (gateway.deadman, docs/operations.md "The monitoring must
    not fail silently"): when no heartbeat of a `services` entry has been heard for `after_s`, the
    gateway says so in its log and status and, with `modem = true`, texts `phones` directly (or,
    without them, who the gateway's own [oncall] schedule puts on call; with neither it refuses to
    start rather than text the demo's placeholder number)."""

    after_s: float = 600.0
    repeat_s: float = 6 * 3600.0  # a reminder while the server stays silent; 0: never
    services: list[Literal["ingest", "alerts"]] = msgspec.field(default_factory=lambda: ["ingest", "alerts"])
    modem: bool = False  # a GSM modem on the gateway ([modem] settings) sends the texts
    phones: list[str] = msgspec.field(default_factory=list)  # default: the [oncall] primary and backup


class GatewayConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: TopicId = "gw-0001"
    spool_path: str = "var/gateway-spool.sqlite"
    spool_max_mb: int = 512
    max_inflight: int = 100  # unacknowledged QoS 1 publishes at once
    status_interval_s: float = 30.0
    # the wearables enrolled below, over BLE; "virtual" (simulated wearables) only when asked for:
    # until 2026-11-27 it was the default, and a gateway configured without it sent simulated
    # vital signs under the real devices' ids
    transport: Literal["virtual", "ble", "serial"] = "ble"
    devices: list[EnrolledDevice] = msgspec.field(default_factory=list)
    resend_timeout_s: float = 10.0  # a requested waveform range not back by then is a gap
    # ingest heard before, then not heard taking readings this long (or three of its heartbeat
    # intervals, if longer) while connected: readings stay in the spool until it is (gateway.pause)
    pause_after_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    # ingest this far behind (its heartbeat's behind_s: how long readings waited for it): readings
    # stay in the spool until it is back within half of it (gateway.pause). At least 1 s: ingest's
    # heartbeat comes every second only until it says it is within half a second. Under 2 s it
    # pauses for nothing now and then: the broker counts the waits in whole seconds (±1 s).
    pause_behind_s: Annotated[float, msgspec.Meta(ge=1.0)] = 5.0
    ble: BleConfig = msgspec.field(default_factory=BleConfig)
    serial: SerialConfig = msgspec.field(default_factory=SerialConfig)
    deadman: DeadmanConfig = msgspec.field(default_factory=DeadmanConfig)


class InfluxConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: str | None = None  # e.g. http://127.0.0.1:8086; unset = no InfluxDB sink
    token: str | None = None
    org: str = "nabz"
    bucket: str = "nabz"
    batch_size: int = 5000
    flush_interval_ms: int = 1000
    timeout_ms: int = 10_000
    spill_dir: str | None = None  # line protocol kept while the database is down (default: by the store)
    waveforms: Literal["points", "chunks"] = "points"  # raw ECG/PPG: a point per sample, or per message


class IngestConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    store_path: str = "var/nabz.sqlite"  # embedded store: readings, dead letters, dedup, enrolment
    dedup_window_h: float = 24.0 * 7  # with InfluxDB: message ids (and payloads) kept this long
    # With InfluxDB: derived vitals kept in the embedded store this long, for the nurse station
    # (its longest trend is 72 h); older ones are in InfluxDB. Without InfluxDB nothing is pruned.
    vitals_window_h: Annotated[float, msgspec.Meta(ge=72.0)] = 24.0 * 7
    keep_payloads: bool = True  # raw messages in the store; with InfluxDB as the store they can go
    client_id: str = "nabz-ingest"
    workers: int = 1  # ingest workers sharing the readings (docs/scale.md); each has its own --worker
    worker: int = 0  # this worker's slot, 0 .. workers - 1
    share_group: str = "nabz-ingest"  # MQTT v5 shared-subscription group of the workers
    # SpO2 calibration of the PPG sensor, fitted against a reference oximeter or arterial blood
    # for this sensor and enclosure: [[R, SpO2 %], ...], R increasing. Unset: the generic curve
    # 110 - 25 R, and every PPG SpO2 is reported uncalibrated (docs/contract.md "Derived vitals").
    spo2_calibration: list[tuple[float, float]] | None = None
    heartbeat_s: float = 10.0  # the heartbeat gateways and the alerts service watch (0: none)
    stats_interval_s: float = 5.0  # ingest_stats and gateway_status points to InfluxDB this often
    metrics_listen: str | None = None  # e.g. "127.0.0.1:9108": /metrics and /healthz (port + worker)


AlarmPriority = Literal["high", "medium", "low"]


class PatientAlertsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Per-patient alarm settings (`[alerts.patients."p-0002"]`); unset values use the site's."""

    label: str | None = None  # how SMS name the patient (default: the patient id; no names needed)
    spo2_target_pct: tuple[float, float] | None = None  # e.g. [88, 92] in chronic lung disease
    spo2_low_pct: float | None = None
    spo2_critical_pct: float | None = None
    hr_high_bpm: float | None = None
    hr_critical_high_bpm: float | None = None
    hr_low_bpm: float | None = None
    hr_critical_low_bpm: float | None = None
    priority: dict[str, AlarmPriority] = msgspec.field(default_factory=dict)  # alarm kind -> priority
    disabled: list[str] = msgspec.field(default_factory=list)  # alarm kinds never raised for this patient


DEMO_ON_CALL = ("+923000000000",)


class AlertsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Alarm rules, priorities, silences, grouping and notifiers (docs/alerts.md explains each)."""

    # SpO2: medium when below spo2_low_pct for spo2_sustained_s, high below spo2_critical_pct for
    # spo2_delay_s; both delays shrink to spo2_min_delay_s the deeper the value (alerts.rules).
    spo2_low_pct: float = 92.0
    spo2_sustained_s: float = 60.0
    spo2_critical_pct: float = 88.0
    spo2_delay_s: float = 15.0
    spo2_min_delay_s: float = 5.0
    hr_high_bpm: float = 130.0  # medium above (NEWS2 scores >= 131 as 3)
    hr_critical_high_bpm: float = 150.0  # high above
    hr_low_bpm: float = 40.0  # medium below
    hr_critical_low_bpm: float = 30.0  # high below
    hr_delay_s: float = 10.0
    hr_min_delay_s: float = 4.0
    clear_after_s: float = 10.0  # a value must stay back inside its limit (plus hysteresis) this long
    pause_s: float = 3.0  # longest RR gap that raises "pause" (medium)
    asystole_s: float = 5.0  # ... and "asystole" (high)
    af_score: float = 0.7  # AF suspicion (0..1) at or above which ...
    af_sustained_s: float = 120.0  # ... sustained this long raises "af_suspected"
    news2_medium: int = 5  # partial NEWS2 aggregate (pulse, SpO2, respiration) raising medium ...
    news2_high: int = 7  # ... and high
    news2_sustained_s: float = 120.0
    min_sqi: float = 0.5  # below it a physiological value is not used; the signal counts as poor
    poor_signal_after_s: float = 120.0
    sensor_off_after_s: float = 30.0
    leads_off_after_s: float = 30.0
    stale_after_s: float = 300.0  # no data from an enrolled device this long, at any hour
    gateway_offline_after_s: float = 60.0
    battery_low_pct: float = 20.0
    battery_critical_pct: float = 10.0
    gap_alarm_s: float = 60.0  # a hole this long in a device's derived data that never came back
    priority: dict[str, AlarmPriority] = msgspec.field(default_factory=dict)  # kind -> priority, site-wide
    patients: dict[str, PatientAlertsConfig] = msgspec.field(default_factory=dict)
    # An open alarm of the key's kind holds back notifications of these kinds for the same patient.
    inhibit: dict[str, list[str]] = msgspec.field(
        default_factory=lambda: {
            "asystole": ["pause", "hr_low", "ppg_poor_signal", "sensor_off"],
            "gateway_offline": ["stale_data", "data_gap", "device_offline"],
            "device_fault": ["stale_data", "data_gap", "ppg_poor_signal", "ecg_poor_signal"],
            "leads_off": ["ecg_poor_signal", "pause", "asystole", "hr_low", "hr_high", "af_suspected"],
            "sensor_off": ["ppg_poor_signal", "spo2_low"],
            "battery_critical": ["battery_low"],
        }
    )
    silence_max_s: float = 24 * 3600.0
    silence_max_high_s: float = 3600.0  # a silence that covers high-priority alarms ends within this
    group_interval_s: float = 60.0  # alarms of one patient this close after an SMS wait to share the next
    max_sms_per_hour: int = 12  # per recipient; high priority always goes through
    notifiers: list[Literal["gsm", "http", "outbox"]] = msgspec.field(default_factory=lambda: ["outbox"])
    retry_min_s: float = 5.0
    retry_max_s: float = 300.0
    # Open alarms, audit log, notifications. Relative paths are taken from the working directory:
    # give absolute ones in production (docs/operations.md "Installing the server").
    store_path: str = "var/alerts.sqlite"
    outbox_path: str = "var/outbox/sms.jsonl"
    # Without an [oncall] schedule these numbers are everybody's primary, backup and team. The
    # default is the demo's placeholder for its outbox: the alerts service refuses to text it.
    on_call: list[str] = msgspec.field(default_factory=lambda: list(DEMO_ON_CALL))
    timezone: str = "Asia/Karachi"  # for times in SMS
    heartbeat_s: float = 10.0  # the heartbeat gateways watch (0: none)
    site_quiet_after_s: float = 120.0  # no data from any device of the site this long: site_quiet
    # e.g. "127.0.0.1:9120": /metrics and /healthz. Not ingest's port + 1 (or + i): with
    # [ingest] workers above 1, worker i listens on ingest's port + i.
    metrics_listen: str | None = None


class PersonConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    phone: str  # E.164, e.g. "+923001234567"
    language: Literal["en", "ur"] = "en"  # "ur": Urdu SMS (UCS-2, 70 characters per message)


class RotationConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    role: str = "primary"  # "primary", "backup" or any name an escalation step can notify
    members: list[str]  # people, in turn
    start: str  # local date-time of the first handoff, e.g. "2026-01-05T08:00"
    shift_h: float = 24.0


class OverrideConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    role: str = "primary"
    person: str
    start: str  # local date-times; the override holds on [start, end)
    end: str


class OncallConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Who is on call (docs/alerts.md "On call"): people, rotations per role, overrides."""

    timezone: str = "Asia/Karachi"
    people: dict[str, PersonConfig] = msgspec.field(default_factory=dict)
    rotations: list[RotationConfig] = msgspec.field(default_factory=list)
    overrides: list[OverrideConfig] = msgspec.field(default_factory=list)
    team: list[str] = msgspec.field(default_factory=list)


class EscalationStep(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    after_s: float  # after the alarm was raised (and not silenced)
    notify: list[str]  # roles ("primary", "backup"), "team", or people by name


class EscalationPolicy(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    steps: list[EscalationStep]
    renotify_s: float = 0.0  # re-notify everyone reached so far this often until acknowledged; 0: never


def _policy(renotify_s: float, *steps: tuple[float, str]) -> EscalationPolicy:
    return EscalationPolicy(
        steps=[EscalationStep(after_s=a, notify=[who]) for a, who in steps], renotify_s=renotify_s
    )


class EscalationConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Escalation per priority: primary, then backup, then the team, until acknowledged."""

    high: EscalationPolicy = msgspec.field(
        default_factory=lambda: _policy(300.0, (0.0, "primary"), (300.0, "backup"), (600.0, "team"))
    )
    medium: EscalationPolicy = msgspec.field(
        default_factory=lambda: _policy(900.0, (0.0, "primary"), (900.0, "backup"))
    )
    low: EscalationPolicy = msgspec.field(default_factory=lambda: _policy(0.0, (0.0, "primary")))
    all_clear: bool = False  # text everyone who was notified when the alarm clears


class ModemConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A GSM modem on a serial port, driven with TS 27.005 text-mode AT commands (alerts.gsm)."""

    port: str = "/dev/ttyUSB0"
    baudrate: int = 115200
    sim_pin: str | int | None = None  # an int when it came from the environment as digits
    delivery_reports: bool = True
    max_per_minute: int = 6  # operators block SIMs that send too fast
    command_timeout_s: float = 10.0
    send_timeout_s: float = 60.0


class SmsHttpConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An HTTP SMS provider: a generic JSON webhook or a Twilio-compatible form API."""

    url: str | None = None
    kind: Literal["json", "twilio"] = "json"
    account: str | None = None  # Twilio account SID (basic-auth user)
    token: str | None = None  # bearer token (json) or auth token (twilio)
    sender: str | None = None  # the "From" number or sender id
    timeout_s: float = 10.0


class GrafanaConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: str | None = None  # e.g. http://127.0.0.1:3000, for `nabz dashboards push`
    token: str | None = None  # a service-account token with Editor on the folder
    folder: str = "Nabz"


class StationConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The nurse station web page (`nabz station run`, docs/dashboards.md "Nurse station")."""

    host: str = "127.0.0.1"  # listen address; put TLS in front (or set the two files below)
    port: int = 8080
    db_path: str = "var/station.sqlite"  # users (argon2id hashes), sessions, audit log; created 0600
    tls_cert_file: str | None = None  # serve HTTPS directly (cookies are then marked Secure)
    tls_key_file: str | None = None
    cookie_secure: bool = False  # mark cookies Secure although TLS ends in a proxy in front
    # the address nurses open, e.g. "https://ward.example.org", behind a proxy that does not pass
    # the Host it was asked for (nginx's default): state-changing requests must come from it
    public_origin: str | None = None
    session_idle_s: float = 1800.0  # automatic logoff after this long without a user action
    session_max_s: float = 12 * 3600.0  # ... and after this long whatever happens (one shift)
    # After this many failures a user name is blocked for 1 min, doubling per further failure up to
    # login_window_s; failures are forgotten after twice that without attempts. An address gets 4x.
    login_max_failures: int = 5
    login_window_s: float = 900.0
    stale_after_s: float = 15.0  # a tile without vitals this long is shown as stale (no data)
    strip_before_s: float = 12.0  # ECG/PPG strip around an alarm: seconds before it was raised ...
    strip_after_s: float = 6.0  # ... and after
    client_id: str = "nabz-station"


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    site: TopicId = "demo"
    mqtt: MqttConfig = msgspec.field(default_factory=MqttConfig)
    gateway: GatewayConfig = msgspec.field(default_factory=GatewayConfig)
    ingest: IngestConfig = msgspec.field(default_factory=IngestConfig)
    influx: InfluxConfig = msgspec.field(default_factory=InfluxConfig)
    alerts: AlertsConfig = msgspec.field(default_factory=AlertsConfig)
    oncall: OncallConfig = msgspec.field(default_factory=OncallConfig)
    escalation: EscalationConfig = msgspec.field(default_factory=EscalationConfig)
    modem: ModemConfig = msgspec.field(default_factory=ModemConfig)
    sms_http: SmsHttpConfig = msgspec.field(default_factory=SmsHttpConfig)
    grafana: GrafanaConfig = msgspec.field(default_factory=GrafanaConfig)
    station: StationConfig = msgspec.field(default_factory=StationConfig)
    enrolment: dict[TopicId, TopicId] = msgspec.field(default_factory=dict)  # device id -> patient id


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
        except (OSError, UnicodeDecodeError) as exc:  # a directory, no permission, not UTF-8
            raise ConfigError(f"{chosen}: cannot read: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{chosen}: not valid TOML: {exc}") from exc
        unsafe = permission_problem(chosen, data)  # a file with secrets others can read: refused
        if unsafe:
            raise ConfigError(unsafe)
    _apply_env(data, env)
    try:
        return msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{chosen or 'environment'}: {exc}") from exc


def redacted(config: Config) -> dict[str, Any]:
    """The configuration as plain data with secrets replaced, for `nabz config show` and logs."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: ("***" if k in SECRET_KEYS and v else walk(v)) for k, v in node.items()}
        if isinstance(node, str) and "://" in node and urlparse(node).password:
            return node.replace(f":{urlparse(node).password}@", ":***@")  # a URL with credentials
        return node

    result: dict[str, Any] = walk(msgspec.to_builtins(config))
    return result
