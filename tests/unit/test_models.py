"""The shared MLP builder and synthetic data: shapes, seeding, init scales."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradkit.core.validation import ConfigError
from gradkit.lib.data import classification_batch, regression_batch
from gradkit.lib.models import check_activation, check_init, check_widths, linear_layers, mlp


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_mlp_layout_and_shapes():
    model = mlp(3, [4, 6, 4], 2, activation="tanh", batch_norm=True, dropout=0.1,
                generator=seeded())
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Linear", "BatchNorm1d", "Tanh", "Dropout"] * 3 + ["Linear"]
    assert [(m.in_features, m.out_features) for _, m in linear_layers(model)] == [
        (3, 4), (4, 6), (6, 4), (4, 2)]
    assert model(torch.randn(5, 3)).shape == (5, 2)


def test_same_generator_seed_gives_same_weights():
    first, second = (mlp(3, [8], 2, generator=seeded(7)) for _ in range(2))
    other = mlp(3, [8], 2, generator=seeded(8))
    for a, b, c in zip(first.parameters(), second.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
        assert not torch.equal(a, c) or not a.any()


@pytest.mark.parametrize(("init", "stds"), [
    ("problematic", [5.0, 0.01, 0.01, 0.001]),
    ("normal:0.2", [0.2, 0.2, 0.2, 0.2]),
    ("xavier_normal", [(2 / (400 + 300)) ** 0.5, (2 / 600) ** 0.5, (2 / 600) ** 0.5,
                       (2 / 310) ** 0.5]),
    ("kaiming_normal", [(2 / 400) ** 0.5, (2 / 300) ** 0.5, (2 / 300) ** 0.5,
                        (2 / 300) ** 0.5]),
])
def test_init_scales(init, stds):
    model = mlp(400, [300, 300, 300], 10, init=init, generator=seeded())
    for (_, layer), std in zip(linear_layers(model), stds, strict=True):
        assert layer.weight.std().item() == pytest.approx(std, rel=0.05)
        assert not layer.bias.any()


def test_no_hidden_layer_is_one_linear():
    model = mlp(3, [], 2, generator=seeded())
    assert [type(m) for m in model] == [nn.Linear]


@pytest.mark.parametrize(("check", "value"), [
    (check_activation, "swish"), (check_init, "uniform"), (check_init, "normal:-1"),
    (check_init, "normal:abc"), (check_widths, []), (check_widths, [4, 0]),
    (check_widths, "32"),
])
def test_bad_model_settings_name_the_key(check, value):
    with pytest.raises(ConfigError, match=r"experiment\.k"):
        check("experiment.k", value)


def test_synthetic_batches_are_seeded():
    x1, y1 = regression_batch(16, 3, 2, seeded(1))
    x2, y2 = regression_batch(16, 3, 2, seeded(1))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert y1.shape == (16, 2)
    x, labels = classification_batch(64, 5, 4, seeded(1), dtype=torch.float64)
    assert x.dtype == torch.float64 and labels.shape == (64,)
    assert set(labels.tolist()) <= {0, 1, 2, 3} and len(set(labels.tolist())) > 1
