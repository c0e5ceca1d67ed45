"""Runs closed after the next job has computed: meanwhile their figures are drawn.

In a sweep whose jobs run in this process (the basic launcher), a job returns its objective
as soon as its result is logged, and its figures are drawn by a child process
(`gradkit.plotting.pngs`). Its run is closed (the PNGs waited for, the job's folder logged, the run
ended) once the next job has computed its result, or when the sweep ends, fails or is
interrupted: a sweep never leaves a run RUNNING, nor a run FINISHED without its files.
"""

from __future__ import annotations

import logging
from collections.abc import Generator

log = logging.getLogger("gradkit")

# A job up to its objective and its run's name; resumed, it closes its run.
Job = Generator[tuple[float, str], None, None]

_open: list[tuple[Job, str]] = []
_failures: list[str] = []


def close(job: Job) -> None:
    """Close `job`'s run now; its errors are raised."""
    next(job, None)


def defer(job: Job, run: str) -> None:
    """Close `job`'s run (named `run` in messages) later: with the next job, or when the
    sweep ends."""
    _open.append((job, run))


def close_open(but: Job | None = None) -> None:
    """Close every deferred run but `but`'s. One that cannot be closed is ended FAILED, said
    in one line now (another job may be running) and kept for `take_failures`; an
    interruption is raised at once, and the runs still open are closed by the next call
    (the sweep's end)."""
    for job, run in [entry for entry in _open if entry[0] is not but]:
        _open.remove((job, run))
        try:
            close(job)
        except Exception as error:
            _failures.append(f"{run} could not be closed: {error}")
            log.error(_failures[-1])


def take_failures() -> list[str]:
    """What could not be closed since the last call, one line each (the command fails)."""
    failures = list(_failures)
    _failures.clear()
    return failures
