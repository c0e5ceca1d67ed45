"""Write the demonstrations' tables from the code, as `gradkit list` does.

Each table sits between a `<!-- NAME: begin` and a `<!-- NAME: end -->` line: `parameters` in
docs/experiments/<name>.md (parameter, default, meaning), `demonstrations` in
docs/experiments/index.md (each one's section and purpose). Their rows come from
`gradkit.cli.catalog.experiments()`: each experiment's constructor defaults, its module's
docstring and the notes of its conf/experiment/<name>.yaml. Run by `make docs`;
tests/system/test_docs.py checks that the committed tables equal freshly generated ones.
"""

from __future__ import annotations

import re
from pathlib import Path

from gradkit.cli.catalog import Entry, config_file, experiments

PAGES = Path(__file__).resolve().parent / "experiments"
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
    if default is None:
        return "null"
    return str(default).lower() if isinstance(default, bool) else str(default)


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


def index(entries: list[Entry]) -> str:
    """The `demonstrations` block: one row per experiment, in notebook order."""
    rows = ["| demonstration | notebook section | what it does |", "|---|---|---|"]
    rows += [f"| [`{e.name}`]({e.name}.md) | {e.section} | {cell(e.purpose)} |" for e in entries]
    return "\n".join(rows) + "\n"


def fill(path: Path, block: str, body: str) -> str:
    """The text of `path` with its `block` between the markers replaced by `body`."""
    marked = re.compile(rf"(<!-- {block}: begin[^\n]*-->\n).*?(<!-- {block}: end -->)", re.S)
    page = path.read_text()
    if not marked.search(page):
        raise SystemExit(f"docs: {path} has no {block} block")
    return marked.sub(lambda m: m[1] + body + m[2], page)


def pages() -> dict[Path, str]:
    """Every page with a generated table, as it should read, by path."""
    entries = experiments()
    found = {PAGES / f"{e.name}.md": fill(PAGES / f"{e.name}.md", "parameters", table(e))
             for e in entries}
    return {**found, PAGES / "index.md": fill(PAGES / "index.md", "demonstrations",
                                               index(entries))}


def main() -> None:
    for path, text in pages().items():
        if path.read_text() != text:
            path.write_text(text)
            print(f"docs: wrote the tables of {path.name}")


if __name__ == "__main__":
    main()
