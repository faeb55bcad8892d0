# The heap budget of nabz_config against the rings nabz_ring really builds: for the largest
# configurations accepted, the bytes of the ring's buffers (samples and frame index, measured
# from the buffers themselves) and what the config check counted; and the refusal one second on.
import nabz_codec as codec
import nabz_config
from mptest import emit
from nabz_ring import WaveRing

CASES = (("ecg", 76, 512), ("oximeter", 64, 512), ("ecg", 86, 256), ("oximeter", 71, 256))
out = []
for sensor, seconds, frames in CASES:
    raw = {"device_id": "x-1", "sensor": sensor, "ring_seconds": seconds, "ring_frames": frames}
    cfg = nabz_config.validate(raw)
    kind = codec.WAVE_KIND_ECG if sensor == "ecg" else codec.WAVE_KIND_PPG
    rate = cfg["ecg_rate_hz"] if sensor == "ecg" else cfg["ppg_rate_hz"]
    ring = WaveRing(kind, rate, seconds, frames, 1)
    index = (ring.f_start, ring.f_n, ring.f_flags, ring.f_k, ring.f_t0, ring.f_rate)
    allocated = len(ring.data) + sum(len(bytes(a)) for a in index)
    raw["ring_seconds"] = seconds + 1
    try:
        nabz_config.validate(raw)
        one_more = "accepted"
    except nabz_config.ConfigError as e:
        one_more = str(e)
    out.append(
        {
            "sensor": sensor,
            "seconds": seconds,
            "frames": frames,
            "allocated": allocated,
            "counted": nabz_config.ring_bytes(sensor, rate, seconds, frames),
            "one_more": one_more,
        }
    )
emit("ring budget", {"budget": nabz_config._RING_BUDGET_BYTES, "cases": out})
