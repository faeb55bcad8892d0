# Whole wearables under MicroPython (fakes/fake_rig.py): the scenario named by the first argument
# runs a wearable built by nabz_board.build() against a "gateway" that is the test itself.
import sys

import bluetooth
import machine
import nabz_codec as codec
from fake_rig import Rig, use_data
from mptest import emit

SCENARIO = sys.argv[1]

use_data()

if SCENARIO == "ecg":
    rig = Rig("ecg")
    adv = rig.ble.adv
    emit(
        "advertising",
        {
            "interval_us": adv[0],
            "adv": adv[1].hex(),
            "resp": adv[2].hex(),
            "name": rig.ble.config("gap_name"),
            "preferred_mtu": rig.ble.config("mtu"),
        },
    )
    emit("gatt", rig.gatt())
    rig.run(2)  # advertising, nobody connected: frames go to the ring only
    rig.connect()
    rig.run(10)
    first_part = list(rig.gw.frames)
    rig.ble.central_disconnect()
    rig.run(20)
    rig.connect()
    rig.run(2)
    seqs = [f[0] for f in rig.gw.frames]
    # numbers start at random (beyond a machine word for range() here): offsets from the first
    rel = [(s - seqs[0]) % (1 << 32) for s in seqs]
    hole = [(seqs[0] + k) % (1 << 32) for k in range(rel[-1] + 1) if k not in rel]
    control = rig.ble.handle_of(codec.NABZ_CONTROL)
    rig.ble.central_write(control, codec.control_resend_encode(codec.WAVE_KIND_ECG, hole[0], hole[-1]))
    before = len(rig.gw.frames)
    rig.run(2)
    resent = [f for f in rig.gw.frames[before:] if f[2] & codec.WAVE_FLAG_RESENT]
    emit(
        "ecg session",
        {
            "frames_before_drop": len(first_part),
            "frames": rig.gw.frames[:3],
            "hole": [hole[0], hole[-1], len(hole)],
            "resent": [f[0] for f in resent],
            "control": rig.gw.control,
            "vitals": rig.gw.vitals,
            "battery": rig.gw.battery,
            "mtu_requests": rig.ble.mtu_requests,
            "all_seqs": sorted(set(f[0] for f in rig.gw.frames)),
            "adv_after_disconnect": rig.ble.adv_history[-2] is not None,
            "feeds": rig.w.feeds,
            "wdt_feeds": rig.wdt.feeds,
            "jitter": rig.w.sampler.jitter(),
        },
    )

    # each boot numbers its frames from a random start (the gateway tells a reboot by it)
    emit("first seq of two boots", [rig.w.ring.seq_start, Rig("ecg").w.ring.seq_start])

elif SCENARIO == "ecg_mtu23":
    rig = Rig("ecg", mtu=23)
    rig.connect()
    rig.run(3)
    emit(
        "ecg mtu 23",
        {
            "frames": len(rig.gw.frames),
            "sizes": sorted(set(f[5] for f in rig.gw.frames)),
            "n": sorted(set(f[1] for f in rig.gw.frames)),
            "vitals": rig.gw.vitals,
            "refused": rig.ble.refused,
        },
    )

elif SCENARIO == "ecg_battery":
    rig = Rig("ecg", battery_mv=3760, extra={"battery_period_s": 2})  # about 28 %
    rig.connect()
    rig.run(12)
    rig.set_battery(3700)  # about 12 %: low
    rig.run(30)
    low_frames = [f for f in rig.gw.frames if f[2] & codec.WAVE_FLAG_LOW_BATTERY]
    vit_times = [v[0] for v in rig.gw.vitals]
    rig.set_battery(3300)  # about 1 %: critical
    t_critical = rig.clock.now_us()
    rig.run(70)
    emit(
        "ecg battery",
        {
            "control": rig.gw.control,
            "battery": rig.gw.battery,
            "low_frames": len(low_frames),
            "frames": len(rig.gw.frames),
            "vitals_times": vit_times,
            "slept_ms": rig.slept,
            "slept_after_s": (rig.clock.now_us() - t_critical) // 1000000,
            "timer_running": machine.timer(0).running,
            "sdn": machine.pin(25).level,
            "last_frame_flags": rig.gw.frames[-1][2],
            "adv": rig.ble.adv,
        },
    )

