"""Tracking helpers (flatten, logged params, log10 copies, experiment tags, run names, series
downsampling)."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest

from gradkit.experiments.gradient_descent import GradientDescent
from gradkit.tracking.store import (
    _steps,
    experiment_tags,
    flatten,
    log10_copies,
    logged_params,
    run_name,
)


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


def test_logged_params_leave_out_what_changes_no_result():
    config = {"seed": 1, "tracking": {"kind": "local", "root": "/tmp/x", "uri": None},
              "plotting": {"dpi": 100, "figures": True},
              "experiment": {"_target_": "gradkit.experiments.jacobian.Jacobian", "x": 2},
              "model": {"_target_": None}, "data": {"_target_": "my.Data", "n": 3}}

    assert logged_params(config) == {"seed": "1", "experiment.x": "2",
                                     "data._target_": "my.Data", "data.n": "3"}


@pytest.mark.parametrize(("hidden", "depth", "width"), [
    ([4, 16, 8], "3", "16"), ([64], "1", "64"), ([], "0", "0")])
def test_a_list_of_widths_is_also_its_depth_and_largest_width(hidden, depth, width):
    params = logged_params({"experiment": {"hidden": hidden}, "model": {"hidden": hidden},
                            "other": {"sizes": [4, 16]}})

    for group in ("experiment", "model"):
        assert params[f"{group}.hidden"] == str(hidden)
        assert (params[f"{group}.hidden.depth"], params[f"{group}.hidden.width"]) == (
            depth, width)
    assert "other.sizes.depth" not in params  # not a list of widths


def test_log10_copies_of_positive_finite_metrics_and_params_only():
    metrics = {"final_loss": 1e-4, "zero": 0.0, "negative": -1.0, "diverged": math.inf,
               "undefined": math.nan}
    params = {"experiment.learning_rate": "0.01", "experiment.name": "rosenbrock"}

    copies = log10_copies(("final_loss", "learning_rate", "zero", "negative", "diverged",
                           "undefined", "name", "absent"), metrics, params)

    assert copies == pytest.approx({"log10/final_loss": -4.0, "log10/learning_rate": -2.0})


def test_an_experiments_tags_are_its_purpose_section_and_proof():
    tags = experiment_tags(GradientDescent)

    assert tags == {"mlflow.note.content": "gradient descent on a 2-D test function, with "
                                           "divergence as a result",
                    "section": "4.2", "proves": GradientDescent.proves}
    assert GradientDescent.proves


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
