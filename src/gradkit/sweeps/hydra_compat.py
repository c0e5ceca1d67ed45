"""The one place that uses Hydra's private API: its basic sweeper and launcher classes, and
a failed job's exception as its JobReturn keeps it.

The planned sweeper (`hydra_plugins.gradkit_sweeper`) is Hydra's basic sweeper without its
second composition of every job, and the sweep's plan splits a sweep into jobs exactly as
that sweeper does; neither class is public. The Hydra version is checked, so an upgrade
fails here in one line, not deep in a sweep.

Hydra's plugin scan executes its core plugin modules again, making new classes, so the
classes are looked up when asked for, never bound at import.
"""

from __future__ import annotations

import importlib
from importlib.metadata import version
from typing import Any

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus

TESTED_HYDRA = "1.3."  # hydra-core releases whose private classes below are known
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"

if not version("hydra-core").startswith(TESTED_HYDRA):
    raise ImportError(f"gradkit's sweeps need hydra-core {TESTED_HYDRA}x, not "
                      f"{version('hydra-core')}: pip install 'hydra-core>=1.3.2,<1.4'")


def _current(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def basic_sweeper() -> type:
    """Hydra's BasicSweeper class, as Hydra's plugins now see it."""
    return _current(BASIC_SWEEPER)


def basic_launcher() -> type:
    """Hydra's BasicLauncher class, as Hydra's plugins now see it."""
    return _current(BASIC_LAUNCHER)


def split_arguments(overrides: list[Any], max_batch_size: int | None) -> list[list[list[str]]]:
    """A sweep's parsed overrides as batches of jobs, as the basic sweeper splits them."""
    return basic_sweeper().split_arguments(overrides, max_batch_size)


def job_error(job_return: JobReturn) -> BaseException | None:
    """A finished job's exception (None if it completed), read without the line Hydra's
    public `return_value` prints each time it is read (`Error executing job with ...`)."""
    return None if job_return.status == JobStatus.COMPLETED else job_return._return_value


def register_sweeper() -> None:
    """Make the planned sweeper known to Hydra, also where Hydra's plugin scan cannot list
    it (an editable install's import hook). Hydra's scan executes its basic sweeper's module
    again, making a new class, so the planned sweeper is (re)made on top of that one."""
    plugins = Plugins.instance()  # scans the installed plugins, once a process
    import hydra_plugins.gradkit_sweeper as planned

    if not issubclass(planned.PlannedSweeper, basic_sweeper()):
        importlib.reload(planned)
    plugins.register(planned.PlannedSweeper)
