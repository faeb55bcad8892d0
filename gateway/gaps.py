"""Waveform sequence numbers: duplicates dropped, drop-outs turned into RESEND requests, and what
never comes back counted as a gap.

Rules of this file:
- Pure: frames in (stream, seq, resent flag, samples, `now`), verdicts out. No I/O, no clock.
- Sequence arithmetic is modulo 2**32 (the frame counter wraps, docs/contract.md).
- A frame is accepted at most once per stream and sequence number. One already seen (a radio
  duplicate, or a resent frame the gateway already has) is dropped here, before it is given a
  message id, so ingest never receives the same samples twice under two ids.
- A jump forward opens a gap [expected, seq - 1]: a RESEND request for it goes out at once and
  the gap waits `timeout_s` for the frames. What has not come back by then is unrecoverable:
  counted in frames and (estimated) samples, and reported - never hidden.
- The device answers each RESEND with a report (docs/contract.md, control characteristic): the
  frames it is resending, and by implication those it cannot (older than its buffer, or never
  produced). Those are given up at once, not after `timeout_s`; the ones on their way still wait.
- A frame far behind the expected one (more than `restart_window` frames) that is not a resend
  means the device restarted: the stream starts afresh, and the gaps still open are given up.
  So does a live frame ahead of it that is from a new boot (`_new_boot`): its device time
  (`t0_us`, when given) went back by more than a second (the device clock starts again at 0 at
  each boot), or more frames were skipped than the time between could hold (Nabz firmware starts
  each boot at a random sequence number, which lands far ahead or behind); without device times,
  more than `max_jump` frames ahead. Firmware that starts at 0 and reboots within
  `restart_window` frames of its start sends numbers the gateway has seen: it is told from
  duplicates by their other device times while the gateway remembers them (not after a restart
  of the gateway, when such frames are taken for duplicates).
- The state is small and serialisable (`dump`/`load`): the gateway stores it in the spool's
  database in the same transaction as the frames it describes. After a kill -9 nothing that was
  accepted is accepted again, and a gap that opened while the gateway was down is still asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

__all__ = ["GapTracker", "StreamState", "Verdict", "Expired"]

_MOD = 1 << 32
_HALF = 1 << 31
_MAX_RANGES = 64  # open gaps per stream; more means a link so bad that old gaps are given up
_BACK_TOLERANCE_US = 1_000_000  # device time going back by more than this: a new boot
_MIN_FRAME_US = 500  # no frame is shorter than one sample at 2 kHz
_NEXT_FRAME_MAX_US = 60_000_000  # nor is the next frame a minute later in device time


def _ahead(a: int, b: int) -> int:
    """How far `a` is ahead of `b` modulo 2**32 (in [0, 2**32))."""
    return (a - b) % _MOD


def _signed(offset: int) -> int:
    """An offset modulo 2**32 as a distance that may be negative (before the reference)."""
    return offset - _MOD if offset >= _HALF else offset


@dataclass
class _Range:
    first: int
    count: int
    deadline: float

    def has(self, seq: int) -> bool:
        return _ahead(seq, self.first) < self.count


@dataclass
class StreamState:
    """One waveform stream of one device."""

    next_seq: int | None = None
    samples_per_frame: int = 0
    missing: list[_Range] = field(default_factory=list)
    gap_events: int = 0
    resent_frames: int = 0
    gap_frames: int = 0
    gap_samples: int = 0
    duplicates: int = 0
    restarts: int = 0
    last_t0: int | None = None  # device time of the newest live frame, when the caller gives it
    # seq -> device time of the last `restart_window` live frames (not persisted): a frame behind
    # with the number of one of them but another time is a rebooted device's, not a duplicate
    recent: dict[int, int] = field(default_factory=dict, repr=False)
    prev_t0: int | None = field(
        default=None, repr=False
    )  # the last live frame's, sane or not (not persisted)

    def missing_frames(self) -> int:
        return sum(r.count for r in self.missing)

    def dump(self) -> str:
        d = {k: v for k, v in self.__dict__.items() if k not in ("missing", "recent", "prev_t0")}
        d["missing"] = [[r.first, r.count, r.deadline] for r in self.missing]
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def load(cls, text: str) -> StreamState:
        d = json.loads(text)
        missing = [_Range(int(a), int(b), float(c)) for a, b, c in d.pop("missing", [])]
        known = {f for f in cls.__dataclass_fields__ if f not in ("missing", "recent", "prev_t0")}
        return cls(
            **{k: v for k, v in d.items() if k in known}, missing=missing
        )  # another version's extra keys


@dataclass(frozen=True, slots=True)
class Verdict:
    accept: bool
    resend: tuple[int, int] | None = None  # (first, last) inclusive, to ask the device for
    reason: str = ""  # why a frame was dropped, or what it did ("gap", "recovered", "restart")


@dataclass(frozen=True, slots=True)
class Expired:
    """Frames of one stream that did not come back in time: an unrecoverable gap."""

    key: tuple[str, str]  # (device, stream)
    first_seq: int
    frames: int
    samples: int


@dataclass
class GapTracker:
    timeout_s: float = 10.0
    restart_window: int = 1024
    max_jump: int = 1 << 20
    clock_jump_s: float = 60.0
    streams: dict[tuple[str, str], StreamState] = field(default_factory=dict)
    changed: set[tuple[str, str]] = field(default_factory=set)  # streams to persist
    last_now: float | None = None

    def _tick(self, now: float) -> None:
        """`now` went back, or leapt ahead by more than `clock_jump_s` since the last call (the
        gateway steps every ~20 ms): the wall clock was stepped (a Pi without a real-time clock,
        set by NTP after boot) or the process stalled. Open gaps keep the time they had left, or
        a forward step would give up every one of them at once while their frames are coming."""
        if self.last_now is not None:
            d = now - self.last_now
            if d < 0 or d > self.clock_jump_s:
                for key, st in self.streams.items():
                    for r in st.missing:
                        r.deadline += d
                    if st.missing:
                        self.changed.add(key)
        self.last_now = now

    def observe(
        self, key: tuple[str, str], seq: int, resent: bool, samples: int, now: float, t0_us: int | None = None
    ) -> Verdict:
        """One waveform frame of stream `key` = (device, stream): keep it or drop it. `t0_us` is
        the frame's device time, if known (it tells a rebooted device from a drop-out)."""
        self._tick(now)
        st = self.streams.setdefault(key, StreamState())
        self.changed.add(key)
        st.samples_per_frame = samples if not resent else st.samples_per_frame or samples
        if resent:
            if self._fill(st, seq):
                st.resent_frames += 1
                return Verdict(True, reason="recovered")
            if st.next_seq is None:
                return Verdict(True, reason="resent, no history")
            st.duplicates += 1
            return Verdict(False, reason="duplicate (resent frame not missing)")
        if st.next_seq is None:
            st.next_seq = (seq + 1) % _MOD
            self._seen(st, seq, t0_us, newest=True)
            return Verdict(True)
        ahead = _ahead(seq, st.next_seq)
        if ahead < _HALF and self._new_boot(st, ahead, t0_us):
            return self._restart(st, seq, t0_us)
        if ahead == 0:
            st.next_seq = (seq + 1) % _MOD
            # The next frame minutes after the last in device time: a corrupt time, which must not
            # make the frames after it look like a new boot's; unless the frame before it agreed
            # (a sensor outage moves a stream's time on by minutes in one frame).
            sane = (
                t0_us is None
                or st.last_t0 is None
                or t0_us - st.last_t0 <= _NEXT_FRAME_MAX_US
                or (st.prev_t0 is not None and abs(t0_us - st.prev_t0) <= _NEXT_FRAME_MAX_US)
            )
            self._seen(st, seq, t0_us, newest=sane)
            return Verdict(True)
        if ahead < _HALF:  # a jump forward: frames [next_seq, seq - 1] are missing
            self._seen(st, seq, t0_us, newest=True)
            first = st.next_seq
            st.missing.append(_Range(first, ahead, now + self.timeout_s))
            st.gap_events += 1
            st.next_seq = (seq + 1) % _MOD
            while len(st.missing) > _MAX_RANGES:
                self._give_up(st, st.missing.pop(0))
            return Verdict(True, resend=(first, (seq - 1) % _MOD), reason="gap")
        if self._fill(st, seq):  # late, but missing: welcome
            self._seen(st, seq, t0_us, newest=False)
            return Verdict(True, reason="late")
        known = st.recent.get(seq) if t0_us is not None else None
        if _MOD - ahead <= self.restart_window and (known is None or known == t0_us):
            st.duplicates += 1
            return Verdict(False, reason="duplicate")
        return self._restart(st, seq, t0_us)

    def _new_boot(self, st: StreamState, ahead: int, t0_us: int | None) -> bool:
        """A live frame `ahead` frames past the expected one: from a new boot of the device rather
        than after a drop-out? With device times: if its time went back by more than a second
        (a wearable's clock starts again at 0; a sampler re-anchoring moves it back by a sample
        or two), or if more frames were skipped than the time between could hold (one sample a
        frame at 2 kHz at most). Without: if more than `max_jump` frames were skipped."""
        if t0_us is None or st.last_t0 is None:
            return ahead > self.max_jump
        span = t0_us - st.last_t0
        if span < -_BACK_TOLERANCE_US:
            return True
        return span >= 0 and ahead > span / _MIN_FRAME_US + 16

    def _seen(self, st: StreamState, seq: int, t0_us: int | None, newest: bool) -> None:
        if t0_us is None:
            return
        st.prev_t0 = t0_us
        if newest:
            st.last_t0 = t0_us
        st.recent[seq] = t0_us
        if len(st.recent) > self.restart_window:
            del st.recent[next(iter(st.recent))]

    def _restart(self, st: StreamState, seq: int, t0_us: int | None) -> Verdict:
        """The device restarted: the open gaps are given up (it cannot resend a previous boot's
        frames) and the stream starts afresh at `seq`."""
        for r in st.missing:
            self._give_up(st, r)
        st.missing.clear()
        st.restarts += 1
        st.next_seq = (seq + 1) % _MOD
        st.last_t0 = None
        st.recent.clear()
        self._seen(st, seq, t0_us, newest=True)
        return Verdict(True, reason="restart")

    def expire(self, now: float) -> list[Expired]:
        """Gaps whose time is up: counted as unrecoverable and forgotten."""
        self._tick(now)
        out: list[Expired] = []
        for key, st in self.streams.items():
            keep: list[_Range] = []
            for r in st.missing:
                if r.deadline <= now:
                    out.append(Expired(key, r.first, r.count, self._give_up(st, r)))
                    self.changed.add(key)
                else:
                    keep.append(r)
            st.missing = keep
        return out

    def report(
        self, key: tuple[str, str], first: int, last: int, resent_first: int, resent_count: int
    ) -> list[Expired]:
        """The device's answer to RESEND [first, last]: it resends `resent_count` frames from
        `resent_first`; every other missing frame of the request is not coming and is given up."""
        st = self.streams.get(key)
        if st is None or not st.missing:
            return []
        span = _ahead(last, first)
        if span >= _HALF:
            return []  # an empty request: nothing is settled by its report
        cs = _signed(_ahead(resent_first, first))
        ce = cs + resent_count - 1  # coming: [cs, ce], empty when resent_count is 0
        out: list[Expired] = []
        keep: list[_Range] = []
        for r in st.missing:
            start = _signed(_ahead(r.first, first))
            end = start + r.count - 1
            lo, hi = max(start, 0), min(end, span)  # the part of this gap the request covered
            if lo > hi:
                keep.append(r)
                continue
            gone = [(lo, min(hi, cs - 1)), (max(lo, ce + 1), hi)] if resent_count else [(lo, hi)]
            gone = [(a, b) for a, b in gone if a <= b]
            if not gone:
                keep.append(r)
                continue
            cut = [start - 1, *[x for a, b in gone for x in (a, b)], end + 1]
            for i in range(0, len(cut), 2):  # what lies between the parts given up stays open
                a, b = cut[i] + 1, cut[i + 1] - 1
                if a <= b:
                    keep.append(_Range((first + a) % _MOD, b - a + 1, r.deadline))
            for a, b in gone:
                lost = _Range((first + a) % _MOD, b - a + 1, r.deadline)
                out.append(Expired(key, lost.first, lost.count, self._give_up(st, lost)))
        if out:
            st.missing = keep
            self.changed.add(key)
        return out

    def pending(self) -> list[tuple[tuple[str, str], int, int]]:
        """Every open gap as (key, first, last): what to ask for again after a reconnection."""
        return [
            (key, r.first, (r.first + r.count - 1) % _MOD)
            for key, st in self.streams.items()
            for r in st.missing
        ]

    def totals(self, device: str) -> StreamState:
        """All-time counters of a device, summed over its streams."""
        total = StreamState()
        for (dev, _), st in self.streams.items():
            if dev == device:
                total.gap_events += st.gap_events
                total.resent_frames += st.resent_frames
                total.gap_frames += st.gap_frames
                total.gap_samples += st.gap_samples
                total.duplicates += st.duplicates
                total.restarts += st.restarts
        return total

    def take_changed(self) -> dict[tuple[str, str], str]:
        """Serialised state of the streams changed since the last call (to persist)."""
        out = {key: self.streams[key].dump() for key in self.changed}
        self.changed.clear()
        return out

    def load(self, key: tuple[str, str], text: str) -> None:
        self.streams[key] = StreamState.load(text)

    # --- internals -----------------------------------------------------------------------------
    @staticmethod
    def _fill(st: StreamState, seq: int) -> bool:
        for i, r in enumerate(st.missing):
            if not r.has(seq):
                continue
            k = _ahead(seq, r.first)
            parts = [_Range(r.first, k, r.deadline), _Range((seq + 1) % _MOD, r.count - k - 1, r.deadline)]
            st.missing[i : i + 1] = [p for p in parts if p.count > 0]
            return True
        return False

    @staticmethod
    def _give_up(st: StreamState, r: _Range) -> int:
        samples = r.count * st.samples_per_frame
        st.gap_frames += r.count
        st.gap_samples += samples
        return samples
