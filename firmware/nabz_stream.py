# Waveform sender: live frames first, then resends the gateway asked for, then a report of what
# was resent and what is gone (docs/contract.md "Control characteristic").
#
# Rules of this file:
# - It moves frames from a WaveRing to a link; the link's notify(kind_of_char, data) returns False
#   when the BLE stack is out of buffers (the frame stays queued and is tried again) and raises
#   nothing else. No radio code here, so the interpreter tests drive it with a fake link.
# - Live frames go out in order from the live cursor. A frame too big for the link's MTU (cut
#   before the MTU shrank) is skipped and counted. On a new connection the cursor jumps to the
#   newest frame: the gateway sees the sequence jump and asks for the hole with RESEND.
# - Each RESEND request ends with exactly one report: the contiguous run of frames resent
#   (with the "resent" flag) and, by implication, the frames that are gone. Never silence.

import nabz_codec as codec
from micropython import const
from nabz_ring import kdiff

_MAX_REQUESTS = const(8)
CHAR_WAVE = const(0)
CHAR_CONTROL = const(1)
_SEQ_MOD = 0x100000000


class Sender:
    """max_frame_bytes: the largest frame the ring cuts (the configured MTU - 3, at most 512,
    the largest ATT value)."""

    def __init__(self, ring, link, max_frame_bytes=512):
        self.ring = ring
        self.link = link  # .notify(char, data) -> bool, .mtu
        self.buf = bytearray(max_frame_bytes)
        self._mv = memoryview(self.buf)
        self.live_fc = ring.next_fc
        self.requests = []  # queued (first_seq, last_seq)
        # The request being answered: [first_seq, last_seq, fc cursor, fc end (exclusive), resent_first, count]
        self._active: list | None = None
        self.frames_sent = 0
        self.frames_resent = 0
        self.frames_skipped = 0  # dropped from the ring before sending, or too big for the MTU
        self.requests_dropped = 0
        self.reports_sent = 0

    # -- connection events ---------------------------------------------------------------------
    def connected(self):
        """A new connection: live sending resumes at the newest frame; old requests are void."""
        self.ring.stamp()
        newest = (self.ring.stamped_fc - 1) & 0x3FFFFFFF if self.ring.count else self.ring.next_fc
        self.live_fc = newest
        self.requests = []
        self._active = None

    def request_resend(self, first_seq, last_seq):
        """Queue a RESEND request (from the control characteristic)."""
        if len(self.requests) >= _MAX_REQUESTS:
            self.requests_dropped += 1
            return False
        self.requests.append((first_seq, last_seq))
        return True

    # -- the work, called from the service loop ---------------------------------------------------
    def pump(self, budget=64):
        """Send live frames, then resends, until the link is busy or `budget` frames went out.

        Returns the number of notifications sent.
        """
        ring = self.ring
        ring.stamp()
        sent = 0
        payload = self.link.mtu - 3
        while sent < budget and self.live_fc != ring.stamped_fc:
            fc = self.live_fc
            if kdiff(fc, ring.oldest_fc) < 0:  # dropped before it could be sent
                self.frames_skipped += kdiff(ring.oldest_fc, fc)
                self.live_fc = ring.oldest_fc
                continue
            n = ring.frame_into(self.buf, fc)
            if n == 0 or n > payload:
                self.frames_skipped += 1
                self.live_fc = (fc + 1) & 0x3FFFFFFF
                continue
            if not self.link.notify(CHAR_WAVE, self._mv[:n]):
                return sent
            self.frames_sent += 1
            self.live_fc = (fc + 1) & 0x3FFFFFFF
            sent += 1
        while sent < budget:
            if self._active is None and not self._start_next():
                break
            a = self._active
            if a is None:
                break
            if a[2] == a[3]:
                if not self._report():
                    return sent
                continue
            fc = a[2]
            n = ring.frame_into(self.buf, fc, codec.WAVE_FLAG_RESENT)
            if n == 0 or n > payload:
                if a[5] == 0:
                    # Not resent yet: it counts with the older frames that are gone.
                    a[2] = (fc + 1) & 0x3FFFFFFF
                    a[4] = (a[4] + 1) % _SEQ_MOD
                else:
                    # The ring dropped frames from under the run (or this one no longer fits):
                    # one report for the run resent so far, and the rest of the request asked
                    # again first, so the frames still held are resent and only those really
                    # gone are reported as a gap (a report covering the whole request would tell
                    # the gateway that every frame after the run is never coming).
                    seq = ring.seq_of(fc)
                    self.requests.insert(0, (seq, a[1]))
                    a[1] = (seq - 1) % _SEQ_MOD
                    a[3] = fc
                continue
            if not self.link.notify(CHAR_WAVE, self._mv[:n]):
                return sent
            a[2] = (fc + 1) & 0x3FFFFFFF
            a[5] += 1
            self.frames_resent += 1
            sent += 1
        return sent

    def _start_next(self):
        if not self.requests:
            return False
        first, last = self.requests.pop(0)
        ring = self.ring
        span = (last - first) % _SEQ_MOD
        if span >= 0x80000000:
            span = -1  # last before first: an empty request, reported as such
        held = kdiff(ring.stamped_fc, ring.oldest_fc)
        oldest_seq = ring.seq_of(ring.oldest_fc)
        lo = (first - oldest_seq) % _SEQ_MOD
        if lo >= 0x80000000:
            lo -= _SEQ_MOD
        hi = lo + span  # inclusive, relative to the oldest frame held
        a = max(lo, 0)
        b = min(hi, held - 1)
        if a > b:
            # Nothing held in the range: the whole request is older than the ring (or newer).
            start = (ring.oldest_fc + a) & 0x3FFFFFFF
            self._active = [first, last, start, start, (last + 1) % _SEQ_MOD, 0]
            return True
        start = (ring.oldest_fc + a) & 0x3FFFFFFF
        end = (ring.oldest_fc + b + 1) & 0x3FFFFFFF
        self._active = [first, last, start, end, (oldest_seq + a) % _SEQ_MOD, 0]
        return True

    def _report(self):
        a = self._active
        if a is None:
            return True
        first, last, _, _, resent_first, count = a
        if count == 0:
            resent_first = (last + 1) % _SEQ_MOD
        data = codec.control_report_encode(self.ring.kind, first, last, resent_first, count)
        if not self.link.notify(CHAR_CONTROL, data):
            return False
        self.reports_sent += 1
        self._active = None
        return True

    def pending(self):
        """Frames waiting for live sending."""
        return kdiff(self.ring.stamped_fc, self.live_fc)

    def busy(self):
        """Whether resend work is queued or in progress."""
        return self._active is not None or bool(self.requests)
