"""The Grafana dashboards: generated JSON checked structurally and against the storage schema,
and the push checked against a local HTTP server standing in for Grafana's API. (No Grafana server
can be installed here; rendering in a real Grafana is not tested.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards.commands import JSON_DIR
from dashboards.grafana import DATASOURCE_UID, SchemaError, build_all, flux
from ingest.lines import WAVE_FLAGS, flags_mask
from ingest.opsstats import DEVICE_STATE_CODES, LINK_CODES
from nabz.catalogue import MEASUREMENTS, QUANTITIES

ROOT = Path(__file__).parents[2]
PROVISIONING = ROOT / "dashboards" / "provisioning"


@pytest.fixture(scope="module")
def built() -> dict[str, dict[str, Any]]:
    return build_all()


def _panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    return list(d["panels"])


def test_the_committed_json_is_what_the_code_builds(built) -> None:  # type: ignore[no-untyped-def]
    committed = {p.stem: json.loads(p.read_text()) for p in JSON_DIR.glob("*.json")}
    assert committed == built, "run `nabz dashboards build` and commit dashboards/json"


def test_three_dashboards_for_grafana_11_6(built) -> None:  # type: ignore[no-untyped-def]
    assert set(built) == {"nabz-ward", "nabz-patient", "nabz-ops"}
    for d in built.values():
        assert d["schemaVersion"] == 41 and d["title"].startswith("Nabz") and _panels(d)


def test_every_panel_uses_the_provisioned_datasource(built) -> None:  # type: ignore[no-untyped-def]
    (source,) = yaml.safe_load((PROVISIONING / "datasources" / "nabz.yaml").read_text())["datasources"]
    assert source["uid"] == DATASOURCE_UID and source["jsonData"]["version"] == "Flux"
    for d in built.values():
        for panel in _panels(d):
            assert panel["datasource"]["uid"] == DATASOURCE_UID
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == DATASOURCE_UID


def _blocks(query: str) -> list[str]:
    """A query's `from(...)` pipelines (a union has several), each up to the next."""
    return ["from(bucket:" + b for b in query.split("from(bucket:")[1:]]


def test_queries_name_only_what_ingest_writes(built) -> None:  # type: ignore[no-untyped-def]
    seen_measurements = set()
    for d in built.values():
        for panel in _panels(d):
            for target in panel["targets"]:
                assert _blocks(target["query"]), target["query"]
                for q in _blocks(target["query"]):
                    (measurement,) = re.findall(r'r\._measurement == "([^"]+)"', q)
                    m = MEASUREMENTS[measurement]
                    seen_measurements.add(measurement)
                    fields = re.findall(r'r\._field == "([^"]+)"', q)
                    assert fields and set(fields) <= set(m.fields), q
                    tags = set(re.findall(r"r\.([a-z_]+) (?:==|=~)", q)) - {"_measurement", "_field"}
                    assert tags <= set(m.tags), q
    assert {
        "vitals",
        "device_vitals",
        "ecg",
        "ppg",
        "rr",
        "ingest_stats",
        "gateway_status",
    } <= seen_measurements


def test_units_come_from_the_catalogue(built) -> None:  # type: ignore[no-untyped-def]
    known = {q.grafana_unit for q in QUANTITIES.values()} | {"s", "short"}
    for d in built.values():
        for panel in _panels(d):
            unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
            assert unit is None or unit in known, (panel["title"], unit)
            for o in panel["fieldConfig"].get("overrides", []):
                for prop in o["properties"]:
                    if prop["id"] == "unit":
                        assert prop["value"] in known


def test_patient_variables_and_repeats(built) -> None:  # type: ignore[no-untyped-def]
    names = {d: [v["name"] for v in built[d]["templating"]["list"]] for d in built}
    assert "patient" in names["nabz-patient"] and "patient" in names["nabz-ward"]
    ward_patient = next(v for v in built["nabz-ward"]["templating"]["list"] if v["name"] == "patient")
    assert ward_patient["multi"] and ward_patient["includeAll"]
    assert all(p.get("repeat") == "patient" for p in _panels(built["nabz-ward"]))
    detail = next(v for v in built["nabz-patient"]["templating"]["list"] if v["name"] == "patient")
    assert not detail["multi"]


def test_spo2_is_labelled_uncalibrated_wherever_shown(built) -> None:  # type: ignore[no-untyped-def]
    for d in built.values():
        for panel in _panels(d):
            text = json.dumps(panel)
            # "time since data" reads spo2_pct points for their time only; the names each SpO2
            # series is shown under are checked in test_grafana_series.py
            if "spo2_pct" in text and "since data" not in panel["title"]:
                assert "uncalibrated" in text.lower(), panel["title"]


