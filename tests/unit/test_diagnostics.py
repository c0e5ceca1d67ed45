"""Per-parameter gradient statistics, per-unit activation statistics of any module, health
rules and the non-finite origin search."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradkit.core.validation import ConfigError
from gradkit.lib import diagnostics
from gradkit.lib.diagnostics import (
    STATS_TOLERANCE,
    ForwardOrigin,
    GradStats,
    Thresholds,
    anomaly_mode,
    backward_with_origin,
    dead_units_check,
    findings,
    gradient_stats,
    health,
    max_min_ratio,
    parameter_metrics,
    parameter_stats,
    parameter_stats_check,
    recorded_activations,
    rules_check,
    verdict,
)
from gradkit.lib.models import linear_layers, mlp


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

    grads = parameter_stats(net)

    assert list(grads) == ["0.weight", "2.weight"]  # the paths of named_parameters
    assert (grads["0.weight"].norm, grads["2.weight"].norm) == (3.0, 9.0)
    assert (grads["0.weight"].mean, grads["2.weight"].mean) == (3.0, -9.0)
    assert grads["0.weight"].grad_to_weight == 2.0
    assert grads["2.weight"].grad_to_weight == 18.0
    assert max_min_ratio(grads) == (9.0, "0.weight")  # of ‖grad‖ / ‖W‖, not of the norms
    assert list(activations) == ["0"]  # named by the module whose output it activates
    assert activations["0"].mean == 3.0
    assert activations["0"].dead_fraction == 0.0


def test_a_dead_unit_is_found_and_its_layer_gets_no_gradient():
    net = tiny_net(1.5, -0.5)
    with recorded_activations(net) as activations:
        loss = F.mse_loss(net(torch.tensor([[-2.0], [-1.0]])), torch.ones(2, 1))
    loss.backward()

    grads = parameter_stats(net)
    found = findings(grads, activations, Thresholds(), loss.item())

    assert activations["0"].dead_fraction == 1.0
    assert grads["0.weight"].norm == grads["2.weight"].norm == 0.0
    assert math.isnan(max_min_ratio(grads)[0])  # no layer has a gradient: no ratio
    assert {f.kind for f in found} == {"dead_units", "vanishing"}
    assert health(found) == "warning"


def stats(ratio: float, nan: int = 0, inf: int = 0) -> GradStats:
    """A layer whose ‖grad‖ / ‖W‖ is `ratio` (its weights have norm 1)."""
    return GradStats(ratio, 0.0, 0.0, 0.0, 0.0, 0.0, ratio, nan, inf)


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
    found = findings(grads, {}, Thresholds(vanishing=1e-4, exploding=10, imbalance=1e3), 1.0)

    assert [(f.kind, f.layer) for f in found] == kinds
    assert health(found) == level
    metrics, tags = verdict(found)
    assert tags["health"] == level
    assert tags["findings"].split(",") if kinds else tags["findings"] == ""
    assert sum(v for k, v in metrics.items() if k.startswith("findings/")) == len(kinds)


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


def test_rules_read_the_gradient_relative_to_the_weights_not_its_norm():
    big_weights = GradStats(50.0, 0, 0, 0, 0, 0, 0.5, 0, 0)  # ‖grad‖ 50, ‖W‖ 100
    small_weights = GradStats(1e-3, 0, 0, 0, 0, 0, 1e-6, 0, 0)  # ‖grad‖ 1e-3, ‖W‖ 1e3

    found = findings({"layer0": big_weights, "layer1": small_weights}, {}, Thresholds(), 1.0)

    assert [(f.kind, f.layer) for f in found] == [("vanishing", "layer1"),
                                                  ("imbalance", "layer1")]
    assert Thresholds() == Thresholds(vanishing=1e-5, exploding=100.0, imbalance=1e3,
                                      dead_units=0.5)


def test_a_nan_loss_is_critical_even_with_finite_gradients():
    net = mlp(3, [4], 1, generator=torch.Generator().manual_seed(0))
    x, y = torch.randn(5, 3), torch.randn(5, 1)
    loss = F.mse_loss(net(x), y) + torch.tensor(math.nan)  # a NaN that no gradient sees
    loss.backward()
    grads = parameter_stats(net)

    found = findings(grads, {}, Thresholds(), loss.item())

    assert all(s.nan_count == s.inf_count == 0 for s in grads.values())
    assert [(f.kind, f.layer) for f in found] == [("nan_loss", "loss")]
    assert health(found) == "critical"
    assert verdict(found)[1]["findings"] == "nan_loss"


def dead_share(activation: nn.Module, z: torch.Tensor) -> float:
    """The dead fraction recorded for one unit whose pre-activations are `z`."""
    with recorded_activations(nn.Sequential(activation)) as activations:
        nn.Sequential(activation)(z.reshape(-1, 1))
    return activations["0"].dead_fraction


@pytest.mark.parametrize(("activation", "off", "on"), [
    (nn.Sigmoid(), 6.0, 4.6),  # slope 0.0025 = 0.99% of the peak 0.25; 0.0098 = 3.9%
    (nn.Tanh(), 3.2, 2.8),     # slope 0.0066 and 0.0147 of the peak 1
    (nn.ReLU(), -0.5, 1e-3),   # slope 0 and 1
    (nn.GELU(), -3.5, -2.0),   # |slope| 0.0031 and 0.064 of the peak 1.13
])
def test_a_unit_is_dead_when_saturated_on_95_percent_of_the_batch(activation, off, on):
    mostly_off = torch.tensor([off] * 19 + [on])  # off on 95% of 20 samples: dead
    less_off = torch.tensor([off] * 18 + [on] * 2)  # 90%: alive

    assert dead_share(activation, mostly_off) == 1.0
    assert dead_share(activation, less_off) == 0.0


def test_tanh_saturates_on_both_sides():
    assert dead_share(nn.Tanh(), torch.tensor([-3.0] * 10 + [3.0] * 10)) == 1.0


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_saturated_net_has_dead_units_and_the_same_net_unbiased_has_none(activation):
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    shares = {}
    for bias in (12.0, 0.0):  # biases of 12 saturate every unit, whatever its input
        net = mlp(3, [32, 32], 1, activation=activation,
                  generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            for _, layer in linear_layers(net)[:-1]:
                layer.bias.fill_(bias)
        with recorded_activations(net) as activations:
            net(x)
        shares[bias] = [a.dead_fraction for a in activations.values()]
        assert dead_units_check(net, x, activations).passed
    assert shares == {12.0: [1.0, 1.0], 0.0: [0.0, 0.0]}


def batch_and_net(dtype=torch.float32):
    net = mlp(3, [5, 4], 2, activation="tanh",
              generator=torch.Generator().manual_seed(1)).to(dtype)
    g = torch.Generator().manual_seed(2)
    return net, torch.randn(6, 3, generator=g, dtype=dtype), torch.randn(6, 2, generator=g,
                                                                        dtype=dtype)


def test_layer_norms_recomputed_in_float64_agree_with_central_differences():
    net, x, y = batch_and_net(torch.float64)
    F.mse_loss(net(x), y).backward()
    grads = parameter_stats(net)
    step = 1e-6
    for name, layer in net.named_modules():
        if not isinstance(layer, nn.Linear):
            continue
        stats = grads[f"{name}.weight"]
        direction = layer.weight.grad / layer.weight.grad.norm()
        with torch.no_grad():
            layer.weight += step * direction
            up = F.mse_loss(net(x), y).item()
            layer.weight -= 2 * step * direction
            down = F.mse_loss(net(x), y).item()
            layer.weight += step * direction
        assert stats.norm == pytest.approx((up - down) / (2 * step), rel=1e-7)
    assert parameter_stats_check(net, x, y, F.mse_loss, grads, 1e-12).passed


def test_parameter_stats_check_sees_statistics_of_the_wrong_parameter_or_a_wrong_norm():
    net, x, y = batch_and_net()
    F.mse_loss(net(x), y).backward()
    grads = parameter_stats(net)
    swapped = {**grads, "0.weight": grads["2.weight"], "2.weight": grads["0.weight"]}
    squared = {k: replace(s, norm=s.norm**2) for k, s in grads.items()}
    wrong_ratio = {**grads, "2.weight": replace(grads["2.weight"], grad_to_weight=1.0)}
    missing = {k: s for k, s in grads.items() if k != "0.bias"}

    assert parameter_stats_check(net, x, y, F.mse_loss, grads,
                                 STATS_TOLERANCE[torch.float32]).passed
    for wrong in (swapped, squared, wrong_ratio, missing):
        assert not parameter_stats_check(net, x, y, F.mse_loss, wrong, 1e-2).passed


def test_dead_units_check_sees_a_wrong_fraction():
    net, x, _ = batch_and_net()
    with recorded_activations(net) as activations:
        net(x)
    inverted = {k: replace(a, dead_fraction=1 - a.dead_fraction) for k, a in activations.items()}

    assert dead_units_check(net, x, activations).passed
    assert not dead_units_check(net, x, inverted).passed


class Gain(nn.Module):
    """A custom module with a parameter of its own: a learned gain per feature."""

    def __init__(self, features: int):
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, features))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.gain


class TokenConvNet(nn.Module):
    """Embedding -> Conv1d -> BatchNorm1d -> F.relu -> mean over positions -> Gain -> Linear."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(12, 4)
        self.conv = nn.Conv1d(4, 6, 3, padding=1)
        self.norm = nn.BatchNorm1d(6)
        self.gain = Gain(6)
        self.head = nn.Linear(6, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm(self.conv(self.embed(tokens).transpose(1, 2))))
        return self.head(self.gain(h.mean(dim=2)))


