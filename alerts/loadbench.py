"""Alarm latency under load, end to end on a real broker: `nabz bench alarms --broker URL`.

Publishes derived vitals for `patients` patients in real time — four per patient per second
(ECG, PPG, the patch's heart rate, the oximeter's SpO2), what ingest derives, in batches of up to
`contract.VITALS_PER_MESSAGE` per message as ingest publishes them — to the broker, while a real
AlertService (its own MQTT client, worker and dispatcher threads, SQLite store) listens. A few patients desaturate to 82 % at seeded times. Latency is measured from the
moment the vitals message that completes an alarm's condition (its delay included) is published,
to the moment the notifier accepts the SMS: broker, decoding, rules, store, queue and dispatcher.
The SMS cap is lifted (one bench recipient covers every patient); grouping stays on.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alerts.notify import Delivery
from alerts.service import AlertService
from nabz import contract
from nabz.config import AlertsConfig, Config, MqttConfig
from nabz.contract import Vitals
from nabz.mqtt import connect, make_client

__all__ = ["live_latency"]

_DESAT_PCT = 82.0  # 6 points under 88 %: the high band's delay is at its 5 s minimum
_DELAY_S = 5.0


class _Stopwatch:
    name = "bench"
    reaches_phone = False  # a stopwatch, not a phone

    def __init__(self) -> None:
        self.accepted: dict[tuple[str, str], float] = {}  # (phone, text of a part) -> first accepted
        self.lock = threading.Lock()

    def send(self, to: str, text: str, key: str, at: float) -> Delivery:
        with self.lock:
            self.accepted.setdefault((to, text), time.time())
        return Delivery(True, ref=key)


def _p(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))] if s else 0.0


def live_latency(
    broker: str, patients: int = 1000, seconds: int = 30, desaturations: int = 20, seed: int = 1
) -> dict[str, Any]:
    rng = random.Random(seed)
    mqtt = MqttConfig(url=broker)
    desat = {
        f"p-{n:04d}": rng.randrange(3, max(4, seconds - 10))
        for n in rng.sample(range(1, patients + 1), desaturations)
    }
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config(site="bench", mqtt=mqtt,
                     alerts=AlertsConfig(store_path=str(Path(tmp) / "alerts.sqlite"), max_sms_per_hour=1_000_000))  # fmt: skip
        watch = _Stopwatch()
        service = AlertService(cfg, notifiers=[watch], client_id="nabz-bench-alerts")
        service.start()
        deadline = time.monotonic() + 10
        while not service.client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # subscriptions made on connect
        # The load comes from another process, as ingest's would: it must not share our GIL.
        job = json.dumps({"broker": broker, "patients": patients, "seconds": seconds, "desat": desat,
                          "start": math.ceil(time.time()) + 2.0})  # fmt: skip
        out = subprocess.run([sys.executable, "-m", "alerts.loadbench", job], capture_output=True, text=True,
                             timeout=seconds + 120, check=True)  # fmt: skip
        got = json.loads(out.stdout.strip().splitlines()[-1])
        published_at = {(k.split("|")[0], int(k.split("|")[1])): at for k, at in got["published_at"].items()}
        sent, lag = got["sent"], got["lag"]
        time.sleep(3.0)  # let the last alarms through
        latencies: list[float] = []
        for sms in service.store.sms():
            accepted = watch.accepted.get((sms["phone"], sms["parts"][0]))
            if accepted is None or sms["patient"] not in desat:
                continue
            trigger = published_at.get((sms["patient"], desat[sms["patient"]] + int(_DELAY_S)))
            if trigger is not None and "REPEAT" not in sms["text"]:
                latencies.append(accepted - trigger)
        alarms = [a for a in service.store.alarms() if a["kind"] == "spo2_low"]
        service.stop()
    return {
        "load_patients": patients,
        "load_vitals_per_s": round(sent / seconds, 1),
        "publish_s_per_second_p99": round(_p(lag, 0.99), 3),
        "desaturations": len(desat),
        "alarmed": len({a["patient"] for a in alarms}),
        "live_latency_p50_s": round(_p(latencies, 0.5), 3),
        "live_latency_p99_s": round(_p(latencies, 0.99), 3),
        "live_latency_max_s": round(max(latencies, default=0.0), 3),
        "bad_messages": service.bad_messages,
    }


def _publish(broker: str, patients: int, seconds: int, desat: dict[str, int], start: float) -> dict[str, Any]:
    """The load generator (run as its own process): every patient's vitals once a second, in real time."""
    mqtt = MqttConfig(url=broker)
    pub = make_client(mqtt, client_id="nabz-bench-publisher", persistent_session=False)
    pub.max_inflight_messages_set(1000)
    connect(pub, mqtt, persistent_session=False)
    deadline = time.monotonic() + 10
    while not pub.is_connected() and time.monotonic() < deadline:
        time.sleep(0.05)
    published_at: dict[str, float] = {}
    lag: list[float] = []
    n = 0
    for second in range(seconds):
        tick = start + second
        while (wait := tick - time.time()) > 0:
            time.sleep(min(wait, 0.05))
        began = time.time()
        t = datetime.fromtimestamp(tick, UTC)
        batch: list[Vitals] = []
        low_in_batch: list[str] = []
        for k in range(1, patients + 1):
            pid = f"p-{k:04d}"
            low = pid in desat and second >= desat[pid]
            spo2 = _DESAT_PCT if low else 97.0
            for source, device, values in (
                ("ecg", f"ecg-{k:04d}", {"hr_bpm": 72.0, "sqi": 0.95, "pause_s": 0.9}),
                ("ppg", f"oxi-{k:04d}", {"pr_bpm": 72.0, "spo2_pct": spo2, "sqi": 0.9}),
                ("device", f"ecg-{k:04d}", {"hr_bpm": 72.0}),
                ("device", f"oxi-{k:04d}", {"spo2_pct": spo2, "pr_bpm": 72.0}),
            ):
                n += 1
                batch.append(Vitals(id=f"bench{n:012d}", site="bench", patient=pid, device=device, t=t,
                                    source=source, **values))  # type: ignore[arg-type]  # fmt: skip
            if low:
                low_in_batch.append(pid)
            # as ingest publishes them: a batch of patients' vitals per message
            if len(batch) + 4 > contract.VITALS_PER_MESSAGE or k == patients:
                for topic, msg in contract.vitals_messages(batch):
                    pub.publish(topic, contract.encode(msg), qos=1)
                for p in low_in_batch:
                    published_at[f"{p}|{second}"] = time.time()
                batch, low_in_batch = [], []
        lag.append(time.time() - began)
    pub.disconnect()
    return {"published_at": published_at, "sent": n, "lag": lag}


if __name__ == "__main__":
    job = json.loads(sys.argv[1])
    print(json.dumps(_publish(job["broker"], job["patients"], job["seconds"], job["desat"], job["start"])))
