# Waveform ring: the last minute of samples a wearable took, cut into numbered frames, for live
# sending and for RESEND after a BLE drop-out (docs/contract.md "Waveform frame", "Control").
#
# Rules of this file:
# - put_ecg/put_ppg/skip run in the sampling path (the ECG timer callback, the oximeter's FIFO
#   reader). They touch only preallocated buffers and small ints: they never allocate, which
#   tests/firmware measures with gc.mem_alloc() under the real MicroPython interpreter.
# - Samples are kept in wire format (ECG int16 LE; PPG uint24 LE, red then IR), so a frame is an
#   18-byte header plus a copy, and a resent frame is the first one byte for byte (plus its flag).
# - Frames are counted by a wrapping 30-bit counter `fc` (a small int on the ESP32); the frame's
#   sequence number is seq_start + (fc - seq_fc) (mod 2**32), worked out only outside the
#   sampling path.
# - Time: sample k (also a wrapping 30-bit index) was taken at anchor_us + (k - anchor_k) x period.
#   The 64-bit device time of each frame's first sample is stamped by stamp(), outside the
#   sampling path, before the owner moves the anchor (after a gap on the oximeter).
# - Both differences are signed 30-bit (kdiff): they turn negative at 2**29 (24.8 days of ECG).
#   rebase(), called by the owner's task loop, moves the time anchor and the sequence base up to
#   the newest sample and frame once they are 2**28 behind, so a board can run for months.
# - A frame older than the ring is gone: it is never resent and the sender reports it as a gap.

from array import array

import nabz_codec as codec
from micropython import const

_K_MASK = const(0x3FFFFFFF)  # sample and frame counters wrap at 2**30 (small ints on the ESP32)
_K_HALF = const(0x20000000)
_REBASE_AFTER = const(0x10000000)  # rebase() moves the anchors on past this distance (2**28)
_SEQ_MOD = 0x100000000  # sequence numbers wrap at 2**32 (a long int: never in the sampling path)


def kdiff(a, b):
    """a - b for the wrapping 30-bit counters, as a signed small int (like time.ticks_diff)."""
    return ((a - b + _K_HALF) & _K_MASK) - _K_HALF


