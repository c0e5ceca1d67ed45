"""Gradient checkpointing: equal gradients, saved bytes by hand, segments."""

from __future__ import annotations

import logging
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from gradkit.core.components import Choice, Components
from gradkit.core.experiment import RunContext
from gradkit.core.validation import ConfigError
from gradkit.experiments import checkpointing
from gradkit.experiments.checkpointing import (
    Checkpointing,
    as_chain,
    build,
    expected_saved_bytes,
    forward_backward,
    meter_error,
    segment_bounds,
    segment_saved_bytes,
)
from gradkit.lib.models import mlp_for

BATCH, WIDTH = 5, 16


ACTIVATION = BATCH * WIDTH * 4  # bytes of one float32 activation


REGRESSION = {"_target_": "gradkit.lib.data.synthetic_regression", "size": 64, "input_dim": 10,
              "output_dim": 1}
DIGITS = {"_target_": "gradkit.lib.data.digits_dataset"}


def mlp(**kwargs) -> dict:
    return {"_target_": "gradkit.lib.models.mlp_for", "hidden": [64, 32], **kwargs}


def context(**groups) -> RunContext:
    """A CPU float32 context choosing `groups` ({"model": {"_target_": ...}})."""
    return RunContext(torch.device("cpu"), torch.float32, torch.Generator().manual_seed(0), None,
                      logging.getLogger("test"), components=Components(
                          **{key: Choice(key, key, config) for key, config in groups.items()}))


def prepared(components: dict | None = None, **kwargs) -> tuple[Checkpointing, RunContext]:
    ctx = context(**(components or {}))
    small = {"depth": 4, "width": 50, "batch_size": 10, "repeats": 1}
    experiment = Checkpointing(**{**small, **kwargs})
    experiment.prepare(ctx)
    return experiment, ctx


def run(components: dict | None = None, **kwargs):
    experiment, ctx = prepared(components, **kwargs)
    return experiment.run(ctx)


@pytest.mark.parametrize("block", ["chain", "mlp"])
@pytest.mark.parametrize("segments", [0, 2, 4])
def test_checkpointed_gradients_equal_plain_ones(block, segments):
    result = run(block=block, segments=segments)

    assert result.failed_checks == []
    assert result.metrics["output_abs_diff"] <= 1e-6
    input_bytes = 10 * 50 * 4  # the input is allocated before the passes
    for way in ("plain", "checkpointed"):
        assert result.metrics[f"peak_bytes/{way}"] >= result.metrics[
            f"saved_bytes/{way}"] - input_bytes
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
    expected = expected_saved_bytes(model, x, segments or 1)

    assert forward_backward(model, x, segments).saved_bytes == expected
    assert expected == (len(pieces) - 1) * x.untyped_storage().nbytes() + pieces[-1]


@pytest.mark.parametrize(("segments", "activations"), [
    (2, 64 + 64 + 32),       # the images; the last segment: the 64 its Linear saves, a ReLU's 32
    (3, 64 + 64 + 32),       # the images, a Linear's output; the last: the ReLU's output
    (4, 64 + 0 + 64 + 64 + 32),  # the second input is the Flatten view of the images
    (6, 64 + 0 + 64 + 64 + 32 + 32),
])
def test_segment_inputs_of_other_shapes_and_views_are_counted_by_storage(segments, activations):
    """Flatten, 64 -> 64 -> 32 -> 3 on 1x8x8 images: segment inputs are not shaped like the
    input, and after the Flatten one is a view of it (a storage counted once)."""
    model = mlp_for((1, 8, 8), 3, (64, 32))
    x = torch.randn(BATCH, 1, 8, 8)

    assert forward_backward(model, x, segments).saved_bytes == activations * BATCH * 4
    assert expected_saved_bytes(model, x, segments) == activations * BATCH * 4


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
        assert result.metrics[f"saved_bytes/{way}"] < 0.1 * 2**20
        assert grad_bytes <= result.metrics[f"peak_bytes/{way}"] < 1.1 * grad_bytes
    assert result.metrics["saved_bytes/checkpointed"] < result.metrics["saved_bytes/plain"]


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

    assert none.metrics["saved_bytes/checkpointed"] == none.metrics["saved_bytes/plain"]
    assert four.metrics["saved_bytes/checkpointed"] < 0.6 * four.metrics["saved_bytes/plain"]
    assert four.metrics["peak_bytes/checkpointed"] < four.metrics["peak_bytes/plain"]
    assert four.metrics["memory_saving"] > 0.1
    assert none.metrics["memory_saving"] == 0.0


