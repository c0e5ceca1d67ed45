"""What the benchmarks share: the checkout they live in, where results go, a best-of timer."""

from __future__ import annotations

import json
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


def save_results(name: str, results: dict) -> None:
    """`results` as bench/results/<name>.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2))
