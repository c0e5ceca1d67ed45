"""Gradient accumulation: equivalence with full batches, batch norm breaking it, memory."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from gradkit.core.experiment import RunContext
from gradkit.core.validation import ConfigError
from gradkit.experiments import accumulation
from gradkit.experiments.accumulation import Accumulation

FLOATS_SAVED_PER_SAMPLE = (
    50          # the first Linear saves its input
    + 100 + 100  # ReLU saves its output; dropout multiplies it (same storage) by a saved mask
    + 100       # the second Linear saves its input (the dropout output)
    + 50 + 50   # ReLU output and mask
    + 50        # the last Linear's input
)


def run(dtype=torch.float32, **kwargs):
    ctx = RunContext(torch.device("cpu"), dtype, torch.Generator().manual_seed(0), None,
                     logging.getLogger("test"))
    return Accumulation(**{"optimizer_steps": 3, **kwargs}).run(ctx)


@pytest.mark.parametrize("dropout", [0.0, 0.1, 0.5])
def test_accumulated_gradients_and_parameters_equal_full_batch_ones(dropout):
    result = run(dropout=dropout)

    assert result.checks["equivalence"].passed and result.checks["equivalence_sgd"].passed
    assert result.tags == {"equivalence": "holds"}
    assert result.metrics["grad_rel_diff"] <= 1e-6
    assert result.metrics["param_rel_diff"] <= 1e-6
    assert result.metrics["param_rel_diff.sgd"] <= 1e-6
    assert result.metrics["loss_accumulated"] == pytest.approx(result.metrics["loss_full"],
                                                               rel=1e-6)
    assert result.series["loss_full"] == pytest.approx(result.series["loss_accumulated"],
                                                       rel=1e-5)
    assert isinstance(result.figures["accumulation"], Figure)


def test_a_gradient_four_times_too_large_shows_in_the_sgd_parameters(monkeypatch):
    """Micro-batch losses not divided by the 4 accumulation steps: Adam's parameters move by
    1e-4 relative, SGD's by 50 times more."""
    def unscaled(prediction, target):  # undoes the 1 / steps of each micro-batch's loss
        return F.mse_loss(prediction, target) * (4 if len(prediction) == 32 else 1)

    monkeypatch.setattr(accumulation, "F", SimpleNamespace(mse_loss=unscaled))

    result = run(optimizer_steps=10)

    assert result.metrics["param_rel_diff"] < 2e-4  # Adam barely sees the gradient's scale
    assert result.metrics["param_rel_diff.sgd"] > 20 * result.metrics["param_rel_diff"]
    assert set(result.failed_checks) == {"equivalence", "loss", "equivalence_sgd"}


def test_fifty_correct_steps_pass_though_adam_blows_up_the_rounding():
    """Adam divides by the root of the running squared gradient: rounding in near-zero
    gradients grows up to 1 / eps, so its parameters drift apart by far more than 1e-6."""
    result = run(optimizer_steps=50)

    assert result.metrics["param_rel_diff"] > 1e-5
    assert result.failed_checks == []
    assert result.metrics["param_rel_diff.sgd"] < 1e-6


def test_float64_gap_is_at_rounding_level():
    result = run(torch.float64)

    assert result.metrics["grad_rel_diff"] < 1e-13
    assert result.metrics["param_rel_diff.sgd"] < 1e-13
    assert result.checks["equivalence"].tolerance == 1e-12


def test_batch_norm_breaks_the_equivalence_without_failing():
    result = run(batch_norm=True)

    assert result.tags == {"equivalence": "broken_by_batch_norm"}
    assert result.checks == {}
    assert result.metrics["batchnorm_gap"] > 1e-3
    assert result.metrics["loss_accumulated"] != pytest.approx(result.metrics["loss_full"],
                                                               rel=1e-4)


def test_saved_activations_by_hand_and_one_over_steps():
    result = run(accumulation_steps=4, micro_batch=8)

    assert result.metrics["saved_bytes.full_batch"] == 32 * FLOATS_SAVED_PER_SAMPLE * 4
    assert result.metrics["saved_bytes.micro_batch"] == 8 * FLOATS_SAVED_PER_SAMPLE * 4
    assert result.metrics["saved_bytes_ratio"] == 0.25
    assert result.metrics["effective_batch"] == 32


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
            "metrics": {"saved_bytes.micro_batch": 1e5, "grad_rel_diff": 1e-7,
                        "param_rel_diff": 0.0, "seconds_per_step.full": 0.01,
                        "seconds_per_step.accumulated": 0.02}}
    failed = {"job": 1, "status": "FAILED", "params": {}, "metrics": {}}

    assert isinstance(Accumulation.sweep_figure([done, failed]), Figure)
    assert Accumulation.sweep_figure([failed]) is None