elif SCENARIO == "ecg_watchdog":
    rig = Rig("ecg")
    rig.run(3)
    fed = rig.wdt.feeds
    rig.timer_alive = False  # the sample timer dies
    rig.run(1)
    fed_1s = rig.wdt.feeds
    rig.run(3)
    fed_4s = rig.wdt.feeds
    rig.run(1)
    emit(
        "watchdog",
        {
            "fed_while_sampling": fed,
            "fed_1s_after_stall": fed_1s - fed,
            "fed_1s_to_4s": fed_4s - fed_1s,
            "fed_after": rig.wdt.feeds - fed_4s,
            "timeout_ms": rig.wdt.timeout,
        },
    )

elif SCENARIO == "ecg_critical_at_boot":
    try:
        rig = Rig("ecg", battery_mv=3300)
        emit("critical at boot", {"slept": None})
    except machine.DeepSleep as e:
        emit(
            "critical at boot",
            {
                "slept": e.args[0],
                "timer": 0 in machine._timers and machine.timer(0).running,
                "adv": bluetooth.BLE().adv,
            },
        )

elif SCENARIO == "oximeter":
    rig = Rig("oximeter")
    emit("gatt", rig.gatt())
    adv = rig.ble.adv
    emit("advertising", {"adv": adv[1].hex(), "resp": adv[2].hex()})
    rig.connect()
    rig.run(15)
    emit(
        "oximeter session",
        {
            "frames": rig.gw.frames[:3],
            "count": len(rig.gw.frames),
            "seqs_contiguous": [(f[0] - rig.gw.frames[0][0]) % (1 << 32) for f in rig.gw.frames]
            == list(range(len(rig.gw.frames))),
            "vitals": rig.gw.vitals,
            "control": rig.gw.control,
            "registers": {"mode": rig.chip.regs[9], "spo2": rig.chip.regs[10]},
        },
    )

elif SCENARIO == "oximeter_mtu23":
    rig = Rig("oximeter", mtu=23)
    rig.connect()
    rig.run(8)
    emit(
        "oximeter mtu 23",
        {
            "frames": len(rig.gw.frames),
            "vitals": len(rig.gw.vitals),
            "streaming": rig.w.streaming,
            "ring_frames": rig.w.ring.count,
        },
    )

elif SCENARIO == "oximeter_fault":
    rig = Rig("oximeter")
    rig.connect()
    rig.run(8)
    rig.chip.nack = True
    rig.run(3)
    during = list(rig.gw.vitals[-2:])
    rig.chip.nack = False
    rig.run(10)
    emit(
        "oximeter fault",
        {
            "control": rig.gw.control,
            "during": during,
            "after": rig.gw.vitals[-1],
            "gap_frames": [f[0] for f in rig.gw.frames if f[2] & codec.WAVE_FLAG_GAP_BEFORE],
            "recoveries": rig.w.sampler.recoveries,
            "wdt_feeds_during_fault": rig.wdt.feeds,
        },
    )

elif SCENARIO == "oximeter_battery":
    rig = Rig("oximeter", battery_mv=3760, extra={"battery_period_s": 2})
    rig.connect()
    rig.run(5)
    rig.set_battery(3700)
    rig.run(40)
    rates = sorted(set(f[3] for f in rig.gw.frames))
    low = [f for f in rig.gw.frames if f[2] & codec.WAVE_FLAG_LOW_BATTERY]
    emit(
        "oximeter battery",
        {
            "rates": rates,
            "low_frames_rate": sorted(set(f[3] for f in low)),
            "control": rig.gw.control,
            "chip_spo2_config": rig.chip.regs[10],
            "vitals_after_low": [v[0] for v in rig.gw.vitals[-6:]],
            "last_vitals": rig.gw.vitals[-1],
        },
    )
