"""Gradient checkpointing: equal gradients, saved bytes by hand, segments."""

from __future__ import annotations

import logging

import pytest
import torch
from matplotlib.figure import Figure

from gradkit.core.experiment import RunContext
from gradkit.core.validation import ConfigError
from gradkit.experiments.checkpointing import (
    Checkpointing,
    build,
    forward_backward,
    recompute_bytes,
    segment_bounds,
)

BATCH, WIDTH = 5, 16


ACTIVATION = BATCH * WIDTH * 4  # bytes of one float32 activation


def run(**kwargs):
    ctx = RunContext(torch.device("cpu"), torch.float32, torch.Generator().manual_seed(0), None,
                     logging.getLogger("test"))
    small = {"depth": 4, "width": 50, "batch_size": 10, "repeats": 1}
    return Checkpointing(**{**small, **kwargs}).run(ctx)


@pytest.mark.parametrize("block", ["chain", "mlp"])
@pytest.mark.parametrize("segments", [0, 2, 4])
def test_checkpointed_gradients_equal_plain_ones(block, segments):
    result = run(block=block, segments=segments)

    assert result.checks["gradients_equal"].passed
    assert result.metrics["output_abs_diff"] <= 1e-6
    assert result.metrics["peak_saved_bytes.checkpointed"] >= result.metrics[
        "saved_bytes.checkpointed"]
    assert isinstance(result.figures["checkpointing"], Figure)


@pytest.mark.parametrize(("depth", "segments", "bounds"), [
    (16, 4, [(0, 4), (4, 8), (8, 12), (12, 16)]),
    (16, 3, [(0, 5), (5, 10), (10, 16)]),
    (4, 1, [(0, 4)]),
    (3, 3, [(0, 1), (1, 2), (2, 3)]),
])
def test_segment_bounds_follow_checkpoint_sequential(depth, segments, bounds):
    assert segment_bounds(depth, segments) == bounds


def mlp_stack(depth: int):
    return build("mlp", depth, WIDTH, "relu", torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("segments", "activations"), [
    (0, 1 + 4),      # the input (saved by the first Linear) and each ReLU's output
    (1, 1 + 4),      # one segment is the last one, which checkpoint_sequential runs plain
    (2, 1 + 1 + 2),  # checkpointed segment: its input; the plain last one: input + 2 outputs
    (4, 3 + 1 + 1),  # three segment inputs; the last block: its input and its output
])
def test_saved_bytes_of_a_linear_relu_stack_by_hand(segments, activations):
    x = torch.randn(BATCH, WIDTH)
    measured = forward_backward(mlp_stack(4), x, segments)

    assert measured.saved_bytes == activations * ACTIVATION


def test_each_segment_recomputes_its_own_activations():
    x = torch.randn(BATCH, WIDTH)
    assert recompute_bytes(mlp_stack(4), x, 2) == [2 * ACTIVATION, 2 * ACTIVATION]
    assert recompute_bytes(mlp_stack(5), x, 2) == [2 * ACTIVATION, 3 * ACTIVATION]


def test_checkpointing_saves_memory_on_the_notebook_chain():
    none, four = run(segments=0, depth=8), run(segments=4, depth=8)

    assert none.metrics["saved_bytes.checkpointed"] == none.metrics["saved_bytes.plain"]
    assert four.metrics["saved_bytes.checkpointed"] < 0.6 * four.metrics["saved_bytes.plain"]
    assert four.metrics["memory_saving"] > 0.4
    assert none.metrics["memory_saving"] == 0.0


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"segments": 17, "depth": 16}, "experiment.segments"),
    ({"segments": -1}, "experiment.segments"),
    ({"block": "conv"}, "experiment.block"),
    ({"depth": 0}, "experiment.depth"),
    ({"activation": "swish"}, "experiment.activation"),
])
def test_bad_input_names_its_key(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        Checkpointing(**kwargs)


def test_sweep_figure_skips_failed_jobs():
    done = [{"job": i, "status": "COMPLETED", "params": {"experiment.segments": str(s)},
             "metrics": {"peak_saved_bytes.checkpointed": 1e6 / (s + 1),
                         "saved_bytes.checkpointed": 1e6 / (s + 1),
                         "seconds.checkpointed": 0.01, "seconds.plain": 0.01}}
            for i, s in enumerate((0, 2))]
    failed = {"job": 2, "status": "FAILED", "params": {}, "metrics": {}}

    assert isinstance(Checkpointing.sweep_figure([*done, failed]), Figure)
    assert Checkpointing.sweep_figure([failed]) is None
