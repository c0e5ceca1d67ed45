"""Gradient debugging: every planted fault is found, the healthy net has none."""

from __future__ import annotations

import logging

import pytest
import torch
from matplotlib.figure import Figure

from gradkit.core.experiment import RunContext
from gradkit.core.validation import ConfigError
from gradkit.experiments.gradient_debugging import SCENARIOS, GradientDebugging


def run(scenario: str, tmp_path, seed: int = 0, **kwargs):
    ctx = RunContext(torch.device("cpu"), torch.float32, torch.Generator().manual_seed(seed),
                     tmp_path, logging.getLogger("test"))
    return GradientDebugging(scenario=scenario, **kwargs).run(ctx)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_each_planted_fault_is_found(scenario, seed, tmp_path):
    result = run(scenario, tmp_path, seed)

    expected = SCENARIOS[scenario].expected
    kinds = result.tags["findings"].split(",") if result.tags["findings"] else []
    assert result.checks["detects_planted_fault"].passed
    if expected is None:
        assert kinds == [] and result.tags["health"] == "healthy"
    else:
        assert expected in kinds
        assert result.metrics[f"findings.{expected}"] >= 1
    assert isinstance(result.figures["gradient_debugging"], Figure)


def test_severity_of_each_scenario(tmp_path):
    health = {scenario: run(scenario, tmp_path).tags["health"] for scenario in SCENARIOS}

    assert health == {"healthy": "healthy", "problematic": "warning", "dead_relu": "warning",
                      "exploding": "critical", "nan": "critical"}


def test_the_nan_is_traced_to_the_planted_sqrt(tmp_path):
    result = run("nan", tmp_path)

    origin = result.summary["nonfinite_origin"]
    assert (origin["operation"], origin["kind"]) == ("SqrtBackward0", "nan")
    assert "torch.sqrt(z * z)" in origin["forward_line"]
    assert result.tags["nonfinite_origin"] == "SqrtBackward0 (nan)"
    assert [(f["kind"], f["layer"]) for f in result.summary["findings"]] == [
        ("nan_grad", "layer0")]
    assert result.metrics["grad_norm.layer1"] > 0  # the layers after the fault are untouched


def test_notebook_thresholds_miss_the_problematic_model_and_ours_do_not(tmp_path):
    notebook = run("problematic", tmp_path, vanishing=1e-7, exploding=10.0, imbalance=1e300)
    ours = run("problematic", tmp_path)

    assert notebook.tags["findings"] == ""
    assert not notebook.checks["detects_planted_fault"].passed  # a miss fails the run
    assert ours.metrics["grad_norm.layer0"] < 1e-4 < run("healthy", tmp_path).metrics[
        "grad_norm.layer0"]
    assert ours.tags["findings"] == "vanishing,imbalance"


def test_bad_input_in_the_constructor():
    with pytest.raises(ConfigError, match=r"experiment\.scenario='x' is not allowed; choose"):
        GradientDebugging(scenario="x")


def test_sweep_figure_lists_failed_jobs_too():
    done = {"job": 0, "overrides": "scenario=nan", "status": "COMPLETED",
            "params": {"experiment.scenario": "nan"},
            "metrics": {"health_level": 2.0, "findings.nan_grad": 1.0}}
    failed = {"job": 1, "overrides": "scenario=healthy", "status": "FAILED", "params": {},
              "metrics": {}}

    fig = GradientDebugging.sweep_figure([done, failed])

    [table] = fig.axes[0].tables
    texts = [cell.get_text().get_text() for cell in table.get_celld().values()]
    assert {"nan", "critical", "scenario=healthy", "failed"} <= set(texts)
