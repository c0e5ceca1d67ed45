"""Built-in networks: an MLP with selectable activation and init, a small conv net; seeded
from the run's generator, and sized to the data as options of the `model` config group."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

from gradkit.core.validation import ConfigError, choice, integer, number

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}
INITS = ("xavier_normal", "kaiming_normal", "problematic", "normal:<std>")
# The notebook's badly scaled init: a huge first layer, tiny hidden and output layers.
PROBLEMATIC_STD = {"first": 5.0, "hidden": 0.01, "output": 0.001}


def check_activation(key: str, name: str) -> str:
    """`name` if it is a known activation, else a ConfigError listing them."""
    return choice(key, name, ACTIVATIONS)


def check_init(key: str, spec: str) -> str:
    """`spec` if it names an init scheme (`normal:<std>` with std > 0 included)."""
    if isinstance(spec, str) and spec.startswith("normal:"):
        try:
            std = float(spec.removeprefix("normal:"))
        except ValueError:
            std = float("nan")
        number(key, std, positive=True)
        return spec
    if spec not in INITS[:-1]:
        raise ConfigError(f"{key}={spec!r} is not allowed; choose one of: {', '.join(INITS)}")
    return spec


def check_widths(key: str, hidden: Sequence[int]) -> tuple[int, ...]:
    """Hidden widths as a non-empty tuple of positive integers."""
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence) or not hidden:
        raise ConfigError(f"{key}={hidden!r} must be a non-empty list of widths, e.g. [32, 32]")
    return tuple(integer(f"{key}[{i}]", width, minimum=1) for i, width in enumerate(hidden))


def mlp(input_dim: int, hidden: Sequence[int], output_dim: int, *, activation: str = "relu",
        init: str = "xavier_normal", batch_norm: bool = False, dropout: float = 0.0,
        generator: torch.Generator | None = None) -> nn.Sequential:
    """Linear -> [BatchNorm] -> activation -> [Dropout] per hidden width, then a Linear head.

    Weights are drawn from `generator` (biases start at zero), so a seed fixes the network.
    """
    widths = [input_dim, *hidden, output_dim]
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(pairwise(widths)):
        last = i == len(widths) - 2
        linear = nn.Linear(fan_in, fan_out)
        _initialise(linear, init, "output" if last else "first" if i == 0 else "hidden",
                    generator)
        layers.append(linear)
        if last:
            break
        if batch_norm:
            layers.append(nn.BatchNorm1d(fan_out))
        layers.append(ACTIVATIONS[activation]())
        if dropout:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def parameter_count(model: nn.Module) -> int:
    """The model's parameter entries (weights and biases), as compare views plot them."""
    return sum(p.numel() for p in model.parameters())


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The model's Linear layers as (`layer<i>`, module), input to output."""
    found = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return [(f"layer{i}", m) for i, m in enumerate(found)]


def _initialise(linear: nn.Linear, init: str, position: str,
                generator: torch.Generator | None) -> None:
    with torch.no_grad():
        if init == "xavier_normal":
            nn.init.xavier_normal_(linear.weight, generator=generator)
        elif init == "kaiming_normal":
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu", generator=generator)
        else:
            std = PROBLEMATIC_STD[position] if init == "problematic" else float(init[7:])
            nn.init.normal_(linear.weight, 0.0, std, generator=generator)
        linear.bias.zero_()


CLASSIFIERS = ("cnn", "mlp")


def conv_net(input_shape: Sequence[int], outputs: int, channels: Sequence[int] = (16, 32),
             generator: torch.Generator | None = None) -> nn.Sequential:
    """Conv3x3-ReLU-MaxPool2 blocks of `channels` over (C, H, W) inputs, then a Linear head.

    Kaiming-normal conv weights and a Xavier-normal head drawn from `generator` (the global
    generator when None), zero biases. H and W must be divisible by 2 ** len(channels).
    """
    if len(input_shape) != 3:
        raise ConfigError(f"model=cnn takes (channels, height, width) inputs; the data's "
                          f"inputs have shape {list(input_shape)}")
    in_channels, height, width = input_shape
    shrink = 2 ** len(channels)
    if height % shrink or width % shrink:
        raise ConfigError(f"model.channels={list(channels)} halves the {height}x{width} "
                          f"inputs {len(channels)} times; they must be divisible by {shrink}")
    layers: list[nn.Module] = []
    for fan_in, fan_out in pairwise([in_channels, *channels]):
        layers += [nn.Conv2d(fan_in, fan_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    model = nn.Sequential(*layers, nn.Flatten(),
                          nn.Linear(channels[-1] * (height // shrink) * (width // shrink),
                                    outputs))
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu", generator=generator)
                layer.bias.zero_()
        _initialise(model[-1], "xavier_normal", "output", generator)
    return model


def mlp_for(input_shape: Sequence[int], outputs: int, hidden: Sequence[int] = (64,),
            activation: str = "relu", init: str = "xavier_normal", batch_norm: bool = False,
            dropout: float = 0.0) -> nn.Sequential:
    """`mlp` sized to the data: inputs of any shape flattened, `outputs` units at the head."""
    widths = check_widths("model.hidden", hidden)
    check_activation("model.activation", activation)
    check_init("model.init", init)
    features = math.prod(input_shape)
    body = mlp(features, widths, outputs, activation=activation, init=init,
               batch_norm=batch_norm, dropout=dropout)
    return nn.Sequential(nn.Flatten(), *body) if len(input_shape) > 1 else body


def digits_cnn(classes: int = 10, generator: torch.Generator | None = None) -> nn.Sequential:
    """A small CNN for 1x8x8 images: two conv-ReLU-pool blocks (8 -> 4 -> 2), a Linear head."""
    return conv_net((1, 8, 8), classes, generator=generator)


def image_classifier(kind: str, classes: int = 10, generator: torch.Generator | None = None
                     ) -> nn.Sequential:
    """`cnn` (digits_cnn) or `mlp` (flatten, then 64 -> 64 -> classes, ReLU) for 1x8x8 images."""
    if kind == "cnn":
        return digits_cnn(classes, generator)
    return nn.Sequential(nn.Flatten(), *mlp(64, [64], classes, generator=generator))