def token_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randint(12, (5, 7), generator=g), torch.randint(3, (5,), generator=g)


def test_per_parameter_norms_of_a_conv_batchnorm_embedding_model_by_finite_differences():
    """Each parameter's reported ‖∂L/∂W‖ is the slope of the loss along its gradient, by
    central differences in float64 (train mode: the batch norm uses the batch's statistics)."""
    torch.manual_seed(0)
    net = TokenConvNet().double()
    tokens, labels = token_batch()
    F.cross_entropy(net(tokens), labels).backward()
    grads = parameter_stats(net)

    assert list(grads) == ["embed.weight", "conv.weight", "conv.bias", "norm.weight",
                           "norm.bias", "gain.gain", "head.weight", "head.bias"]
    assert grads["conv.bias"].norm < 1e-12  # the batch norm takes out any shift
    probe = copy.deepcopy(net)
    step = 1e-6
    for name, param in probe.named_parameters():
        if name == "conv.bias":
            continue
        grad = net.get_parameter(name).grad
        direction = grad / grad.norm()
        with torch.no_grad():
            param += step * direction
            up = F.cross_entropy(probe(tokens), labels).item()
            param -= 2 * step * direction
            down = F.cross_entropy(probe(tokens), labels).item()
            param += step * direction
        assert grads[name].norm == pytest.approx((up - down) / (2 * step), rel=1e-6), name
        weight_norm = param.detach().norm().item()  # the batch norm's shift starts at 0
        assert grads[name].grad_to_weight == pytest.approx(
            grads[name].norm / weight_norm if weight_norm else math.inf, rel=1e-12)
    assert grads["embed.weight"].matrix and not grads["gain.gain"].matrix
    assert parameter_stats_check(net, tokens, labels, F.cross_entropy, grads, 1e-9).passed


