"""A sweep's jobs, planned before any runs: which experiments it runs, every job checked.

Composition depends on the config-group choices (experiment=, tracking=, ...), so the plan
composes one job per distinct combination of group choices; every other job's values are
applied to a copy of its group's config (~4 ms), which checks their types.
"""

from __future__ import annotations

from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gradkit.core.configs import PLANNED_SWEEPER
from gradkit.core.errors import explain, one_line
from gradkit.core.validation import ConfigError
from gradkit.sweeps import compositions
from gradkit.sweeps.hydra_compat import BASIC_SWEEPER, split_arguments
from gradkit.tracking.store import MAX_PARAM_LENGTH, run_name


def _sweep_overrides(config: DictConfig) -> list[str]:
    """The sweeper's params followed by the command line's overrides, as the sweeper reads them."""
    params = config.hydra.sweeper.get("params") or {}
    return [f"{key}={value}" for key, value in params.items()] + list(config.hydra.overrides.task)


def grid(config: DictConfig) -> dict[str, str]:
    """The swept keys and their values, as a sweep's parent logs them: `grid.<key>` ->
    `0.001,0.01,0.1` (a sweep the sweeper samples, e.g. `interval(0.001,0.1)`, as written)."""
    swept = {}
    for override in OverridesParser.create().parse_overrides(_sweep_overrides(config)):
        if override.is_sweep_override():
            try:
                values = ",".join(override.sweep_string_iterator())
            except (HydraException, TypeError, ValueError):  # sampled: no values to list
                values = override.input_line.partition("=")[2]
            swept[f"grid.{override.key_or_group.lstrip('+~')}"] = values[:MAX_PARAM_LENGTH]
    return swept


def swept_experiments(config: DictConfig) -> list[str]:
    """The known experiment options a multirun will run, from its overrides and sweeper params.

    Unknown options are left out: the sweep's job plan refuses them before any job.
    """
    loader = GlobalHydra.instance().config_loader()
    available = loader.get_group_options(  # hydra.searchpath on the command line included
        "experiment", config_name="config", overrides=list(config.hydra.overrides.hydra))
    chosen = [OmegaConf.select(config, "hydra.runtime.choices.experiment", default=None)]
    for override in OverridesParser.create().parse_overrides(_sweep_overrides(config)):
        if override.key_or_group != "experiment":
            continue
        if isinstance(override.value(), Glob):
            chosen = override.value().filter(available)
        elif override.is_sweep_override():
            chosen = list(override.sweep_string_iterator())
        else:
            chosen = [override.value()]
    return [name for name in dict.fromkeys(chosen) if name in available]


def plan_jobs(config: DictConfig) -> list[dict[str, Any]] | None:
    """Every job of a basic-sweeper multirun, in Hydra's order, checked before any job runs.

    One job per distinct combination of config-group choices (experiment=, tracking=, ...)
    is composed; the others get their values applied to a copy of its config. An unknown
    option, a misspelt key or a value of the wrong type raises a ConfigError naming the job's
    overrides, and the sweep stops before anything is written. Other sweepers choose their
    jobs as they go: None.
    """
    if config.hydra.sweeper.get("_target_") not in (BASIC_SWEEPER, PLANNED_SWEEPER):
        return None
    loader = GlobalHydra.instance().config_loader()
    try:
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(
            _sweep_overrides(config))
    except HydraException as error:
        raise ConfigError(one_line(str(error))) from None
    groups = {o.key_or_group for o in parsed if loader.get_group_options(o.key_or_group)}
    composed: dict[tuple[str, ...], tuple[tuple[str, ...], DictConfig]] = {}
    jobs, configs = [], {}
    compositions.plan(groups, configs)  # nothing planned until every job composes
    for num, overrides in enumerate(job for batch in split_arguments(parsed, None)
                                    for job in batch):
        choices = tuple(o for o in overrides if o.split("=")[0].lstrip("+~") in groups)
        if choices not in composed:
            composed[choices] = tuple(overrides), _composed(config, overrides, num)
        else:
            _check_values(config, composed[choices], overrides, num)
        configs[tuple(overrides)] = composed[choices]
        job = composed[choices][1]
        jobs.append({"job": num, "experiment": job.hydra.runtime.choices.experiment,
                     "target": job.experiment.get("_target_", ""),
                     "overrides": run_name(list(overrides)), "command": list(overrides)})
    if not jobs:
        empty = [o.input_line for o in parsed
                 if o.is_sweep_override() and not list(o.sweep_string_iterator())]
        raise ConfigError(f"the sweep has no jobs: {' '.join(empty) or 'its overrides'} "
                          f"{'sweeps' if len(empty) == 1 else 'sweep'} no values")
    compositions.plan(groups, configs)
    return jobs


def _composed(config: DictConfig, overrides: list[str], num: int) -> DictConfig:
    """Job #`num`'s config as Hydra composes it, or a ConfigError naming the job."""
    try:
        return GlobalHydra.instance().config_loader().load_sweep_config(config, list(overrides))
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(f"job #{num} ({' '.join(overrides)}): "
                          f"{explain(error, list(overrides))}") from None


def _check_values(config: DictConfig, planned: tuple[tuple[str, ...], DictConfig],
                  overrides: list[str], num: int) -> None:
    """Job #`num`'s values fit their keys, checked on a copy of the `planned` config of its
    group. Hydra composes the job where it differs in more than values, and where a value
    does not fit, to say so as it would (a ConfigError naming the job)."""
    try:
        if compositions.with_values(*planned, overrides) is not None:
            return
    except OmegaConfBaseException:
        pass
    _composed(config, overrides, num)
