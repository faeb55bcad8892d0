"""Faults found in review of the gateway's dead-man switch (2026-11), each seen as the on-call
doctor would see it: which texts reach the phone, when, and to whom. A real gateway (its spool
on disk, its step loop) runs on injected wall and monotonic clocks with a recording modem; no
broker (it is unreachable: the texts say so) and no real waiting. Heartbeats are synthetic."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from alerts.notify import Delivery
from alerts.oncall import Schedule
from gateway.deadman import DeadManSender
from gateway.service import Gateway
from gateway.spool import snapshot
from gateway.virtual import VirtualTransport
from nabz import contract
from nabz.config import (
    Config,
    ConfigError,
    DeadmanConfig,
    GatewayConfig,
    MqttConfig,
    OncallConfig,
    PersonConfig,
    RotationConfig,
    load,
)
from nabz.contract import Heartbeat

T0 = 1_795_597_200.0  # 14:00 PKT
AISHA, BILAL = "+923001111111", "+923002222222"
ONCALL = OncallConfig(
    people={"aisha": PersonConfig(phone=AISHA), "bilal": PersonConfig(phone=BILAL)},
    rotations=[RotationConfig(role="primary", members=["aisha"], start="2026-11-02T08:00"),
               RotationConfig(role="backup", members=["bilal"], start="2026-11-02T08:00")],
)  # fmt: skip


class Clocks:
    """The gateway's wall clock (which NTP may step) and its monotonic clock (which only runs)."""

    def __init__(self, wall: float = T0, mono: float = 1000.0) -> None:
        self.t_wall, self.t_mono, self.mono0 = wall, mono, mono

    def wall(self) -> float:
        return self.t_wall

    def mono(self) -> float:
        return self.t_mono

    @property
    def elapsed(self) -> float:
        return self.t_mono - self.mono0

    def run(self, s: float) -> None:
        self.t_wall += s
        self.t_mono += s


class Modem:
    """A GSM modem that records what reaches the phones; `down` while it has no network."""

    name = "gsm"

    def __init__(self, clocks: Clocks) -> None:
        self.clocks = clocks
        self.down = False
        self.attempts: list[float] = []  # elapsed time of each attempt
        self.texts: list[tuple[float, str, str]] = []  # (elapsed, to, text)

    def send(self, to: str, text: str, key: str, at: float) -> Delivery:
        self.attempts.append(self.clocks.elapsed)
        if self.down:
            return Delivery(False, retryable=True, detail="+CMS ERROR: 331 (no network service)")
        self.texts.append((self.clocks.elapsed, to, text))
        return Delivery(True)


def beat(service: str, t: float) -> tuple[str, bytes]:
    hb = Heartbeat(site="demo", service=service, instance=f"nabz-{service}",  # type: ignore[arg-type]
                   t=datetime.fromtimestamp(t, UTC), interval_s=10.0)  # fmt: skip
    return contract.heartbeat_topic("demo", f"nabz-{service}"), contract.encode(hb)


def config(spool: Path, oncall: OncallConfig | None = None, **deadman: Any) -> Config:
    deadman.setdefault("phones", [AISHA])
    return Config(
        site="demo",
        mqtt=MqttConfig(url="mqtt://127.0.0.1:1"),  # nobody listens: the broker is unreachable
        gateway=GatewayConfig(
            id="gw-0001", spool_path=str(spool), deadman=DeadmanConfig(after_s=600.0, modem=True, **deadman)
        ),
        oncall=oncall or OncallConfig(),
    )


