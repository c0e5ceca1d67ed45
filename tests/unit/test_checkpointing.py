"""Gradient checkpointing: equal gradients, saved bytes by hand, segments."""

from __future__ import annotations

import logging
from contextlib import contextmanager

import pytest
import torch
from matplotlib.figure import Figure

from gradkit.core.experiment import RunContext
from gradkit.core.validation import ConfigError
from gradkit.experiments import checkpointing
from gradkit.experiments.checkpointing import (
    Checkpointing,
    build,
    expected_saved_bytes,
    forward_backward,
    meter_error,
    segment_bounds,
    segment_saved_bytes,
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

    assert result.failed_checks == []
    assert result.metrics["output_abs_diff"] <= 1e-6
    input_bytes = 10 * 50 * 4  # the input is allocated before the passes
    for way in ("plain", "checkpointed"):
        assert result.metrics[f"peak_bytes.{way}"] >= result.metrics[
            f"saved_bytes.{way}"] - input_bytes
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
    x = torch.randn(BATCH, WIDTH)  # each segment: its input, then one output per block
    assert segment_saved_bytes(mlp_stack(4), x, 2) == [3 * ACTIVATION, 3 * ACTIVATION]
    assert segment_saved_bytes(mlp_stack(5), x, 2) == [3 * ACTIVATION, 4 * ACTIVATION]


@pytest.mark.parametrize("block", ["chain", "mlp"])
@pytest.mark.parametrize(("depth", "segments"), [(4, 0), (4, 1), (4, 2), (5, 2), (6, 3),
                                                 (5, 5)])
def test_a_checkpointed_forward_saves_what_its_segments_add_up_to(block, depth, segments):
    model = build(block, depth, WIDTH, "relu", torch.Generator().manual_seed(0))
    x = torch.randn(BATCH, WIDTH)
    pieces = segment_saved_bytes(model, x, segments or 1)

    assert forward_backward(model, x, segments).saved_bytes == expected_saved_bytes(x, pieces)


def test_segment_bounds_off_by_one_fail_the_run(monkeypatch):
    real = checkpointing.segment_bounds

    def shifted(depth, segments):
        bounds = real(depth, segments)
        return [(0, bounds[0][1] + 1), *((a + 1, b) for a, b in bounds[1:])]

    assert run(depth=8, segments=4).failed_checks == []
    monkeypatch.setattr(checkpointing, "segment_bounds", shifted)
    assert "saved_by_segment" in run(depth=8, segments=4).failed_checks


def test_the_peak_is_measured_and_counts_the_gradient_buffers():
    """A Linear stack of width 256: its 16 weight gradients (4 MiB) outweigh the saved
    activations (under 0.1 MiB), and checkpointing cannot make them smaller."""
    result = run(block="mlp", depth=16, width=256, batch_size=4, segments=4)

    grad_bytes = 16 * (256 * 256 + 256) * 4
    for way in ("plain", "checkpointed"):
        assert result.metrics[f"saved_bytes.{way}"] < 0.1 * 2**20
        assert grad_bytes <= result.metrics[f"peak_bytes.{way}"] < 1.1 * grad_bytes
    assert result.metrics["saved_bytes.checkpointed"] < result.metrics["saved_bytes.plain"]


def test_the_end_state_of_a_pass_is_accounted_for_byte_by_byte():
    model, x = mlp_stack(3), torch.randn(BATCH, WIDTH)
    passes = [forward_backward(model, x, 0), forward_backward(model, x, 2)]

    kept = ACTIVATION * 2 + 3 * (WIDTH * WIDTH + WIDTH) * 4  # output, x.grad, parameters'
    assert [p.final_bytes for p in passes] == [kept, kept]
    assert meter_error(passes, 1) == 0.0
    assert torch.equal(passes[0].grads[1], passes[1].grads[1])


def test_a_missing_zero_grad_fails_the_run_of_the_parameter_free_chain(monkeypatch):
    monkeypatch.setattr(torch.nn.Module, "zero_grad", lambda self, set_to_none=True: None)
    result = run(block="chain")

    assert result.checks["gradients_equal"].passed  # the chain has no parameters to see it
    assert "memory_meter" in result.failed_checks


def _only_the_forward(memory) -> None:
    memory.final = memory.peak  # as if only the forward's allocations were seen


def _peak_is_the_end(memory) -> None:
    memory.peak = memory.final  # a peak below the saved activations


@pytest.mark.parametrize("spoil", [_only_the_forward, _peak_is_the_end])
def test_a_meter_that_misreads_the_passes_fails_the_run(spoil, monkeypatch):
    real = checkpointing.live_memory

    @contextmanager
    def spoilt(device):
        with real(device) as memory:
            yield memory
        spoil(memory)

    monkeypatch.setattr(checkpointing, "live_memory", spoilt)
    assert "memory_meter" in run().failed_checks


def test_checkpointing_saves_memory_on_the_notebook_chain():
    none, four = run(segments=0, depth=8), run(segments=4, depth=8)

    assert none.metrics["saved_bytes.checkpointed"] == none.metrics["saved_bytes.plain"]
    assert four.metrics["saved_bytes.checkpointed"] < 0.6 * four.metrics["saved_bytes.plain"]
    assert four.metrics["peak_bytes.checkpointed"] < four.metrics["peak_bytes.plain"]
    assert four.metrics["memory_saving"] > 0.1
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
             "metrics": {"peak_bytes.checkpointed": 1e6 / (s + 1),
                         "saved_bytes.checkpointed": 1e6 / (s + 1),
                         "seconds.checkpointed": 0.01, "seconds.plain": 0.01}}
            for i, s in enumerate((0, 2))]
    failed = {"job": 2, "status": "FAILED", "params": {}, "metrics": {}}

    assert isinstance(Checkpointing.sweep_figure([*done, failed]), Figure)
    assert Checkpointing.sweep_figure([failed]) is None