def test_per_parameter_metrics_and_float32_check_of_a_conv_batchnorm_embedding_model():
    torch.manual_seed(0)
    net = TokenConvNet()
    tokens, labels = token_batch()
    with recorded_activations(net) as activations:
        loss = F.cross_entropy(net(tokens), labels)
    loss.backward()
    grads = parameter_stats(net)
    metrics = parameter_metrics(grads, activations)

    assert {"grad_norm/embed.weight", "grad_to_weight/conv.weight", "weight_norm/norm.bias",
            "grad_norm/gain.gain", "grad_std/head.bias", "dead_fraction/norm",
            "dead_units/norm"} <= set(metrics)
    assert list(activations) == ["norm"] and activations["norm"].units == 6  # channels
    assert parameter_stats_check(net, tokens, labels, F.cross_entropy, grads,
                                 STATS_TOLERANCE[torch.float32]).passed
    assert dead_units_check(net, tokens, activations).passed


def test_a_parameter_the_backward_does_not_reach_has_a_zero_gradient_and_vanishes():
    class Detached(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.branch = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x):
            return self.used(x) + self.branch(x).detach()

    net, x = Detached(), torch.randn(4, 3)
    loss = net(x).pow(2).mean()
    loss.backward()
    grads = parameter_stats(net)

    assert net.branch.weight.grad is None and grads["branch.weight"].norm == 0.0
    assert ("vanishing", "branch.weight") in {(f.kind, f.layer) for f in findings(
        grads, {}, Thresholds(), loss.item())}
    assert parameter_stats_check(net, x, None, lambda out, _: out.pow(2).mean(), grads,
                                 STATS_TOLERANCE[torch.float32]).passed


