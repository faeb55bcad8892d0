"""The GSM modem notifier against a scripted modem process on a real pty pair (tests/alerts/fake_modem.py).

The modem is another process speaking TS 27.005 text mode over the pty; pyserial opens the other
end by its device path, as it would open /dev/ttyUSB0. Timeouts here are real waits on the serial
line, kept short by configuration.
"""

from __future__ import annotations

import json
import os
import pty
import random
import subprocess
import sys
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from alerts.dispatch import Dispatcher
from alerts.engine import AlertEngine
from alerts.gsm import GsmNotifier, classify, parse_cds, parse_cmgr
from alerts.notify import DeliveryReport, Incoming
from alerts.store import AlertStore
from nabz.config import ModemConfig
from tests.alerts.helpers import PEOPLE, T0, Recorder, config, v

ROOT = Path(__file__).parents[2]
FARAH = PEOPLE["farah"].phone

Modem = Callable[..., tuple[str, Path]]


@pytest.fixture
def modem(tmp_path: Path) -> Iterator[Modem]:
    started: list[tuple[subprocess.Popen[bytes], int]] = []

    def start(**script: Any) -> tuple[str, Path]:
        master, slave = pty.openpty()
        tty.setraw(slave)
        log = tmp_path / f"modem-{len(started)}.jsonl"
        proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("fake_modem.py")),
                str(master),
                json.dumps(script),
                str(log),
            ],
            pass_fds=[master],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        os.close(master)
        started.append((proc, slave))
        return os.ttyname(slave), log

    yield start
    for proc, slave in started:
        proc.terminate()
        proc.wait(5)
        os.close(slave)


def log_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def notifier(port: str, **kw: Any) -> GsmNotifier:
    return GsmNotifier(ModemConfig(port=port, command_timeout_s=kw.pop("timeout", 3.0), **kw))


def test_a_text_goes_out_in_text_mode_with_the_prompt_and_ctrl_z(modem: Modem) -> None:
    port, log = modem(reports=True)
    n = notifier(port)
    text = "NABZ HIGH p-0002: SpO2 84% (<88%) for 12 s, since 14:00 PKT. ACK 4821"
    d = n.send("+923001234567", text, "k1", T0)
    assert d.ok and d.ref == "1" and d.detail == "+CMGS: 1"
    entries = log_of(log)
    cmds = [e["cmd"] for e in entries if "cmd" in e]
    assert cmds == [
        "AT", "ATE0", "AT+CMEE=1", "AT+CPIN?", "AT+CMGF=1", "AT+CNMI=2,1,0,1,0", 'AT+CSCS="GSM"',
        "AT+CSMP=49,167,0,0", 'AT+CMGS="+923001234567",145',
    ]  # fmt: skip
    (sms,) = [e["sms"] for e in entries if "sms" in e]
    assert sms == {"to": "+923001234567", "toa": 145, "text": text, "cscs": "GSM", "mr": 1}
    assert n.send("+923001234567", "second", "k2", T0 + 1).ref == "2"  # initialised once
    assert [e["cmd"] for e in log_of(log) if "cmd" in e].count("AT") == 1


def test_urdu_goes_as_ucs2_with_the_number_in_ucs2_too(modem: Modem) -> None:
    port, log = modem()
    text = "NABZ فوری p-0002: آکسیجن کم 84%, 14:00 PKT. ACK 4821"
    assert notifier(port).send("+923001234567", text, "k1", T0).ok
    cmds = [e["cmd"] for e in log_of(log) if "cmd" in e]
    assert 'AT+CSCS="UCS2"' in cmds and "AT+CSMP=49,167,0,8" in cmds
    assert f'AT+CMGS="{"+923001234567".encode("utf-16-be").hex().upper()}",145' in cmds
    (sms,) = [e["sms"] for e in log_of(log) if "sms" in e]
    assert sms["text"] == text and sms["to"] == "+923001234567" and sms["cscs"] == "UCS2"


def test_no_network_is_a_retryable_failure_and_sending_works_when_it_returns(modem: Modem) -> None:
    port, _ = modem(errors=[331, 332, 0])
    n = notifier(port)
    first = n.send("+923001234567", "hello", "k1", T0)
    assert (first.ok, first.retryable) == (False, True) and "331" in first.detail
    assert "332" in n.send("+923001234567", "hello", "k1", T0 + 5).detail
    assert n.send("+923001234567", "hello", "k1", T0 + 15).ok


def test_a_sim_that_wants_its_pin_needs_a_person_unless_the_pin_is_configured(modem: Modem) -> None:
    port, _ = modem(pin="1234")
    d = notifier(port).send("+923001234567", "hello", "k1", T0)
    assert (d.ok, d.retryable) == (False, False) and "PIN" in d.detail
    port2, log2 = modem(pin="1234")
    assert notifier(port2, sim_pin="1234").send("+923001234567", "hello", "k1", T0).ok
    assert 'AT+CPIN="1234"' in [e["cmd"] for e in log_of(log2) if "cmd" in e]


