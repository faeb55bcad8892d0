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
from alerts.gsm import GsmNotifier, classify, parse_cds, parse_cmgl, parse_cmgr
from alerts.notify import DeliveryReport, Incoming
from alerts.store import AlertStore
from nabz.config import ModemConfig
from tests.alerts.helpers import PEOPLE, T0, Recorder, config, v

ROOT = Path(__file__).parents[2]
FARAH = PEOPLE["farah"].phone
AISHA = PEOPLE["aisha"].phone
TO = "+923001234567"

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


def commands(path: Path) -> list[str]:
    return [e["cmd"] for e in log_of(path) if "cmd" in e]


def wait_for(path: Path, key: str, count: int = 1) -> None:
    """Until the modem process has logged `count` entries with `key` (it logs once the bytes are
    on the line): a wait for the other process's I/O, not for time to pass."""
    deadline = time.monotonic() + 5.0
    while sum(key in e for e in log_of(path)) < count:
        assert time.monotonic() < deadline, f"the modem logged no {key!r}"
        time.sleep(0.01)


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
    n2.send("+923001234567", "hello", "k2", T0 + 30)  # once the back-off is over
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
    assert dispatcher.poll(T0) == 0  # initialised and listed: nothing on the SIM yet
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
    assert "AT+CMGD=1" not in commands(log)  # handed over at the last poll...
    dispatcher.poll(T0 + 13)
    cmds = commands(log)
    assert cmds.index("AT+CMGR=1") < cmds.index("AT+CMGD=1")  # ...deleted from the SIM at the next


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


# --- a late answer (review fault A) ----------------------------------------------------------------
def test_a_late_answer_to_a_timed_out_sms_is_thrown_away_not_taken_for_the_next_answers(modem: Modem) -> None:
    """Before: "+CMGS: 1 / OK", come after the time limit, was read as the answer to AT, every
    command then took the previous one's OK, AT+CPIN? got none of its own, and "SIM not ready"
    gave the next SMS up (not retryable)."""
    port, log = modem(errors=[-1], late_s=0.5)
    n = notifier(port, send_timeout_s=0.3)
    n.init()
    first = n.send(TO, "first", "k1", T0)
    assert (first.ok, first.retryable) == (False, True) and "no answer" in first.detail
    wait_for(log, "late")  # the modem's answer is on the line, unread
    second = n.send(TO, "second", "k2", T0 + 30)  # once the back-off is over
    assert second.ok and second.ref == "2", second.detail
    assert commands(log).count("AT") == 2


def test_after_any_time_out_the_modem_is_initialised_afresh(modem: Modem) -> None:
    """Before: only AT+CMGS's time-outs did so; an ordinary command's late OK stayed in line."""
    port, log = modem(mute_once=['AT+CSCS="GSM"'], late_s=0.5)
    n = notifier(port)
    n.init()  # the modem process is up and answering; only then shorten the time limit
    n.cfg.command_timeout_s = 0.3
    first = n.send(TO, "first", "k1", T0)
    assert (first.ok, first.retryable) == (False, True) and 'AT+CSCS="GSM": no answer' in first.detail
    wait_for(log, "late")
    assert n.send(TO, "second", "k2", T0 + 30).ok
    assert commands(log).count("AT") == 2


def test_an_answer_to_cpin_without_a_cpin_line_is_a_retryable_failure(modem: Modem) -> None:
    """It is another command's answer (the line out of step), not a SIM that needs a person."""
    port, _ = modem(no_cpin_line=True)
    d = notifier(port).send(TO, "hello", "k1", T0)
    assert (d.ok, d.retryable) == (False, True) and "+CPIN" in d.detail


def test_a_sim_still_starting_is_not_taken_for_ready_and_the_sms_goes_once_it_is(modem: Modem) -> None:
    """ "+CPIN: NOT READY" contains "READY": it passed for a ready SIM, and what became of the SMS
    depended on what the modem then said to AT+CMGS."""
    port, log = modem(not_ready_first=1)
    n = notifier(port)
    d = n.send(TO, "hello", "k1", T0)
    assert (d.ok, d.retryable) == (False, True) and "NOT READY" in d.detail
    assert not any(c.startswith("AT+CMGS") for c in commands(log))
    assert n.send(TO, "hello", "k1", T0 + 60).ok  # after the back-off: initialised afresh, sent