def dead_channels(z: torch.Tensor) -> tuple[int, ...]:
    """By hand: the channels of a ReLU's input (N, C, H, W) that are <= 0 on >= 95% of their
    N x H x W positions (a ReLU's slope is 0 there)."""
    off = (z <= 0).double().mean(dim=(0, 2, 3))
    return tuple(torch.nonzero(off >= 0.95).flatten().tolist())


def test_a_planted_dead_channel_of_the_example_convnet_is_found_by_its_module_path(
        user_project):
    """SmallConvNet applies F.relu in its forward (no module): the channel whose bias is
    -1e3 is dead on every position, and the counts match masks computed by hand."""
    from my_project.data import Stripes
    from my_project.models import SmallConvNet

    torch.manual_seed(0)
    net = SmallConvNet()
    with torch.no_grad():
        net.mix.bias[5] = -1e3
    x = torch.stack([Stripes(size=32)[i][0] for i in range(32)])
    with recorded_activations(net) as activations:
        net(x)
    with torch.no_grad():
        by_hand = {"features.1": dead_channels(net.features[1](net.features[0](x))),
                   "mix": dead_channels(net.mix(net.features(x)))}

    assert list(activations) == ["features.1", "mix"]
    assert {name: a.dead for name, a in activations.items()} == by_hand
    assert 5 in activations["mix"].dead
    assert activations["mix"].units == 16
    assert activations["mix"].dead_fraction == len(by_hand["mix"]) / 16
    assert dead_units_check(net, x, activations).passed


def test_an_in_place_activation_is_judged_on_its_input():
    """ELU at z = -10 has slope 4.5e-5 (off); at its output -0.99995 it would be 0.37."""
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    shares = []
    for inplace in (False, True):
        net = mlp(3, [16], 1, generator=torch.Generator().manual_seed(1))
        net[1] = nn.ELU(inplace=inplace)
        with torch.no_grad():
            net[0].bias[:8] = -10.0  # half the units off on every sample
        with recorded_activations(net) as activations:
            net(x)
        shares.append(activations["0"].dead_fraction)
    assert shares == [0.5, 0.5]


def test_a_tanh_method_in_a_forward_is_seen_and_named_by_its_input_module():
    class Saturated(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(3, 4)

        def forward(self, x):
            return (self.inner(x) + 12.0).tanh()  # not a module output: named by the caller

    net = nn.Sequential(nn.Linear(3, 3), Saturated())
    with recorded_activations(net) as activations:
        net(torch.randn(10, 3))
    assert list(activations) == ["1"] and activations["1"].dead_fraction == 1.0


def test_rules_check_passes_and_sees_a_rule_that_never_fires(monkeypatch):
    assert rules_check(Thresholds()).passed
    assert rules_check(Thresholds(vanishing=1e-3, exploding=10.0, imbalance=1e2)).passed
    real = diagnostics.findings
    monkeypatch.setattr(diagnostics, "findings", lambda *args: [
        f for f in real(*args) if f.kind != "exploding"])
    assert not rules_check(Thresholds()).passed


def test_forward_origin_names_the_log_of_a_negative_and_its_line():
    x = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    weight = torch.ones(2, 2, requires_grad=True)
    with ForwardOrigin() as forward:
        z = torch.log(x) @ weight  # log(-2) is NaN; the matmul only passes it on
        loss = z.sum()

    assert (forward.origin.operation, forward.origin.kind, forward.origin.phase) == (
        "torch.log", "nan", "forward")
    assert "torch.log(x) @ weight" in forward.origin.forward_line
    assert forward.origin.forward_line.startswith("test_diagnostics.py:")
    assert math.isnan(loss.item())


def test_forward_origin_of_an_inf_and_of_a_finite_forward():
    with ForwardOrigin() as forward:
        torch.tensor([1.0, 2.0]).exp().sum()
    assert forward.origin is None
    with ForwardOrigin() as forward:
        torch.tensor([0.0, 1.0]).log()
    assert (forward.origin.operation, forward.origin.kind) == ("torch.Tensor.log", "inf")
