"""`nabz bench fuzz`: every target reaches both its accepting and its rejecting branches, nothing
crashes, a crash would be caught and reported with a replay that reproduces it, and the command
prints its seed and a report a person or a CI job can read."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from nabz.fuzz import GROUP, Target, replay, run_fuzz
from nabz.fuzz_targets import TARGETS, targets

ROOT = Path(__file__).parents[2]
SEED = 20261125


def test_a_few_thousand_cases_of_every_target_crash_nothing_and_reach_every_outcome() -> None:
    report = run_fuzz(targets(), 3500, SEED)
    assert report["crashes"] == 0, report["crash_examples"]
    assert report["cases"] == 3500 and report["seed"] == SEED
    for name, t in report["targets"].items():
        # Both sides of each parser are exercised: some inputs accepted, several kinds refused.
        assert t["accepted"] > 0, name
        assert len(t["rejected"]) >= 2, (name, t["rejected"])
    reasons = report["rejected_by_reason"]
    for expected in ("ble/ble_decode", "serial/bad_line", "mqtt_reading/not_json", "mqtt_reading/schema",
                     "at/retryable", "config/config_error"):  # fmt: skip
        assert reasons.get(expected, 0) > 0, expected


def test_the_same_seed_gives_the_same_report_and_a_case_replays_to_its_outcome() -> None:
    a = run_fuzz(targets(["serial", "mqtt_reading"]), 300, 7)
    b = run_fuzz(targets(["serial", "mqtt_reading"]), 300, 7)
    assert a["targets"] == b["targets"]
    # A case in the middle of a group replays with the state its group had built up.
    again = replay(TARGETS["serial"], 7, GROUP + 5)
    assert again["error"] is None and again["outcome"]


def test_a_parser_that_crashes_is_reported_with_a_replay_that_reproduces_it() -> None:
    def run(_state: None, data: bytes) -> str:
        if data and data[0] == 0xFF:
            raise IndexError("a bounds bug")
        return "accepted"

    fragile = Target("fragile", "a parser with a bug", lambda rng: rng.randbytes(4), run)
    report = run_fuzz([fragile], 2000, SEED)
    assert 0 < report["crashes"] < 2000
    example = report["crash_examples"][0]
    assert example["error"] == "IndexError: a bounds bug"
    case = int(example["replay"].rsplit(" ", 1)[1])
    assert f"--seed {SEED} --target fragile --replay {case}" in example["replay"]
    again = replay(fragile, SEED, case)
    assert again["error"] is not None and "IndexError: a bounds bug" in again["error"]


def test_nabz_bench_fuzz_prints_its_seed_and_a_json_report() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nabz.cli", "bench", "fuzz", "--cases", "1400", "--seed", "11", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "seed 11" in out.stderr
    report = json.loads(out.stdout)
    assert report["cases"] == 1400 and report["crashes"] == 0
    assert set(report["targets"]) == set(TARGETS)
    assert sum(report["rejected_by_reason"].values()) + report["accepted"] == 1400
    replayed = subprocess.run(
        [sys.executable, "-m", "nabz.cli", "bench", "fuzz", "--seed", "11", "--target", "ble", "--replay", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert replayed.returncode == 0 and "outcome:" in replayed.stdout


def test_mutations_are_deterministic_for_a_seed() -> None:
    from nabz.fuzz import mutate

    data = bytes(range(40))
    assert mutate(random.Random(3), data) == mutate(random.Random(3), data)
    assert {mutate(random.Random(s), data) for s in range(50)} != {data}
