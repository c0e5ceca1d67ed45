"""Wall-clock timing that waits for the device: every `seconds` metric is measured here.

CUDA kernels run asynchronously; a clock read without synchronising measures their launch,
not their work.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch


def now(device: torch.device) -> float:
    """`time.perf_counter()` once `device` has finished the work queued on it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def best_of(work: Callable[[], object], repeats: int, device: torch.device) -> float:
    """The fastest of `repeats` timed calls of `work`, in seconds."""
    best = math.inf
    for _ in range(repeats):
        start = now(device)
        work()
        best = min(best, now(device) - start)
    return best