class Home:
    """A gateway on injected clocks with a recording modem; `run` steps it every 5 s."""

    def __init__(self, cfg: Config, clocks: Clocks, modem: Modem) -> None:
        self.clocks, self.modem = clocks, modem
        self.sender = DeadManSender(modem, clock=clocks.mono, wall=clocks.wall)
        self.gw = Gateway(
            cfg, VirtualTransport([]), clock=clocks.wall, monotonic=clocks.mono, deadman_sender=self.sender
        )
        self.gw.start()

    def run(self, seconds: float, *, server: bool, every: float = 5.0) -> None:
        """`seconds` of gateway time; with `server`, both services beat every 10 s."""
        end = self.clocks.t_mono + seconds
        while self.clocks.t_mono < end:
            self.clocks.run(every)
            if server and round(self.clocks.elapsed) % 10 == 0:
                for s in ("ingest", "alerts"):
                    self.gw._events.put(("heartbeat", beat(s, self.clocks.t_wall)))
            self.gw.step()
            self.sender.pump()

    def stop(self) -> None:
        self.gw.stop()


@pytest.fixture
def homes() -> Iterator[list[Home]]:
    made: list[Home] = []
    yield made
    for h in made:
        try:
            h.stop()
        except Exception:  # already stopped (the restart tests stop it themselves)
            pass


def home(homes: list[Home], cfg: Config, clocks: Clocks, modem: Modem) -> Home:
    h = Home(cfg, clocks, modem)
    homes.append(h)
    return h


# --- 1: with a modem and no `phones`, the gateway texted the demo's placeholder number ---------


GATEWAY_TOML = """site = "demo"
[mqtt]
url = "mqtt://127.0.0.1:1"
[gateway]
id = "gw-0001"
spool_path = "{spool}"
[gateway.deadman]
modem = true
"""


def test_a_gateway_whose_modem_would_text_the_demo_placeholder_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(GATEWAY_TOML.format(spool=tmp_path / "spool.sqlite"))
    clocks = Clocks()
    with pytest.raises(ConfigError, match=r"placeholder number \+923000000000.*phones.*\[oncall\]"):
        Gateway(load(path), VirtualTransport([]), clock=clocks.wall, monotonic=clocks.mono)
    assert not (tmp_path / "spool.sqlite").exists()  # refused before anything was opened


def test_a_gateway_with_its_own_oncall_texts_who_is_on_call_and_never_the_placeholder(
    tmp_path: Path, homes: list[Home]
) -> None:
    clocks = Clocks()
    modem = Modem(clocks)
    h = home(homes, config(tmp_path / "s.sqlite", phones=[], oncall=ONCALL), clocks, modem)
    h.run(700, server=False)
    assert [(to, text[:23]) for _, to, text in modem.texts] == [
        (AISHA, "NABZ SERVER SILENT demo"),
        (BILAL, "NABZ SERVER SILENT demo"),
    ]


# --- 2: a restart forgot the outage ---------------------------------------------------------------


def test_a_restart_after_the_silent_text_still_tells_the_doctor_when_the_server_is_back(
    tmp_path: Path, homes: list[Home]
) -> None:
    spool = tmp_path / "s.sqlite"
    clocks = Clocks()
    modem = Modem(clocks)
    h = home(homes, config(spool), clocks, modem)
    h.run(300, server=True)
    h.run(700, server=False)  # the server stops at 14:05; texted at about 14:15
    assert [text[:18] for _, _, text in modem.texts] == ["NABZ SERVER SILENT"]
    h.stop()
    clocks.run(10)
    clocks.t_mono = 50.0  # a monotonic clock means nothing across processes: any value will do
    clocks.mono0 = 50.0 - 1010.0
    h = home(homes, config(spool), clocks, modem)
    h.run(300, server=False)
    assert len(modem.texts) == 1  # still silent: no second "SERVER SILENT" after the restart
    h.run(60, server=True)  # the server is back
    (_, to, back) = modem.texts[-1]
    assert len(modem.texts) == 2 and to == AISHA
    assert "heard again (silent since 14:05 PKT)" in back


def test_a_gateway_restarting_faster_than_after_s_still_texts_a_silent_server(
    tmp_path: Path, homes: list[Home]
) -> None:
    spool = tmp_path / "s.sqlite"
    clocks = Clocks()
    modem = Modem(clocks)
    for _ in range(5):  # crashes every 4 minutes, systemd restarts it 10 s later
        h = home(homes, config(spool), clocks, modem)
        h.run(240, server=False)
        h.gw.spool.close()  # a crash: no clean stop, only what was saved on the way
        homes.remove(h)
        h.gw.client.loop_stop()
        clocks.run(10)
        if modem.texts:
            break
    (when, to, text), *_ = modem.texts
    assert to == AISHA and text.startswith("NABZ SERVER SILENT")
    assert 600 <= when <= 600 + 3 * 10 + 10  # its silence counted on: about 10 minutes, not never


