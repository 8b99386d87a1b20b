"""The one timing rule of the benchmarks: the best of ``repeats`` runs after ``warmup`` unmeasured runs."""
from __future__ import annotations

import time


def best_of(repeats: int, fn, warmup: int = 1):
    """Run ``fn()`` ``warmup`` times untimed, then ``repeats`` times; the fastest run's seconds and the last result.

    The warm-up run pays for one-time costs (lazy imports, kernel selection, allocator growth) so that
    they count in no measurement; the minimum, not the mean, is the run least disturbed by other
    processes. Times come from ``time.perf_counter``.
    """
    if repeats < 1:
        raise ValueError(f"best_of needs at least one timed run, got repeats={repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result
