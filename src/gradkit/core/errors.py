"""Errors said in one line: what is wrong, the key, and what is allowed instead.

Hydra's own composition messages span several lines and advise `+key=...` for a misspelt
key, which then fails differently; these functions turn them into one line that names the
experiment's real parameters.
"""

from __future__ import annotations

import difflib
import re

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

from gradkit.core import configs

MISSPELT = re.compile(r"Could not override '((?:experiment|model|data|loss)\.[\w.]+)'")
COMPONENTS = ("model", "data", "loss")
MERGING = re.compile(r"Error merging override (\S+?)=(.*)")
NOT_CONVERTED = re.compile(r"could not be converted to (\w+)")
WANTED = {"Float": "a number", "Integer": "an integer", "Boolean": "true or false",
          "String": "a string"}
UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")
GLOBAL_MISSPELT = re.compile(r"Could not override '((?!experiment\.|model\.|data\.|loss\.)"
                             r"\w+(?:\.\w+)*)'\.")
NO_SWEEPER = re.compile(r"Could not find 'hydra/sweeper/(\w+)'")
EXTRAS = {"optuna": ("search", "hydra-optuna-sweeper")}  # plugin: (gradkit extra, package)


def not_a_parameter(key: str, experiment: str, parameters: list[str]) -> str:
    """`experiment.pont is not a parameter of jacobian; its parameters: point`."""
    return (f"{key} is not a parameter of {experiment}; its parameters: "
            f"{', '.join(parameters) or 'none'}")


def one_line(message: str) -> str:
    """Hydra's multi-line message as one line, without its `+key` advice or search path."""
    lines = [line.strip() for line in message.split("Config search path")[0].splitlines()
             if line.strip() and not line.strip().startswith("To append to your config")]
    listed = next((i for i, line in enumerate(lines) if line.startswith("Available options")),
                  None)
    if listed is None:
        return " ".join(lines)
    return f"{' '.join(lines[:listed])} Available: {', '.join(lines[listed + 1:])}"


def explain(error: Exception, overrides: list[str]) -> str:
    """One line for an error that stopped the command (`overrides`: its command line)."""
    merging = MERGING.match(str(error))
    if merging and error.__cause__ is not None:  # a value of the wrong type for its key
        converted = NOT_CONVERTED.search(str(error.__cause__))
        wanted = (WANTED.get(converted[1], converted[1]) if converted
                  else "a list" if "ListConfig" in str(error.__cause__) else None)
        if wanted:
            return f"{merging[1]}={merging[2]} must be {wanted}"
    if GLOBAL_MISSPELT.search(str(error)):
        return _not_global(GLOBAL_MISSPELT.search(str(error))[1])
    no_sweeper = NO_SWEEPER.search(str(error))
    if no_sweeper and no_sweeper[1] in EXTRAS:
        extra, package = EXTRAS[no_sweeper[1]]
        return (f"the {no_sweeper[1]} sweeper is not installed: pip install 'gradkit[{extra}]' "
                f"(it brings {package})")
    if isinstance(error, CompactHydraException) and not MISSPELT.search(str(error)):
        return one_line(str(error))
    misspelt = MISSPELT.search(str(error))
    if misspelt:
        return _misspelt(misspelt[1], overrides) or one_line(str(error))
    return f"{type(error).__name__}: {one_line(str(error))} (HYDRA_FULL_ERROR=1 for a traceback)"


def _not_global(key: str) -> str:
    """`seeed is not a global key (did you mean seed?); the global keys: ...`, or for a
    nested one `plotting.dp is not a key of plotting; its keys: dpi, figures`."""
    parent, _, name = key.rpartition(".")
    node = OmegaConf.select(_compose([]), parent) if parent else _compose([])
    if not isinstance(node, DictConfig):
        return f"{key}: {parent} has no keys"
    keys = [k for k in node if k != "hydra"]
    close = difflib.get_close_matches(name, keys, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    if parent:
        return f"{key} is not a key of {parent}{hint}; its keys: {', '.join(keys)}"
    return (f"{key} is not a global key{hint}; the global keys: {', '.join(keys)} "
            "(an experiment's parameters are experiment.NAME)")


def _misspelt(key: str, overrides: list[str]) -> str | None:
    """Name the parameters of each experiment (or model, data, loss) the command chose that
    lacks `key`."""
    group = key.split(".")[0]
    if group in COMPONENTS:
        return _component_key(key, overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(
            [o for o in overrides if not o.startswith("-")])
        kept = [o.input_line for o in parsed if not o.is_sweep_override()
                and not o.key_or_group.lstrip("+~").startswith(("experiment.", "hydra"))]
        chosen = [o.value().filter(configs.group_options("experiment"))
                  if isinstance(o.value(), Glob) else list(o.sweep_string_iterator())
                  for o in parsed if o.key_or_group == "experiment" and o.is_sweep_override()]
        for option in chosen[-1] if chosen else [None]:
            cfg = _compose(kept + ([f"experiment={option}"] if option else []))
            parameters = [name for name in cfg.experiment if name != "_target_"]
            if key.split(".")[1] not in parameters:
                return not_a_parameter(key, cfg.hydra.runtime.choices.experiment, parameters)
        if chosen:  # every swept experiment has it: the one composed before sweeping lacks it
            default = _compose(kept)
            if key.split(".")[1] not in default.experiment:
                [value] = [o.input_line.partition("=")[2] for o in parsed
                           if o.key_or_group.lstrip("+~") == key]
                return (f"{key}: Hydra applies a sweep's unswept values to the default "
                        f"experiment ({default.hydra.runtime.choices.experiment}, which has "
                        f"no {key.split('.')[1]}) before it sweeps the experiments; make it a "
                        f"sweep of one value to set it in each job: '{key}=choice({value})'")
    except Exception:  # the command is too unusual to analyse: Hydra's message will do
        return None
    return None


def _component_key(key: str, overrides: list[str]) -> str | None:
    """`model.hiden is not a key of model=mlp; its keys: ...`, or, with no model chosen,
    how to choose one."""
    group = key.split(".")[0]
    options = configs.group_options(group)
    try:
        cfg = _compose([o for o in overrides if o.lstrip("+~").startswith(f"{group}=")])
    except Exception:
        return None
    option = cfg.hydra.runtime.choices.get(group)
    if option is None:
        return (f"{key}: no {group} is chosen, so the experiment uses its own; choose one first "
                f"({group}={' | '.join(options)}) or add a key to a {group} of your own with "
                f"+{key}=...")
    keys = [name for name in cfg[group] if name != "_target_"]
    return f"{key} is not a key of {group}={option}; its keys: {', '.join(keys) or 'none'}"


def _compose(overrides: list[str]) -> DictConfig:
    """The config these overrides compose, inside a running Hydra app or on its own."""
    return configs.compose("config", overrides, hydra_node=True)
