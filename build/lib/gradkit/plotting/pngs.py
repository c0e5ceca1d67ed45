"""A job's figures written as PNG by a forked child, while the job goes on.

Drawing is most of what a figure costs (~0.2 s for the six-panel descent figure). A child
forked with the figures in memory draws them on another core while the job logs its result,
and, in a sweep that runs its jobs in this process, while the next job computes (see
`gradkit.sweeps.closing`). Where there is no fork (or it is unsafe: macOS, Windows), the figures are
drawn in this process.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from matplotlib.figure import Figure

from gradkit.core.interrupts import HANDLED
from gradkit.plotting import discard, save

FORK = sys.platform.startswith("linux")


class FigureError(RuntimeError):
    """A figure could not be written."""


class PNGs:
    """`figures` being written to `folder/<name>.png`; `wait()` until they are."""

    def __init__(self, figures: dict[str, Figure], folder: Path, dpi: int):
        self._child: tuple[int, int] | None = None  # (pid, read end of its error pipe)
        self._error: FigureError | None = None
        if not figures:
            return
        folder.mkdir(parents=True, exist_ok=True)
        if not FORK:
            try:
                _write(figures, folder, dpi)
            except FigureError as error:
                self._error = error
            return
        read, write = os.pipe()
        # no Ctrl-C or SIGTERM until the child ignores them and this object can wait for it
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        try:
            pid = os.fork()
            if pid == 0:  # the child: write, report an error on the pipe, leave, no cleanup
                os.close(read)
                _child(figures, folder, dpi, write, mask)
            os.close(write)
            self._child = pid, read
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for fig in figures.values():
            discard(fig)

    def wait(self) -> None:
        """Until every PNG is written; a FigureError names the one that could not be.

        The child ignores Ctrl-C and SIGTERM, so an interrupted job still waits for it
        (a figure's drawing, well under a second): no half-written PNG is left behind.
        """
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if self._child is None:
            return
        pid, read = self._child
        self._child = None
        try:
            _, status = os.waitpid(pid, 0)
        except BaseException:
            os.waitpid(pid, 0)
            raise
        finally:
            with os.fdopen(read, "rb") as pipe:
                error = pipe.read().decode(errors="replace")
        if error or status:
            code = os.waitstatus_to_exitcode(status)
            raise FigureError(error or f"the figure writer ended with status {code}")


def _write(figures: dict[str, Figure], folder: Path, dpi: int) -> None:
    """Write every figure that can be; a FigureError names those that could not."""
    failed = []
    for name, fig in figures.items():
        try:
            save(fig, folder / f"{name}.png", dpi)
        except Exception as error:
            discard(fig)
            reason = " ".join(str(error).split())  # matplotlib's parse errors span lines
            failed.append(f"figure {folder / name}.png could not be written: "
                          f"{type(error).__name__}: {reason}")
    if failed:
        raise FigureError("; ".join(failed))


def _child(figures: dict[str, Figure], folder: Path, dpi: int, pipe: int,
           mask: set[signal.Signals]) -> None:
    """Write the PNGs and exit: never return into the parent's code. Signals are the
    parent's to handle: it waits for this child."""
    code = 1
    try:
        for signum in HANDLED:
            signal.signal(signum, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        _write(figures, folder, dpi)
        code = 0
    except BaseException as error:
        os.write(pipe, str(error).encode()[:4000])
    finally:
        os._exit(code)
