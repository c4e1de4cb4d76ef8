"""Side-by-side timing for the benchmarks: shared machines are noisy, so the contenders run in
alternating order within each round, and a busy moment hits all of them alike."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence


def interleaved_medians(fns: Sequence[Callable[[], object]], repeats: int) -> list[float]:
    """Median wall time in seconds of each of ``fns`` over ``repeats`` rounds; every other round
    runs them in reverse order."""
    times: list[list[float]] = [[] for _ in fns]
    runs = list(zip(fns, times))
    for i in range(repeats):
        for fn, acc in runs if i % 2 == 0 else runs[::-1]:
            start = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]
