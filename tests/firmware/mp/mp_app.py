# Whole wearables under MicroPython (fakes/fake_rig.py): the scenario named by the first argument
# runs a wearable built by nabz_board.build() against a "gateway" that is the test itself.
import sys

import bluetooth
import machine
import nabz_codec as codec
from fake_rig import Rig, use_data
from mptest import alloc_of, emit

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

elif SCENARIO == "ecg_mtu515":
    # The largest MTU the configuration allows: 247 samples, a 512-byte frame (one whole ATT value).
    rig = Rig("ecg", mtu=515, extra={"mtu": 515})
    rig.run(2)
    rig.connect()
    rig.run(3)
    emit(
        "ecg mtu 515",
        {
            "frames": len(rig.gw.frames),
            "sizes": sorted(set(f[5] for f in rig.gw.frames)),
            "sender_buffer": len(rig.w.sender.buf),
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

elif SCENARIO == "oximeter_por":
    # The MAX30102 resets itself (supply dip, ESD): registers at their defaults, not sampling,
    # while it still answers on I2C.
    rig = Rig("oximeter")
    rig.connect()
    rig.run(20)
    before = len(rig.gw.frames)
    rig.chip.por()
    rig.run(10)
    after = rig.gw.frames[before:]
    emit(
        "oximeter power-on reset",
        {
            "control": rig.gw.control,
            "frames_after": len(after),
            "gap_frames_after": len([f for f in after if f[2] & codec.WAVE_FLAG_GAP_BEFORE]),
            "last_seconds_of_frames": (after[-1][4] - after[0][4]) // 1000000 if after else 0,
            "mode": rig.chip.regs[9],
            "resets_seen": getattr(rig.w.sampler, "resets_seen", 0),
            "recoveries": rig.w.sampler.recoveries,
            "last_vitals": rig.gw.vitals[-1],
        },
    )

elif SCENARIO == "oximeter_dead":
    # The chip keeps answering on I2C but stops sampling for good.
    rig = Rig("oximeter")
    rig.connect()
    rig.run(20)
    before_v = len(rig.gw.vitals)
    before_f = len(rig.gw.frames)
    fed = rig.wdt.feeds
    rig.chip.dead = True
    rig.chip.por()
    rig.run(20)
    emit(
        "oximeter dead",
        {
            "vitals_before": rig.gw.vitals[before_v - 1],
            "vitals_after": rig.gw.vitals[before_v:],
            "control": rig.gw.control,
            "frames_after": len(rig.gw.frames) - before_f,
            "wdt_feeds": rig.wdt.feeds - fed,
            "stalls": getattr(rig.w.sampler, "stalls", 0),
        },
    )

elif SCENARIO == "oximeter_set_rate_fault":
    # One I2C error while the oximeter switches to 50 Hz on low battery (configure() has already
    # put the chip in shutdown).
    rig = Rig("oximeter", battery_mv=3760, extra={"battery_period_s": 2})
    rig.connect()
    rig.run(10)
    chip = rig.chip
    write = chip.write
    armed = [True]

    def flaky_write(reg, data):
        if armed[0] and reg == 0x0A:  # SPO2_CONFIG, written after MODE = SHDN
            armed[0] = False
            raise OSError(116)
        return write(reg, data)

    chip.write = flaky_write
    before = len(rig.gw.frames)
    rig.set_battery(3700)
    rig.run(60)
    after = rig.gw.frames[before:]
    emit(
        "oximeter set rate fault",
        {
            "injected": not armed[0],
            "control": rig.gw.control,
            "rates_after": sorted(set(f[3] for f in after)),
            "frames_at_50_hz": len([f for f in after if f[3] == 50]),
            "mode": chip.regs[9],
            "spo2_config": chip.regs[10],
            "recoveries": rig.w.sampler.recoveries,
            "last_vitals": rig.gw.vitals[-1],
        },
    )

elif SCENARIO == "late_subscriber":
    # A gateway subscribes only after discovery and its reads, a second or more after connecting:
    # the status notified at once on connection is lost. (a) An oximeter whose sensor is already
    # failing when the gateway connects; (b) one that recovered while the gateway was away.
    rig = Rig("oximeter")
    rig.chip.nack = True  # the sensor fails from boot
    rig.run(3)
    rig.connect(subscribe=False)
    rig.run(2)
    unheard = rig.ble.unheard
    read = rig.read_status()
    rig.subscribe()
    rig.run(3)
    emit("already failing", {"unheard": unheard, "read": read, "control": rig.gw.control})

    rig = Rig("oximeter")
    rig.connect()
    rig.run(5)
    rig.chip.nack = True
    rig.run(3)
    heard_before = [c[1]["state"] for c in rig.gw.control]
    rig.ble.central_disconnect()
    rig.chip.nack = False
    rig.run(5)  # recovers while nobody listens
    rig.gw = type(rig.gw)(rig.ble)
    rig.connect(subscribe=False)
    rig.run(2)
    read = rig.read_status()
    rig.subscribe()
    rig.run(3)
    emit("recovered while away", {"heard_before": heard_before, "read": read, "control": rig.gw.control})

    # a RESEND written to the control characteristic does not replace the status a read returns
    rig.ble.central_write(
        rig.ble.handle_of(codec.NABZ_CONTROL), codec.control_resend_encode(codec.WAVE_KIND_PPG, 0, 0)
    )
    rig.run(1)
    emit("read after a resend", rig.read_status())

elif SCENARIO == "ecg_50_days":
    # 49.7 days of uptime at MTU 23 (one sample a frame) in eight leaps of 2**27 samples and
    # frames (2**27 x 4 ms is a whole number of 2**30 us tick periods: the sample timer's ticks
    # do not move). Each leap is what the wearable would have done meanwhile - the ring and the
    # detector counted the samples, the ring cut the frames and the sender sent them - with the
    # service loop running for a second between leaps. (The ring's leap goes through skip(),
    # so the first frame after each is flagged "gap before"; the counts of samples taken, late
    # callbacks and frames dropped - one a sample at MTU 23 - are moved on by the leap as well.)
    LEAP = 1 << 27

    def feed_detector(det):
        det.update(100)

    def tick(_):
        # the sample timer alone (the clock's 64-bit time would allocate: its ticks are enough)
        rig.clock._ticks = (rig.clock._ticks + 4000) & 0x3FFFFFFF
        timer.fire()

    rig = Rig("ecg", mtu=23)
    rig.connect()
    rig.run(2)
    w = rig.w
    ring = w.ring
    leaps = []
    for _ in range(8):
        w.sender.pump()  # nothing waits to be sent: every frame after the leap is a new one
        assert w.sender.pending() == 0
        rig.gw.collect(rig.clock.now_us())
        rig.clock.advance(LEAP * 4000)
        ring.skip(LEAP)  # closes the open frame, flags the next one "gap before"
        # The detector's stream time moves on with its last R peak, as if it had been beating all
        # along (its detector time n stays small: the leads were put back on lately).
        w.detector.k += LEAP
        w.detector.last_r_k += LEAP
        for name in ("oldest_fc", "next_fc", "stamped_fc"):
            setattr(ring, name, (getattr(ring, name) + LEAP) & 0x3FFFFFFF)
        w.sender.live_fc = (w.sender.live_fc + LEAP) & 0x3FFFFFFF
        w.sampler.samples += LEAP
        w.sampler.late_hist[0] += LEAP
        ring.samples_in += LEAP
        ring.frames_dropped += LEAP
        before = len(rig.gw.frames)
        rig.run(1)
        f = rig.gw.frames[before:]
        now = rig.clock.now_us()
        leaps.append(
            {
                "frames": len(f),
                "t0_behind_now_us": [now - f[0][4], now - f[-1][4]],
                "t0_steps_us": sorted(set(f[i + 1][4] - f[i][4] for i in range(len(f) - 1))),
                "seq_steps": sorted(set((f[i + 1][0] - f[i][0]) % (1 << 32) for i in range(len(f) - 1))),
            }
        )
    seqs = [fr[0] for fr in rig.gw.frames]
    steps = [(seqs[i + 1] - seqs[i]) % (1 << 32) for i in range(len(seqs) - 1)]
    timer = machine.timer(rig.cfg["ecg_timer_id"])
    tick_alloc = [alloc_of(tick, None, 250) for _ in range(3)]
    feeds = rig.wdt.feeds
    rig.clock.us += 750 * 4000  # the time of the ticks above, then a second of the loop
    rig.run(1)
    emit(
        "ecg after 50 days",
        {
            "uptime_days": rig.clock.now_us() / 86400e6,
            "leaps": leaps,
            "seq_steps_over_a_leap": sorted(set(s for s in steps if s != 1)),
            "seq_advance": (seqs[-1] - seqs[0]) % (1 << 32),
            "frames": len(seqs),
            "detector_k": w.detector.k,
            "alloc_per_250_samples": [alloc_of(feed_detector, w.detector, 250) for _ in range(3)],
            "tick_alloc_per_250": tick_alloc,
            "counters": [w.sampler.samples, w.sampler.late_hist[0], ring.samples_in, ring.frames_dropped],
            "wdt_fed_after": rig.wdt.feeds - feeds,
        },
    )

elif SCENARIO == "oximeter_124_days":
    # An oximeter whose MAX30102 runs 2 % fast (102 Hz: a sample every 9,803,921.57 ns, which the
    # fit, in whole ns, cannot hit: its prediction drifts two periods off in about 4.5 days and is
    # re-anchored, as a real chip's would be) through 2**30 samples (124 days at 100 Hz; 122 at
    # 102 Hz) in eight leaps of 2**27 samples, with the service loop running 12 s between leaps.
    # Each leap is what the wearable would have done meanwhile: the chip sampled on (its clock
    # moves on with the device's, the samples are counted), the ring took them (through skip():
    # the first frame after a leap is flagged "gap before") and the estimator counted them on
    # the same beat.
    LEAP = 1 << 27
    PPM = 20000
    CHIP_HZ_E6 = 100 * (1000000 + PPM)  # the chip's rate in micro-Hz: period = 10**12 / this us
    LEAP_US = LEAP * 10**12 // CHIP_HZ_E6

    def true_us(k, leaps):
        # the chip's sample p is taken at its start + (p + 1) periods; the ring numbered it k
        p = (k - leaps * LEAP) & 0x3FFFFFFF
        return rig.chip.start_us + (p + 1) * 10**12 // CHIP_HZ_E6

    rig = Rig("oximeter")
    rig.chip.clock_ppm = PPM
    rig.connect()
    rig.run(30)  # the chip's period is fitted
    w = rig.w
    ring = w.ring
    est = w.estimator
    s = w.sampler
    leaps = []
    for leap in range(1, 9):
        s.poll()  # what the FIFO holds belongs before the leap
        rig.gw.collect(rig.clock.now_us())
        rig.clock.advance(LEAP_US)
        rig.chip.start_us += LEAP_US  # the chip sampled all along: none of that is left to read
        ring.skip(LEAP)
        s.samples += LEAP
        est.n += LEAP
        est.last_beat_n += LEAP
        est.since_reset += LEAP
        est._finger_run += LEAP
        if est.last_foot >= 0:
            est.last_foot += LEAP << 4
        before = len(rig.gw.frames)
        rig.run(4)  # the first read after the leap re-anchors (its clock is off by minutes)
        reanchors = s.reanchors
        first = len(rig.gw.frames)
        rig.run(8)
        f = rig.gw.frames[first:]
        ring.stamp()
        errors = []
        fc = ring.oldest_fc
        while ring.holds(fc):
            i = fc & (ring.max_frames - 1)
            if ring.f_t0[i] >= rig.clock.now_us() - 8000000:
                errors.append(ring.f_t0[i] - true_us(ring.f_k[i], leap))
            fc = (fc + 1) & 0x3FFFFFFF
        leaps.append(
            {
                "frames": len(f),
                "gap_frames": len([x for x in rig.gw.frames[before:] if x[2] & codec.WAVE_FLAG_GAP_BEFORE]),
                "reanchors_in_8_s": s.reanchors - reanchors,
                # t0 steps minus the frame's samples at the chip's period (us): 0 or rounding
                "step_errors_us": sorted(
                    set(f[j + 1][4] - f[j][4] - f[j][1] * 10**12 // CHIP_HZ_E6 for j in range(len(f) - 1))
                ),
                "t0_error_us": [min(errors), max(errors)] if errors else None,
                "period_ns": ring.period_ns,
            }
        )

    def per_sample(_):
        ring.put_ppg(120000, 150000, 0)
        est.update(120000, 150000)

    vitals = rig.gw.vitals[-3:]
    for _ in range(500):  # a flat signal for 5 s: no beat, so the estimator's work is all small-int
        per_sample(None)
    emit(
        "oximeter after 124 days",
        {
            "uptime_days": rig.clock.now_us() / 86400e6,
            "leaps": leaps,
            "vitals": vitals,
            "est_n": est.n,
            "alloc_per_100_samples": [alloc_of(per_sample, None, 100) for _ in range(3)],
        },
    )
