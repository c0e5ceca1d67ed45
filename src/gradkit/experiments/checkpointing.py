"""Section 6.2: gradient checkpointing trades recomputation for saved activations."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential
from torch.utils.data import TensorDataset

from gradkit.core.components import OWN, Workload
from gradkit.core.experiment import DTYPE_TOLERANCE, Check, Experiment, Result, RunContext
from gradkit.core.validation import ConfigError, choice, integer
from gradkit.lib.memory import SavedTensorMeter, live_memory
from gradkit.lib.models import ACTIVATIONS, check_activation, mlp, parameter_count
from gradkit.lib.timing import now
from gradkit.plotting import figure

BLOCKS = ("chain", "mlp")
MIB = 2**20
Objective = Callable[[torch.Tensor], torch.Tensor]  # the model's output -> the loss


class ChainBlock(nn.Module):
    """The notebook's block: y = sin y + cos(y / 2) + exp(y / 10), then relu(y - mean y)."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y = torch.sin(y) + torch.cos(y * 0.5) + torch.exp(y * 0.1)
        return torch.relu(y - y.mean())


def build(block: str, depth: int, width: int, activation: str,
          generator: torch.Generator) -> nn.Sequential:
    """`depth` blocks in a Sequential: chain blocks, or Linear(width, width) + activation."""
    if block == "chain":
        return nn.Sequential(*(ChainBlock() for _ in range(depth)))
    return nn.Sequential(*(nn.Sequential(mlp(width, [], width, generator=generator),
                                         ACTIVATIONS[activation]()) for _ in range(depth)))


def as_chain(model: nn.Module, name: str, sample: torch.Tensor) -> nn.Sequential:
    """The model as a chain of blocks: itself if an nn.Sequential; else its `blocks` (an
    nn.ModuleList or nn.Sequential) in an nn.Sequential, if running them in turn gives the
    model's own output on `sample`. Any other model is refused in one line."""
    if isinstance(model, nn.Sequential):
        return model
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
        raise ConfigError(f"model={name} is not an nn.Sequential or a list of blocks; "
                          "checkpointing splits a chain of blocks into experiment.segments (it "
                          f"is a {type(model).__name__}: an nn.Sequential, or a model whose "
                          "forward runs its `blocks` nn.ModuleList in turn, can be split)")
    chain = nn.Sequential(*blocks)
    model.eval()
    with torch.no_grad():
        same = torch.equal(model(sample), chain(sample))
    model.train()
    if not same:
        raise ConfigError(f"model={name}: its forward is not its `blocks` run in turn (their "
                          "chain gives another output), so they cannot stand for it")
    return chain


def segment_bounds(depth: int, segments: int) -> list[tuple[int, int]]:
    """The [start, end) block ranges `checkpoint_sequential` makes: `segments - 1` checkpointed
    ranges of depth // segments blocks, then the rest, which runs without checkpointing."""
    size = depth // segments
    bounds = [(start, start + size) for start in range(0, size * (segments - 1), size)]
    return [*bounds, (bounds[-1][1] if bounds else 0, depth)]


@dataclass
class Pass:
    """One forward/backward pass: its output, loss, gradients, what autograd saved in the
    forward pass, the peak of live tensor memory over forward and backward, and the bytes
    still allocated at the end."""

    output: torch.Tensor
    loss: float
    grads: list[torch.Tensor]
    saved_bytes: int
    peak_bytes: float
    final_bytes: float


@contextmanager
def same_randomness(device: torch.device) -> Iterator[None]:
    """The random state restored after the block, so that each pass starts from the same one
    (a chain's dropout drops the same units in every pass)."""
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        yield


def forward_backward(model: nn.Sequential, x: torch.Tensor, segments: int,
                     meter: SavedTensorMeter | None = None,
                     objective: Objective = torch.sum) -> Pass:
    """out = model(x) (with `segments` checkpointed segments when > 0), then objective(out)
    backward; gradients of x and of every parameter (buffers made by this backward)."""
    x = x.detach().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    meter = meter or SavedTensorMeter(exclude=model.parameters())
    with same_randomness(x.device), live_memory(x.device) as memory:
        with meter.measure():
            out = (checkpoint_sequential(model, segments, x, use_reentrant=False) if segments
                   else model(x))
        loss = backward(objective(out))
    grads = [x.grad, *(p.grad.clone() for p in model.parameters())]
    return Pass(out.detach(), loss, grads, meter.bytes, memory.peak, memory.final)


