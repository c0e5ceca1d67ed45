"""Where gradkit's configs live and how the store tools compose them.

The configs ship inside the package as `gradkit.conf` (the checkout's top-level `conf/`),
found through Hydra's `pkg://` search path whether gradkit is installed from a wheel or
edited in place. A user's own config folders (`--config-dir DIR`) are searched as well.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from gradkit.core.parameters import register_builtins
from gradkit.core.validation import ConfigError

CONFIG_MODULE = "gradkit.conf"
SEARCH_PATH = f"pkg://{CONFIG_MODULE}"
PLANNED_SWEEPER = "hydra_plugins.gradkit_sweeper.PlannedSweeper"

# `hydra/sweeper=planned`, the basic sweeper's keys (the class loads only with a sweep)
ConfigStore.instance().store(group="hydra/sweeper", name="planned", provider="gradkit",
                             node={"_target_": PLANNED_SWEEPER, "max_batch_size": None,
                                   "params": None})


def searchpath_override(config_dirs: Sequence[str | Path]) -> list[str]:
    """The override that adds `config_dirs` to Hydra's search path (none for no folder)."""
    if not config_dirs:
        return []
    dirs = ",".join(f"'file://{Path(d).expanduser().resolve()}'" for d in config_dirs)
    return [f"hydra.searchpath=[{dirs}]"]


def compose(name: str, overrides: Sequence[str] = (), config_dirs: Sequence[str | Path] = (),
            hydra_node: bool = False) -> DictConfig:
    """Primary config `name` with `overrides`, `config_dirs` searched too (inside a running
    Hydra app, that app's search path). Hydra's own errors are raised as they are."""
    _check_folders(config_dirs)
    with _initialized():
        return hydra_compose(name, overrides=[*overrides, *searchpath_override(config_dirs)],
                             return_hydra_config=hydra_node)


def group_options(group: str, config_dirs: Sequence[str | Path] = ()) -> list[str]:
    """Every option of config group `group` (`experiment`, `sweep`, ...), `config_dirs`
    included, sorted."""
    _check_folders(config_dirs)
    with _initialized():
        loader = GlobalHydra.instance().config_loader()
        return sorted(loader.get_group_options(group, config_name="config",
                                               overrides=searchpath_override(config_dirs)))


def _check_folders(config_dirs: Sequence[str | Path]) -> None:
    """A ConfigError naming the first of `config_dirs` that is not a folder."""
    missing = [str(d) for d in config_dirs if not Path(d).expanduser().is_dir()]
    if missing:
        raise ConfigError(f"--config-dir {missing[0]} is not a folder")


@contextmanager
def _initialized() -> Iterator[None]:
    """Hydra initialised on gradkit's configs, unless a running app already is."""
    register_builtins()
    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        yield
