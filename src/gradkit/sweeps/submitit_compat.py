"""submitit's local launcher (`hydra/launcher=submitit_local`) stopped with the command: the
only code that touches submitit's internals, checked against the versions it was written for.

submitit starts each local job as a controller process meant to outlive the command, in the
terminal's process group: Ctrl-C makes every controller print a traceback, and SIGTERM to
gradkit alone (`timeout`, `kill`) leaves the jobs running, so runs reported KILLED would later
turn FINISHED. Here each controller starts in a session of its own, so signals reach gradkit
only, and `stop_controllers()` sends SIGTERM to those still running: submitit forwards it to
the job, whose run ends KILLED.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

SUPPORTED = ("1.5.",)  # submitit versions whose local module starts controllers this way
STOP_GRACE = 15.0  # seconds a stopped job has to end its run before it is killed

_controllers: list[subprocess.Popen] = []


class _Sessions:
    """Stands for `subprocess` in submitit's local module: a controller started by `Popen`
    gets a session of its own and is remembered; everything else is `subprocess`'s."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args: Any, **kwargs: Any) -> subprocess.Popen:  # named as subprocess names it
        process = subprocess.Popen(*args, start_new_session=True, **kwargs)
        _controllers.append(process)
        return process


def isolate_controllers() -> bool:
    """Start submitit's local controllers in sessions of their own, from now on in this
    process; False (and nothing changed) for a submitit this was not written for."""
    import submitit
    from submitit.local import local

    if not submitit.__version__.startswith(SUPPORTED):
        return False
    if not isinstance(local.subprocess, _Sessions):
        local.subprocess = _Sessions()
    return True


def stop_controllers(grace: float = STOP_GRACE) -> None:
    """SIGTERM to every controller still running (its job ends its run KILLED), then, after
    `grace` seconds, SIGKILL to what is left of it and its job."""
    running = [p for p in _controllers if p.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    for process in running:
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its session: the controller and its job
            process.wait()
    _controllers[:] = [p for p in _controllers if p.poll() is None]
