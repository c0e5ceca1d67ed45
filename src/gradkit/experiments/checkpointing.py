"""Section 6.2: gradient checkpointing trades recomputation for saved activations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

from gradkit.core.experiment import DTYPE_TOLERANCE, Check, Experiment, Result, RunContext
from gradkit.core.validation import ConfigError, choice, integer
from gradkit.lib.memory import SavedTensorMeter, live_memory
from gradkit.lib.models import ACTIVATIONS, check_activation, mlp
from gradkit.lib.timing import now
from gradkit.plotting import figure

BLOCKS = ("chain", "mlp")
MIB = 2**20


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


def segment_bounds(depth: int, segments: int) -> list[tuple[int, int]]:
    """The [start, end) block ranges `checkpoint_sequential` makes: `segments - 1` checkpointed
    ranges of depth // segments blocks, then the rest, which runs without checkpointing."""
    size = depth // segments
    bounds = [(start, start + size) for start in range(0, size * (segments - 1), size)]
    return [*bounds, (bounds[-1][1] if bounds else 0, depth)]


@dataclass
class Pass:
    """One forward/backward pass: its output, gradients, what autograd saved in the forward
    pass, the peak of live tensor memory over forward and backward, and the bytes still
    allocated at the end."""

    output: torch.Tensor
    grads: list[torch.Tensor]
    saved_bytes: int
    peak_bytes: float
    final_bytes: float


def forward_backward(model: nn.Sequential, x: torch.Tensor, segments: int,
                     meter: SavedTensorMeter | None = None) -> Pass:
    """out = model(x) (with `segments` checkpointed segments when > 0), then out.sum()
    backward; gradients of x and of every parameter (buffers made by this backward)."""
    x = x.detach().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    meter = meter or SavedTensorMeter(exclude=model.parameters())
    with live_memory(x.device) as memory:
        with meter.measure():
            out = (checkpoint_sequential(model, segments, x, use_reentrant=False) if segments
                   else model(x))
        out.sum().backward()
    grads = [x.grad, *(p.grad.clone() for p in model.parameters())]
    return Pass(out.detach(), grads, meter.bytes, memory.peak, memory.final)


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


def expected_saved_bytes(x: torch.Tensor, pieces: list[int]) -> int:
    """What a checkpointed forward saves: each checkpointed segment's input (all shaped like
    x), then everything the last, plain segment saves."""
    return (len(pieces) - 1) * x.untyped_storage().nbytes() + pieces[-1]


def calibration_passes(width: int, batch_size: int, dtype: torch.dtype, device: torch.device,
                       generator: torch.Generator) -> list[Pass]:
    """Two passes (plain, then 2 checkpointed segments) over one 2-block Linear stack: a
    model with parameters, so that gradients left over from the first pass show."""
    model = build("mlp", 2, width, "relu", generator).to(device, dtype)
    x = torch.randn(batch_size, width, generator=generator, dtype=dtype).to(device)
    return [forward_backward(model, x, 0), forward_backward(model, x, 2)]


def seconds(model: nn.Sequential, x: torch.Tensor, segments: int) -> float:
    """Wall-clock seconds of one forward/backward pass (no meter attached)."""
    model.zero_grad(set_to_none=True)
    start = now(x.device)
    x = x.detach().requires_grad_(True)
    out = checkpoint_sequential(model, segments, x, use_reentrant=False) if segments else model(x)
    out.sum().backward()
    return now(x.device) - start


