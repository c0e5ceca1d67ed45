"""`python -m gradkit.catalog` (`make list`): every experiment and sweep preset, at a glance.

Read from the config files and the experiment modules' docstrings (`Section 4.2: purpose`),
without importing torch, so it answers at once.
"""

from __future__ import annotations

import ast
import importlib.util
import textwrap
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from gradkit import PROJECT_ROOT

CONF = PROJECT_ROOT / "conf"


@dataclass(frozen=True)
class Entry:
    """One experiment: its option name, notebook section, purpose and parameter defaults."""

    name: str
    section: str
    purpose: str
    parameters: dict[str, object]


def experiments() -> list[Entry]:
    """Every experiment option, in notebook order (those beyond the notebook last)."""
    entries = []
    for path in sorted((CONF / "experiment").glob("*.yaml")):
        config = OmegaConf.to_container(OmegaConf.load(path))
        module = config.pop("_target_").rsplit(".", 1)[0]
        origin = importlib.util.find_spec(module).origin
        docstring = ast.get_docstring(ast.parse(Path(origin).read_text())) or ""
        head, _, purpose = docstring.split("\n")[0].partition(": ")
        section = head.removeprefix("Section ") if purpose else "beyond"
        entries.append(Entry(path.stem, section if section[:1].isdigit() else "beyond",
                             (purpose or head).rstrip("."), config))
    return sorted(entries, key=lambda e: [int(n) for n in e.section.split(".")]
                  if e.section[0].isdigit() else [99])


def presets() -> list[tuple[str, str, dict[str, str]]]:
    """Every sweep preset: name, the description in its header comment, its grid."""
    found = []
    for path in sorted((CONF / "sweep").glob("*.yaml")):
        comment = [line.lstrip("# ").rstrip() for line in path.read_text().splitlines()
                   if line.startswith("#") and "@package" not in line]
        grid = OmegaConf.select(OmegaConf.load(path), "hydra.sweeper.params") or {}
        found.append((path.stem, " ".join(comment), {k: str(v) for k, v in grid.items()}))
    return found


def render(width: int = 100) -> str:
    """The catalogue as text, wrapped at `width` columns."""
    def block(head: str, body: str) -> list[str]:
        return textwrap.wrap(body, width, initial_indent=f"  {head:<30}",
                             subsequent_indent=" " * 32, break_on_hyphens=False)

    lines = ["Experiments: python -m gradkit.run experiment=NAME [experiment.PARAM=VALUE ...]", ""]
    for entry in experiments():
        lines += block(f"{entry.name} ({entry.section})", entry.purpose)
        lines += block("", "  ".join(f"{key}={value}" for key, value in entry.parameters.items()))
    lines += ["", "Sweep presets: python -m gradkit.run sweep=NAME [hydra/launcher=joblib]", ""]
    for name, description, grid in presets():
        lines += block(name, description)
        lines += [line for key, values in grid.items() for line in block("", f"{key}: {values}")]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render())
