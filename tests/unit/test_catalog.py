"""`make list`: every experiment and preset, with sections, purposes, defaults and grids."""

from __future__ import annotations

import inspect

from conftest import CONF_DIR, EXPERIMENTS
from hydra.utils import get_class

from gradkit.cli.catalog import describe_module, experiments, presets


def test_every_experiment_is_listed_in_notebook_order_with_its_defaults():
    entries = experiments()

    assert sorted(e.name for e in entries) == EXPERIMENTS
    sections = {e.name: e.section for e in entries}
    assert (sections["basic_gradients"], sections["jacobian"], sections["gradient_descent"]) == (
        "2.1", "3.1", "4.2")
    numbered = [tuple(map(int, e.section.split("."))) for e in entries if e.section != "beyond"]
    assert numbered == sorted(numbered)
    for entry in entries:  # the defaults the class declares, and nothing else
        cls = get_class(entry.target)
        declared = {name: list(map(plain, p.default)) if isinstance(p.default, tuple)
                    else p.default for name, p in inspect.signature(cls).parameters.items()}
        assert entry.parameters == declared
        assert entry.target.startswith(f"gradkit.experiments.{entry.name}.")
        assert entry.purpose and not entry.purpose.startswith("Section")


def plain(item):
    return list(item) if isinstance(item, tuple) else item


def test_every_preset_is_listed_with_its_grid():
    listed = {name: grid for name, _, grid in presets()}

    assert set(listed) == {p.stem for p in (CONF_DIR / "sweep").glob("*.yaml")}
    assert listed["descent_lr_start"]["experiment.learning_rate"] == (
        "1e-4,5e-4,1e-3,1.5e-3,2e-3,1e-2")


def test_a_module_whose_package_is_not_importable_here_is_listed_as_not_found():
    """A user's experiment listed from outside their project (`--config-dir` elsewhere)."""
    assert describe_module("no_such_project.experiments") == (
        "beyond", "no_such_project.experiments (its module cannot be found)")
