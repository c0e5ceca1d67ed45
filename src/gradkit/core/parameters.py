"""An experiment's parameters, declared once: the typed keyword arguments of its constructor.

`config_class` turns them into a structured config (a dataclass) that Hydra composes and
type-checks, so `experiment.learning_rate=abc` fails at composition, naming the key, and
every default lives in the class alone. The built-in experiments are stored in Hydra's
ConfigStore as `gradkit_schema_<name>`; `conf/experiment/<name>.yaml` starts from it.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import pkgutil
import types
import typing
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

# The built-ins' generated configs are stored at the ConfigStore's root, under this prefix:
# a group would be listed among the config groups of `--help`.
SCHEMA_PREFIX = "gradkit_schema_"
PLAIN = (bool, int, float, str)


def omegaconf_type(hint: Any) -> Any:
    """`hint` as a type OmegaConf checks (Optional, List and Dict of those); Any otherwise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in PLAIN:
        return hint
    if origin in (typing.Union, types.UnionType):
        kept = [a for a in args if a is not type(None)]
        inner = omegaconf_type(kept[0]) if len(kept) == 1 else Any
        return Optional[inner] if type(None) in args and inner is not Any else Any  # noqa: UP045
    if origin in (list, tuple, typing.Sequence) and args:  # nested lists: OmegaConf would not
        return list[args[0] if args[0] in PLAIN else Any]  # convert their ints to floats
    if origin is dict:
        return dict[str, Any]
    return Any


def config_class(cls: type) -> type:
    """The structured config of experiment class `cls`: `_target_` and every parameter, with
    its type and its default (tuples become lists)."""
    hints = typing.get_type_hints(cls.__init__)
    fields: list[tuple[str, Any, Any]] = [
        ("_target_", str, f"{cls.__module__}.{cls.__qualname__}")]
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.default is parameter.empty:
            raise TypeError(f"{cls.__qualname__}: parameter {name} has no default")
        default = parameter.default
        if isinstance(default, tuple):
            default = [list(item) if isinstance(item, tuple) else item for item in default]
        value = (dataclasses.field(default_factory=lambda d=default: copy.deepcopy(d))
                 if isinstance(default, list | dict) else default)
        fields.append((name, omegaconf_type(hints.get(name, Any)), value))
    return dataclasses.make_dataclass(f"{cls.__name__}Config", fields)


def builtin_experiments() -> dict[str, type]:
    """Every experiment class of `gradkit.experiments`, by its module's name."""
    from gradkit import experiments
    from gradkit.core.experiment import Experiment

    found = {}
    for module_info in pkgutil.iter_modules(experiments.__path__):
        module = importlib.import_module(f"{experiments.__name__}.{module_info.name}")
        classes = [c for c in vars(module).values() if inspect.isclass(c)
                   and issubclass(c, Experiment) and c.__module__ == module.__name__]
        if len(classes) == 1:
            found[module_info.name] = classes[0]
    return found


def register_builtins() -> None:
    """Store the built-in experiments' configs in Hydra's ConfigStore, once a process."""
    store = ConfigStore.instance()
    if any(key.startswith(SCHEMA_PREFIX) for key in store.repo):
        return
    for name, cls in builtin_experiments().items():
        store.store(name=f"{SCHEMA_PREFIX}{name}", node=config_class(cls), provider="gradkit")
