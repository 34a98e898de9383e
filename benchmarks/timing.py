"""Timing discipline: the first call (compilation, warm-up) timed apart, then repeats.

Every `run` callable must finish its work before returning (block_until_ready, or a CUDA
synchronize), so wall-clock readings cover the work and nothing else. `Bench`: a benchmark's clock,
log, time budget and failure policy (benchmarks.run, benchmarks.gpu_newcomer).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
import traceback
from typing import Callable, Optional


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
    return dict(
        median=work / timing.median_s,
        best=work / timing.min_s,
        first_call_s=timing.first_s,
        times_s=timing.times_s,
        work=work,
    )


def measure_interleaved(runs: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, Timing]:
    """`measure` for several variants of one program, their repeats taken in turn (A B A B ...), so a
    change in the machine's load between them reaches all alike."""
    first, times = {}, {name: [] for name in runs}
    for name, run in runs.items():
        start = time.perf_counter()
        run()
        first[name] = time.perf_counter() - start
        for _ in range(warmup - 1):
            run()
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: Timing(first[name], times[name]) for name in runs}


class Bench:
    """The run's clock, log, time budget and failure policy."""

    def __init__(self, results: dict, budget_s: Optional[float], strict: bool, after_each: Callable[[], None]):
        self.start, self.results, self.budget_s, self.strict = time.perf_counter(), results, budget_s, strict
        self.after_each = after_each

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.start:6.1f} s] {msg}", flush=True)

    def spent(self) -> bool:
        return self.budget_s is not None and time.perf_counter() - self.start > self.budget_s

    def skip(self, what: str, why: str) -> None:
        self.results["skipped"][what] = why
        self.log(f"skipped {what}: {why}")

    def attempt(self, what: str, fn: Callable, optional: bool = False):
        """fn() or, when it fails in a full run, None with the failure recorded."""
        if optional and self.spent():
            self.skip(what, f"time budget of {self.budget_s:.0f} s spent")
            return None
        try:
            return fn()
        except Exception as err:  # one variant must not cost the whole report
            if self.strict:
                raise
            self.results["failed"][what] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
            self.log(f"FAILED {what}: {self.results['failed'][what]}")
            traceback.print_exc()
            return None
        finally:
            self.after_each()
