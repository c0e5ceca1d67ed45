"""Progress of long work: a tqdm bar on a terminal, a log line now and then elsewhere (CI, log
files, parallel sweeps), nothing for work that ends within a few seconds.

The thresholds are read when a loop starts, so a test (or a user) can change them.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO, TypeVar

from tqdm import tqdm

DELAY = 2.0  # seconds of work before a bar appears
INTERVAL = 5.0  # seconds at least between two log lines (and before the first)
FRACTION = 0.1  # of the total at least between two log lines, when the total is known

log = logging.getLogger("gradkit")
T = TypeVar("T")


def duration(seconds: float) -> str:
    """`45 s`, `1 min 20 s`, `2 h 5 min`."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def left(elapsed: float, done: int, total: int | None) -> str:
    """`, about 1 min 20 s left` at the pace of the `done` so far; empty without a pace or a
    total."""
    if not done or not total:
        return ""
    return f", about {duration(elapsed / done * (total - done))} left"


def on_terminal(stream: TextIO) -> bool:
    """Whether a bar may be drawn on `stream`: a terminal, from the main process (the workers
    of parallel jobs share one terminal: they log lines)."""
    return stream.isatty() and multiprocessing.parent_process() is None


def track(iterable: Iterable[T], total: int | None, what: str, unit: str = "steps",
          stream: TextIO | None = None,
          clock: Callable[[], float] = time.monotonic) -> Iterator[T]:
    """The items of `iterable`, with the progress of the loop over them shown as `what`: a
    bar on `stream` (stderr) after DELAY seconds if it is a terminal, else `logged` lines."""
    stream = sys.stderr if stream is None else stream
    if not on_terminal(stream):
        return logged(iterable, total, what, unit, clock)
    return iter(tqdm(iterable, total=total, desc=what, unit=f" {unit}", file=stream,
                     delay=DELAY, leave=False, dynamic_ncols=True))


def logged(iterable: Iterable[T], total: int | None, what: str, unit: str,
           clock: Callable[[], float]) -> Iterator[T]:
    """The items of `iterable`, and a line on the `gradkit` logger each time both INTERVAL
    seconds and FRACTION of `total` have passed since the last (the start); a last line at
    the end if any was logged. The clock is read only once the fraction is reached."""
    start = last = clock()
    stride = max(1, math.ceil(FRACTION * total)) if total else 1
    due, count, shown = stride, 0, False
    try:
        for item in iterable:
            if count >= due and (now := clock()) - last >= INTERVAL:
                log.info("%s: %s", what, status(count, total, unit, now - start))
                due, last, shown = count + stride, now, True
            count += 1
            yield item
    finally:
        if shown:
            log.info("%s: %s", what, status(count, total, unit, clock() - start, final=True))


def status(count: int, total: int | None, unit: str, elapsed: float,
           final: bool = False) -> str:
    """`40 of 100 steps (40%), 12 s so far, about 18 s left`; at the end `100 of 100 steps
    in 30 s`."""
    done = f"{count} of {total} {unit}" if total else f"{count} {unit}"
    if final:
        return f"{done} in {duration(elapsed)}"
    share = f" ({count / total:.0%})" if total else ""
    return f"{done}{share}, {duration(elapsed)} so far{left(elapsed, count, total)}"


def job_line(number: int, jobs: int | None, label: str, elapsed: float, done: int) -> str:
    """`job 4 of 18 (gradient_descent learning_rate=0.01), about 1 min 20 s left`: the time
    left at the pace of the `done` jobs that ended in `elapsed` seconds (none before one
    has)."""
    of = f" of {jobs}" if jobs else ""
    return f"job {number}{of} ({label}){left(elapsed, done, jobs)}"
