"""Gradient debugging: every planted fault is found, the healthy net has none."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from matplotlib.figure import Figure

from gradkit.core.experiment import RunContext
from gradkit.core.validation import ConfigError
from gradkit.experiments import gradient_debugging
from gradkit.experiments.gradient_debugging import SCENARIOS, GradientDebugging


def run(scenario: str, tmp_path, seed: int = 0, **kwargs):
    ctx = RunContext(torch.device("cpu"), torch.float32, torch.Generator().manual_seed(seed),
                     tmp_path, logging.getLogger("test"))
    experiment = GradientDebugging(scenario=scenario, **kwargs)
    experiment.prepare(ctx)
    return experiment.run(ctx)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_each_planted_fault_is_found(scenario, seed, tmp_path):
    result = run(scenario, tmp_path, seed)

    expected = SCENARIOS[scenario].expected
    kinds = result.tags["findings"].split(",") if result.tags["findings"] else []
    assert result.failed_checks == []
    if expected is None:
        assert kinds == [] and result.tags["health"] == "healthy"
    else:
        assert expected in kinds
        assert result.metrics[f"findings/{expected}"] >= 1
    assert isinstance(result.figures["gradient_debugging"], Figure)


def test_severity_of_each_scenario(tmp_path):
    health = {scenario: run(scenario, tmp_path).tags["health"] for scenario in SCENARIOS}

    assert health == {"none": "healthy", "healthy": "healthy", "problematic": "warning",
                      "dead_relu": "warning", "exploding": "critical", "nan": "critical",
                      "nan_forward": "critical"}


def test_the_nan_is_traced_to_the_planted_sqrt(tmp_path):
    result = run("nan", tmp_path)

    origin = result.summary["nonfinite_origin"]
    assert (origin["operation"], origin["kind"]) == ("SqrtBackward0", "nan")
    assert "torch.sqrt(z * z)" in origin["forward_line"]
    assert result.tags["nonfinite_origin"] == "SqrtBackward0 (nan, backward)"
    assert [(f["kind"], f["layer"]) for f in result.summary["findings"]] == [
        ("nan_grad", "0.weight"), ("nan_grad", "0.bias")]  # the Linear before the sqrt
    assert result.metrics["grad_norm/3.weight"] > 0  # the layers after the fault are untouched


def test_a_nan_gradient_is_counted_per_parameter_and_has_no_norm(tmp_path):
    """The planted sqrt(z * z) has a NaN slope at every unit of the first Linear's output:
    each entry of that Linear's gradients is NaN, none of the later layers'."""
    result = run("nan", tmp_path)
    net = GradientDebugging(scenario="nan")

    metrics = result.metrics
    counts = {name.removeprefix("grad_nonfinite/"): value for name, value in metrics.items()
              if name.startswith("grad_nonfinite/")}
    assert {name for name, count in counts.items() if count} == {"0.weight", "0.bias"}
    assert (counts["0.weight"], counts["0.bias"]) == (net.input_dim * net.hidden[0],
                                                      net.hidden[0])
    assert all(math.isnan(metrics[f"grad_{stat}/0.{kind}"]) for stat in ("norm", "to_weight")
               for kind in ("weight", "bias"))  # not 0.0: no entry is finite
    assert all(metrics[f"grad_norm/{name}"] > 0 for name, count in counts.items() if not count)


def test_the_problematic_model_is_found_and_a_miss_fails_the_run(tmp_path):
    blind = run("problematic", tmp_path, vanishing=1e-7, exploding=1e300, imbalance=1e300)
    ours = run("problematic", tmp_path)

    assert blind.tags["findings"] == ""
    assert not blind.checks["detects_planted_fault"].passed  # a miss fails the run
    assert ours.metrics["grad_to_weight/0.weight"] < 1e-5 < run("healthy", tmp_path).metrics[
        "grad_to_weight/0.weight"]
    assert [(f["kind"], f["layer"]) for f in ours.summary["findings"]] == [
        ("vanishing", "0.weight"), ("imbalance", "0.weight")]


def test_a_nan_born_in_the_forward_pass_is_traced_to_its_forward_op(tmp_path):
    result = run("nan_forward", tmp_path)

    origin = result.summary["nonfinite_origin"]
    assert (origin["operation"], origin["kind"], origin["phase"]) == ("torch.log", "nan",
                                                                      "forward")
    assert origin["forward_line"].startswith("gradient_debugging.py:")
    assert origin["forward_line"].endswith("return torch.log(x)")
    assert result.tags["nonfinite_origin"] == "torch.log (nan, forward)"
    assert {"nan_loss", "nan_grad"} <= set(result.tags["findings"].split(","))
    assert math.isnan(result.metrics["loss"])


def test_a_detector_that_blames_the_wrong_operation_fails_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(gradient_debugging.ForwardOrigin, "__torch_function__",
                        lambda self, func, types, args=(), kwargs=None: func(*args,
                                                                             **(kwargs or {})))
    result = run("nan_forward", tmp_path)

    assert result.summary["nonfinite_origin"]["operation"] == "MseLossBackward0"
    assert "detects_planted_fault" in result.failed_checks


def test_scenario_none_diagnoses_without_an_expected_finding(tmp_path):
    result = run("none", tmp_path)

    assert "detects_planted_fault" not in result.checks
    assert result.summary["missed"] is None and result.tags["health"] == "healthy"
    assert {"per_parameter_stats", "dead_units", "rules"} == set(result.checks)


def test_bad_input_in_the_constructor():
    with pytest.raises(ConfigError, match=r"experiment\.scenario='x' is not allowed; choose"):
        GradientDebugging(scenario="x")


def test_sweep_figure_lists_failed_jobs_too():
    done = {"job": 0, "overrides": "scenario=nan", "status": "COMPLETED",
            "params": {"experiment.scenario": "nan"},
            "metrics": {"health_level": 2.0, "findings/nan_grad": 1.0}}
    failed = {"job": 1, "overrides": "scenario=healthy", "status": "FAILED", "params": {},
              "metrics": {}}

    fig = GradientDebugging.sweep_figure([done, failed])

    [table] = fig.axes[0].tables
    texts = [cell.get_text().get_text() for cell in table.get_celld().values()]
    assert {"nan", "critical", "scenario=healthy", "failed"} <= set(texts)