@pytest.mark.parametrize(("kwargs", "key"), [
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
             "metrics": {"peak_bytes/checkpointed": 1e6 / (s + 1),
                         "saved_bytes/checkpointed": 1e6 / (s + 1),
                         "seconds/checkpointed": 0.01, "seconds/plain": 0.01}}
            for i, s in enumerate((0, 2))]
    failed = {"job": 2, "status": "FAILED", "params": {}, "metrics": {}}

    assert isinstance(Checkpointing.sweep_figure([*done, failed]), Figure)
    assert Checkpointing.sweep_figure([failed]) is None


def test_more_segments_than_blocks_are_refused_before_the_run():
    with pytest.raises(ConfigError, match=r"experiment\.segments=17 must be <= experiment\."
                                          r"depth=16 \(0 = no checkpointing\)"):
        prepared(depth=16, segments=17)
    with pytest.raises(ConfigError, match=r"experiment\.segments=4 must be <= the 3 blocks of "
                                          "model=model"):
        prepared({"model": mlp(hidden=[8]), "data": REGRESSION}, segments=4)


def test_a_chosen_chain_on_chosen_data_keeps_the_identities_under_its_loss():
    experiment, ctx = prepared({"model": mlp(), "data": REGRESSION}, segments=3)
    result = experiment.run(ctx)

    assert result.failed_checks == [] and len(result.checks) == 3
    x, y = experiment.workload.data.tensors("train", 10)
    assert result.metrics["loss"] == pytest.approx(F.mse_loss(experiment.chain(x), y).item(),
                                                   rel=1e-6)
    assert result.summary["blocks"] == 5 and result.summary["segment_blocks"] == [
        (0, 1), (1, 2), (2, 5)]


def test_the_own_chain_keeps_the_notebooks_loss_the_sum_of_its_outputs():
    experiment, ctx = prepared(block="mlp", segments=2)
    result = experiment.run(ctx)

    x, _ = experiment.workload.data.tensors("train")
    assert result.metrics["loss"] == pytest.approx(experiment.chain(x).sum().item(), rel=1e-6)


def test_dropout_in_a_chain_drops_the_same_units_in_both_passes():
    result = run({"model": mlp(dropout=0.5), "data": REGRESSION}, segments=3)

    assert result.failed_checks == []
    assert result.metrics["grad_max_abs_diff"] == 0.0


class Blocks(nn.Module):
    """A model exposing its blocks, which its forward runs in turn (`skip`: plus its input)."""

    def __init__(self, input_shape, outputs, skip: bool = False):
        super().__init__()
        width = input_shape[0]
        self.blocks = nn.ModuleList([nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width),
                                     nn.Tanh()])
        self.skip = skip

    def forward(self, x):
        y = x
        for block in self.blocks:
            y = block(y)
        return y + x if self.skip else y


class Branching(nn.Module):
    """Not a chain: a Sequential inside, and a skip connection around it."""

    def __init__(self, input_shape, outputs):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(input_shape[0], input_shape[0]), nn.ReLU())
        self.head = nn.Linear(input_shape[0], outputs)

    def forward(self, x):
        return self.head(x + self.body(x))


def test_a_model_exposing_its_blocks_is_run_as_their_chain():
    result = run({"model": {"_target_": f"{__name__}.Blocks"}}, width=8, segments=2)

    assert result.failed_checks == [] and result.summary["blocks"] == 4


def test_blocks_the_forward_does_not_just_chain_are_refused():
    with pytest.raises(ConfigError, match="model=model: its forward is not its `blocks` run in "
                                          "turn"):
        prepared({"model": {"_target_": f"{__name__}.Blocks", "skip": True}}, width=8)


def test_a_model_that_is_not_a_chain_is_refused_in_one_line():
    with pytest.raises(ConfigError) as refused:
        prepared({"model": {"_target_": f"{__name__}.Branching"}, "data": REGRESSION})

    assert str(refused.value).startswith(
        "model=model is not an nn.Sequential or a list of blocks; ")
    assert "Branching" in str(refused.value) and "\n" not in str(refused.value)
    chain = nn.Sequential(nn.Linear(2, 2))
    assert as_chain(chain, "x", torch.ones(1, 2)) is chain
