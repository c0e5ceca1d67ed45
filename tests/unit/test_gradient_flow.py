"""Gradient flow: the per-parameter checks, health by depth and activation."""

from __future__ import annotations

import logging

import pytest
import torch
from matplotlib.figure import Figure

from gradkit.core.experiment import RunContext
from gradkit.core.validation import ConfigError
from gradkit.experiments import gradient_flow
from gradkit.experiments.gradient_flow import GradientFlow, label_layers, per_parameter_check
from gradkit.lib import diagnostics
from gradkit.lib.data import regression_batch
from gradkit.lib.diagnostics import (
    Thresholds,
    findings,
    parameter_stats,
    recorded_activations,
)
from gradkit.lib.models import mlp


def context(tmp_path, dtype=torch.float32) -> RunContext:
    return RunContext(torch.device("cpu"), dtype, torch.Generator().manual_seed(0), tmp_path,
                      logging.getLogger("test"))


def run(experiment: GradientFlow, ctx: RunContext):
    """What the job does: prepare (own model and data), then run."""
    experiment.prepare(ctx)
    return experiment.run(ctx)


def test_parameter_gradients_agree_with_central_differences_in_float64():
    torch.manual_seed(0)
    model = mlp(3, [5, 4], 2, activation="tanh", generator=torch.Generator().manual_seed(1))
    model.double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    torch.nn.functional.mse_loss(model(x), y).backward()

    assert per_parameter_check(model, x, y, torch.nn.functional.mse_loss, 1e-12).passed
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

    assert not per_parameter_check(model, x, y, torch.nn.functional.mse_loss, 1e-6).passed


def test_deep_sigmoid_net_vanishes_and_shallow_one_is_healthy(tmp_path):
    deep = run(GradientFlow(hidden=[32] * 10, activation="sigmoid"), context(tmp_path))
    shallow = run(GradientFlow(hidden=[32, 32], activation="tanh"), context(tmp_path))

    assert deep.tags["health"] == "warning"
    assert "vanishing" in deep.tags["findings"].split(",")
    assert deep.metrics["grad_to_weight/0.weight"] < 1e-5 < deep.metrics[
        "grad_to_weight/20.weight"]
    assert deep.metrics["max_min_ratio"] > 1e3
    assert shallow.tags == {"health": "healthy", "findings": ""}
    assert not deep.failed_checks and not shallow.failed_checks
    norms = [deep.metrics[f"grad_norm/{2 * i}.weight"] for i in range(11)]
    ratios = [deep.metrics[f"grad_to_weight/{2 * i}.weight"] for i in range(11)]
    assert deep.metrics["total_grad_norm"] >= max(norms)
    assert deep.metrics["max_min_ratio"] == pytest.approx(max(ratios) / min(ratios))


def test_kaiming_relu_net_with_large_layer_norms_is_healthy(tmp_path):
    """Layer gradient norms of 10-16 are large in absolute terms but ~2-16x the weights' norm
    per unit learning rate: a step of 0.01 moves each layer by at most 16% (most by ~3%)."""
    result = run(GradientFlow(hidden=[32, 32, 32], init="kaiming_normal"), context(tmp_path))

    assert result.metrics["max_grad_norm"] > 10  # the old absolute threshold fired here
    assert result.tags == {"health": "healthy", "findings": ""}
    assert result.metrics["max_grad_to_weight"] < 100
    assert not result.failed_checks


def rule_kinds(hidden, activation, init, batch_size, seed) -> set[str]:
    """The rules that fire (default thresholds) after one backward of a seeded MLP."""
    generator = torch.Generator().manual_seed(seed)
    net = mlp(3, hidden, 2, activation=activation, init=init, generator=generator)
    x, y = regression_batch(batch_size, 3, 2, generator)
    with recorded_activations(net) as activations:
        loss = torch.nn.functional.mse_loss(net(x), y)
    loss.backward()
    return {f.kind for f in findings(parameter_stats(net), activations, Thresholds(),
                                     loss.item())}


SCALES = [(width, depth, batch) for width in (8, 32, 256) for depth in (2, 4, 8)
          for batch in (8, 64, 512)]


@pytest.mark.parametrize(("activation", "init"), [
    ("relu", "kaiming_normal"), ("relu", "xavier_normal"), ("tanh", "xavier_normal"),
    ("tanh", "kaiming_normal"), ("gelu", "xavier_normal")])
