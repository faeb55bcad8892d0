"""How fast the virtual wearables run: `python -m hardware.bench --patients 1000 --seconds 10`.

Builds a fleet (two wearables per patient), advances every device one simulated second at a
time, and prints the CPU time each simulated second cost. A load test needs this well under 1 s
for the fleet it simulates, or the simulator, not the system under test, is the bottleneck.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

from hardware.home import VirtualHome

__all__ = ["measure", "main"]


def measure(patients: int, seconds: int, seed: int = 0, step_s: float = 1.0) -> dict[str, float]:
    """CPU and wall seconds per simulated second for `patients` patients (after a warm-up step).

    Each simulated second is `1 / step_s` calls of advance(step_s) on every device, as a gateway
    polling its virtual transport that often would make.
    """
    home = VirtualHome.create(patients, seed)
    home.advance(step_s)  # warm-up: first frames, caches
    per_s = max(1, round(1.0 / step_s))  # advance() calls per simulated second
    cpu: list[float] = []
    wall: list[float] = []
    notifications = 0
    readings0 = home.readings_generated
    for _ in range(seconds):
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(per_s):
            notifications += len(home.advance(step_s))
        sim_s = per_s * step_s
        cpu.append((time.process_time() - c0) / sim_s)
        wall.append((time.perf_counter() - w0) / sim_s)
    sim_total = seconds * per_s * step_s
    return {
        "patients": float(patients),
        "devices": float(len(home)),
        "cpu_s_per_sim_s_mean": statistics.fmean(cpu),
        "cpu_s_per_sim_s_max": max(cpu),
        "wall_s_per_sim_s_mean": statistics.fmean(wall),
        "notifications_per_sim_s": notifications / sim_total,
        "readings_per_sim_s": (home.readings_generated - readings0) / sim_total,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--step", type=float, default=1.0, help="simulated seconds per advance() call")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    r = measure(args.patients, args.seconds, args.seed, args.step)
    print(
        f"{int(r['patients'])} patients ({int(r['devices'])} devices), advance({args.step:g}) steps: "
        f"CPU {r['cpu_s_per_sim_s_mean']:.3f} s per simulated second (mean of {args.seconds}; max "
        f"{r['cpu_s_per_sim_s_max']:.3f}), wall {r['wall_s_per_sim_s_mean']:.3f} s; "
        f"{r['notifications_per_sim_s']:.0f} notifications and {r['readings_per_sim_s']:.0f} readings "
        "per simulated second"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
