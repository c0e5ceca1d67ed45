"""A job's figures written as PNG by a renderer process, while the job goes on.

Drawing is most of what a figure costs (~0.2 s for the six-panel descent figure). The
figures are pickled to one renderer process per command (a fresh interpreter, started with
the first figures and kept for the command's life), which draws them on another core while
the job logs its result and, in a sweep that runs its jobs in this process, while the next
job computes (`gradkit.sweeps.closing`). Nothing is forked from a process holding threads.
A figure that cannot be pickled is drawn here instead.

The renderer ignores Ctrl-C and SIGTERM and ends when its input closes (this process ended,
however it ended), so a figure being drawn is always finished: no half-written PNG.
"""

from __future__ import annotations

import atexit
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import IO

from matplotlib.figure import Figure

from gradkit.core import interrupts
from gradkit.plotting import discard, save

ANSWER_TIMEOUT = 300.0  # seconds a batch of figures may take before the renderer is given up
_HEADER = struct.Struct("!Q")


class FigureError(RuntimeError):
    """A figure could not be written."""


class PNGs:
    """`figures` being written to `folder/<name>.png`; `wait()` until they are."""

    def __init__(self, figures: dict[str, Figure], folder: Path, dpi: int):
        self._request: tuple[_Renderer, int] | None = None  # who draws them, which request
        self._error: FigureError | None = None
        if not figures:
            return
        folder.mkdir(parents=True, exist_ok=True)
        try:
            payload = pickle.dumps(figures, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # an artist that cannot be pickled: draw here, at once
            try:
                _write(figures, folder, dpi)
            except FigureError as error:
                self._error = error
            return
        for fig in figures.values():
            discard(fig)
        renderer = _renderer()
        self._request = renderer, renderer.submit(payload, folder, dpi)

    def wait(self) -> None:
        """Until every PNG is written; a FigureError names the one that could not be.

        Ctrl-C and SIGTERM wait until the renderer has answered (a figure's drawing, well
        under a second), then take effect.
        """
        error, self._error = self._error, None
        if error is not None:
            raise error
        if self._request is not None:
            (renderer, request), self._request = self._request, None
            message = renderer.answer(request)
            if message:
                raise FigureError(message)


class _Renderer:
    """The renderer process and the requests it has not yet answered."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            bufsize=0,  # unbuffered: `select` sees every answer
            start_new_session=True)  # not in the terminal's process group: Ctrl-C is ours
        self.pid = os.getpid()  # the process it serves (a forked child needs its own)
        self.sent = 0
        self.answers: dict[int, str] = {}

    def submit(self, payload: bytes, folder: Path, dpi: int) -> int:
        self.sent += 1
        with interrupts.held():
            _write_frame(self.process.stdin, pickle.dumps((self.sent, payload, str(folder), dpi)))
        return self.sent

    def answer(self, request: int) -> str:
        """The renderer's error message for `request` ('' when its PNGs were written)."""
        with interrupts.held():
            while request not in self.answers:
                ready, _, _ = select.select([self.process.stdout], [], [], ANSWER_TIMEOUT)
                frame = _read_frame(self.process.stdout) if ready else None
                if frame is None:
                    self.stop()
                    return f"the figure renderer ended or stopped answering (request {request})"
                answered, message = pickle.loads(frame)
                self.answers[answered] = message
        return self.answers.pop(request)

    def stop(self) -> None:
        """Close its input (it ends when done) and wait for it."""
        global _running
        if _running is self:
            _running = None
        try:
            self.process.stdin.close()
            self.process.wait(timeout=ANSWER_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()


_running: _Renderer | None = None


def _renderer() -> _Renderer:
    """This process's renderer, started on first use (in a new process, e.g. a joblib worker,
    a renderer of its own)."""
    global _running
    if _running is None or _running.pid != os.getpid() or _running.process.poll() is not None:
        _running = _Renderer()
    return _running


@atexit.register
def _stop_renderer() -> None:
    if _running is not None and _running.pid == os.getpid():
        _running.stop()


def _write_frame(stream: IO[bytes], data: bytes) -> None:
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_frame(stream: IO[bytes]) -> bytes | None:
    """One length-prefixed frame; None at the end of the stream."""
    header = _read_exactly(stream, _HEADER.size)
    return None if header is None else _read_exactly(stream, _HEADER.unpack(header)[0])


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


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


def serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """The renderer: draw each request's figures, answer '' or the error, until the input
    ends. Signals are the requesting process's to handle."""
    for signum in interrupts.HANDLED:
        signal.signal(signum, signal.SIG_IGN)
    while (frame := _read_frame(requests)) is not None:
        request, payload, folder, dpi = pickle.loads(frame)
        try:
            _write(pickle.loads(payload), Path(folder), dpi)
            message = ""
        except FigureError as error:
            message = str(error)
        except Exception as error:  # figures that cannot be unpickled here
            message = f"figures for {folder} could not be drawn: {type(error).__name__}: {error}"
        _write_frame(answers, pickle.dumps((request, message)))


if __name__ == "__main__":
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints cannot corrupt answers
    serve(sys.stdin.buffer, answers)
