"""Tracking helpers (flatten, run names, series downsampling) and a series logged end to end."""

from __future__ import annotations

from itertools import pairwise

import pytest

from gradkit.tracking.store import _steps, flatten, run_name


@pytest.mark.parametrize(("tree", "expected"), [
    ({}, {}),
    ({"seed": 42, "dtype": "float32"}, {"seed": "42", "dtype": "float32"}),
    ({"experiment": {"start": [-1.5, 2.5], "lr": 0.001}},  # numbers spread for compare views
     {"experiment.start": "[-1.5, 2.5]", "experiment.start.0": "-1.5",
      "experiment.start.1": "2.5", "experiment.lr": "0.001"}),
    ({"a": {"b": {"c": None, "d": [{"e": 1}]}}, "f": True, "g": [True], "h": ["x"],
      "i": list(range(17))},  # not numbers, or too long: kept whole only
     {"a.b.c": "None", "a.b.d": "[{'e': 1}]", "f": "True", "g": "[True]", "h": "['x']",
      "i": str(list(range(17)))}),
])
def test_flatten_dots_nested_keys_and_keeps_lists_as_leaves(tree, expected):
    assert flatten(tree) == expected


def test_flatten_prefix():
    assert flatten({"x": {"y": 1}}, "run.") == {"run.x.y": "1"}


@pytest.mark.parametrize(("overrides", "expected"), [
    ([], "defaults"),
    (["experiment=gradient_descent"], "defaults"),
    (["experiment=jacobian", "tracking.root=/tmp/store", "tracking.max_series_points=0",
      "hydra.sweep.dir=/tmp/sweep", "hydra.launcher.n_jobs=2", "sweep=descent_lr_start"],
     "defaults"),
    (["experiment=gradient_descent", "experiment.learning_rate=0.01"], "learning_rate=0.01"),
    (["experiment.start=[0.5,0.5]", "seed=3", "tracking.root=/x", "experiment.momentum=0.9"],
     "start=[0.5,0.5] seed=3 momentum=0.9"),
    (["experiment.x=1", "plotting.figures=False", "plotting.dpi=50", "threads=1",
      "deterministic=true", "+experiment.extra=2"], "x=1 deterministic=true extra=2"),
])
def test_run_name_keeps_only_what_the_command_line_changed(overrides, expected):
    assert run_name(overrides) == expected


@pytest.mark.parametrize("max_points", [0, 1, 2, 3, 7, 10, 200])
@pytest.mark.parametrize("length", [0, 1, 2, 3, 9, 10, 11, 101, 2001])
def test_steps_keep_the_ends_and_at_most_max_points(length, max_points):
    steps = _steps(length, max_points)

    if max_points == 0 or length <= max_points:
        assert steps == list(range(length))
        return
    assert len(steps) <= max_points
    assert all(a < b for a, b in pairwise(steps))
    assert steps[-1] == length - 1
    if max_points > 1:
        assert steps[0] == 0


def test_steps_are_evenly_spread():
    steps = _steps(2001, 200)

    gaps = {b - a for a, b in pairwise(steps)}
    assert len(steps) == 200
    assert gaps <= {10, 11}
