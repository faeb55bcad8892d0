"""`nabz bench soak` (being written: see tests/faults)."""

from __future__ import annotations

from typing import Any

__all__ = ["run_soak"]


def run_soak(*, minutes: float, patients: int, speed: float, seed: int) -> dict[str, Any]:
    raise SystemExit("nabz bench soak: not available yet")