# --- a hung or slow modem (review fault B) ---------------------------------------------------------
def test_a_hung_modem_costs_one_time_limit_and_the_next_notifier_gets_every_sms_at_once(
    modem: Modem, tmp_path: Path
) -> None:
    """Before: six HIGH alarms waited one time limit each for the modem before the fallback, and
    every poll another."""
    port, log = modem(mute_first=1000)
    cfg = config()
    store = AlertStore(tmp_path / "a.sqlite")
    engine = AlertEngine(cfg, store, rng=random.Random(1))
    gsm = notifier(port, timeout=0.5)
    spare = Recorder("outbox")
    dispatcher = Dispatcher(cfg, store, [gsm, spare])
    for i in range(10):
        for p in range(1, 7):
            engine.observe(v(T0 + i, patient=f"p-{p:04d}", spo2_pct=82.0), T0 + i)
    t = time.monotonic()
    assert dispatcher.step(T0 + 10) == 6
    assert len(spare.sent) == 6 and {s["notifier"] for s in store.sms()} == {"outbox"}
    assert commands(log) == ["AT"]  # one time limit, not six
    assert time.monotonic() - t < 2.5  # six would be 3 s; one is 0.25 s of quiet and 0.5 s
    assert gsm.is_down(T0 + 39.9) and gsm.down_until == T0 + 40
    assert dispatcher.poll(T0 + 11) == 0 and commands(log) == ["AT"]  # left alone
    assert dispatcher.poll(T0 + 40) == 0 and commands(log) == ["AT", "AT"]  # tried again: down again
    assert gsm.down_until == T0 + 100  # for twice as long


def test_the_back_off_doubles_and_ends_when_the_modem_takes_a_message(modem: Modem) -> None:
    port, log = modem(errors=[-1, -1, 0, -1])
    n = notifier(port, send_timeout_s=0.3)
    n.init()
    assert "no answer" in n.send(TO, "a", "k1", T0).detail
    seen = len(commands(log))
    refused = n.send(TO, "a", "k1", T0 + 29)
    assert (refused.ok, refused.retryable) == (False, True) and "backing off" in refused.detail
    assert "no answer" in refused.detail  # why, for the audit log
    assert n.poll(T0 + 29) == [] and len(commands(log)) == seen  # the modem was left alone
    assert n.down_until == T0 + 30
    assert "no answer" in n.send(TO, "a", "k1", T0 + 30).detail and n.down_until == T0 + 90
    assert n.send(TO, "a", "k1", T0 + 90).ok and n.down_until is None
    assert "no answer" in n.send(TO, "b", "k2", T0 + 100).detail and n.down_until == T0 + 130


def test_while_backing_off_a_refusal_may_always_pass(modem: Modem) -> None:
    """Only a fresh attempt gives an SMS up: a modem that has just reset says "SIM not ready" or
    wants its PIN for a moment, and SMS refused during the back-off that followed were given up
    for good although the modem worked seconds later."""
    port, log = modem(pin="1234")
    n = notifier(port)
    assert not n.send(TO, "a", "k1", T0).retryable  # a fresh attempt's verdict: the PIN is needed
    seen = len(commands(log))
    d = n.send(TO, "a", "k1", T0 + 1)
    assert (d.ok, d.retryable) == (False, True) and "backing off" in d.detail and "PIN" in d.detail
    assert len(commands(log)) == seen and n.is_down(T0 + 1)


# --- replies (review fault C) ----------------------------------------------------------------------
def _replies_after_sends(modem: Modem, inbox: list[dict[str, Any]]) -> tuple[GsmNotifier, Path, list[Any]]:
    """One reply arrives (+CMTI) after each SMS sent; all are announced, then polls read them, one
    poll after another (at the same time) until the notifier has asked for each (AT+CMGR): a +CMTI
    the modem has written may not be readable on the line yet (the pty passes it on a moment later,
    so one poll right after the modem logged it could miss the last: once in `make test` here)."""
    port, log = modem(inbox=inbox)
    n = notifier(port)
    assert n.poll(T0) == []  # initialised and listed: nothing on the SIM yet
    for k in range(len(inbox)):
        assert n.send(TO, f"alarm {k}", f"k{k}", T0 + k).ok
    wait_for(log, "cmti", len(inbox))
    got: list[Any] = []
    deadline = time.monotonic() + 5.0
    while not {f"AT+CMGR={k + 1}" for k in range(len(inbox))} <= set(commands(log)):
        assert time.monotonic() < deadline, "the notifier never read every reply announced"
        got += n.poll(T0 + 10)
        time.sleep(0.01)
    return n, log, got


def test_unsolicited_lines_before_or_inside_a_reply_are_not_the_reply(modem: Modem) -> None:
    """Before: Huawei's "^RSSI: 14" before the +CMGR header made the reply unreadable, and it was
    deleted unread; Quectel's "+QIND" inside it became text."""
    n, log, got = _replies_after_sends(
        modem,
        [
            {"from": FARAH, "text": "ACK 4821", "before": ["^RSSI: 14"]},
            {"from": AISHA, "text": "ACK 1234", "inside": ['+QIND: "csq",20,99', "SMS Ready"]},
            {"from": FARAH, "text": "ACK 5555", "garbled": True},  # a header without the number
        ],
    )
    assert got == [Incoming(FARAH, "ACK 4821"), Incoming(AISHA, "ACK 1234")]
    n.poll(T0 + 11)
    cmds = commands(log)
    assert cmds.index("AT+CMGR=1") < cmds.index("AT+CMGD=1") and "AT+CMGD=2" in cmds
    assert "AT+CMGR=3" in cmds and "AT+CMGD=3" not in cmds  # unreadable: kept on the SIM


