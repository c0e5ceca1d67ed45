"""`gradkit list`: every experiment, model, dataset, loss and sweep preset at a glance, the
user's own included.

The options come from Hydra's config search path (gradkit's configs and every `--config-dir`),
their parameters from composing each (gradkit's experiments' configs are built from their
classes); sections and purposes from the experiment modules' docstrings (`Section 4.2:
purpose`), read from the source. The store and MLflow are never opened.
"""

from __future__ import annotations

import ast
import importlib.resources
import importlib.util
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from gradkit.core import configs
from gradkit.core.components import KEYS as COMPONENTS
from gradkit.core.components import locate
from gradkit.core.experiment import Experiment
from gradkit.core.validation import ConfigError


@dataclass(frozen=True)
class Entry:
    """One experiment: its option name, class, notebook section, purpose and defaults."""

    name: str
    target: str
    section: str
    purpose: str
    parameters: dict[str, object]
    notes: dict[str, str]  # what a parameter means, from its config file's comments
    takes_components: bool = False  # it runs on a chosen model, data and loss


NOTE = re.compile(r"^#\s{3}(\w+)\s{2,}(\S.*)$")  # `#   point     null: the notebook's [2, 1]`


def parameter_notes(path: Path | None) -> dict[str, str]:
    """The `#   name  meaning` comment lines of a config file."""
    lines = path.read_text().splitlines() if path else []
    return {m[1]: m[2] for m in map(NOTE.match, lines) if m}


def config_file(group: str, name: str, config_dirs: Sequence[str | Path] = ()) -> Path | None:
    """The YAML file of option `name` of `group`: the user's folders first, then gradkit's."""
    roots = [*map(Path, config_dirs), Path(str(importlib.resources.files(configs.CONFIG_MODULE)))]
    return next((root / group / f"{name}.yaml" for root in roots
                 if (root / group / f"{name}.yaml").is_file()), None)


def describe_module(module: str) -> tuple[str, str]:
    """The notebook section (`4.2`, or `beyond`) and purpose in `module`'s docstring."""
    try:  # a dotted name imports its parent package to look
        spec = importlib.util.find_spec(module) if module else None
    except ImportError:  # the parent is not importable from here
        spec = None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return "beyond", f"{module or 'no _target_'} (its module cannot be found)"
    docstring = ast.get_docstring(ast.parse(Path(spec.origin).read_text())) or ""
    head, _, purpose = docstring.split("\n")[0].partition(": ")
    section = head.removeprefix("Section ") if purpose else "beyond"
    return (section if section[:1].isdigit() else "beyond"), (purpose or head).rstrip(".")


def takes_components(target: str) -> bool:
    """Whether the experiment class `target` runs on a chosen model, data and loss (False
    for one that cannot be imported)."""
    try:
        found = locate("experiment._target_", target)
    except ConfigError:
        return False
    return isinstance(found, type) and issubclass(found, Experiment) and found.takes_components()


def experiments(config_dirs: Sequence[str | Path] = ()) -> list[Entry]:
    """Every experiment option, in notebook order (those beyond the notebook last)."""
    entries = []
    for name in configs.group_options("experiment", config_dirs):
        config = configs.compose("config", [f"experiment={name}"], config_dirs).experiment
        parameters = OmegaConf.to_container(config)
        target = str(parameters.pop("_target_", ""))
        entries.append(Entry(name, target, *describe_module(target.rpartition(".")[0]),
                             parameters,
                             parameter_notes(config_file("experiment", name, config_dirs)),
                             takes_components(target)))
    return sorted(entries, key=lambda e: [int(n) for n in e.section.split(".")]
                  if e.section[0].isdigit() else [99])


def header_comment(text: str) -> str:
    """The `#` comment lines of a config file's text, joined (Hydra's `@package` left out)."""
    return " ".join(line.lstrip("# ").rstrip() for line in text.splitlines()
                    if line.startswith("#") and "@package" not in line)


def presets(config_dirs: Sequence[str | Path] = ()) -> list[tuple[str, str, dict[str, str]]]:
    """Every sweep preset: name, the description in its header comment, its grid."""
    found = []
    for name in configs.group_options("sweep", config_dirs):
        path = config_file("sweep", name, config_dirs)
        text = path.read_text() if path else ""
        grid = OmegaConf.select(OmegaConf.create(text), "hydra.sweeper.params") or {}
        found.append((name, header_comment(text), {k: str(v) for k, v in grid.items()}))
    return found


def components(config_dirs: Sequence[str | Path] = ()) -> list[tuple[str, str, str, dict]]:
    """Every option of the model, data and loss groups: group, name, description, keys."""
    found = []
    for group in COMPONENTS:
        for name in configs.group_options(group, config_dirs):
            path = config_file(group, name, config_dirs)
            keys = OmegaConf.to_container(
                configs.compose("config", [f"{group}={name}"], config_dirs)[group])
            keys.pop("_target_", None)
            found.append((group, name, header_comment(path.read_text() if path else ""), keys))
    return found


def render(config_dirs: Sequence[str | Path] = (), width: int = 100) -> str:
    """The catalogue as text, wrapped at `width` columns."""
    def block(head: str, body: str) -> list[str]:
        return textwrap.wrap(body, width, initial_indent=f"  {head:<30}",
                             subsequent_indent=" " * 32, break_on_hyphens=False)

    lines = ["Experiments: gradkit run experiment=NAME [experiment.PARAM=VALUE ...]",
             "(null: derived from the other parameters, as noted)", ""]
    entries = experiments(config_dirs)
    for entry in entries:
        lines += block(f"{entry.name} ({entry.section})", entry.purpose)
        lines += block("", "  ".join(f"{key}={'null' if value is None else value}"
                                     for key, value in entry.parameters.items()))
        lines += [line for key, value in entry.parameters.items()
                  if value is None and key in entry.notes
                  for line in block("", f"{key}: {entry.notes[key]}")]
    takers = [e.name for e in entries if e.takes_components]
    lines += ["", "Models, data and losses: gradkit run experiment=NAME model=M data=D loss=L "
              "[model.KEY=VALUE ...]", f"(each unset: the experiment's own; for "
              f"{', '.join(takers) or 'no experiment'})", ""]
    for group, name, description, keys in components(config_dirs):
        lines += block(f"{group}={name}", description)
        if keys:
            lines += block("", "  ".join(f"{key}={value}" for key, value in keys.items()))
    lines += ["", "Sweep presets: gradkit run sweep=NAME [hydra/launcher=joblib]", ""]
    for name, description, grid in presets(config_dirs):
        lines += block(name, description)
        lines += [line for key, values in grid.items() for line in block("", f"{key}: {values}")]
    return "\n".join(lines)
