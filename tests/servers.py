"""Real servers for tests: mosquitto and VictoriaMetrics on free loopback ports.

A test that needs one of them and cannot start it fails with the command that installs it; it
never skips. `make test` installs both (Debian packages) when run as root.

`SecureMosquitto` is the production shape of the broker: TLS only (a throwaway CA made by
`make_pki`), no anonymous clients, a password file, per-gateway ACLs, and optionally a second
listener that authenticates by client certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nabz.broker import free_port

__all__ = ["Mosquitto", "SecureMosquitto", "Pki", "make_pki", "VictoriaMetrics", "require"]


def require(command: str, package: str) -> str:
    path = shutil.which(command)
    if path is None:
        raise RuntimeError(
            f"{command} is not installed; run `make test` as root, or: sudo apt-get install -y {package}"
        )
    return path


def _terminate(proc: subprocess.Popen[bytes] | None, wait_s: float) -> None:
    """SIGTERM a server still running, and SIGKILL it if it has not ended within `wait_s`."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on port {port} within {timeout_s} s")


class Mosquitto:
    """A mosquitto broker with persistence (so a graceful restart keeps queued QoS 1 messages)."""

    def __init__(self, workdir: Path, extra_config: str = "") -> None:
        self.binary = require("mosquitto", "mosquitto")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.extra_config = extra_config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        return (
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "autosave_interval 1\n"
            # With the defaults a slow QoS 1 subscriber silently loses messages (REALPARTS.md).
            "max_queued_messages 0\n"
            "max_inflight_messages 0\n"
            "log_dest stderr\n"
            # As root, mosquitto drops to its own user, which cannot write under pytest's private
            # temporary directory: the persistence file would silently never be saved.
            f"{'user root' + chr(10) if os.geteuid() == 0 else ''}"
            f"{self.extra_config}"
        )

    def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config_text())
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=log, stderr=log)
        _wait_port(self.port, 10, self.proc, self.log)

    def stop(self) -> None:
        _terminate(self.proc, 10)  # SIGTERM: mosquitto saves its persistence file then
        self.proc = None
        if "Error saving" in self.log.read_text(errors="replace"):
            raise RuntimeError(f"mosquitto could not save its persistence file; see {self.log}")

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


@dataclass(frozen=True)
class Pki:
    """A throwaway certificate authority and what it signed (PEM files in `dir`)."""

    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    other_ca: Path  # a CA that signed nothing here: trusting it must fail

    def client(self, name: str) -> tuple[Path, Path]:
        """(certificate, key) for a client whose certificate's common name is `name`."""
        cert, key = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        if not cert.exists():
            ca_key = _load_key(self.dir / "ca.key")
            ca_cert = x509.load_pem_x509_certificate((self.dir / "ca.crt").read_bytes())
            _issue(name, ca_cert, ca_key, cert, key, server=False)
        return cert, key


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for localhost / 127.0.0.1, and an unrelated second CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _self_signed("Nabz test CA", directory / "ca.crt", directory / "ca.key")
    _issue("localhost", ca_cert, ca_key, directory / "server.crt", directory / "server.key", server=True)
    _self_signed("Somebody else's CA", directory / "other-ca.crt", directory / "other-ca.key")
    return Pki(
        directory,
        directory / "ca.crt",
        directory / "server.crt",
        directory / "server.key",
        directory / "other-ca.crt",
    )


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _write(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, cert_path: Path, key_path: Path) -> None:
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(
        now + datetime.timedelta(days=2)
    )


