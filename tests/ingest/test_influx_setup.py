"""`nabz influx setup` against a scripted HTTP server that checks the InfluxDB 2 request shapes
(no InfluxDB 2 server can run here; the shapes follow the InfluxDB v2 API reference)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nabz.cli import main
from tests.ingest.httpstub import Stub


@pytest.fixture
def influx2() -> Stub:
    stub = Stub()
    stub.routes[("GET", "/api/v2/orgs")] = [(200, {"orgs": [{"id": "org1", "name": "nabz"}]})]
    return stub


def _run(stub: Stub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    cfg = tmp_path / "nabz.toml"
    cfg.write_text(f'[influx]\nurl = "{stub.url}"\ntoken = "op-token"\norg = "nabz"\nbucket = "nabz"\n')
    cfg.chmod(0o600)  # it holds a token: nabz refuses it readable by others
    assert main(["influx", "setup", "--config", str(cfg), "--retention-days", "30"]) == 0
    return capsys.readouterr().out


def test_setup_creates_buckets_with_retention_and_the_downsampling_task(
    influx2: Stub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    influx2.routes[("GET", "/api/v2/buckets")] = [(200, {"buckets": []})]
    influx2.routes[("POST", "/api/v2/buckets")] = [(201, {"id": "b1"})]
    influx2.routes[("GET", "/api/v2/tasks")] = [(200, {"tasks": []})]
    influx2.routes[("POST", "/api/v2/tasks")] = [(201, {"id": "t1"})]
    out = _run(influx2, tmp_path, capsys)
    influx2.close()
    assert "bucket nabz: created, retention 30 days" in out and "task nabz-downsample-1m: created" in out
    assert all(r.headers["Authorization"] == "Token op-token" for r in influx2.requests)
    posts = [r.json() for r in influx2.requests if r.method == "POST" and r.path == "/api/v2/buckets"]
    assert posts == [
        {"orgID": "org1", "name": "nabz", "retentionRules": [{"type": "expire", "everySeconds": 30 * 86400}]},
        {
            "orgID": "org1",
            "name": "nabz-trends",
            "retentionRules": [{"type": "expire", "everySeconds": 730 * 86400}],
        },
    ]
    (task,) = [r.json() for r in influx2.requests if r.path == "/api/v2/tasks" and r.method == "POST"]
    assert task["orgID"] == "org1" and task["status"] == "active"
    flux = task["flux"]
    assert 'option task = {name: "nabz-downsample-1m", every: 1m' in flux
    assert 'from(bucket: "nabz")' in flux and 'to(bucket: "nabz-trends", org: "nabz")' in flux
    assert "aggregateWindow(every: 1m, fn: mean" in flux


def test_setup_again_updates_what_exists(
    influx2: Stub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    influx2.routes[("GET", "/api/v2/buckets")] = [(200, {"buckets": [{"id": "b9", "name": "nabz"}]})]
    influx2.routes[("PATCH", "/api/v2/buckets/b9")] = [(200, {"id": "b9"})]
    influx2.routes[("GET", "/api/v2/tasks")] = [
        (200, {"tasks": [{"id": "t9", "name": "nabz-downsample-1m"}]})
    ]
    influx2.routes[("PATCH", "/api/v2/tasks/t9")] = [(200, {"id": "t9"})]
    out = _run(influx2, tmp_path, capsys)
    influx2.close()
    assert "retention set to 30 days" in out and "task nabz-downsample-1m: updated" in out
    assert not [r for r in influx2.requests if r.method == "POST"]  # nothing created twice
    patch = [r.json() for r in influx2.requests if r.method == "PATCH" and r.path == "/api/v2/buckets/b9"]
    assert patch[0] == {"retentionRules": [{"type": "expire", "everySeconds": 30 * 86400}]}


def test_setup_reports_a_refusal(influx2: Stub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    influx2.routes[("GET", "/api/v2/orgs")] = [(401, {"message": "unauthorized access"})]
    cfg = tmp_path / "nabz.toml"
    cfg.write_text(f'[influx]\nurl = "{influx2.url}"\ntoken = "bad"\n')
    cfg.chmod(0o600)  # it holds a token: nabz refuses it readable by others
    assert main(["influx", "setup", "--config", str(cfg)]) == 1
    influx2.close()
    out = capsys.readouterr()
    assert "401" in out.err and out.out == ""  # an error goes to stderr
