"""A scripted GSM modem (synthetic, for tests): a separate process on the master side of a pty
pair, speaking the TS 27.005 text-mode commands Nabz uses, with the errors real modems give.

    python fake_modem.py MASTER_FD SCRIPT_JSON LOG_PATH

The script (JSON) sets:
- "pin" (SIM PIN the SIM wants, or null), "network" (false: +CMS ERROR 331), "echo" (initial echo);
- "errors": a list of +CMS error codes for successive AT+CMGS, 0 for success, -1 for no answer
  at all after the text (a timeout); "late_s": such a swallowed message is answered after all,
  "+CMGS: <mr>" and OK that many seconds later (the modem was slow, not dead);
- "no_prompt" (never answer AT+CMGS), "silent_after_text" (no answer after Ctrl-Z);
- "mute_first": the first N command lines get no answer at all (a hung modem that comes back);
  "mute_once": command lines answered nowhere the first time each is given, or, with "late_s",
  answered that much later;
- "no_cpin_line": AT+CPIN? answered with OK alone (as when the line is out of step);
- "not_ready_first": the first N AT+CPIN? answered "+CPIN: NOT READY" (a SIM still starting);
- "reports" (emit +CDS after a send);
- "inbox": SMS that arrive, one after each successful send, each announced by +CMTI (unless
  "quiet_inbox": a +CMTI lost); "stored": SMS on the SIM, unread, before anyone listens. Each is
  {"from", "text"} ("\\n" in the text: lines of its own) and may add "before" (lines the modem
  puts before the +CMGR header, e.g. Huawei's "^RSSI: 14"), "inside" (lines between the header
  and the text), "fail_reads" (that many AT+CMGR answered +CMS ERROR: 500) and "garbled" (a
  header cut short, without the number).
Every command, every message sent and every unsolicited line is appended to the log as one JSON
line; a late answer or a +CMTI is logged once it is written to the line, an arriving SMS once it
is on the SIM.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from typing import Any

_SCTS = '"26/11/25,14:00:10+20"'


def main() -> None:
    fd = int(sys.argv[1])
    script = json.loads(sys.argv[2])
    log = open(sys.argv[3], "a", encoding="utf-8")  # noqa: SIM115
    st = {"echo": script.get("echo", True), "pin_ok": script.get("pin") is None, "cscs": "IRA", "mr": 0}
    errors = list(script.get("errors", []))
    inbox = list(script.get("inbox", []))
    mute = {"first": int(script.get("mute_first", 0)), "once": set(script.get("mute_once", []))}
    late_s = script.get("late_s")
    sim: dict[int, dict[str, Any]] = {}
    for i, msg in enumerate(script.get("stored", []), 1):
        sim[i] = {**msg, "stat": "REC UNREAD"}
    later: list[tuple[float, str, dict[str, Any]]] = []  # (when, what to write, what to log then)
    buf = b""
    pending_text: tuple[str, int] | None = None

    def out(text: str) -> None:
        os.write(fd, text.encode("latin-1"))

    def note(**kw: object) -> None:
        log.write(json.dumps(kw, ensure_ascii=False) + "\n")
        log.flush()

    def dec(s: str) -> str:
        return bytes.fromhex(s).decode("utf-16-be") if st["cscs"] == "UCS2" else s

    def enc(s: str) -> str:
        return s.encode("utf-16-be").hex().upper() if st["cscs"] == "UCS2" else s

    def text_lines(msg: dict[str, Any]) -> str:
        return "".join(f"{enc(line)}\r\n" for line in msg["text"].split("\n"))

    def cmgr(index: int, msg: dict[str, Any]) -> str:
        head = (
            '+CMGR: "REC UNREAD"'
            if msg.get("garbled")
            else f'+CMGR: "{msg["stat"]}","{enc(msg["from"])}",,{_SCTS}'
        )
        around = "".join(f"\r\n{u}\r\n" for u in msg.get("before", []))
        inside = "".join(f"{u}\r\n" for u in msg.get("inside", []))
        return f"{around}\r\n{head}\r\n{inside}{text_lines(msg)}\r\nOK\r\n"

    def cmgl(stat: str) -> str:
        listed = ""
        for index, msg in sorted(sim.items()):
            if stat != "ALL" and msg["stat"] != stat:
                continue
            head = (
                f'+CMGL: {index},"REC UNREAD"'
                if msg.get("garbled")
                else f'+CMGL: {index},"{msg["stat"]}","{enc(msg["from"])}",,{_SCTS}'
            )
            listed += f"\r\n{head}\r\n{text_lines(msg)}"
            msg["stat"] = "REC READ"
        return f"{listed}\r\nOK\r\n"  # fmt: skip

    def arrive() -> None:
        index = min(i for i in range(1, len(sim) + 2) if i not in sim)
        sim[index] = {**inbox.pop(0), "stat": "REC UNREAD"}
        note(arrived=index)
        if script.get("quiet_inbox"):
            return
        out(f'\r\n+CMTI: "SM",{index}\r\n')
        note(cmti=index)

    while True:
        wait = max(0.0, min(w for w, _, _ in later) - time.monotonic()) if later else 5.0
        r, _, _ = select.select([fd], [], [], wait)
        for item in [x for x in later if x[0] <= time.monotonic()]:
            later.remove(item)
            out(item[1])
            note(**item[2])
        if not r:
            continue
        try:
            data = os.read(fd, 4096)
        except OSError:
            return
        if not data:
            return
        buf += data
        while True:
            if pending_text is not None:
                end = min((i for i in (buf.find(b"\x1a"), buf.find(b"\x1b")) if i >= 0), default=-1)
                if end < 0:
                    break
                body, term, buf = buf[:end], buf[end : end + 1], buf[end + 1 :]
                number, toa = pending_text
                pending_text = None
                if term == b"\x1b":
                    note(aborted=number)
                    out("\r\nOK\r\n")
                    continue
                if st["cscs"] == "UCS2":
                    text = bytes.fromhex(body.decode()).decode("utf-16-be")
                else:
                    from alerts.smstext import gsm7_decode

                    text = gsm7_decode(body)
                if script.get("silent_after_text"):
                    note(swallowed=text)
                    continue
                code = errors.pop(0) if errors else 0
                if not script.get("network", True):
                    code = 331
                if code == -1:
                    note(swallowed=text)
                    if late_s is not None:
                        st["mr"] = (st["mr"] + 1) % 256
                        answer = f"\r\n+CMGS: {st['mr']}\r\n\r\nOK\r\n"
                        later.append(
                            (time.monotonic() + late_s, answer, {"late": {"text": text, "mr": st["mr"]}})
                        )
                    continue
                if code:
                    note(refused=text, code=code)
                    out(f"\r\n+CMS ERROR: {code}\r\n")
                    continue
                st["mr"] = (st["mr"] + 1) % 256
                mr = st["mr"]
                note(sms={"to": number, "toa": toa, "text": text, "cscs": st["cscs"], "mr": mr})
                out(f"\r\n+CMGS: {mr}\r\n\r\nOK\r\n")
                if script.get("reports"):
                    out(
                        f'\r\n+CDS: 6,{mr},"{number}",145,"26/11/25,14:00:00+20","26/11/25,14:00:04+20",0\r\n'
                    )
                if inbox:
                    arrive()
                continue
            if b"\r" not in buf:
                break
            raw, buf = buf.split(b"\r", 1)
            buf = buf.lstrip(b"\n")
            cmd = raw.decode("latin-1").strip()
            if not cmd:
                continue
            note(cmd=cmd)
            if mute["first"] > 0:
                mute["first"] -= 1
                continue
            if st["echo"]:
                out(cmd + "\r")
            up = cmd.upper()
            if cmd in mute["once"]:
                mute["once"].discard(cmd)
                if late_s is not None:
                    later.append((time.monotonic() + late_s, "\r\nOK\r\n", {"late": cmd}))
                continue
            if up in ("AT", "AT+CMEE=1", "AT+CMGF=1") or up.startswith(("AT+CNMI=", "AT+CSMP=")):
                out("\r\nOK\r\n")
            elif up == "ATE0":
                st["echo"] = False
                out("\r\nOK\r\n")
            elif up == "AT+CPIN?":
                if script.get("no_cpin_line"):
                    out("\r\nOK\r\n")
                elif st.setdefault("not_ready", int(script.get("not_ready_first", 0))) > 0:
                    st["not_ready"] -= 1
                    out("\r\n+CPIN: NOT READY\r\n\r\nOK\r\n")
                else:
                    out(
                        "\r\n+CPIN: READY\r\n\r\nOK\r\n"
                        if st["pin_ok"]
                        else "\r\n+CPIN: SIM PIN\r\n\r\nOK\r\n"
                    )
            elif up.startswith("AT+CPIN="):
                if cmd.split("=", 1)[1].strip('"') == script.get("pin"):
                    st["pin_ok"] = True
                    out("\r\nOK\r\n")
                else:
                    out("\r\n+CME ERROR: 16\r\n")
            elif up.startswith("AT+CSCS="):
                st["cscs"] = cmd.split("=", 1)[1].strip('"')
                out("\r\nOK\r\n")
            elif up.startswith("AT+CMGS="):
                if not st["pin_ok"]:
                    out("\r\n+CMS ERROR: 311\r\n")
                    continue
                if script.get("no_prompt"):
                    continue
                arg = cmd.split("=", 1)[1]
                number, toa = arg.rsplit(",", 1) if "," in arg else (arg, "129")
                pending_text = (dec(number.strip('"')), int(toa))
                out("\r\n> ")
            elif up.startswith("AT+CMGR="):
                index = int(up.split("=")[1])
                msg = sim.get(index)
                if msg is None:
                    out("\r\n+CMS ERROR: 321\r\n")
                elif msg.get("fail_reads", 0) > 0:
                    msg["fail_reads"] -= 1
                    out("\r\n+CMS ERROR: 500\r\n")
                else:
                    out(cmgr(index, msg))
                    msg["stat"] = "REC READ"
            elif up.startswith("AT+CMGL="):
                out(cmgl(dec(cmd.split("=", 1)[1].strip('"'))))
            elif up.startswith("AT+CMGD="):
                sim.pop(int(up.split("=")[1]), None)
                out("\r\nOK\r\n")
            else:
                out("\r\nERROR\r\n")


if __name__ == "__main__":
    main()