def _self_signed(
    cn: str, cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        _validity(x509.CertificateBuilder())
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(cert, key, cert_path, key_path)
    return cert, key


def _issue(
    cn: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    cert_path: Path,
    key_path: Path,
    *,
    server: bool,
) -> None:
    key = _new_key()
    builder = (
        _validity(x509.CertificateBuilder())
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    _write(builder.sign(ca_key, hashes.SHA256()), key, cert_path, key_path)


class SecureMosquitto(Mosquitto):
    """mosquitto as in production: TLS listeners only, no anonymous clients, a password file and
    an ACL file; `cert_port` authenticates by client certificate (its common name is the user)."""

    def __init__(self, workdir: Path, pki: Pki, users: dict[str, str], acl: str) -> None:
        super().__init__(workdir)
        self.pki = pki
        self.users = users
        self.acl = acl
        self.cert_port = free_port()

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    @property
    def cert_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.cert_port}"

    def config_text(self) -> str:
        passwd = self.workdir / "passwd"
        passwd.write_text("")
        for user, password in self.users.items():
            subprocess.run(
                [require("mosquitto_passwd", "mosquitto"), "-b", str(passwd), user, password],
                check=True,
                capture_output=True,
            )
        (self.workdir / "acl").write_text(self.acl)
        tls = (
            f"cafile {self.pki.ca}\ncertfile {self.pki.server_cert}\nkeyfile {self.pki.server_key}\n"
            "tls_version tlsv1.2\n"
        )
        return (
            "per_listener_settings false\n"
            "allow_anonymous false\n"
            f"password_file {passwd}\n"
            f"acl_file {self.workdir / 'acl'}\n"
            "persistence false\n"
            # Not 0 (unlimited) here: mosquitto 2.0.11 with `max_queued_messages 0` drops the
            # connection of a client whose QoS 1 publish the ACL denies, instead of answering
            # with PUBACK "not authorized" (found by tests/gateway/test_mqtt_security.py).
            "max_queued_messages 1000000\n"
            "max_inflight_messages 0\n"
            "log_dest stderr\n"
            f"{'user root' + chr(10) if os.geteuid() == 0 else ''}"
            f"listener {self.port} 127.0.0.1\n{tls}"
            f"listener {self.cert_port} 127.0.0.1\n{tls}"
            "require_certificate true\nuse_identity_as_username true\n"
        )


class VictoriaMetrics:
    """VictoriaMetrics: accepts influxdb-client's `/api/v2/write`; read back with `/api/v1/export`."""

    def __init__(self, workdir: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.binary = require("victoria-metrics", "victoria-metrics")
        self.extra_args = extra_args
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "victoria-metrics.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"-storageDataPath={self.workdir / 'data'}",
                    f"-httpListenAddr=127.0.0.1:{self.port}",
                    "-retentionPeriod=100y",
                    "-search.latencyOffset=0s",
                    *self.extra_args,
                ],
                stdout=log,
                stderr=log,
            )
        _wait_port(self.port, 15, self.proc, self.log)

    def stop(self) -> None:
        _terminate(self.proc, 15)
        self.proc = None

    def export(self, match: str) -> list[dict[str, Any]]:
        """All series matching a selector, as VictoriaMetrics' JSON-lines export."""
        urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10).read()
        query = urllib.parse.urlencode({"match[]": match})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{query}", timeout=30) as resp:
            return [json.loads(line) for line in resp.read().splitlines() if line.strip()]

    def count_points(self, match: str) -> dict[tuple[str, ...], int]:
        """Points per series (metric name and sorted labels), after a flush."""
        out: dict[tuple[str, ...], int] = {}
        for series in self.export(match):
            metric = series["metric"]
            key = tuple(f"{k}={metric[k]}" for k in sorted(metric))
            out[key] = out.get(key, 0) + len(series["timestamps"])
        return out


class InfluxDB1:
    """InfluxDB 1.x (Debian's `influxdb`, 1.6): the real InfluxDB storage engine and its InfluxQL
    `/query` endpoint, which InfluxDB 2 and 3 answer too. It has no `/api/v2/write`, so lines go in
    through the 1.x `/write` endpoint (`write`); they are the same line protocol."""

    def __init__(self, workdir: Path, database: str = "nabz", http_settings: str = "") -> None:
        self.binary = require("influxd", "influxdb")
        self.http_settings = http_settings  # more lines for the [http] section
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.database = database
        self.port, self.rpc_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "influxd.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        for attempt in range(3):
            try:
                self._start()
                break
            except RuntimeError as exc:
                # a free port taken by another test's server between choosing it and binding it
                if attempt == 2 or "address already in use" not in str(exc):
                    raise
                self.port, self.rpc_port = free_port(), free_port()
        self.query(f'CREATE DATABASE "{self.database}"')

    def _start(self) -> None:
        conf = self.workdir / "influxdb.conf"
        d = self.workdir
        conf.write_text(
            f'reporting-disabled = true\nbind-address = "127.0.0.1:{self.rpc_port}"\n'
            f'[meta]\n  dir = "{d / "meta"}"\n'
            f'[data]\n  dir = "{d / "data"}"\n  wal-dir = "{d / "wal"}"\n  query-log-enabled = false\n'
            f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  log-enabled = false\n{self.http_settings}\n'
            "[monitor]\n  store-enabled = false\n"
        )
        self.log.write_bytes(b"")  # this attempt's output only
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([self.binary, "-config", str(conf)], stdout=log, stderr=log)
        _wait_port(self.port, 15, self.proc, self.log)

    def stop(self) -> None:
        _terminate(self.proc, 15)
        self.proc = None

    def query(self, q: str) -> dict[str, Any]:
        body = urllib.parse.urlencode({"q": q, "db": self.database, "epoch": "ns"}).encode()
        with urllib.request.urlopen(f"{self.url}/query", data=body, timeout=30) as resp:
            return dict(json.loads(resp.read()))

    def write(self, lines: list[str]) -> None:
        query = urllib.parse.urlencode({"db": self.database, "precision": "ns"})
        request = urllib.request.Request(
            f"{self.url}/write?{query}", data="\n".join(lines).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status == 204, resp.status
