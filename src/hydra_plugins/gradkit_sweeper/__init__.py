"""Hydra's basic sweeper without its second composition of every job.

Hydra loads sweepers only from the `hydra_plugins` namespace, hence this package. gradkit's
sweep callback (`gradkit.sweeps.plan_jobs`) composes one job for every combination of
config-group choices before any job starts, which is what decides whether a job composes at
all; the basic sweeper would compose every job once more before launching it (~45 ms a job),
and the launcher composes it again to run it.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


class PlannedSweeper(BasicSweeper):
    """The basic sweeper; its jobs were checked when the sweep started."""

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Nothing to do: `gradkit.sweeps.plan_jobs` checked the sweep's jobs."""