class Checkpointing(Experiment):
    """A deep stack of blocks run plain and with `checkpoint_sequential`: saved activations,
    the measured peak of live tensor memory, time, and the gradients of both compared."""

    proves = ("checkpointed gradients equal the plain ones, the checkpointed forward saves what "
              "its segments add up to, and the memory meter accounts for every byte left")

    def __init__(self, block: str = "chain", depth: int = 16, width: int = 1000,
                 batch_size: int = 100, segments: int = 4, activation: str = "relu",
                 repeats: int = 3):
        self.block = choice("experiment.block", block, BLOCKS)
        self.depth = integer("experiment.depth", depth, minimum=1)
        self.width = integer("experiment.width", width, minimum=1)
        self.batch_size = integer("experiment.batch_size", batch_size, minimum=1)
        self.segments = integer("experiment.segments", segments, minimum=0)
        if self.segments > self.depth:
            raise ConfigError(f"experiment.segments={segments} must be <= experiment.depth="
                              f"{depth} (0 = no checkpointing)")
        self.activation = check_activation("experiment.activation", activation)
        self.repeats = integer("experiment.repeats", repeats, minimum=1)

    def run(self, ctx: RunContext) -> Result:
        model = build(self.block, self.depth, self.width, self.activation, ctx.generator)
        model = model.to(ctx.device, ctx.dtype)
        x = torch.randn(self.batch_size, self.width, generator=ctx.generator, dtype=ctx.dtype)
        x = x.to(ctx.device)
        forward_backward(model, x, self.segments)  # warm-up: first-call allocations
        plain = forward_backward(model, x, 0)
        kept = forward_backward(model, x, self.segments)
        pieces = segment_saved_bytes(model, x, self.segments or 1)
        expected = expected_saved_bytes(x, pieces)
        granularity = 512 if x.device.type == "cuda" else 1
        calibration = calibration_passes(min(self.width, 64), self.batch_size, ctx.dtype,
                                         ctx.device, ctx.generator)
        times = {"plain": [], "checkpointed": []}
        for _ in range(self.repeats):  # interleaved, so both see the same machine load
            times["plain"].append(seconds(model, x, 0))
            times["checkpointed"].append(seconds(model, x, self.segments))
        best = {which: min(values) for which, values in times.items()}
        grad_gap = max((a - b).abs().max().item() for a, b in zip(
            plain.grads, kept.grads, strict=True))
        scale = max(g.abs().max().item() for g in plain.grads) or 1.0
        metrics = {
            "saved_bytes.plain": float(plain.saved_bytes),
            "saved_bytes.checkpointed": float(kept.saved_bytes),
            "peak_bytes.plain": plain.peak_bytes,
            "peak_bytes.checkpointed": kept.peak_bytes,
            "seconds.plain": best["plain"], "seconds.checkpointed": best["checkpointed"],
            "time_overhead": best["checkpointed"] / best["plain"] - 1,
            "memory_saving": 1 - kept.peak_bytes / plain.peak_bytes,
            "output_abs_diff": (plain.output - kept.output).abs().max().item(),
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
            figures={"checkpointing": self.plot(metrics)},
            summary={"segment_blocks": segment_bounds(self.depth, self.segments or 1),
                     "segment_saved_bytes": pieces, "expected_saved_bytes": expected,
                     "seconds": times},
            objective=kept.peak_bytes,
        )

    def plot(self, metrics: dict[str, float]) -> Figure:
        """Saved activations and the measured peak of live memory, and time, plain against
        checkpointed."""
        shape = f"{self.batch_size} x {self.width}"
        how = f"{self.segments} segments" if self.segments else "no checkpointing"
        fig, (memory_ax, time_ax) = figure(
            f"Gradient checkpointing: {self.depth} {self.block} blocks on {shape}, {how}",
            1, 2, size=(13, 5))
        ways = ("plain", "checkpointed")
        positions = np.arange(2)
        for offset, (key, label) in zip((-0.2, 0.2), (
                ("saved_bytes", "saved for backward (forward pass)"),
                ("peak_bytes", "peak live memory, forward + backward (measured)")),
                strict=True):
            values = [metrics[f"{key}.{way}"] / MIB for way in ways]
            bars = memory_ax.bar(positions + offset, values, 0.4, label=label)
            memory_ax.bar_label(bars, [f"{v:.1f}" for v in values], padding=2)
        memory_ax.set_xticks(positions, ways)
        memory_ax.set(title=f"Memory (peak saving {metrics['memory_saving']:.0%})",
                      ylabel="MiB")
        memory_ax.legend()
        ms = [metrics[f"seconds.{way}"] * 1e3 for way in ways]
        bars = time_ax.bar(ways, ms, color=["tab:blue", "tab:orange"])
        time_ax.bar_label(bars, [f"{v:.1f} ms" for v in ms], padding=2)
        time_ax.set(title=f"Forward + backward, best of {self.repeats} "
                          f"(overhead {metrics['time_overhead']:+.0%})",
                    ylabel="milliseconds")
        return fig

    @classmethod
    def sweep_figure(cls, jobs: list[dict[str, Any]]) -> Figure | None:
        """Measured peak memory, saved activations and time against the number of segments."""
        done = sorted((j for j in jobs if "peak_bytes.checkpointed" in j["metrics"]
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
            values = [j["metrics"][f"{key}.checkpointed"] / MIB for j in done]
            memory_ax.plot(positions, values, style, label=label)
        peaks = [j["metrics"]["peak_bytes.checkpointed"] for j in done]
        best = int(np.argmin(peaks))
        memory_ax.scatter([positions[best]], [peaks[best] / MIB], s=250, marker="*",
                          color="tab:red", zorder=3,
                          label=f"lowest peak: {segments[best]} segments")
        memory_ax.set(title="Memory", xlabel="segments (0 = no checkpointing)", ylabel="MiB")
        for key, label in (("seconds.checkpointed", "checkpointed"), ("seconds.plain", "plain")):
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