def test_a_reply_whose_first_line_reads_ok_is_read_whole(modem: Modem) -> None:
    """Before: the body line "OK" ended the answer, and the reply read as empty text."""
    _, _, got = _replies_after_sends(
        modem, [{"from": FARAH, "text": "OK\nACK 4821"}, {"from": AISHA, "text": "OK"}]
    )
    assert got == [Incoming(FARAH, "OK\nACK 4821"), Incoming(AISHA, "OK")]


def test_a_read_that_fails_loses_neither_that_reply_nor_the_next(modem: Modem) -> None:
    """Before: the +CMTI after a failed AT+CMGR was dropped, its reply left unread on the SIM."""
    n, log, got = _replies_after_sends(
        modem, [{"from": FARAH, "text": "ACK 4821", "fail_reads": 1}, {"from": AISHA, "text": "ACK 1234"}]
    )
    assert got == [Incoming(AISHA, "ACK 1234")]
    assert n.poll(T0 + 39) == []
    assert n.poll(T0 + 40) == [Incoming(FARAH, "ACK 4821")]  # still unread: listed 30 s after
    n.poll(T0 + 41)
    assert {"AT+CMGD=1", "AT+CMGD=2"} <= set(commands(log))


def test_replies_stored_while_nobody_listened_are_read_and_deleted_only_once_handed_over(
    modem: Modem,
) -> None:
    """Before: only a +CMTI heard led to a reply; those stored before the service started, or whose
    +CMTI was lost, stayed unread and filled the SIM."""
    port, log = modem(
        stored=[{"from": FARAH, "text": "ACK 4821"}, {"from": FARAH, "text": "ACK 9999", "garbled": True}],
        inbox=[{"from": AISHA, "text": "ACK 1234"}],
        quiet_inbox=True,  # it arrives, and its +CMTI is lost
    )
    n = notifier(port)
    assert n.poll(T0) == [Incoming(FARAH, "ACK 4821")]
    assert not [c for c in commands(log) if c.startswith("AT+CMGD")]  # not before it was handed over
    assert n.poll(T0 + 1) == []
    cmds = commands(log)
    assert cmds[:7] == ["AT", "ATE0", "AT+CMEE=1", "AT+CPIN?", "AT+CMGF=1", "AT+CNMI=2,1,0,1,0",
                        'AT+CMGL="REC UNREAD"']  # fmt: skip
    assert "AT+CMGD=1" in cmds and "AT+CMGD=2" not in cmds  # the unreadable one stays on the SIM
    assert n.send(TO, "alarm", "k1", T0 + 2).ok
    wait_for(log, "arrived")
    assert n.poll(T0 + 3) == []
    assert n.poll(T0 + 300) == [Incoming(AISHA, "ACK 1234")]  # the listing every few minutes


def test_response_parsing() -> None:
    assert classify("OK") == "final_ok" and classify("+CMS ERROR: 331") == "final_error"
    assert classify('+CMTI: "SM",3') == "urc" and classify("+CMGS: 7") == "info"
    cds = parse_cds('+CDS: 6,42,"+923001234567",145,"26/11/25,14:00:00+20","26/11/25,14:00:05+20",0')
    assert cds is not None and (cds.mr, cds.status) == (42, 0)
    msg = parse_cmgr(['+CMGR: "REC UNREAD","+923001234567",,"26/11/25,14:00:00+20"', "ACK 4821"])
    assert msg == Incoming("+923001234567", "ACK 4821")
    header = '+CMGR: "REC UNREAD","+923001234567",,"26/11/25,14:00:00+20"'
    assert parse_cmgr(["^RSSI: 14", header, "^RSSI: 15", "OK", "ACK 4821"]) == Incoming(
        "+923001234567", "OK\nACK 4821"
    )
    assert parse_cmgr(['+CMGR: "REC UNREAD"', "ACK 4821"]) is None and parse_cmgr(["ACK 4821"]) is None
    listed = parse_cmgl(
        ['+CMGL: 3,"REC UNREAD","+923001234567",,"26/11/25,14:00:00+20"', "ACK 4821", "+QIND: x",
         '+CMGL: 4,"REC UNREAD"', "what", '+CMGL: x,"REC UNREAD","+92300",,""', "lost"]
    )  # fmt: skip
    assert listed == [(3, Incoming("+923001234567", "ACK 4821")), (4, None)]
    assert DeliveryReport("42", True, "delivered").delivered