def test_a_gateway_switched_off_for_an_hour_does_not_text_when_it_comes_back(
    tmp_path: Path, homes: list[Home]
) -> None:
    spool = tmp_path / "s.sqlite"
    clocks = Clocks()
    modem = Modem(clocks)
    h = home(homes, config(spool), clocks, modem)
    h.run(300, server=True)
    h.stop()
    clocks.run(3600)  # a power cut in the home: nobody was listening, the server was fine
    h = home(homes, config(spool), clocks, modem)
    h.run(300, server=True)
    assert modem.texts == []


def test_a_text_the_modem_had_not_sent_at_stop_is_sent_after_the_restart(
    tmp_path: Path, homes: list[Home]
) -> None:
    spool = tmp_path / "s.sqlite"
    clocks = Clocks()
    modem = Modem(clocks)
    modem.down = True
    h = home(homes, config(spool), clocks, modem)
    h.run(620, server=False)
    assert modem.texts == [] and len(modem.attempts) >= 1
    h.stop()
    modem.down = False
    clocks.run(10)
    h = home(homes, config(spool), clocks, modem)
    h.run(5, server=False)
    assert [(to, text[:18]) for _, to, text in modem.texts] == [(AISHA, "NABZ SERVER SILENT")]


# --- 3: the dead-man ran on the wall clock, which NTP steps after a Pi boots -------------------


def test_an_ntp_step_at_boot_neither_texts_a_false_silence_nor_heard_again(
    tmp_path: Path, homes: list[Home]
) -> None:
    clocks = Clocks(wall=T0 - 7200)  # fake-hwclock: two hours behind
    modem = Modem(clocks)
    h = home(homes, config(tmp_path / "s.sqlite"), clocks, modem)
    h.run(20, server=False)
    clocks.t_wall += 7200  # NTP sets the clock, before the first heartbeat
    h.run(1800, server=True)
    clocks.t_wall += 3600  # and once more while heartbeats flow
    h.run(1800, server=True)
    assert modem.texts == []


def test_a_clock_set_back_as_the_server_dies_does_not_delay_the_text(
    tmp_path: Path, homes: list[Home]
) -> None:
    clocks = Clocks()
    modem = Modem(clocks)
    h = home(homes, config(tmp_path / "s.sqlite"), clocks, modem)
    h.run(300, server=True)  # the last heartbeat at 14:05
    clocks.t_wall -= 3600  # the clock goes back an hour as the server dies
    h.run(1200, server=False)
    (when, to, text), *_ = modem.texts
    assert 300 + 600 <= when <= 300 + 600 + 10  # ten minutes after the last heartbeat, not 70
    assert "since 13:05 PKT" in text  # the last heartbeat's time on today's clock


# --- 4: a typo in the gateway's [oncall] crashed it at the moment it should text ---------------


def test_a_typo_in_the_oncall_schedule_refuses_to_start_instead_of_crashing_when_due(tmp_path: Path) -> None:
    typo = OncallConfig(
        people={"aisha": PersonConfig(phone=AISHA)},
        rotations=[RotationConfig(role="primary", members=["aisha", "bilall"], start="2026-11-02T08:00")],
    )
    clocks = Clocks()
    with pytest.raises(ConfigError, match="bilall"):
        Gateway(
            config(tmp_path / "s.sqlite", phones=[], oncall=typo),
            VirtualTransport([]),
            clock=clocks.wall,
            monotonic=clocks.mono,
            deadman_sender=DeadManSender(Modem(clocks)),
        )


