"""The saved-activation meter against computations whose saved tensors are known."""

from __future__ import annotations

import gc

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from gradkit.lib.memory import SavedTensorMeter, cuda_peak, live_memory

N = 100


FLOAT = 4  # bytes


def test_exp_saves_its_output_and_sin_saves_the_same_storage_once():
    a = torch.randn(N, requires_grad=True)
    meter = SavedTensorMeter()
    with meter.measure():
        b = a.exp()   # saves its result b
        c = b.sin()   # saves its input b: the same storage, counted once
        c.sum()       # saves no tensor

    assert (meter.tensors, meter.bytes) == (1, N * FLOAT)


def test_mul_saves_both_operands_but_parameters_are_left_out():
    x = torch.randn(N, requires_grad=True)
    y = torch.randn(N, requires_grad=True)
    weight = nn.Parameter(torch.randn(N))
    meter = SavedTensorMeter()
    with meter.measure():
        x * y           # saves x and y
        weight * x      # saves weight (a parameter: excluded) and x (seen)

    assert meter.bytes == 2 * N * FLOAT


def test_excluded_views_of_a_parameter_and_float64_sizes():
    linear = nn.Linear(10, 20).double()
    x = torch.randn(5, 10, dtype=torch.float64)
    meter = SavedTensorMeter(exclude=linear.parameters())
    with meter.measure():
        torch.relu(linear(x))  # addmm saves x (and a view of the weight: excluded); relu its output

    assert meter.bytes == (5 * 10 + 5 * 20) * 8


def test_nothing_is_saved_without_grad_and_checkpointing_saves_only_the_input():
    x = torch.randn(N, requires_grad=True)
    with torch.no_grad(), SavedTensorMeter().measure() as meter:
        x.exp().sin()
    assert meter.bytes == 0

    def block(t):
        return t.exp().sin().exp()

    plain = SavedTensorMeter()
    with plain.measure():
        block(x)
    kept = SavedTensorMeter()
    with kept.measure():
        checkpoint(block, x, use_reentrant=False)
    # exp saves its result, sin its input (the same storage), the last exp its result
    assert plain.bytes == 2 * N * FLOAT
    assert kept.bytes == N * FLOAT  # the input, kept to recompute from


def test_cuda_peak_is_empty_on_cpu():
    with cuda_peak(torch.device("cpu")) as peak:
        torch.ones(3).sum()
    assert peak == {}


def test_live_memory_is_the_peak_and_the_rest_of_what_the_block_allocates():
    before = torch.ones(10_000)  # allocated before the block: not counted, even when freed
    with live_memory(torch.device("cpu")) as memory:
        kept = torch.ones(N)
        scratch = torch.ones(2 * N)
        del scratch, before
        more = torch.zeros(N // 2)

    assert (memory.peak, memory.final) == (3 * N * FLOAT, 1.5 * N * FLOAT)
    assert kept.numel() + more.numel() == 1.5 * N


class _Cycle:
    """An object in a reference cycle: freed only by the garbage collector."""


def _cyclic_garbage(tensor: torch.Tensor) -> None:
    first, second = _Cycle(), _Cycle()
    first.other, second.other, first.tensor = second, first, tensor


def test_garbage_of_an_earlier_measure_is_not_collected_inside_one():
    """Freed by a collection inside the block, a tensor allocated under an earlier measure
    (whose size the profiler knows) would count as a negative allocation."""
    with live_memory(torch.device("cpu")):
        tensor = torch.ones(10 * N)
    _cyclic_garbage(tensor)
    del tensor
    with live_memory(torch.device("cpu")) as memory:
        kept = torch.ones(N)
        [[] for _ in range(10 * gc.get_threshold()[0])]  # enough to start a collection

    assert memory.final == N * FLOAT == kept.numel() * FLOAT
    assert gc.isenabled()


def test_live_memory_of_a_linear_layer_forward_and_backward():
    linear = nn.Linear(10, 20, bias=False)
    x = torch.randn(5, 10, requires_grad=True)
    with live_memory(torch.device("cpu")) as memory:
        out = linear(x)
        out.sum().backward()

    assert memory.final == (5 * 20 + 5 * 10 + 20 * 10) * FLOAT  # out, x.grad, weight.grad
    assert memory.peak >= memory.final


def test_count_takes_a_tensor_once_per_storage_as_the_pack_hook_does():
    x = torch.randn(4, N)
    meter = SavedTensorMeter()

    assert meter.count(x) is x
    meter.count(x.flatten())  # a view: the same storage
    meter.count(nn.Parameter(torch.ones(3)))
    assert (meter.tensors, meter.bytes) == (1, 4 * N * FLOAT)
