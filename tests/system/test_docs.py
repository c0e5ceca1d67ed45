"""The docs site: it builds with no broken link, its parameter tables are the code's, and the
README's links lead to pages that exist."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    """`mkdocs build --strict` of `config` into `site` (not `--quiet`: it would hide the
    warnings that `--strict` turns into a failure)."""
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                           "--config-file", str(config), "--site-dir", str(site)],
                          capture_output=True, text=True, timeout=120)


def generator():
    """docs/gen_parameters.py, imported from the checkout."""
    path = ROOT / "docs" / "gen_parameters.py"
    spec = importlib.util.spec_from_file_location("gen_parameters", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_site_builds_with_every_link_and_anchor_resolved(tmp_path):
    done = build(ROOT / "mkdocs.yml", tmp_path / "site")

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "experiments" / "hessian" / "index.html").is_file()


def test_a_broken_link_fails_the_build(tmp_path):
    docs = shutil.copytree(ROOT / "docs", tmp_path / "docs")
    with (docs / "faults.md").open("a") as page:
        page.write("\nSee [the sweeps](sweeps.md#no-such-section).\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text((ROOT / "mkdocs.yml").read_text())

    done = build(config, tmp_path / "site")

    assert done.returncode != 0
    assert "no-such-section" in done.stdout + done.stderr, done.stdout + done.stderr


def test_the_generated_tables_are_the_codes():
    pages = generator().pages()

    configs = (ROOT / "conf" / "experiment").glob("*.yaml")
    assert {path.stem for path in pages} == {config.stem for config in configs} | {"index"}
    stale = [path.name for path, text in pages.items() if path.read_text() != text]
    assert not stale, f"generated tables out of date (run make docs): {stale}"


def test_a_table_shows_each_default_and_its_note():
    page = (ROOT / "docs" / "experiments" / "gradient_descent.md").read_text()

    assert "| `experiment.learning_rate` | `0.001` |" in page
    hessian = (ROOT / "docs" / "experiments" / "hessian.md").read_text()
    assert "| `experiment.point` | `null` | null: the notebook's [2, 1] (dim 2)" in hessian
    index = (ROOT / "docs" / "experiments" / "index.md").read_text()
    assert "| [`hessian`](hessian.md) | 5.1 | the Hessian at a point three ways" in index


def test_the_readme_links_lead_to_pages_and_anchors_that_exist():
    links = re.findall(r"\]\((docs/[^)#]+)(?:#([^)]+))?\)", (ROOT / "README.md").read_text())

    assert len(links) >= 10
    for path, anchor in links:
        assert (ROOT / path).is_file(), path
        if anchor:
            headings = re.findall(r"^#+ (.+)$", (ROOT / path).read_text(), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
            assert anchor in slugs, f"{path}#{anchor}"
