"""What the benchmarks share: the checkout they live in, where results go, a best-of timer."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the checkout bench/ lives in
RESULTS = PROJECT_ROOT / "bench" / "results"


def best_of(call: Callable[[], object], repeats: int = 3) -> float:
    """The best wall time of `repeats` calls, after one warm-up call."""
    call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best
