"""The configs a sweep's plan composed, handed to the jobs that run in the planning process.

Hydra composes every job from its YAML files (~50 ms). Jobs that share their config-group
choices and override the same keys differ only in those keys' values: such a job gets a copy
of the config the plan composed for its group, with its own values applied as Hydra applies a
plain `key=value` override (`OmegaConf.update`, ~13 ms). Any other job (a `+key`, `~key` or
`hydra.` override, or keys of its own) is left to Hydra's composition.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf, open_dict

Job = tuple[str, ...]  # a job's overrides, as the sweeper hands them to the launcher

_groups: set[str] = set()
_composed: dict[Job, tuple[Job, DictConfig]] = {}  # job -> (a job of its group, its config)


def plan(groups: set[str], jobs: dict[Job, tuple[Job, DictConfig]]) -> None:
    """Remember, for every planned job, a job with the same group choices and its config."""
    _groups.clear()
    _groups.update(groups)
    _composed.clear()
    _composed.update(jobs)


def planned_config(overrides: Sequence[str]) -> DictConfig | None:
    """The config of the planned job with `overrides`, handed out once; None when the job was
    not planned here or differs from its group's composition in more than values."""
    entry = _composed.pop(tuple(overrides), None)
    return None if entry is None else with_values(*entry, overrides)


def with_values(composed_with: Job, config: DictConfig, overrides: Sequence[str]
                ) -> DictConfig | None:
    """A copy of `config`, composed for the job `composed_with`, made the config of the job
    with `overrides`; None when the two jobs differ in more than values. A value of the
    wrong type for its key raises OmegaConf's error, as in Hydra's composition."""
    if composed_with == tuple(overrides):
        return copy.deepcopy(config)  # the plan's config stays as composed for the group's others
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(list(overrides))
    own = _values(parsed)
    theirs = _values(parser.parse_overrides(list(composed_with)))
    if own is None or theirs is None or set(own) != set(theirs):
        return None
    job = copy.deepcopy(config)
    for override in own.values():
        OmegaConf.update(job, override.key_or_group, override.value(), merge=True)
    task = [o for o in parsed if not o.is_hydra_override()]
    with open_dict(job.hydra):
        job.hydra.overrides.task = [o.input_line for o in task]
        job.hydra.job.override_dirname = _override_dirname(task, job.hydra.job.config)
    return job


def _override_dirname(task: list[Override], job_config: DictConfig) -> str:
    """`hydra.job.override_dirname` of a job with overrides `task`, as Hydra forms it."""
    form = job_config.override_dirname
    lines = sorted(o.input_line for o in task if o.key_or_group not in form.exclude_keys)
    return form.item_sep.join(lines).replace("=", form.kv_sep)


def _values(overrides: list[Override]) -> dict[str, Override] | None:
    """A job's plain value overrides by key; None if it has any other kind but group choices."""
    values = {}
    for override in overrides:
        if override.key_or_group in _groups:
            continue
        if override.type != OverrideType.CHANGE or override.is_hydra_override() \
                or override.package is not None:
            return None
        values[override.key_or_group] = override
    return values