def test_raw_waveforms_mark_the_samples_a_device_flagged_by_name(built) -> None:  # type: ignore[no-untyped-def]
    """A flat ECG with its lead off must not read as an asystole: each raw panel also draws the
    stored flags (ingest.lines.flags_mask on a flagged message's first sample), named."""
    panels = {p["title"]: p for p in _panels(built["nabz-patient"])}
    for title, measurement in (("ECG (raw, last 10 s)", "ecg"), ("PPG infrared (raw, last 10 s)", "ppg")):
        panel = panels[title]
        queries = [t["query"] for t in panel["targets"]]
        assert any(f'r._measurement == "{measurement}"' in q and 'r._field == "flags"' in q for q in queries)
        (flags,) = [
            o
            for o in panel["fieldConfig"]["overrides"]
            if re.search(o["matcher"]["options"].strip("/"), 'flags {patient="p-0001"}')
        ]
        props = {p["id"]: p["value"] for p in flags["properties"]}
        assert props["custom.drawStyle"] == "points" and props["custom.axisPlacement"] == "right"
        names = props["mappings"][0]["options"]
        assert names[str(flags_mask(["leads_off"]))]["text"] == "leads off"
        assert names[str(flags_mask(["saturated", "gap_before"]))]["text"] == "saturated, gap before"
        assert len(names) == 2 ** len(WAVE_FLAGS) - 1  # every combination has its words
        assert "not an asystole" in panel["description"]
        assert not any(
            re.search(o["matcher"]["options"].strip("/"), "signal_uv")
            for o in panel["fieldConfig"]["overrides"]
        )


def test_the_operations_board_has_a_row_per_wearable_with_its_link_and_state_in_words(built) -> None:  # type: ignore[no-untyped-def]
    panels = {p["title"]: p for p in _panels(built["nabz-ops"])}
    for title, field, words in (
        ("Wearables: link to their gateway", "link", {"connected", "reconnecting", "lost"}),
        ("Wearables: what they say of themselves", "device_state", {"ok", "low battery", "sensor fault"}),
    ):
        panel = panels[title]
        assert panel["type"] == "state-timeline"
        (query,) = [t["query"] for t in panel["targets"]]
        assert 'r._measurement == "device_status"' in query and f'r._field == "{field}"' in query
        (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
        assert words <= {m["text"] for m in mapping["options"].values()}


def test_the_operations_board_narrows_to_chosen_gateways_and_shows_the_worst_state(built) -> None:  # type: ignore[no-untyped-def]
    """Thousands of wearables at scale: the per-gateway and per-wearable panels follow the
    `gateway` variable (all by default), and a brief bad state inside an interval is shown."""
    ops = built["nabz-ops"]
    (gateway,) = [v for v in ops["templating"]["list"] if v["name"] == "gateway"]
    assert gateway["multi"] and gateway["includeAll"] and 'tag: "gateway"' in gateway["query"]
    panels = {p["title"]: p["targets"][0]["query"] for p in _panels(ops)}
    narrowed = "r.gateway =~ /^${gateway:regex}$/"
    for title in (
        "Gateway spool depth",
        "Gateways online",
        *(t for t in panels if t.startswith("Wearables")),
    ):
        assert narrowed in panels[title], title
    assert narrowed not in panels["Readings stored per second"]  # ingest's own rate has no gateway
    # worst of each interval: online is 1, offline 0; the wearable codes grow with how bad the state is
    assert "fn: min," in panels["Gateways online"]
    assert all("fn: max," in q for t, q in panels.items() if t.startswith("Wearables"))
    assert LINK_CODES["connected"] < LINK_CODES["reconnecting"] < LINK_CODES["lost"]
    ok, low, critical, fault = (
        DEVICE_STATE_CODES[s] for s in ("ok", "low_battery", "battery_critical", "sensor_fault")
    )
    assert ok < low < critical < fault


def test_a_stale_patient_turns_red(built) -> None:  # type: ignore[no-untyped-def]
    stale = next(p for p in _panels(built["nabz-ward"]) if "since data" in p["title"])
    steps = stale["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1] == {"color": "red", "value": 300}


def test_a_query_for_a_name_ingest_does_not_write_does_not_build() -> None:
    with pytest.raises(SchemaError, match="heart_rate"):
        flux("vitals", ["heart_rate"])
    with pytest.raises(SchemaError, match="ward"):
        flux("vitals", ["hr_bpm"], where={"ward": "3"})
    with pytest.raises(SchemaError, match="vital_signs"):
        flux("vital_signs", ["hr_bpm"])


def test_the_dashboard_provider_points_at_a_folder() -> None:
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "nabz.yaml").read_text())["providers"]
    assert provider["type"] == "file" and provider["folderUid"] == "nabz" and provider["options"]["path"]