def test_when_who_is_on_call_cannot_be_worked_out_everyone_on_the_schedule_is_texted(
    tmp_path: Path, homes: list[Home], monkeypatch: pytest.MonkeyPatch
) -> None:
    clocks = Clocks()
    modem = Modem(clocks)
    h = home(homes, config(tmp_path / "s.sqlite", phones=[], oncall=ONCALL), clocks, modem)

    def broken(self: Schedule, role: str, at: float) -> list[Any]:
        raise RuntimeError("a bug in the schedule")

    monkeypatch.setattr(Schedule, "who", broken)
    h.run(700, server=False)  # no crash: the gateway keeps stepping
    assert sorted(to for _, to, _ in modem.texts) == [AISHA, BILAL]


# --- 5: an undelivered text was given up after ~32 minutes ------------------------------------


def test_a_text_the_modem_cannot_send_is_tried_until_the_network_is_back(
    tmp_path: Path, homes: list[Home]
) -> None:
    clocks = Clocks()
    modem = Modem(clocks)
    modem.down = True  # no GSM network for two hours
    h = home(homes, config(tmp_path / "s.sqlite"), clocks, modem)
    h.run(600 + 7200, server=False)
    assert modem.texts == []
    gaps = [b - a for a, b in zip(modem.attempts, modem.attempts[1:], strict=False)]
    assert len(modem.attempts) > 20 and max(gaps) <= 300 + 5  # never given up, 5 minutes apart at most
    local = json.loads(snapshot(tmp_path / "s.sqlite").status or b"{}")  # what `nabz gateway status` reads
    assert [(t["to"], t["error"]) for t in local["server"]["texts_undelivered"]] == [
        (AISHA, "+CMS ERROR: 331 (no network service)")
    ]
    modem.down = False
    h.run(300, server=False)
    assert [(to, text[:18]) for _, to, text in modem.texts] == [(AISHA, "NABZ SERVER SILENT")]
    assert modem.texts[0][0] <= 600 + 7200 + 300 + 5  # within one retry of the network coming back


def test_a_heard_again_replaces_a_silent_text_still_undelivered(tmp_path: Path, homes: list[Home]) -> None:
    clocks = Clocks()
    modem = Modem(clocks)
    modem.down = True
    h = home(homes, config(tmp_path / "s.sqlite"), clocks, modem)
    h.run(300, server=True)
    h.run(1200, server=False)
    h.run(60, server=True)  # back before the modem could send anything
    modem.down = False
    h.run(600, server=True)
    assert [(to, text[:47]) for _, to, text in modem.texts] == [
        (AISHA, "NABZ demo/gw-0001: the server is heard again (s")
    ]
    assert "silent since 14:05 PKT" in modem.texts[0][2]


# --- 6: 'heard again' said "silent since <now>" when nothing had been heard -------------------


def test_heard_again_after_a_silence_from_the_start_says_since_when_the_gateway_listened(
    tmp_path: Path, homes: list[Home]
) -> None:
    clocks = Clocks()
    modem = Modem(clocks)
    h = home(homes, config(tmp_path / "s.sqlite"), clocks, modem)
    h.run(4300, server=False)  # nothing heard from 14:00 to 15:11
    h.run(20, server=True)
    back = modem.texts[-1][2]
    assert "not heard since this gateway started listening at 14:00 PKT" in back
    assert "15:1" not in back


def test_the_sender_keeps_trying_after_days_of_failures_and_a_later_outage_is_still_texted() -> None:
    """A 'heard again' nobody could deliver for 3.5 days (1,024 tries): its next wait overflowed,
    the sending thread died, and no later outage was ever texted."""
    clocks = Clocks()
    modem = Modem(clocks)
    modem.down = True
    sender = DeadManSender(modem, clock=clocks.mono, wall=clocks.wall)
    sender.send(AISHA, "NABZ server heard again", "k-old", outage=1, attempts=1100)
    due = sender.pump()  # the 1,101st try: refused, and the next one scheduled
    assert due is not None and due - clocks.mono() <= sender.max_retry_s
    modem.down = False
    sender.send(AISHA, "NABZ SERVER SILENT (a new outage)", "k-new", outage=2)
    clocks.run(sender.max_retry_s)
    sender.pump()
    assert {text for _, _, text in modem.texts} == {
        "NABZ server heard again",
        "NABZ SERVER SILENT (a new outage)",
    }


