"""Hydra's basic sweeper without its second composition of every job.

Hydra loads sweepers only from the `hydra_plugins` namespace, hence this package; its config
`hydra/sweeper=planned` is stored by `gradkit.core.configs`. gradkit's
sweep callback (`gradkit.sweeps.callback.plan_jobs`) composes one job for every combination of
config-group choices before any job starts, which is what decides whether a job composes at
all; the basic sweeper would compose every job once more before launching it (~45 ms a job).
With the basic launcher, a job the plan composed is not composed again to run either: with
`make run`, one composition per experiment instead of three.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from gradkit.sweeps.hydra_compat import basic_launcher, basic_sweeper

BasicSweeper = basic_sweeper()  # the class of this execution of Hydra's plugin scan


class PlannedSweeper(BasicSweeper):
    """The basic sweeper; its jobs were checked when the sweep started."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        if isinstance(self.launcher, basic_launcher()):  # its jobs run in this process
            self.launcher.hydra_context = dataclasses.replace(
                hydra_context, config_loader=PlannedConfigs(hydra_context.config_loader))

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Nothing to do: `gradkit.sweeps.callback.plan_jobs` checked the sweep's jobs."""


class PlannedConfigs:
    """Hydra's config loader, except that a job the sweep's plan composed comes from the plan."""

    def __init__(self, loader: Any):
        self._loader = loader

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]
                          ) -> DictConfig:
        # imported here, not with the module: Hydra imports every plugin it finds
        from gradkit.sweeps.compositions import planned_config

        planned = planned_config(sweep_overrides)
        if planned is not None:
            return planned
        return self._loader.load_sweep_config(master_config, sweep_overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

