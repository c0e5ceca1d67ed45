"""Gradient accumulation: equivalence with full batches, batch norm breaking it, memory."""

from __future__ import annotations

import logging
import time

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from gradkit.core.components import Choice, Components
from gradkit.core.experiment import RunContext
from gradkit.core.validation import ConfigError
from gradkit.experiments import accumulation
from gradkit.experiments.accumulation import (
    Accumulation,
    SharedDropout,
    has_batch_norm,
    rounding_tolerance,
    with_shared_dropout,
)

FLOATS_SAVED_PER_SAMPLE = (
    50          # the first Linear saves its input
    + 100 + 100  # ReLU saves its output; dropout multiplies it (same storage) by a saved mask
    + 100       # the second Linear saves its input (the dropout output)
    + 50 + 50   # ReLU output and mask
    + 50        # the last Linear's input
)


REGRESSION = {"_target_": "gradkit.lib.data.synthetic_regression", "size": 512,
              "input_dim": 10, "output_dim": 1}  # a train split of 308: batches 128, 128, 52


def chosen(**groups) -> Components:
    """Components choosing `groups` ({"model": {"_target_": ...}}), named after their key."""
    return Components(**{key: Choice(key, key, config) for key, config in groups.items()})


def run(dtype=torch.float32, components=None, **kwargs):
    ctx = RunContext(torch.device("cpu"), dtype, torch.Generator().manual_seed(0), None,
                     logging.getLogger("test"), components=components or Components())
    experiment = Accumulation(**{"optimizer_steps": 3, **kwargs})
    experiment.prepare(ctx)
    return experiment.run(ctx)


class Nested(nn.Module):
    """A custom module whose Dropout sits inside a Sequential attribute."""

    def __init__(self, input_shape, outputs, p: float = 0.5):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(input_shape[0], 32), nn.ReLU(), nn.Dropout(p))
        self.head = nn.Linear(32, outputs)

    def forward(self, x):
        return self.head(self.body(x))


@pytest.mark.parametrize("dropout", [0.0, 0.1, 0.5])
def test_accumulated_gradients_and_parameters_equal_full_batch_ones(dropout):
    result = run(dropout=dropout)

    assert result.checks["equivalence"].passed and result.checks["equivalence_sgd"].passed
    assert result.tags == {"equivalence": "holds"}
    assert result.metrics["grad_rel_diff"] <= 1e-6
    assert result.metrics["param_rel_diff"] <= 1e-6
    assert result.metrics["param_rel_diff/sgd"] <= 1e-6
    assert result.metrics["loss_accumulated"] == pytest.approx(result.metrics["loss_full"],
                                                               rel=1e-6)
    assert result.series["loss_full"] == pytest.approx(result.series["loss_accumulated"],
                                                       rel=1e-5)
    assert isinstance(result.figures["accumulation"], Figure)


def test_a_gradient_four_times_too_large_shows_in_the_sgd_parameters(monkeypatch):
    """Micro-batch losses not divided by the 4 accumulation steps: Adam's parameters move by
    1e-4 relative, SGD's by 50 times more."""
    monkeypatch.setattr(accumulation, "micro_share", lambda loss, rows, total: 1.0)

    result = run(optimizer_steps=10)

    assert result.metrics["param_rel_diff"] < 2e-4  # Adam barely sees the gradient's scale
    assert result.metrics["param_rel_diff/sgd"] > 20 * result.metrics["param_rel_diff"]
    assert set(result.failed_checks) == {"equivalence", "loss", "equivalence_sgd"}


def test_fifty_correct_steps_pass_though_adam_blows_up_the_rounding():
    """Adam divides by the root of the running squared gradient: rounding in near-zero
    gradients grows up to 1 / eps, so its parameters drift apart by far more than 1e-6."""
    result = run(optimizer_steps=50)

    assert result.metrics["param_rel_diff"] > 1e-5
    assert result.failed_checks == []
    assert result.metrics["param_rel_diff/sgd"] < 1e-6


def test_float64_gap_is_at_rounding_level():
    result = run(torch.float64)

    assert result.metrics["grad_rel_diff"] < 1e-13
    assert result.metrics["param_rel_diff/sgd"] < 1e-13
    assert result.checks["equivalence"].tolerance == pytest.approx(1e-12 * 128**0.5)


def test_the_tolerance_grows_with_the_square_root_of_the_items_summed():
    """A conv net on the digits (128 items a step, one thread) differs by 1.09e-6 between
    the two ways in float32: rounding, within the 1.1e-5 its batch allows, far below a bug's
    (a wrong micro-batch weight is off by 1e-1)."""
    assert rounding_tolerance(torch.float32, 1) == 1e-6
    assert rounding_tolerance(torch.float32, 128) == pytest.approx(1.131e-5, rel=1e-3)
    assert rounding_tolerance(torch.float64, 4) == pytest.approx(2e-12)


def test_batch_norm_breaks_the_equivalence_without_failing():
    result = run(batch_norm=True)

    assert result.tags == {"equivalence": "broken_by_batch_norm"}
    assert result.checks == {}
    assert result.metrics["batchnorm_gap"] > 1e-3
    assert result.metrics["loss_accumulated"] != pytest.approx(result.metrics["loss_full"],
                                                               rel=1e-4)


