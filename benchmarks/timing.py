"""Timing helpers shared by the benchmark sections."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


def median_seconds(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


@dataclass(frozen=True)
class Timing:
    """Medians of one contender's runs: wall seconds, and this process's CPU seconds (which other
    processes on a shared machine do not inflate)."""

    wall: float
    cpu: float


def interleaved(fns: dict[str, Callable[[], object]], repeats: int,
                on_repeat: Callable[[int], None] | None = None) -> dict[str, Timing]:
    """Each function once to warm up, then ``repeats`` rounds that run every function in turn (so
    that a change in background load hits all of them alike); the medians per function. Each round
    starts one function later than the one before, so that none always follows the same one (what
    one leaves behind, caches or threads still winding down, measured 5-10% on whoever came next)."""
    for fn in fns.values():
        fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    keys = list(fns)
    for i in range(repeats):
        for k in keys[i % len(keys):] + keys[:i % len(keys)]:
            fn = fns[k]
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
        if on_repeat is not None:
            on_repeat(i + 1)
    return {k: Timing(statistics.median(wall[k]), statistics.median(cpu[k])) for k in fns}


def median_interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall seconds per function of ``interleaved`` runs."""
    return {k: t.wall for k, t in interleaved(fns, repeats).items()}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
