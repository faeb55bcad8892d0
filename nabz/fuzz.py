"""`nabz bench fuzz`: every parser of outside bytes fed mutated input, with seeds that replay.

Rules of this file:
- A *target* (nabz.fuzz_targets) takes one generated input and returns an outcome string:
  "accepted", or the reason it was rejected ("ble_decode:waveform: unknown stream kind N").
  Anything it raises is a crash, and so is a broken invariant (`Invariant`): e.g. a reading
  the gateway decoded that ingest then refuses as malformed, or the two ingest validators
  disagreeing.
- Inputs come from `random.Random` seeded by (run seed, target, case number): a crash is replayed
  with `nabz bench fuzz --seed S --target T --replay N`. Targets that keep state between inputs
  (the gateway's clock sync, the serial link) run in groups of `GROUP` cases; a replay runs the
  case's group from its start.
- Mutations are byte-level (bit flips, interesting bytes, insertions, deletions, splices,
  truncation) on top of valid seeds built with the real encoders, so most cases get past the
  first length check and reach the deeper branches.
"""

from __future__ import annotations

import random
import re
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Invariant", "Target", "mutate", "run_fuzz", "replay", "GROUP", "bucket"]

GROUP = 32  # cases per group for targets with state; a replay runs its group from the start
_MAX_EXAMPLES = 20
_INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF, ord("\n"), ord("\r"), ord(","), ord("*"), ord('"'))


class Invariant(Exception):
    """A target's output broke a rule it must keep (counted as a crash)."""


@dataclass
class Target:
    """A named parser under test: `make_case(rng)` builds an input, `run(state, case)` judges it."""

    name: str
    what: str  # one line for people: which parser, fed what
    make_case: Callable[[random.Random], Any]
    run: Callable[[Any, Any], str]
    new_state: Callable[[], Any] = lambda: None
    close_state: Callable[[Any], None] = lambda _s: None
    describe: Callable[[Any], str] = repr


@dataclass
class _Tally:
    cases: int = 0
    accepted: int = 0
    crashes: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


def bucket(text: str, limit: int = 72) -> str:
    """A rejection detail reduced to its kind: numbers and quoted values become N / '…'."""
    text = re.sub(r"0x[0-9a-fA-F]+|\d+(\.\d+)?", "N", text)
    text = re.sub(r"'[^']*'|\"[^\"]*\"|`[^`]*`", "'…'", text)
    return text[:limit]


def mutate(rng: random.Random, data: bytes, others: tuple[bytes, ...] = (), max_ops: int = 4) -> bytes:
    """0..max_ops random byte-level edits of `data` (splices take pieces of `others`)."""
    buf = bytearray(data)
    for _ in range(rng.randint(0, max_ops)):
        op = rng.randrange(8)
        n = len(buf)
        if op == 0 and n:  # flip one bit
            i = rng.randrange(n)
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # an interesting byte
            buf[rng.randrange(n)] = rng.choice(_INTERESTING)
        elif op == 2:  # insert random bytes
            i = rng.randint(0, n)
            buf[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and n:  # delete a range
            i = rng.randrange(n)
            del buf[i : i + rng.randint(1, 8)]
        elif op == 4 and n:  # duplicate a range
            i = rng.randrange(n)
            buf[i:i] = buf[i : i + rng.randint(1, 16)]
        elif op == 5 and n:  # truncate
            del buf[rng.randrange(n) :]
        elif op == 6 and others:  # splice with another valid input
            other = rng.choice(others)
            if other:
                i, j = rng.randint(0, n), rng.randrange(len(other))
                buf[i:] = other[j:]
        elif op == 7 and n:  # a random byte
            buf[rng.randrange(n)] = rng.randrange(256)
    return bytes(buf)


def _case_rng(seed: int, target: str, case: int) -> random.Random:
    return random.Random(f"{seed}:{target}:{case}")


def _run_one(t: Target, state: Any, case_input: Any) -> tuple[str | None, str | None]:
    """(outcome, None) or (None, the error for a crash)."""
    try:
        return t.run(state, case_input), None
    except Invariant as exc:
        return None, f"invariant: {exc}"
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _groups(total: int) -> Iterator[range]:
    for start in range(0, total, GROUP):
        yield range(start, min(total, start + GROUP))


def run_fuzz(
    targets: list[Target], cases: int, seed: int, *, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run `cases` inputs spread evenly over `targets`; the JSON report of `nabz bench fuzz`."""
    started = time.monotonic()
    per = [cases // len(targets) + (1 if i < cases % len(targets) else 0) for i in range(len(targets))]
    tallies: dict[str, _Tally] = {}
    examples: list[dict[str, Any]] = []
    for t, n in zip(targets, per, strict=True):
        tally = tallies[t.name] = _Tally()
        t0 = time.monotonic()
        for group in _groups(n):
            state = t.new_state()
            try:
                for i in group:
                    case_input = t.make_case(_case_rng(seed, t.name, i))
                    outcome, error = _run_one(t, state, case_input)
                    tally.cases += 1
                    if error is not None:
                        tally.crashes += 1
                        if len(examples) < _MAX_EXAMPLES:
                            examples.append(
                                {
                                    "target": t.name,
                                    "case": i,
                                    "error": error[:300],
                                    "input": t.describe(case_input)[:400],
                                    "replay": f"nabz bench fuzz --seed {seed} --target {t.name} --replay {i}",
                                }
                            )
                    elif outcome == "accepted":
                        tally.accepted += 1
                    else:
                        tally.rejected[outcome or "?"] += 1
            finally:
                t.close_state(state)
        if progress is not None:
            progress(f"{t.name}: {tally.cases} cases, {tally.crashes} crashes, {time.monotonic() - t0:.1f} s")
    rejections: Counter[str] = Counter()
    for name, tally in tallies.items():
        for reason, count in tally.rejected.items():
            rejections[f"{name}/{reason.split(':', 1)[0]}"] += count
    return {
        "seed": seed,
        "cases": sum(t.cases for t in tallies.values()),
        "crashes": sum(t.crashes for t in tallies.values()),
        "accepted": sum(t.accepted for t in tallies.values()),
        "rejected_by_reason": dict(sorted(rejections.items())),
        "targets": {
            name: {
                "what": next(t.what for t in targets if t.name == name),
                "cases": tally.cases,
                "accepted": tally.accepted,
                "crashes": tally.crashes,
                "rejected": dict(tally.rejected.most_common()),
            }
            for name, tally in tallies.items()
        },
        "crash_examples": examples,
        "seconds": round(time.monotonic() - started, 1),
        "replay": f"nabz bench fuzz --seed {seed} --target TARGET --replay CASE",
    }


def replay(target: Target, seed: int, case: int) -> dict[str, Any]:
    """Run one case again (after the cases before it in its group), with the full traceback."""
    start = case - case % GROUP
    state = target.new_state()
    try:
        for i in range(start, case):
            _run_one(target, state, target.make_case(_case_rng(seed, target.name, i)))
        case_input = target.make_case(_case_rng(seed, target.name, case))
        try:
            outcome: str | None = target.run(state, case_input)
            error = None
        except Exception:
            outcome, error = None, traceback.format_exc()
    finally:
        target.close_state(state)
    return {
        "target": target.name,
        "seed": seed,
        "case": case,
        "input": target.describe(case_input),
        "outcome": outcome,
        "error": error,
    }
