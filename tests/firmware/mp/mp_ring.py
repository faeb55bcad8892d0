# Waveform ring and sender under MicroPython: framing at MTU 23 and 247, a minute of buffer,
# resend after a drop-out, gaps reported, no allocation in the sampling path.

import nabz_codec as codec
from fake_link import FakeLink
from mptest import alloc_of, emit
from nabz_ring import WaveRing
from nabz_stream import CHAR_CONTROL, CHAR_WAVE, Sender

ECG = codec.WAVE_KIND_ECG
PPG = codec.WAVE_KIND_PPG
T0 = 1234567000


def ecg_value(i):
    return ((i * 37) % 4001) - 2000


def make(kind, mtu, seconds=64, frames=512, seq_start=0):
    rate = 250 if kind == ECG else 100
    ring = WaveRing(kind, rate, seconds, frames, codec.wave_max_samples(kind, mtu), seq_start)
    ring.set_time(0, T0, 1000000000 // rate)
    return ring


def feed(ring, start, n, flags=0):
    if ring.kind == ECG:
        for i in range(start, start + n):
            ring.put_ecg(ecg_value(i), flags)
    else:
        for i in range(start, start + n):
            ring.put_ppg(100000 + i, 130000 + 2 * i, flags)


def waves(sent):
    return [codec.wave_decode(d) for c, d in sent if c == CHAR_WAVE]


# 1. Framing at MTU 247 and 23: sizes, and bytes equal to the codec's own encoder.
for kind, mtu in ((ECG, 247), (ECG, 23), (PPG, 247), (PPG, 100)):
    ring = make(kind, mtu)
    link = FakeLink(mtu)
    s = Sender(ring, link)
    per = ring.frame_samples
    feed(ring, 0, per * 3)
    s.pump()
    got = link.take()
    same = True
    for j, (_c, d) in enumerate(got):
        k0 = j * per
        if kind == ECG:
            samples = [ecg_value(i) for i in range(k0, k0 + per)]
        else:
            samples = []
            for i in range(k0, k0 + per):
                samples += [100000 + i, 130000 + 2 * i]
        t0 = T0 + k0 * (1000000 // ring.rate_hz)
        same = same and d == codec.wave_encode(kind, 0, ring.rate_hz, j, t0, samples)
    emit(
        "framing %d %d" % (kind, mtu),
        {"frames": len(got), "per_frame": per, "bytes": [len(d) for _, d in got], "identical_to_codec": same},
    )
try:
    codec.wave_max_samples(PPG, 23)
    emit("ppg at mtu 23", "fits")
except ValueError as e:
    emit("ppg at mtu 23", str(e))

# 2. A minute and more of ECG at MTU 247: what the ring holds after 70 s.
ring = make(ECG, 247)
feed(ring, 0, 250 * 70)
ring.stamp()
emit(
    "ecg after 70 s",
    {
        "held_s": ring.held_seconds(),
        "frames": ring.count,
        "dropped": ring.frames_dropped,
        "oldest_seq": ring.seq_of(ring.oldest_fc),
    },
)
ring = make(PPG, 247)
feed(ring, 0, 100 * 70)
ring.stamp()
emit("ppg after 70 s", {"held_s": ring.held_seconds(), "frames": ring.count, "dropped": ring.frames_dropped})
ring = make(ECG, 23)
feed(ring, 0, 250 * 70)
ring.stamp()
emit("ecg at mtu 23 after 70 s", {"held_s": ring.held_seconds(), "frames": ring.count})

# 3. A 30 s drop-out, then the gateway asks for the hole.
ring = make(ECG, 247)
link = FakeLink(247)
s = Sender(ring, link)
s.connected()
feed(ring, 0, 250 * 10)
s.pump()
before = link.take()
last_seen = codec.wave_decode(before[-1][1])["seq"]
feed(ring, 250 * 10, 250 * 30)  # disconnected: nothing pumped
s.connected()
feed(ring, 250 * 40, 250)
s.pump()
live = link.take()
first_live = codec.wave_decode(live[0][1])["seq"]
s.request_resend(last_seen + 1, first_live - 1)
s.pump(budget=1000)
resent = link.take()
frames = [d for c, d in resent if c == CHAR_WAVE]
reports = [codec.control_notify_decode(d) for c, d in resent if c == CHAR_CONTROL]
ordered = [codec.wave_decode(d)["seq"] for d in frames]
# The originals, as they would have gone out live, for a byte comparison.
flag_ok = all(codec.wave_decode(d)["flags"] & codec.WAVE_FLAG_RESENT for d in frames)
emit(
    "drop-out 30 s",
    {
        "last_before": last_seen,
        "first_live": first_live,
        "resent_seqs": ordered,
        "reports": reports,
        "resent_flag": flag_ok,
        "samples_resent": sum(codec.wave_decode(d)["n"] for d in frames),
    },
)
# The resent bytes equal a fresh packing of the same frame except for the flag bit.
buf = bytearray(300)
n = ring.frame_into(buf, ring.fc_of(ordered[0]))
plain = bytes(buf[:n])
again = frames[0]
emit("resent equals original", again[:2] + bytes([again[2] & ~codec.WAVE_FLAG_RESENT]) + again[3:] == plain)

# 4. A 90 s drop-out: the oldest part of the hole is gone, and the report says so.
ring = make(ECG, 247)
link = FakeLink(247)
s = Sender(ring, link)
s.connected()
feed(ring, 0, 250 * 5)
s.pump()
last_seen = codec.wave_decode(link.take()[-1][1])["seq"]
feed(ring, 250 * 5, 250 * 90)
s.connected()
feed(ring, 250 * 95, 250)
s.pump()
first_live = codec.wave_decode(link.take()[0][1])["seq"]
s.request_resend(last_seen + 1, first_live - 1)
s.pump(budget=1000)
out = link.take()
reports = [codec.control_notify_decode(d) for c, d in out if c == CHAR_CONTROL]
got = [codec.wave_decode(d) for c, d in out if c == CHAR_WAVE]
emit(
    "drop-out 90 s",
    {
        "asked": [last_seen + 1, first_live - 1],
        "reports": reports,
        "frames": len(got),
        "seconds_resent": sum(f["n"] for f in got) / 250,
        "first_resent_t0": got[0]["t0_us"] if got else None,
    },
)

# 5. Congestion: the stack refuses notifications; nothing is lost or reordered.
ring = make(ECG, 247)
link = FakeLink(247, room=2)
s = Sender(ring, link)
s.connected()
seqs = []
i = 0
for step in range(60):
    feed(ring, i, 250)  # one second of samples
    i += 250
    s.pump()
    seqs += [codec.wave_decode(d)["seq"] for c, d in link.take()]
    link.drain(2 if step < 30 else 10)
s.pump()
seqs += [codec.wave_decode(d)["seq"] for c, d in link.take()]
emit(
    "congestion",
    {
        "seqs_in_order": seqs == list(range(len(seqs))),
        "frames": len(seqs),
        "expected": ring.count if ring.frames_dropped == 0 else None,
        "refused": link.refused,
        "skipped": s.frames_skipped,
    },
)

# 6. Gaps: three lost samples close the frame, flag the next one and move its time on.
ring = make(ECG, 247)
feed(ring, 0, 50)
ring.skip(3)
feed(ring, 53, 113)
ring.stamp()
buf = bytearray(300)
f0 = codec.wave_decode(bytes(buf[: ring.frame_into(buf, 0)]))
f1 = codec.wave_decode(bytes(buf[: ring.frame_into(buf, 1)]))
emit(
    "gap",
    {
        "f0": [f0["n"], f0["flags"], f0["t0_us"]],
        "f1": [f1["n"], f1["flags"], f1["t0_us"]],
        "lost": ring.samples_lost,
        "gaps": ring.gaps,
        "f1_first_sample": f1["samples"][0],
        "expected_first": ecg_value(53),
    },
)

# 7. Sequence numbers wrap at 2**32.
ring = make(ECG, 247, seq_start=0xFFFFFFFE)
link = FakeLink(247)
s = Sender(ring, link)
s.connected()
feed(ring, 0, 113 * 4)
s.pump()
seqs = [codec.wave_decode(d)["seq"] for c, d in link.take()]
s.request_resend(0xFFFFFFFF, 1)
s.pump()
out = link.take()
emit(
    "wrap",
    {
        "live": seqs,
        "resent": [codec.wave_decode(d)["seq"] for c, d in out if c == CHAR_WAVE],
        "report": [codec.control_notify_decode(d) for c, d in out if c == CHAR_CONTROL],
    },
)

# 8. The sampling path allocates nothing (once the ring exists).
ring = make(ECG, 247)
ring_p = make(PPG, 247)
feed(ring, 0, 10)
feed(ring_p, 0, 10)


def put_e(r):
    r.put_ecg(-1234, 0)


def put_p(r):
    r.put_ppg(200000, 150000, 0)


def gap(r):
    r.skip(2)


emit(
    "alloc",
    {
        "put_ecg x2000": alloc_of(put_e, ring, 2000),
        "put_ppg x2000": alloc_of(put_p, ring_p, 2000),
        "skip x50": alloc_of(gap, ring, 50),
    },
)

# 8b. The same after 49.7 days: the ring's statistics 10 short of 2**30 (at MTU 23 a frame is one
# sample, so every sample also pushes a frame out once the 512-frame index is full). They pass
# 2**30 first (a wrap makes one 16-byte temporary, once in 2**30 samples), then are measured.
ring = make(ECG, 23)
ring_p = make(PPG, 247)
feed(ring, 0, 600)
feed(ring_p, 0, 10)
EDGE = (1 << 30) - 10
for r in (ring, ring_p):
    r.samples_in = r.samples_lost = r.gaps = r.frames_dropped = EDGE
for _ in range(20):
    put_e(ring)
    put_p(ring_p)
    gap(ring_p)
emit(
    "alloc at 2**30",
    {
        "put_ecg x2000": alloc_of(put_e, ring, 2000),
        "put_ppg x2000": alloc_of(put_p, ring_p, 2000),
        "skip x50": alloc_of(gap, ring_p, 50),
        # what a reader sees: the counts modulo 2**30
        "ecg": [ring.samples_in, ring.frames_dropped],
        "ppg": [ring_p.samples_in, ring_p.samples_lost, ring_p.gaps],
    },
)

# 9. A resend overtaken by the ring: while the radio is busy the oldest frames are dropped from
# under the run being resent (a 16-frame index at one sample a frame, MTU 23).
ring = WaveRing(ECG, 250, 64, 16, 1, 1000)
link = FakeLink(23)
s = Sender(ring, link)
feed(ring, 0, 16)
s.pump()  # live: 1000..1015
link.take()
s.request_resend(1000, 1015)  # the gateway asks for all 16 again
link.drain(4)  # the radio takes 4, then is busy (NimBLE ENOMEM)
s.pump()
feed(ring, 100, 6)  # 24 ms of sampling meanwhile: the 6 oldest frames are dropped
link.drain(100)
s.pump()
out = link.take()
emit(
    "resend overtaken",
    {
        "held": [ring.seq_of(ring.oldest_fc), ring.seq_of((ring.next_fc - 1) & 0x3FFFFFFF)],
        "resent": [
            codec.wave_decode(d)["seq"]
            for c, d in out
            if c == CHAR_WAVE and codec.wave_decode(d)["flags"] & codec.WAVE_FLAG_RESENT
        ],
        "reports": [codec.control_notify_decode(d) for c, d in out if c == CHAR_CONTROL],
    },
)