def backward(loss: torch.Tensor) -> float:
    """loss.backward(); its value (the tensor itself freed on return, inside the measure)."""
    loss.backward()
    return loss.item()


def kept_bytes(tensors: list[torch.Tensor], granularity: int) -> int:
    """Bytes of `tensors`, each rounded up to the allocator's `granularity`."""
    return sum(-(-t.untyped_storage().nbytes() // granularity) * granularity for t in tensors)


def meter_error(passes: list[Pass], granularity: int) -> float:
    """How far the live-memory meter is off on what is known of each pass: what is still
    allocated at the end must be the output and the gradients (of the input and of every
    parameter), each made during the pass; and the peak cannot be below what the forward
    saved, less the input (allocated before the pass, and shaped like its gradient). Largest
    relative gap."""
    errors = []
    for p in passes:
        kept = kept_bytes([p.output, *p.grads], granularity)
        floor = p.saved_bytes - kept_bytes(p.grads[:1], granularity)
        errors += [abs(p.final_bytes - kept) / kept,
                   max(0.0, floor - p.peak_bytes) / max(floor, 1)]
    return max(errors)


def segment_saved_bytes(model: nn.Sequential, x: torch.Tensor, segments: int) -> list[int]:
    """Bytes each segment saves when run without checkpointing, its input included when it is
    saved (parameters left out: they are kept anyway): what a checkpointed segment's
    recomputation saves during backward, and what the last, plain segment saves during
    forward."""
    found = []
    y = x.detach()
    for start, end in segment_bounds(len(model), segments):
        y = y.detach().requires_grad_(True)
        meter = SavedTensorMeter(exclude=model.parameters())
        with meter.measure():
            y = model[start:end](y)
        found.append(meter.bytes)
    return found


def expected_saved_bytes(model: nn.Sequential, x: torch.Tensor, segments: int) -> int:
    """What a checkpointed forward saves: each checkpointed segment's input, then what the
    last, plain segment saves; a storage counted once (after a Flatten, a segment's input is a
    view of the one before)."""
    bounds = segment_bounds(len(model), segments)
    meter = SavedTensorMeter(exclude=model.parameters())
    inputs = [x.detach()]  # kept alive, as a checkpoint keeps them: no address is reused
    with torch.no_grad():
        for start, end in bounds[:-1]:
            meter.count(inputs[-1])
            inputs.append(model[start:end](inputs[-1]))
    with meter.measure():
        model[bounds[-1][0]:](inputs[-1].detach().requires_grad_(True))
    return meter.bytes


def calibration_passes(width: int, batch_size: int, dtype: torch.dtype, device: torch.device,
                       generator: torch.Generator) -> list[Pass]:
    """Two passes (plain, then 2 checkpointed segments) over one 2-block Linear stack: a
    model with parameters, so that gradients left over from the first pass show."""
    model = build("mlp", 2, width, "relu", generator).to(device, dtype)
    x = torch.randn(batch_size, width, generator=generator, dtype=dtype).to(device)
    return [forward_backward(model, x, 0), forward_backward(model, x, 2)]


def seconds(model: nn.Sequential, x: torch.Tensor, segments: int,
            objective: Objective = torch.sum) -> float:
    """Wall-clock seconds of one forward/backward pass (no meter attached)."""
    model.zero_grad(set_to_none=True)
    start = now(x.device)
    x = x.detach().requires_grad_(True)
    out = checkpoint_sequential(model, segments, x, use_reentrant=False) if segments else model(x)
    objective(out).backward()
    return now(x.device) - start


class Checkpointing(Experiment):
    """A deep stack of blocks run plain and with `checkpoint_sequential`: saved activations,
    the measured peak of live tensor memory, time, and the gradients of both compared."""

    headline = ("memory_saving", "time_overhead")
    proves = ("checkpointed gradients equal the plain ones, the checkpointed forward saves what "
              "its segments add up to, and the memory meter accounts for every byte left")
    workload: Workload | None = None  # set by prepare, with `chain`: the model as blocks

    def __init__(self, block: str = "chain", depth: int = 16, width: int = 1000,
                 batch_size: int = 100, segments: int = 4, activation: str = "relu",
                 repeats: int = 3):
        self.block = choice("experiment.block", block, BLOCKS)
        self.depth = integer("experiment.depth", depth, minimum=1)
        self.width = integer("experiment.width", width, minimum=1)
        self.batch_size = integer("experiment.batch_size", batch_size, minimum=1)
        self.segments = integer("experiment.segments", segments, minimum=0)
        self.activation = check_activation("experiment.activation", activation)
        self.repeats = integer("experiment.repeats", repeats, minimum=1)

    def prepare(self, ctx: RunContext) -> None:
        seed = ctx.generator.initial_seed()
        self.workload = ctx.components.resolve(
            ctx, lambda: self._own_data(ctx),
            lambda shape, outputs: self._own_chain(shape, torch.Generator().manual_seed(seed)))
        name = ctx.components.names["model"]
        self.chain = as_chain(self.workload.new_model(), name, self.workload.data.first[0])
        if self.segments > len(self.chain):
            limit = (f"experiment.depth={self.depth}" if name == OWN
                     else f"the {len(self.chain)} blocks of model={name}")
            raise ConfigError(f"experiment.segments={self.segments} must be <= {limit} (0 = no "
                              "checkpointing)")

    def _own_chain(self, input_shape: tuple[int, ...], generator: torch.Generator
                   ) -> nn.Sequential:
        """`depth` blocks of the experiment's kind, as wide as the inputs' last dimension."""
        return build(self.block, self.depth, input_shape[-1], self.activation, generator)

    def _own_data(self, ctx: RunContext) -> dict[str, TensorDataset]:
        """`batch_size` random inputs (and zero targets, for a chosen loss), drawn from the
        run's generator after the own chain's weights (the order they were always drawn in,
        so that a seed gives the same numbers)."""
        self._own_chain((self.width,), ctx.generator)  # the weights' draws
        x = torch.randn(self.batch_size, self.width, generator=ctx.generator, dtype=ctx.dtype)
        return {"train": TensorDataset(x, torch.zeros_like(x))}

    def _objective(self, ctx: RunContext, target: torch.Tensor | None) -> Objective:
        """The sum of the outputs (the notebook's) on the own data with the own loss; else the
        workload's loss against the batch's targets."""
        if not (ctx.components.data.chosen or ctx.components.loss.chosen):
            return torch.sum
        return lambda out: self.workload.loss_of(out, target)

    def run(self, ctx: RunContext) -> Result:
        if self.workload is None:  # called directly, not by the job
            self.prepare(ctx)
        model = self.chain
        x, target = self.workload.data.tensors("train", self.batch_size)
        objective = self._objective(ctx, target)
        forward_backward(model, x, self.segments, objective=objective)  # warm-up: first calls
        plain = forward_backward(model, x, 0, objective=objective)
        kept = forward_backward(model, x, self.segments, objective=objective)
        pieces = segment_saved_bytes(model, x, self.segments or 1)
        expected = expected_saved_bytes(model, x, self.segments or 1)
        granularity = 512 if x.device.type == "cuda" else 1
        calibration = calibration_passes(min(self.width, 64), self.batch_size, ctx.dtype,
                                         ctx.device, ctx.generator)
        times = {"plain": [], "checkpointed": []}
        for _ in range(self.repeats):  # interleaved, so both see the same machine load
            times["plain"].append(seconds(model, x, 0, objective))
            times["checkpointed"].append(seconds(model, x, self.segments, objective))
        best = {which: min(values) for which, values in times.items()}
        grad_gap = max((a - b).abs().max().item() for a, b in zip(
            plain.grads, kept.grads, strict=True))
        scale = max(g.abs().max().item() for g in plain.grads) or 1.0
        metrics = {
            "saved_bytes/plain": float(plain.saved_bytes),
            "saved_bytes/checkpointed": float(kept.saved_bytes),
            "peak_bytes/plain": plain.peak_bytes,
            "peak_bytes/checkpointed": kept.peak_bytes,
            "seconds/plain": best["plain"], "seconds/checkpointed": best["checkpointed"],
            "time_overhead": best["checkpointed"] / best["plain"] - 1,
            "memory_saving": 1 - kept.peak_bytes / plain.peak_bytes,
            "output_abs_diff": (plain.output - kept.output).abs().max().item(),
            "loss": plain.loss, "parameters": float(parameter_count(model)),
            "grad_max_abs_diff": grad_gap,
        }
        checks = {
            "gradients_equal": Check(grad_gap / scale, DTYPE_TOLERANCE[ctx.dtype]),
            "saved_by_segment": Check(abs(kept.saved_bytes - expected) / expected, 0.0),
            "memory_meter": Check(meter_error([plain, kept, *calibration], granularity), 0.0),
        }
        return Result(
            metrics=metrics,
            checks=checks,
            figures={"checkpointing": self.plot(metrics, self._described(ctx, x))},
            summary={"segment_blocks": segment_bounds(len(model), self.segments or 1),
                     "segment_saved_bytes": pieces, "expected_saved_bytes": expected,
                     "seconds": times, "blocks": len(model),
                     "parameters": int(metrics["parameters"])},
            objective=kept.peak_bytes,
        )

    def _described(self, ctx: RunContext, x: torch.Tensor) -> str:
        """`16 chain blocks on 100 x 1000` or `3 blocks of model=mlp on 100 x 10 of data=...`."""
        names, shape = ctx.components.names, " x ".join(str(n) for n in x.shape)
        blocks = (f"{self.depth} {self.block} blocks" if names["model"] == OWN
                  else f"{len(self.chain)} blocks of model={names['model']}")
        data = "" if names["data"] == OWN else f" of data={names['data']}"
        return f"{blocks} on {shape}{data}"

    def plot(self, metrics: dict[str, float], described: str) -> Figure:
        """Saved activations and the measured peak of live memory, and time, plain against
        checkpointed."""
        how = f"{self.segments} segments" if self.segments else "no checkpointing"
        fig, (memory_ax, time_ax) = figure(
            f"Gradient checkpointing: {described}, {how}", 1, 2, size=(13, 5))
        ways = ("plain", "checkpointed")
        positions = np.arange(2)
        for offset, (key, label) in zip((-0.2, 0.2), (
                ("saved_bytes", "saved for backward (forward pass)"),
                ("peak_bytes", "peak live memory, forward + backward (measured)")),
                strict=True):
            values = [metrics[f"{key}/{way}"] / MIB for way in ways]
            bars = memory_ax.bar(positions + offset, values, 0.4, label=label)
            memory_ax.bar_label(bars, [f"{v:.3g}" for v in values], padding=2)
        memory_ax.set_xticks(positions, ways)
        memory_ax.set(title=f"Memory (peak saving {metrics['memory_saving']:.0%})",
                      ylabel="MiB")
        memory_ax.legend()
        ms = [metrics[f"seconds/{way}"] * 1e3 for way in ways]
        bars = time_ax.bar(ways, ms, color=["tab:blue", "tab:orange"])
        time_ax.bar_label(bars, [f"{v:.1f} ms" for v in ms], padding=2)
        time_ax.set(title=f"Forward + backward, best of {self.repeats} "
                          f"(overhead {metrics['time_overhead']:+.0%})",
                    ylabel="milliseconds")
        return fig

    @classmethod
    def sweep_figure(cls, jobs: list[dict[str, Any]]) -> Figure | None:
        """Measured peak memory, saved activations and time against the number of segments."""
        done = sorted((j for j in jobs if "peak_bytes/checkpointed" in j["metrics"]
                       and "experiment.segments" in j["params"]),
                      key=lambda j: int(j["params"]["experiment.segments"]))
        if not done:
            return None
        segments = [int(j["params"]["experiment.segments"]) for j in done]
        positions = np.arange(len(done))
        fig, (memory_ax, time_ax) = figure(
            "Gradient checkpointing sweep: memory against recomputation", 1, 2, size=(14, 5))
        for key, label, style in (("peak_bytes", "peak live memory (measured)", "o-"),
                                  ("saved_bytes", "saved for backward", "s--")):
            values = [j["metrics"][f"{key}/checkpointed"] / MIB for j in done]
            memory_ax.plot(positions, values, style, label=label)
        peaks = [j["metrics"]["peak_bytes/checkpointed"] for j in done]
        best = int(np.argmin(peaks))
        memory_ax.scatter([positions[best]], [peaks[best] / MIB], s=250, marker="*",
                          color="tab:red", zorder=3,
                          label=f"lowest peak: {segments[best]} segments")
        memory_ax.set(title="Memory", xlabel="segments (0 = no checkpointing)", ylabel="MiB")
        for key, label in (("seconds/checkpointed", "checkpointed"), ("seconds/plain", "plain")):
            time_ax.plot(positions, [j["metrics"][key] * 1e3 for j in done], marker="o",
                         label=label)
        time_ax.set(title="Forward + backward time", xlabel="segments (0 = no checkpointing)",
                    ylabel="milliseconds (best of the repeats)")
        time_ax.set_ylim(bottom=0)
        for ax in (memory_ax, time_ax):
            ax.set_xticks(positions, [str(s) for s in segments])
            ax.legend(fontsize=8)
        failed = len(jobs) - len(done)
        if failed:
            fig.text(0.01, 0.01, f"{failed} failed jobs not shown", fontsize=9)
        return fig

