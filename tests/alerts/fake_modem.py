"""A scripted GSM modem (synthetic, for tests): a separate process on the master side of a pty
pair, speaking the TS 27.005 text-mode commands Nabz uses, with the errors real modems give.

    python fake_modem.py MASTER_FD SCRIPT_JSON LOG_PATH

The script (JSON) sets: "pin" (SIM PIN the SIM wants, or null), "network" (false: +CMS ERROR 331),
"errors" (a list of +CMS error codes for successive AT+CMGS, 0 for success, -1 for no answer at
all after the text: a timeout), "no_prompt" (never
answer AT+CMGS), "silent_after_text" (no answer after Ctrl-Z), "reports" (emit +CDS after a send),
"inbox" (SMS that arrive, one after each successful send, as {"from", "text"}), "echo" (initial
echo). Every command and every message sent is appended to the log as one JSON line.
"""

from __future__ import annotations

import json
import os
import select
import sys


def main() -> None:
    fd = int(sys.argv[1])
    script = json.loads(sys.argv[2])
    log = open(sys.argv[3], "a", encoding="utf-8")  # noqa: SIM115
    st = {"echo": script.get("echo", True), "pin_ok": script.get("pin") is None, "cscs": "IRA", "mr": 0}
    errors = list(script.get("errors", []))
    inbox = list(script.get("inbox", []))
    sim: dict[int, dict[str, str]] = {}
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

    while True:
        r, _, _ = select.select([fd], [], [], 5.0)
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
                    index = len(sim) + 1
                    sim[index] = inbox.pop(0)
                    out(f'\r\n+CMTI: "SM",{index}\r\n')
                continue
            if b"\r" not in buf:
                break
            raw, buf = buf.split(b"\r", 1)
            buf = buf.lstrip(b"\n")
            cmd = raw.decode("latin-1").strip()
            if not cmd:
                continue
            note(cmd=cmd)
            if st["echo"]:
                out(cmd + "\r")
            up = cmd.upper()
            if up in ("AT", "AT+CMEE=1", "AT+CMGF=1") or up.startswith(("AT+CNMI=", "AT+CSMP=")):
                out("\r\nOK\r\n")
            elif up == "ATE0":
                st["echo"] = False
                out("\r\nOK\r\n")
            elif up == "AT+CPIN?":
                out("\r\n+CPIN: READY\r\n\r\nOK\r\n" if st["pin_ok"] else "\r\n+CPIN: SIM PIN\r\n\r\nOK\r\n")
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
                msg = sim.get(int(up.split("=")[1]))
                if msg is None:
                    out("\r\n+CMS ERROR: 321\r\n")
                else:
                    out(f'\r\n+CMGR: "REC UNREAD","{enc(msg["from"])}",,"26/11/25,14:00:10+20"\r\n'
                        f"{enc(msg['text'])}\r\n\r\nOK\r\n")  # fmt: skip
            elif up.startswith("AT+CMGD="):
                sim.pop(int(up.split("=")[1]), None)
                out("\r\nOK\r\n")
            else:
                out("\r\nERROR\r\n")


if __name__ == "__main__":
    main()