def test_well_initialised_nets_are_healthy_at_every_width_depth_and_batch(activation, init):
    sick = {(w, d, b, seed): kinds for w, d, b in SCALES for seed in (0, 1)
            if (kinds := rule_kinds([w] * d, activation, init, b, seed))}
    narrow_relu = {(8, d, b, seed) for d in (4, 8) for b in (8, 64, 512) for seed in (0, 1)}
    assert {k: v for k, v in sick.items() if activation != "relu" or k not in narrow_relu} == {}
    assert all(kinds == {"dead_units"} for kinds in sick.values())


def test_a_narrow_relu_net_really_loses_half_a_layer_whatever_the_batch():
    """8-wide ReLU nets at depth 4: half of one layer's units are off on every sample, on
    8 samples and on 512 alike, so the finding is the net's, not the sample's."""
    for batch in (8, 64, 512):
        assert rule_kinds([8] * 4, "relu", "kaiming_normal", batch, 0) == {"dead_units"}


@pytest.mark.parametrize(("width", "depth", "batch"), [s for s in SCALES if s[1] >= 4])
def test_weights_at_5x_he_std_explode_at_every_width_and_batch(width, depth, batch):
    init = f"normal:{5 * (2 / width) ** 0.5}"
    assert "exploding" in rule_kinds([width] * depth, "relu", init, batch, 0)


@pytest.mark.parametrize(("width", "batch"), [(8, 8), (32, 64), (256, 8), (256, 512)])
def test_deep_sigmoid_nets_are_imbalanced_at_every_width_and_batch(width, batch):
    kinds = rule_kinds([width] * 8, "sigmoid", "xavier_normal", batch, 0)
    assert "imbalance" in kinds and kinds <= {"imbalance", "vanishing"}


def test_statistics_of_the_wrong_parameter_fail_the_run(tmp_path, monkeypatch):
    real = gradient_flow.parameter_stats

    def shifted(model):
        stats = real(model)
        names = list(stats)
        return {name: stats[names[(i + 1) % len(names)]] for i, name in enumerate(names)}

    monkeypatch.setattr(gradient_flow, "parameter_stats", shifted)
    assert "per_parameter_stats" in run(GradientFlow(), context(tmp_path)).failed_checks


def test_an_inverted_dead_unit_rule_fails_the_run(tmp_path, monkeypatch):
    real = diagnostics.dead_mask
    monkeypatch.setattr(diagnostics, "dead_mask", lambda slopes, peak: ~real(slopes, peak))
    assert "dead_units" in run(GradientFlow(), context(tmp_path)).failed_checks


def test_float64_run_and_figure(tmp_path):
    result = run(GradientFlow(), context(tmp_path, torch.float64))

    assert result.checks["per_parameter_stats"].passed
    assert isinstance(result.figures["gradient_flow"], Figure)
    assert {f"grad_to_weight/{i}.{kind}" for i in (0, 2, 4, 6) for kind in ("weight", "bias")
            } <= set(result.metrics)
    assert {f"dead_fraction/{i}" for i in (0, 2, 4)} <= set(result.metrics)
    assert not any(".layer" in name or "layer0" in name for name in result.metrics)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_own_model_and_batch_are_one_seeded_draw_as_before(tmp_path, dtype):
    """Nothing chosen: the MLP's weights, then the batch, from one generator seeded by the
    run's seed; the reported norms are those of that network on that batch."""
    generator = torch.Generator().manual_seed(0)
    net = mlp(3, [4, 6, 4], 2, generator=generator).to(dtype)
    x, y = regression_batch(8, 3, 2, generator, dtype=dtype)
    torch.nn.functional.mse_loss(net(x), y).backward()

    result = run(GradientFlow(), context(tmp_path, dtype))

    for name, param in net.named_parameters():
        assert result.metrics[f"grad_norm/{name}"] == pytest.approx(
            param.grad.double().norm().item(), rel=1e-12)
    assert result.metrics["depth"] == 3.0
    assert result.metrics["parameters"] == 16 + 30 + 28 + 10
    assert result.summary["model"] == "own"


def test_bad_input_in_the_constructor():
    with pytest.raises(ConfigError, match=r"experiment\.batch_size"):
        GradientFlow(batch_size=1)


def test_sweep_figure_handles_jobs_without_metrics():
    ok = {"job": 0, "status": "COMPLETED", "params": {"experiment.hidden": "[32, 32]",
          "experiment.activation": "relu", "experiment.init": "xavier_normal",
          "experiment.vanishing": "0.0001", "experiment.imbalance": "1000.0"},
          "metrics": {"min_grad_to_weight": 0.3, "max_min_ratio": 1.2, "health_level": 0.0}}
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
