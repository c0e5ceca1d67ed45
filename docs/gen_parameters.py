"""Write each demonstration page's parameter table from the code, as `gradkit list` does.

The table sits between the `<!-- parameters: begin` and `<!-- parameters: end -->` lines of
docs/experiments/<name>.md; its rows (parameter, default, meaning) come from
`gradkit.cli.catalog.experiments()`: the defaults of each experiment's constructor and the
notes of its conf/experiment/<name>.yaml. Run by `make docs`; tests/system/test_docs.py checks
that the committed tables equal freshly generated ones.
"""

from __future__ import annotations

import re
from pathlib import Path

from gradkit.cli.catalog import Entry, config_file, experiments

PAGES = Path(__file__).resolve().parent / "experiments"
BLOCK = re.compile(r"(<!-- parameters: begin[^\n]*-->\n).*?(<!-- parameters: end -->)", re.S)
NOTE = re.compile(r"^#\s{3}(\w+(?:, \w+)*)\s{2,}(\S.*)$")  # `#   epochs, batch_size   meaning`
MORE = re.compile(r"^#\s{4,}(\S.*)$")  # a note's continuation line


def notes(path: Path | None) -> dict[str, str]:
    """Each parameter's note in a config file, its continuation lines joined; a note naming
    several parameters is given to each."""
    found: dict[str, str] = {}
    names: list[str] = []
    for line in path.read_text().splitlines() if path else []:
        if m := NOTE.match(line):
            names = m[1].split(", ")
            found.update(dict.fromkeys(names, m[2]))
        elif (m := MORE.match(line)) and names:
            found.update({name: f"{found[name]} {m[1]}" for name in names})
        else:
            names = []
    return found


def value(default: object) -> str:
    """A default as it is written in an override."""
    return {None: "null", True: "true", False: "false"}.get(default, str(default)) \
        if isinstance(default, (bool, type(None))) else str(default)


def cell(text: object) -> str:
    """`text` safe inside a Markdown table cell."""
    return str(text).replace("|", r"\|").replace("*", r"\*").replace("<", "&lt;")


def table(entry: Entry) -> str:
    """The block's body for one experiment: its purpose, then one row per parameter."""
    rows = [f"Notebook section {entry.section}: {cell(entry.purpose)}. Generated from "
            f"`{entry.target}` and `conf/experiment/{entry.name}.yaml` (what `gradkit list` "
            "shows).", "", "| parameter | default | meaning |", "|---|---|---|"]
    meaning = notes(config_file("experiment", entry.name))
    rows += [f"| `experiment.{key}` | `{value(default)}` | {cell(meaning.get(key, ''))} |"
             for key, default in entry.parameters.items()]
    if entry.takes_components:
        rows += ["", "Also runs on a chosen `model=`, `data=` and `loss=` "
                 "([your model, your data](../own.md#your-model-your-data))."]
    return "\n".join(rows) + "\n"


def render(page: str, entry: Entry) -> str:
    """`page` with its parameter block rewritten for `entry`."""
    if not BLOCK.search(page):
        raise SystemExit(f"docs: no parameters block in the page of {entry.name}")
    return BLOCK.sub(lambda m: m[1] + table(entry) + m[2], page)


def pages() -> dict[Path, str]:
    """Every demonstration page as it should read, by path."""
    return {PAGES / f"{e.name}.md": render((PAGES / f"{e.name}.md").read_text(), e)
            for e in experiments()}


def main() -> None:
    for path, text in pages().items():
        if path.read_text() != text:
            path.write_text(text)
            print(f"docs: wrote {path.name}'s parameters")


if __name__ == "__main__":
    main()
