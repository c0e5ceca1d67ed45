"""Gradient flow: the per-layer check, health by depth and activation."""

from __future__ import annotations

import logging

import pytest
import torch
from matplotlib.figure import Figure

from gradkit.core.experiment import RunContext
from gradkit.core.validation import ConfigError
from gradkit.experiments.gradient_flow import GradientFlow, label_layers, per_parameter_check
from gradkit.lib.models import mlp


def context(tmp_path, dtype=torch.float32) -> RunContext:
    return RunContext(torch.device("cpu"), dtype, torch.Generator().manual_seed(0), tmp_path,
                      logging.getLogger("test"))


def test_parameter_gradients_agree_with_central_differences_in_float64():
    torch.manual_seed(0)
    model = mlp(3, [5, 4], 2, activation="tanh", generator=torch.Generator().manual_seed(1))
    model.double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    torch.nn.functional.mse_loss(model(x), y).backward()

    assert per_parameter_check(model, x, y, 1e-12).passed
    step = 1e-6
    for param in model.parameters():
        for index in [(0,) * param.dim(), tuple(s - 1 for s in param.shape)]:
            with torch.no_grad():
                original = param[index].item()
                param[index] = original + step
                up = torch.nn.functional.mse_loss(model(x), y).item()
                param[index] = original - step
                down = torch.nn.functional.mse_loss(model(x), y).item()
                param[index] = original
            assert param.grad[index].item() == pytest.approx((up - down) / (2 * step),
                                                            rel=1e-6, abs=1e-9)


def test_a_wrong_gradient_fails_the_check():
    model = mlp(3, [4], 2, generator=torch.Generator().manual_seed(1))
    x, y = torch.randn(4, 3), torch.randn(4, 2)
    torch.nn.functional.mse_loss(model(x), y).backward()
    next(model.parameters()).grad[0, 0] += 1e-3

    assert not per_parameter_check(model, x, y, 1e-6).passed


def test_deep_sigmoid_net_vanishes_and_shallow_one_is_healthy(tmp_path):
    deep = GradientFlow(hidden=[32] * 10, activation="sigmoid").run(context(tmp_path))
    shallow = GradientFlow(hidden=[32, 32], activation="tanh").run(context(tmp_path))

    assert deep.tags["health"] == "warning"
    assert "vanishing" in deep.tags["findings"].split(",")
    assert deep.metrics["grad_norm.layer0"] < 1e-4 < deep.metrics["grad_norm.layer10"]
    assert deep.metrics["max_min_ratio"] > 1e3
    assert shallow.tags == {"health": "healthy", "findings": ""}
    assert not deep.failed_checks and not shallow.failed_checks
    norms = [deep.metrics[f"grad_norm.layer{i}"] for i in range(11)]
    assert deep.metrics["total_grad_norm"] >= max(norms)
    assert deep.metrics["max_min_ratio"] == pytest.approx(max(norms) / min(norms))


def test_float64_run_and_figure(tmp_path):
    result = GradientFlow().run(context(tmp_path, torch.float64))

    assert result.checks["per_layer"].passed
    assert isinstance(result.figures["gradient_flow"], Figure)
    assert {f"grad_to_weight.layer{i}" for i in range(4)} <= set(result.metrics)
    assert {f"dead_fraction.layer{i}" for i in range(3)} <= set(result.metrics)


def test_bad_input_in_the_constructor():
    with pytest.raises(ConfigError, match=r"experiment\.batch_size"):
        GradientFlow(batch_size=1)


def test_sweep_figure_handles_jobs_without_metrics():
    ok = {"job": 0, "status": "COMPLETED", "params": {"experiment.hidden": "[32, 32]",
          "experiment.activation": "relu", "experiment.init": "xavier_normal",
          "experiment.vanishing": "0.0001", "experiment.imbalance": "1000.0"},
          "metrics": {"min_grad_norm": 0.3, "max_min_ratio": 1.2, "health_level": 0.0}}
    failed = {"job": 1, "status": "FAILED", "params": {}, "metrics": {}}

    assert isinstance(GradientFlow.sweep_figure([ok, failed]), Figure)
    assert GradientFlow.sweep_figure([failed]) is None


@pytest.mark.parametrize(("layers", "labelled"), [(5, 5), (25, 25), (101, 21)])
def test_layer_axes_stay_readable_however_deep(layers, labelled):
    """Every layer is named up to 25 layers; deeper nets name every k-th, the first included."""
    fig = Figure()
    ax = fig.add_subplot()
    names = [f"layer{i}" for i in range(layers)]
    label_layers(ax, range(layers), names)
    shown = [tick.get_text() for tick in ax.get_xticklabels()]
    assert len(shown) == labelled and shown[0] == "layer0"
    assert set(shown) <= set(names)
