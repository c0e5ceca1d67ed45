"""Ctrl-C, SIGTERM (timeout, kill, SLURM) and SIGHUP (a closed terminal or ssh session)
become one exception that every run handles.

`install()` turns the first SIGINT, SIGTERM or SIGHUP into `Interrupted` (a KeyboardInterrupt, so
libraries that clean up on Ctrl-C do so for SIGTERM too); repeats are ignored while the
runs end. `exit_stopped()` then leaves with the status a shell gives for that signal.

Python swallows an exception raised where it cannot propagate (a garbage-collector callback,
a `__del__`: "Exception ignored in ..."). An `Interrupted` lost so is raised again: the
signal is sent again a moment later, and its handler runs at a point that can raise.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
REDELIVERY_DELAY = 0.01  # seconds before a swallowed interruption's signal is sent again


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop by a signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.ended: list[str] = []  # what was closed on the way out, for the final line


_received: list[int] = []
_holding = 0  # how many `held()` blocks are running
_pending: list[int] = []  # a signal received in one, raised when the outermost ends


def _raise_once(signum: int, frame) -> None:
    if _received:  # already stopping: let the runs end
        return
    _received.append(signum)
    if _holding:
        _pending.append(signum)
        return
    raise Interrupted(signum)


def _raise_again_if_lost(unraisable) -> None:
    """`sys.unraisablehook`: an `Interrupted` that Python swallowed is delivered again;
    anything else is reported as before."""
    if not isinstance(unraisable.exc_value, Interrupted):
        _reported_before(unraisable)
        return
    _received.clear()
    # sent from a thread a moment later: a handler run from here would be swallowed again
    again = threading.Timer(REDELIVERY_DELAY, os.kill,
                            (os.getpid(), unraisable.exc_value.signum))
    again.daemon = True
    again.start()


_reported_before = sys.unraisablehook


def install() -> None:
    """Handle SIGINT, SIGTERM and SIGHUP in this process (only the main thread can)."""
    global _reported_before
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in HANDLED:
        if signal.getsignal(signum) is not _raise_once:
            signal.signal(signum, _raise_once)
    if sys.unraisablehook is not _raise_again_if_lost:
        _reported_before, sys.unraisablehook = sys.unraisablehook, _raise_again_if_lost


def exit_stopped(stop: Interrupted, ended: Sequence[str] = ()) -> NoReturn:
    """Say in one line what stopped the command and what it closed on the way (`stop.ended`,
    then `ended`), and exit with status 128 + signum, as a shell reports a process killed by
    that signal. Exiting (rather than dying by the signal) lets parallel launchers clean up
    their workers."""
    lines = [f"gradkit: stopped by {stop}", *stop.ended, *ended]
    print("; ".join(lines), file=sys.stderr)
    raise SystemExit(128 + stop.signum)


def is_termination(code: object) -> bool:
    """Whether exit status `code` is one `exit_stopped` gives: the command was stopped."""
    return code in {128 + signum for signum in HANDLED}


@contextmanager
def held() -> Iterator[None]:
    """A signal that arrives while the block runs is raised when it ends, not in its middle:
    for work that must not be cut in half, such as ending a run or a frame on a pipe. The
    handler runs in the main thread whichever thread the signal reached, so this holds in a
    process with threads too."""
    global _holding
    _holding += 1
    try:
        yield
    finally:
        _holding -= 1
        if not _holding and _pending:
            raise Interrupted(_pending.pop())