def test_a_modem_that_stops_answering_times_out_retryably_and_is_initialised_again(modem: Modem) -> None:
    port, log = modem(no_prompt=True)
    n = notifier(port)
    n.init()  # the modem process is up and answering; only then shorten the time limit
    n.cfg.command_timeout_s = 0.4
    t = time.monotonic()
    d = n.send("+923001234567", "hello", "k1", T0)
    assert (d.ok, d.retryable) == (False, True) and "prompt" in d.detail
    assert time.monotonic() - t < 3.0
    port2, log2 = modem(silent_after_text=True)
    n2 = notifier(port2, send_timeout_s=0.4)
    n2.init()
    d2 = n2.send("+923001234567", "hello", "k1", T0)
    assert (d2.ok, d2.retryable) == (False, True) and "no answer" in d2.detail
    n2.send("+923001234567", "hello", "k2", T0 + 10)
    assert [e["cmd"] for e in log_of(log2) if "cmd" in e].count("AT") == 2  # state unknown: start over


def test_the_send_rate_is_capped_per_minute(modem: Modem) -> None:
    port, _ = modem()
    n = notifier(port, max_per_minute=2)
    assert n.send("+923001234567", "a", "k1", T0).ok and n.send("+923001234567", "b", "k2", T0 + 1).ok
    third = n.send("+923001234567", "c", "k3", T0 + 2)
    assert (third.ok, third.retryable) == (False, True) and "rate cap" in third.detail
    assert n.send("+923001234567", "c", "k3", T0 + 61).ok


def test_delivery_reports_and_an_ack_reply_close_the_loop_through_the_engine(
    modem: Modem, tmp_path: Path
) -> None:
    rng_code = str(random.Random(1).randrange(1000, 10000))
    port, log = modem(reports=True, inbox=[{"from": FARAH, "text": f"Ack {rng_code}"}])
    cfg = config()
    store = AlertStore(tmp_path / "a.sqlite")
    engine = AlertEngine(cfg, store, rng=random.Random(1))
    gsm = notifier(port)
    dispatcher = Dispatcher(cfg, store, [gsm])
    for i in range(10):
        engine.observe(v(T0 + i, spo2_pct=82.0), T0 + i)
    alarm = engine.open[("p-0001", "spo2_low")]
    assert alarm.ack_code == rng_code
    assert dispatcher.step(T0 + 10) == 1
    got = 0
    deadline = time.monotonic() + 5
    while got < 2 and time.monotonic() < deadline:  # the modem's +CDS and +CMTI follow its OK
        got += dispatcher.poll(T0 + 11)
    assert got == 2
    (sms,) = store.sms()
    assert (sms["ref"], sms["delivery"]) == ("1", "delivered")
    events = engine.tick(T0 + 12)
    assert {(e.state, e.acknowledged_by) for e in events if e.state == "acknowledged"} == {
        ("acknowledged", "farah")
    }
    dispatcher.step(T0 + 12)  # the confirmation goes back to the doctor
    texts = [e["sms"]["text"] for e in log_of(log) if "sms" in e]
    assert texts[-1].startswith(f"NABZ: ACK {rng_code} p-0001 spo2_low")
    cmds = [e["cmd"] for e in log_of(log) if "cmd" in e]
    assert cmds.index("AT+CMGR=1") < cmds.index("AT+CMGD=1")  # read, then deleted from the SIM


def test_the_dispatcher_falls_back_when_the_modem_cannot_send(modem: Modem, tmp_path: Path) -> None:
    port, _ = modem(pin="0000")  # a SIM that wants a PIN nobody configured
    cfg = config()
    store = AlertStore(tmp_path / "a.sqlite")
    engine = AlertEngine(cfg, store, rng=random.Random(1))
    spare = Recorder("outbox")
    dispatcher = Dispatcher(cfg, store, [notifier(port), spare])
    for i in range(10):
        engine.observe(v(T0 + i, spo2_pct=82.0), T0 + i)
    dispatcher.step(T0 + 10)
    assert len(spare.sent) == 1 and store.sms()[0]["notifier"] == "outbox"


def test_response_parsing() -> None:
    assert classify("OK") == "final_ok" and classify("+CMS ERROR: 331") == "final_error"
    assert classify('+CMTI: "SM",3') == "urc" and classify("+CMGS: 7") == "info"
    cds = parse_cds('+CDS: 6,42,"+923001234567",145,"26/11/25,14:00:00+20","26/11/25,14:00:05+20",0')
    assert cds is not None and (cds.mr, cds.status) == (42, 0)
    msg = parse_cmgr(['+CMGR: "REC UNREAD","+923001234567",,"26/11/25,14:00:00+20"', "ACK 4821"])
    assert msg == Incoming("+923001234567", "ACK 4821")
    assert DeliveryReport("42", True, "delivered").delivered