def test_saved_activations_by_hand_and_one_over_steps():
    result = run(accumulation_steps=4, micro_batch=8)

    assert result.metrics["saved_bytes/full_batch"] == 32 * FLOATS_SAVED_PER_SAMPLE * 4
    assert result.metrics["saved_bytes/micro_batch"] == 8 * FLOATS_SAVED_PER_SAMPLE * 4
    assert result.metrics["saved_bytes_ratio"] == 0.25
    assert result.metrics["effective_batch"] == 32


def test_times_per_step_fit_in_the_run():
    start = time.perf_counter()
    result = run()
    elapsed = time.perf_counter() - start

    for way in ("full", "accumulated"):
        assert 0 < result.metrics[f"seconds_per_step/{way}"] < elapsed / 3


def test_effective_batch_sets_the_micro_batch():
    assert Accumulation(micro_batch=None, effective_batch=128, accumulation_steps=8
                        ).micro_batch == 16


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"accumulation_steps": 0}, "experiment.accumulation_steps"),
    ({"dropout": 1.0}, "experiment.dropout"),
    ({"dropout": -0.1}, "experiment.dropout"),
    ({"micro_batch": 32, "effective_batch": 128}, "experiment.effective_batch"),
    ({"micro_batch": None, "effective_batch": 100, "accumulation_steps": 8},
     "experiment.effective_batch"),
    ({"micro_batch": 1, "batch_norm": True}, "experiment.micro_batch"),
    ({"hidden": []}, "experiment.hidden"),
    ({"learning_rate": 0}, "experiment.learning_rate"),
])
def test_bad_input_names_its_key(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        Accumulation(**kwargs)


def test_sweep_figure_skips_failed_jobs():
    done = {"job": 0, "status": "COMPLETED", "params": {"experiment.accumulation_steps": "2"},
            "metrics": {"saved_bytes/micro_batch": 1e5, "grad_rel_diff": 1e-7,
                        "param_rel_diff": 0.0, "seconds_per_step/full": 0.01,
                        "seconds_per_step/accumulated": 0.02}}
    failed = {"job": 1, "status": "FAILED", "params": {}, "metrics": {}}

    assert isinstance(Accumulation.sweep_figure([done, failed]), Figure)
    assert Accumulation.sweep_figure([failed]) is None


def test_a_chosen_conv_net_on_the_digits_keeps_the_identity_and_cycles(caplog):
    """The digits' train split gives 8 batches of 128 and one of 55 (micro-batches 32 + 23):
    the 10 steps cycle, and the short batch's losses are weighted by their share."""
    cnn = {"_target_": "gradkit.lib.models.conv_net", "channels": [4, 8]}
    with caplog.at_level(logging.INFO, logger="test"):
        result = run(components=chosen(model=cnn, data={
            "_target_": "gradkit.lib.data.digits_dataset"}), optimizer_steps=10)

    assert result.failed_checks == [] and set(result.checks) == {
        "equivalence", "loss", "equivalence_sgd"}
    assert result.tags == {"equivalence": "holds"}
    assert "data=data: the train split gives 9 batches; cycled for 10 steps" in caplog.text
    assert {"grad_diff/0.weight", "grad_diff/3.bias", "grad_diff/7.weight"} <= set(
        result.metrics)
    assert result.summary["parameters"] == 4 * 9 + 4 + 8 * 4 * 9 + 8 + 8 * 2 * 2 * 10 + 10


def test_a_short_last_batch_weighs_each_micro_batch_by_its_share(monkeypatch):
    """The third batch holds 52 items: micro-batches of 32 and 20, whose mean losses weigh
    32/52 and 20/52 (not 1/4 each) in the full batch's mean."""
    components = chosen(data=REGRESSION)
    assert run(components=components).failed_checks == []

    monkeypatch.setattr(accumulation, "micro_share", lambda loss, rows, total: rows / 128)
    assert "equivalence_sgd" in run(components=components).failed_checks


def test_a_summed_loss_adds_the_micro_batch_losses_unscaled():
    summed = {"_target_": "torch.nn.MSELoss", "reduction": "sum"}
    result = run(components=chosen(data=REGRESSION, loss=summed))

    assert result.failed_checks == []
    assert result.metrics["loss_full"] > 100 * result.metrics["final_loss_full"] / 308 > 0


def test_dropout_nested_in_a_custom_module_shares_its_mask():
    model = Nested((10,), 1)
    [shared] = with_shared_dropout(model, torch.randn(2, 10))

    assert model.body[2] is shared and shared.shape == (32,) and shared.p == 0.5
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    result = run(components=chosen(model={"_target_": f"{__name__}.Nested"}, data=REGRESSION))
    assert result.failed_checks == []
    assert result.metrics["grad_rel_diff"] <= 1e-6


def test_batch_norm_in_a_chosen_model_is_reported_not_checked():
    mlp = {"_target_": "gradkit.lib.models.mlp_for", "hidden": [16], "batch_norm": True}
    result = run(components=chosen(model=mlp, data=REGRESSION))

    assert has_batch_norm(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
    assert not has_batch_norm(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))
    assert result.tags == {"equivalence": "broken_by_batch_norm"} and result.checks == {}
    assert result.metrics["batchnorm_gap"] > 1e-3
    assert "batch statistics" in result.summary["batch_norm"]


def test_shared_dropout_refuses_to_train_without_a_mask():
    with pytest.raises(TypeError):
        SharedDropout(0.5)(torch.ones(2, 3))
