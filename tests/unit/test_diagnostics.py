"""Per-layer gradient statistics, health rules and the non-finite origin search."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradkit.core.validation import ConfigError
from gradkit.lib.diagnostics import (
    GradStats,
    Thresholds,
    anomaly_mode,
    backward_with_origin,
    findings,
    gradient_stats,
    health,
    layer_gradient_stats,
    max_min_ratio,
    recorded_activations,
    verdict,
)


def test_gradient_stats_by_hand():
    grad = torch.tensor([[3.0, 0.0], [-4.0, 0.0]])
    weight = torch.tensor([[1.0, 0.0], [0.0, 0.0]])

    stats = gradient_stats(grad, weight)

    assert stats.norm == pytest.approx(5.0)
    assert stats.mean == pytest.approx(-0.25)
    assert stats.std == pytest.approx(math.sqrt(24.75 / 3))  # unbiased, like torch.std
    assert (stats.min, stats.max) == (-4.0, 3.0)
    assert stats.zero_fraction == 0.5
    assert stats.grad_to_weight == pytest.approx(5.0)
    assert (stats.nan_count, stats.inf_count) == (0, 0)


def test_one_element_has_zero_std_and_non_finite_entries_are_counted_not_averaged():
    single = gradient_stats(torch.tensor([2.0]), torch.tensor([4.0]))
    assert (single.std, single.mean, single.grad_to_weight) == (0.0, 2.0, 0.5)

    broken = gradient_stats(torch.tensor([math.nan, 1.0, math.inf, -math.inf]), torch.ones(4))
    assert (broken.nan_count, broken.inf_count) == (1, 2)
    assert (broken.norm, broken.mean, broken.std) == (1.0, 1.0, 0.0)
    assert broken.zero_fraction == 0.0


def tiny_net(w1: float, w2: float) -> nn.Sequential:
    """y = w2 relu(w1 x), no biases."""
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.ReLU(), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        net[0].weight.fill_(w1)
        net[2].weight.fill_(w2)
    return net


def test_layer_statistics_of_a_tiny_net_by_hand():
    # x = 2, w1 = 1.5, w2 = -0.5: h = 3, y = -1.5, L = y^2, dL/dy = -3,
    # dL/dw2 = -3 h = -9, dL/dw1 = -3 w2 x = 3.
    net = tiny_net(1.5, -0.5)
    with recorded_activations(net) as activations:
        loss = F.mse_loss(net(torch.tensor([[2.0]])), torch.zeros(1, 1))
    loss.backward()

    grads = layer_gradient_stats(net)

    assert list(grads) == ["layer0", "layer1"]
    assert (grads["layer0"].norm, grads["layer1"].norm) == (3.0, 9.0)
    assert (grads["layer0"].mean, grads["layer1"].mean) == (3.0, -9.0)
    assert grads["layer0"].grad_to_weight == 2.0
    assert grads["layer1"].grad_to_weight == 18.0
    assert max_min_ratio(grads) == (3.0, "layer0")
    assert activations["layer0"].mean == 3.0
    assert activations["layer0"].dead_fraction == 0.0


def test_a_dead_unit_is_found_and_its_layer_gets_no_gradient():
    net = tiny_net(1.5, -0.5)
    with recorded_activations(net) as activations:
        loss = F.mse_loss(net(torch.tensor([[-2.0], [-1.0]])), torch.ones(2, 1))
    loss.backward()

    grads = layer_gradient_stats(net)
    found = findings(grads, activations, Thresholds())

    assert activations["layer0"].dead_fraction == 1.0
    assert grads["layer0"].norm == grads["layer1"].norm == 0.0
    assert math.isnan(max_min_ratio(grads)[0])  # no layer has a gradient: no ratio
    assert {f.kind for f in found} == {"dead_units", "vanishing"}
    assert health(found) == "warning"


def stats(norm: float, nan: int = 0, inf: int = 0) -> GradStats:
    return GradStats(norm, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, nan, inf)


@pytest.mark.parametrize(("grads", "kinds", "level"), [
    ({"layer0": stats(0.5), "layer1": stats(1.0)}, [], "healthy"),
    ({"layer0": stats(1e-5), "layer1": stats(1.0)}, [("vanishing", "layer0"),
                                                     ("imbalance", "layer0")], "warning"),
    ({"layer0": stats(20.0), "layer1": stats(1.0)}, [("exploding", "layer0")], "critical"),
    ({"layer0": stats(1.0, nan=3), "layer1": stats(1.0, inf=1)},
     [("nan_grad", "layer0"), ("inf_grad", "layer1")], "critical"),
    ({"layer0": stats(0.0, nan=9), "layer1": stats(1.0), "layer2": stats(0.0)},
     [("nan_grad", "layer0"), ("vanishing", "layer2"), ("imbalance", "layer2")], "critical"),
    ({"layer0": stats(1.0), "layer1": stats(2e3)}, [("exploding", "layer1"),
                                                    ("imbalance", "layer0")], "critical"),
])
def test_rules(grads, kinds, level):
    found = findings(grads, {}, Thresholds(vanishing=1e-4, exploding=10, imbalance=1e3))

    assert [(f.kind, f.layer) for f in found] == kinds
    assert health(found) == level
    metrics, tags = verdict(found)
    assert tags["health"] == level
    assert tags["findings"].split(",") if kinds else tags["findings"] == ""
    assert sum(v for k, v in metrics.items() if k.startswith("findings.")) == len(kinds)


def test_thresholds_are_validated_with_their_keys():
    with pytest.raises(ConfigError, match=r"experiment\.vanishing"):
        Thresholds.checked("experiment", -1.0, 10.0, 1e3, 0.5)
    with pytest.raises(ConfigError, match=r"experiment\.dead_units"):
        Thresholds.checked("experiment", 1e-4, 10.0, 1e3, 1.5)


def test_origin_of_a_nan_is_the_sqrt_at_zero_and_its_forward_line():
    x = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    weight = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    with anomaly_mode():
        z = x @ weight
        loss = torch.relu(torch.sqrt(z * z)).sum()  # |z| written as sqrt(z^2)

    origin = backward_with_origin(loss)

    assert (origin.operation, origin.kind) == ("SqrtBackward0", "nan")
    assert "torch.sqrt(z * z)" in origin.forward_line
    assert torch.isnan(weight.grad).any()  # the backward ran to the end


def test_origin_of_an_inf_is_found_too():
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    origin = backward_with_origin(torch.log(a * 0).sum())

    assert (origin.operation, origin.kind) == ("LogBackward0", "inf")
    assert origin.forward_line == ""  # not recorded outside anomaly mode


def test_finite_backward_has_no_origin_and_matches_plain_backward():
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    assert backward_with_origin((a.exp() * a).sum()) is None
    assert torch.allclose(a.grad, a.detach().exp() * (1 + a.detach()))