@pytest.mark.parametrize(
    "mark",
    ['{"at": 1, "services": [], "state": "silent"}', '{"at": 1, "services": "x"}', "[1, 2]", "garbage"],
)
def test_a_damaged_saved_state_starts_the_dead_man_afresh(mark: str) -> None:
    from gateway.deadman import DeadMan, HeartbeatWatch, restore

    assert restore(
        mark, HeartbeatWatch(["ingest"], 600.0), DeadMan("demo", "gw-0001", 0.0, "Asia/Karachi"), 0.0, 10.0
    ) == ([], [])


# --- a modem that cannot text was found only when the server had gone silent ---------------------
class MissingModem(Modem):
    """The configured port has no modem behind it."""

    def init(self) -> None:
        raise OSError("cannot open /dev/ttyUSB0: [Errno 2] No such file or directory")

    def send(self, to: str, text: str, key: str, at: float) -> Delivery:
        self.attempts.append(self.clocks.elapsed)
        return Delivery(False, retryable=True, detail="cannot open /dev/ttyUSB0")


def test_a_modem_that_cannot_text_is_found_at_start_and_gateway_status_says_so(tmp_path: Path) -> None:
    """The installer runs `nabz gateway status` after setting up: a missing modem is named there
    (and in the log) at once, not discovered when the server has gone silent; once the server is
    silent, status says that too, and that the text is undelivered; and after a stop, that the
    gateway was stopped. Until 2026-11-27 status said OK (exit 0) throughout."""
    clocks = Clocks()
    spool = tmp_path / "s.sqlite"
    sender = DeadManSender(MissingModem(clocks), clock=clocks.mono, wall=clocks.wall)
    gw = Gateway(
        config(spool), VirtualTransport([]), clock=clocks.wall, monotonic=clocks.mono, deadman_sender=sender
    )
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'site = "demo"\n[gateway]\nid = "gw-0001"\nspool_path = "{spool}"\n')

    def status() -> tuple[int, list[str]]:
        out = subprocess.run(
            [sys.executable, "-m", "nabz.cli", "gateway", "status", "--config", str(cfg), "--json"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return out.returncode, json.loads(out.stdout)["problems"]

    gw.start()
    try:
        sender.start()  # its thread checks the modem before anything else
        deadline = time.monotonic() + 10
        while sender.modem_error is None and time.monotonic() < deadline:
            time.sleep(0.02)
        sender.stop()
        gw.step()
        gw._publish_status()
        code, problems = status()
        assert code == 1 and any("cannot text" in p and "/dev/ttyUSB0" in p for p in problems), problems
        for _ in range(140):  # the server never beats: silent after 600 s
            clocks.run(5.0)
            gw.step()
            sender.pump()
        gw._publish_status()
        code, problems = status()
        assert code == 1 and any("server is silent" in p for p in problems), problems
        assert any("not delivered" in p for p in problems), problems
    finally:
        gw.stop()
    code, problems = status()
    assert code == 1 and "the gateway was stopped" in problems, problems


def test_a_modem_fitted_after_the_start_is_seen_without_a_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    """The installer plugs the modem in after seeing 'cannot text': the next check finds it (every
    5 minutes while idle; shortened here), and status stops saying so (it said so until a restart
    or a text, found by review)."""
    import gateway.deadman as deadman

    monkeypatch.setattr(deadman, "RECHECK_S", 0.2)
    clocks = Clocks()
    modem = MissingModem(clocks)
    sender = DeadManSender(modem).start()
    try:
        deadline = time.monotonic() + 10
        while sender.modem_error is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sender.modem_error is not None and "/dev/ttyUSB0" in sender.modem_error
        modem.init = lambda: None  # type: ignore[method-assign]  # plugged in
        deadline = time.monotonic() + 10
        while sender.modem_error is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sender.modem_error is None
    finally:
        sender.stop()