class _FakeGrafana(BaseHTTPRequestHandler):
    requests: list[tuple[str, str, dict[str, str], Any]] = []
    folder_exists = False
    dashboards: dict[str, int] = {}  # uid -> version
    login_page = False  # answer everything 200 with HTML, as a proxy's login page does
    token = "glsa_test"

    def _reply(self, status: int, body: Any) -> None:
        if self.login_page:
            data = b"<html><body>Sign in</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        type(self).requests.append((self.command, self.path, dict(self.headers), body))
        return body

    def do_GET(self) -> None:  # noqa: N802
        self._record()
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            return self._reply(401, {"message": "invalid API key"})
        if self.path.startswith("/api/dashboards/uid/"):
            version = self.dashboards.get(self.path.rsplit("/", 1)[1])
            if version is None:
                return self._reply(404, {"message": "Dashboard not found"})
            meta = {"updatedBy": "sana", "updated": "2026-11-27T10:00:00Z", "version": version}
            return self._reply(200, {"dashboard": {"version": version}, "meta": meta})
        self._reply(200 if self.folder_exists else 404, {"uid": "nabz"} if self.folder_exists else {})

    def do_POST(self) -> None:  # noqa: N802
        body = self._record()
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            return self._reply(401, {"message": "invalid API key"})
        if self.headers.get("Content-Type") != "application/json":
            return self._reply(415, {"message": "json only"})
        if self.path == "/api/folders":
            type(self).folder_exists = True
            return self._reply(200, {"uid": body["uid"], "title": body["title"]})
        if self.path == "/api/dashboards/db":
            d = body["dashboard"]
            ok = (
                body.get("overwrite") is True
                and body.get("folderUid") == "nabz"
                and d.get("uid")
                and d["panels"]
            )
            if not ok:
                return self._reply(400, {"message": "bad request"})
            version = type(self).dashboards[d["uid"]] = type(self).dashboards.get(d["uid"], 0) + 1
            return self._reply(200, {"status": "success", "url": f"/d/{d['uid']}/x", "version": version})
        self._reply(404, {"message": "not found"})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def grafana() -> Iterator[str]:
    _FakeGrafana.requests = []
    _FakeGrafana.folder_exists = False
    _FakeGrafana.dashboards = {}
    _FakeGrafana.login_page = False
    server = HTTPServer(("127.0.0.1", 0), _FakeGrafana)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _push(url: str, token: str) -> subprocess.CompletedProcess[str]:
    import os

    env = dict(os.environ, NABZ_GRAFANA__TOKEN=token, NABZ_CONFIG="")
    return subprocess.run(
        [sys.executable, "-m", "nabz.cli", "dashboards", "push", "--url", url],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60,
    )  # fmt: skip


def test_push_creates_the_folder_and_imports_each_dashboard(grafana: str) -> None:
    out = _push(grafana, "glsa_test")
    assert out.returncode == 0, out.stderr
    calls = [(m, p) for m, p, _, _ in _FakeGrafana.requests]
    assert calls[:2] == [("GET", "/api/folders/nabz"), ("POST", "/api/folders")]
    posted = [b["dashboard"]["uid"] for m, p, _, b in _FakeGrafana.requests if p == "/api/dashboards/db"]
    assert sorted(posted) == ["nabz-ops", "nabz-patient", "nabz-ward"]
    assert out.stdout.splitlines() == [f"created /d/{uid}/x" for uid in posted]
    assert "glsa_test" not in out.stdout + out.stderr


def test_push_says_which_dashboards_it_replaced_and_what_they_were(grafana: str) -> None:
    """A push replaces a dashboard of the same uid whole, edits made in Grafana's UI included:
    the installer is told which, the version replaced and who saved it (Grafana's version
    history keeps it)."""
    assert _push(grafana, "glsa_test").returncode == 0
    _FakeGrafana.dashboards["nabz-ward"] = 4  # since edited in the UI, by sana
    out = _push(grafana, "glsa_test")
    assert out.returncode == 0, out.stderr
    lines = {line.split()[1]: line for line in out.stdout.splitlines()}
    assert set(lines) == {"/d/nabz-ops/x", "/d/nabz-patient/x", "/d/nabz-ward/x"}
    assert lines["/d/nabz-ward/x"] == (
        "replaced /d/nabz-ward/x (version 4, saved by sana at 2026-11-27T10:00:00Z;"
        " kept in Grafana's version history)"
    )
    assert all(
        line.startswith("replaced ") and "version 1," in lines[u]
        for u, line in lines.items()
        if "ward" not in u
    )


def test_push_to_a_page_that_is_not_grafana_says_so_in_one_line(grafana: str) -> None:
    """A URL answering 200 with HTML (a proxy's login page, a wrong port) gave a traceback."""
    _FakeGrafana.login_page = True
    out = _push(grafana, "glsa_test")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "text/html" in out.stderr and "not Grafana's JSON API" in out.stderr
    assert "glsa_test" not in out.stdout + out.stderr


def test_push_with_a_bad_token_fails_with_grafanas_reason(grafana: str) -> None:
    out = _push(grafana, "wrong")
    assert out.returncode == 1
    assert "401" in out.stderr and "Traceback" not in out.stderr
