"""Timing discipline: the first call (compilation, warm-up) timed apart, then repeats.

Every `run` callable must finish its work before returning (block_until_ready, or a CUDA
synchronize), so wall-clock readings cover the work and nothing else.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable


@dataclasses.dataclass
class Timing:
    """Seconds of the first call (compile + warm-up) and of the repeats that follow."""

    first_s: float
    times_s: list[float]

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def min_s(self) -> float:
        return min(self.times_s)


def measure(run: Callable[[], object], repeats: int, warmup: int = 1) -> Timing:
    """Time `run` once cold, `warmup - 1` more times untimed, then `repeats` times."""
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return Timing(first, times)


def rates(timing: Timing, work: float) -> dict:
    """Work per second (median and best) plus the raw timings, as stored in the JSON report."""
    return dict(median=work / timing.median_s, best=work / timing.min_s, first_call_s=timing.first_s,
                times_s=timing.times_s, work=work)