class WaveRing:
    """Samples of one stream in wire format, and an index of the frames cut from them.

    kind: codec.WAVE_KIND_ECG or WAVE_KIND_PPG. capacity_s: seconds of samples kept at rate_hz.
    max_frames: frames the index holds, a power of two (the oldest frame is dropped when either
    the samples or the index are full). frame_samples: samples per frame until changed.
    """

    def __init__(self, kind, rate_hz, capacity_s, max_frames, frame_samples, seq_start=0):
        if max_frames < 2 or max_frames & (max_frames - 1):
            raise ValueError("ring: max_frames must be a power of two, not %d" % max_frames)
        self.kind = kind
        self.rate_hz = rate_hz
        self.sample_size = codec.wave_sample_size(kind)
        self.capacity = rate_hz * capacity_s  # sample instants
        if self.capacity > 65535:
            raise ValueError("ring: %d samples do not fit the 16-bit index" % self.capacity)
        self.data = bytearray(self.capacity * self.sample_size)
        self._mv = memoryview(self.data)
        self.max_frames = max_frames
        self._fmask = max_frames - 1
        # Frame index, one slot per frame: slot = fc & _fmask. 18 bytes a slot, and the samples
        # capacity x sample_size: nabz_config refuses a ring whose total passes the heap budget
        # (tests/firmware check that its sizes are these).
        self.f_start = array("H", [0] * max_frames)  # first sample's position in data (instants)
        self.f_n = bytearray(max_frames)  # samples in the frame
        self.f_flags = bytearray(max_frames)  # status flags (OR over its samples, gap before)
        self.f_k = array("i", [0] * max_frames)  # sample index of the first sample
        self.f_t0 = array("q", [0] * max_frames)  # device time of the first sample, us (stamp())
        self.f_rate = array("H", [0] * max_frames)  # sample rate the frame was taken at, Hz
        self.seq_start = seq_start & 0xFFFFFFFF  # the sequence number of frame seq_fc
        self.seq_fc = 0
        self.frame_samples = 1
        self.set_frame_samples(frame_samples)
        # Counters and cursors (all small ints, changed only by the sampling path unless noted).
        self.oldest_fc = 0  # oldest frame still held
        self.next_fc = 0  # the frame being filled now gets this number when closed
        self.count = 0  # frames held (closed)
        self.stamped_fc = 0  # frames before this one have their t0 (stamp(), task side)
        self.w = 0  # next write position (instants)
        self.used = 0  # instants held: closed frames plus the open one
        self.k = 0  # sample index of the next sample
        self.open_start = 0
        self.open_n = 0
        self.open_k = 0
        self.open_flags = 0
        self.pending_flags = 0  # flags for the next frame (gap before)
        self.close_requested = False
        # Statistics (tests and logs read them), counted modulo 2**30 like the counters above: a
        # count past 2**30 would be a long int, allocated at every sample (49.7 days at 250 Hz).
        # Nothing needs their true totals; a reader over days takes differences mod 2**30.
        self.samples_in = 0
        self.samples_lost = 0  # sample instants skipped by the sampler (gaps)
        self.gaps = 0
        self.frames_dropped = 0  # frames pushed out of the ring (oldest first)
        # Time base (task side): sample k at anchor_us + (k - anchor_k) * period_ns / 1000.
        self.anchor_k = 0
        self.anchor_us = 0
        self.period_ns = 1000000000 // rate_hz

    # -- configuration (task side) -------------------------------------------------------------
    def set_frame_samples(self, n):
        """Samples per frame from now on (from the ATT MTU); the open frame closes at this size."""
        if n < 1 or n > 255:
            raise ValueError("ring: %d samples per frame, must be 1..255" % n)
        self.frame_samples = n

    def set_time(self, k, t_us, period_ns):
        """Anchor the time base: sample k was taken at device time t_us; samples period_ns apart.

        Call stamp() first, so frames already closed keep the times they were cut with.
        """
        self.anchor_k = k & _K_MASK
        self.anchor_us = t_us
        self.period_ns = period_ns

    def set_rate(self, rate_hz, k, t_us):
        """A new sample rate from sample k on (taken at t_us): closes the open frame first.

        Task side, with the sampling path stopped (the oximeter's reader is task code).
        """
        self.close()
        self.stamp()
        self.rate_hz = rate_hz
        self.set_time(k, t_us, 1000000000 // rate_hz)

    def time_of(self, k):
        """Device time (us) of sample index k by the current anchor."""
        return self.anchor_us + (kdiff(k, self.anchor_k) * self.period_ns) // 1000

    def rebase(self):
        """Keep the time anchor and the sequence base within 2**28 of the newest sample and frame
        (task side, from the owner's loop; safe while the sampling path runs). Returns True if
        either moved.

        kdiff() from them is signed: past 2**29 samples (24.8 days of ECG) frame times would go
        negative, past 2**29 frames the sequence numbers would jump back. The new anchor is a
        point of the same line (exact on the ECG's 4 ms grid; the oximeter's fitted period may
        round it down by under a microsecond), so no frame time moves.
        """
        moved = False
        k = self.k  # read once: the sampling path may move it meanwhile, any k of the line will do
        if kdiff(k, self.anchor_k) >= _REBASE_AFTER:
            self.stamp()  # frames closed so far keep the times they were cut with
            self.set_time(k, self.time_of(k), self.period_ns)
            moved = True
        fc = self.next_fc
        if kdiff(fc, self.seq_fc) >= _REBASE_AFTER:
            self.seq_start = self.seq_of(fc)
            self.seq_fc = fc
            moved = True
        return moved

    def request_close(self):
        """Close the open frame at the next sample (safe while the sampling path runs)."""
        self.close_requested = True

    # -- sampling path: no allocation ------------------------------------------------------------
    def put_ecg(self, uv, flags):
        """One ECG sample in microvolts (clamped to int16) with its status flags."""
        if uv > 32767:
            uv = 32767
        elif uv < -32768:
            uv = -32768
        pos = self._slot_for_sample()
        i = pos << 1
        d = self.data
        d[i] = uv & 0xFF
        d[i + 1] = (uv >> 8) & 0xFF
        self._after_put(pos, flags)

    def put_ppg(self, red, ir, flags):
        """One PPG sample: red and infrared counts (uint24) with its status flags."""
        pos = self._slot_for_sample()
        i = pos * 6
        d = self.data
        d[i] = red & 0xFF
        d[i + 1] = (red >> 8) & 0xFF
        d[i + 2] = (red >> 16) & 0xFF
        d[i + 3] = ir & 0xFF
        d[i + 4] = (ir >> 8) & 0xFF
        d[i + 5] = (ir >> 16) & 0xFF
        self._after_put(pos, flags)

    def skip(self, missed):
        """The sampler lost `missed` sample instants: close the frame, flag the gap, move time on."""
        if missed <= 0:
            return
        self.close()
        self.pending_flags |= codec.WAVE_FLAG_GAP_BEFORE
        self.k = (self.k + missed) & _K_MASK
        self.samples_lost = (self.samples_lost + missed) & _K_MASK
        self.gaps = (self.gaps + 1) & _K_MASK

    def _slot_for_sample(self):
        if self.close_requested:
            self.close_requested = False
            self.close()
        if self.used >= self.capacity:
            self._drop_oldest()
        pos = self.w
        if self.open_n == 0:
            self.open_start = pos
            self.open_k = self.k
        self.w = pos + 1 if pos + 1 < self.capacity else 0
        self.used += 1
        return pos

    def _after_put(self, pos, flags):
        self.open_n += 1
        self.open_flags |= flags
        self.k = (self.k + 1) & _K_MASK
        self.samples_in = (self.samples_in + 1) & _K_MASK
        if self.open_n >= self.frame_samples:
            self.close()

    def close(self):
        """Close the open frame now (if it has samples). From the task side only when the
        sampling path is stopped; otherwise use request_close()."""
        n = self.open_n
        if n == 0:
            return
        if self.count >= self.max_frames:
            self._drop_oldest()
        s = self.next_fc & self._fmask
        self.f_start[s] = self.open_start
        self.f_n[s] = n
        self.f_flags[s] = self.open_flags | self.pending_flags
        self.f_k[s] = self.open_k
        self.f_rate[s] = self.rate_hz
        self.pending_flags = 0
        self.open_n = 0
        self.open_flags = 0
        self.next_fc = (self.next_fc + 1) & _K_MASK
        self.count += 1

    def _drop_oldest(self):
        if self.count == 0:
            return  # only the open frame: cannot happen while frame_samples < capacity
        self.used -= self.f_n[self.oldest_fc & self._fmask]
        self.oldest_fc = (self.oldest_fc + 1) & _K_MASK
        self.count -= 1
        self.frames_dropped = (self.frames_dropped + 1) & _K_MASK

    # -- task side -------------------------------------------------------------------------------
    def stamp(self):
        """Give every closed frame its device time; returns the number stamped now."""
        if kdiff(self.stamped_fc, self.oldest_fc) < 0:
            self.stamped_fc = self.oldest_fc  # dropped before they were stamped
        done = 0
        while self.stamped_fc != self.next_fc:
            s = self.stamped_fc & self._fmask
            self.f_t0[s] = self.time_of(self.f_k[s])
            self.stamped_fc = (self.stamped_fc + 1) & _K_MASK
            done += 1
        return done

    def holds(self, fc):
        """Whether frame fc is in the ring, closed and stamped."""
        return 0 <= kdiff(fc, self.oldest_fc) and kdiff(fc, self.stamped_fc) < 0

    def seq_of(self, fc):
        """The sequence number of frame fc (near the frames now held): wraps at 2**32."""
        return (self.seq_start + kdiff(fc, self.seq_fc)) % _SEQ_MOD

    def fc_of(self, seq):
        """The frame counter of sequence number seq (near the frames now held)."""
        return (self.seq_fc + seq - self.seq_start) & _K_MASK

    def frame_len(self, fc):
        return codec.WAVE_HEADER_SIZE + self.f_n[fc & self._fmask] * self.sample_size

    def frame_into(self, buf, fc, extra_flags=0):
        """Write frame fc into buf; returns its length, or 0 if it is no longer held.

        The copy is checked afterwards: if the sampling path dropped the frame meanwhile (its
        bytes may have been overwritten mid-copy) the result is 0, never a torn frame.
        """
        if not self.holds(fc):
            return 0
        s = fc & self._fmask
        n = self.f_n[s]
        size = self.sample_size
        total = codec.WAVE_HEADER_SIZE + n * size
        if len(buf) < total:
            raise ValueError("ring: buffer of %d bytes, frame needs %d" % (len(buf), total))
        codec.wave_header_into(
            buf, self.kind, self.f_flags[s] | extra_flags, n, self.f_rate[s], self.seq_of(fc), self.f_t0[s]
        )
        a = self.f_start[s] * size
        nbytes = n * size
        end = self.capacity * size
        mv = memoryview(buf)
        h = codec.WAVE_HEADER_SIZE
        if a + nbytes <= end:
            mv[h : h + nbytes] = self._mv[a : a + nbytes]
        else:
            first = end - a
            mv[h : h + first] = self._mv[a:end]
            mv[h + first : h + nbytes] = self._mv[0 : nbytes - first]
        if not self.holds(fc):
            return 0
        return total

    def held_seconds(self):
        """How many seconds of samples the ring holds now (closed frames and the open one)."""
        return self.used / self.rate_hz
