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
from gradkit.lib.memory import SavedTensorMeter, cuda_peak
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
    """One forward/backward pass: its output, gradients and what it kept."""

    output: torch.Tensor
    grads: list[torch.Tensor]
    saved_bytes: int
    cuda_peak_bytes: float | None


def forward_backward(model: nn.Sequential, x: torch.Tensor, segments: int,
                     meter: SavedTensorMeter | None = None) -> Pass:
    """out = model(x) (with `segments` checkpointed segments when > 0), then out.sum()
    backward; gradients of x and of every parameter."""
    x = x.detach().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    meter = meter or SavedTensorMeter(exclude=model.parameters())
    with cuda_peak(x.device) as peak:
        with meter.measure():
            out = (checkpoint_sequential(model, segments, x, use_reentrant=False) if segments
                   else model(x))
        out.sum().backward()
    grads = [x.grad, *(p.grad.clone() for p in model.parameters())]
    return Pass(out.detach(), grads, meter.bytes, peak.get("bytes"))


def recompute_bytes(model: nn.Sequential, x: torch.Tensor, segments: int) -> list[int]:
    """Bytes each segment saves when run without checkpointing (its input and the parameters
    left out, since they are kept anyway): what a checkpointed segment's recomputation saves
    during backward, and what the last, plain segment saves during forward."""
    found = []
    y = x.detach()
    for start, end in segment_bounds(len(model), segments):
        y = y.detach().requires_grad_(True)
        meter = SavedTensorMeter(exclude=[y, *model.parameters()])
        with meter.measure():
            y = model[start:end](y)
        found.append(meter.bytes)
    return found


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
    their peak with recomputation, time, and the gradients of both compared."""

    proves = "checkpointed gradients equal the plain ones"

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
        plain = forward_backward(model, x, 0)
        kept = forward_backward(model, x, self.segments)
        pieces = recompute_bytes(model, x, self.segments or 1)
        peak_kept = kept.saved_bytes
        if self.segments > 1:  # backward frees the plain last segment, then recomputes
            peak_kept = max(peak_kept, kept.saved_bytes - pieces[-1] + max(pieces[:-1]))
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
            "peak_saved_bytes.plain": float(plain.saved_bytes),
            "peak_saved_bytes.checkpointed": float(peak_kept),
            "seconds.plain": best["plain"], "seconds.checkpointed": best["checkpointed"],
            "time_overhead": best["checkpointed"] / best["plain"] - 1,
            "memory_saving": 1 - peak_kept / plain.saved_bytes,
            "output_abs_diff": (plain.output - kept.output).abs().max().item(),
            "grad_max_abs_diff": grad_gap,
        }
        if plain.cuda_peak_bytes is not None:
            metrics["cuda_peak_bytes.plain"] = plain.cuda_peak_bytes
            metrics["cuda_peak_bytes.checkpointed"] = kept.cuda_peak_bytes
        return Result(
            metrics=metrics,
            checks={"gradients_equal": Check(grad_gap / scale, DTYPE_TOLERANCE[ctx.dtype])},
            figures={"checkpointing": self.plot(metrics)},
            summary={"segment_blocks": segment_bounds(self.depth, self.segments or 1),
                     "segment_saved_bytes": pieces, "seconds": times},
            objective=peak_kept,
        )

    def plot(self, metrics: dict[str, float]) -> Figure:
        """Saved and peak saved activations, and time, plain against checkpointed."""
        shape = f"{self.batch_size} x {self.width}"
        how = f"{self.segments} segments" if self.segments else "no checkpointing"
        fig, (memory_ax, time_ax) = figure(
            f"Gradient checkpointing: {self.depth} {self.block} blocks on {shape}, {how}",
            1, 2, size=(13, 5))
        ways = ("plain", "checkpointed")
        positions = np.arange(2)
        for offset, (key, label) in zip((-0.2, 0.2), (("saved_bytes", "after forward"),
                                                      ("peak_saved_bytes",
                                                       "peak, with recomputation")),
                                        strict=True):
            values = [metrics[f"{key}.{way}"] / MIB for way in ways]
            bars = memory_ax.bar(positions + offset, values, 0.4, label=label)
            memory_ax.bar_label(bars, [f"{v:.1f}" for v in values], padding=2)
        memory_ax.set_xticks(positions, ways)
        memory_ax.set(title=f"Saved activations (saving {metrics['memory_saving']:.0%})",
                      ylabel="MiB saved for backward")
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
        """Peak saved activations and time against the number of segments."""
        done = sorted((j for j in jobs if "peak_saved_bytes.checkpointed" in j["metrics"]
                       and "experiment.segments" in j["params"]),
                      key=lambda j: int(j["params"]["experiment.segments"]))
        if not done:
            return None
        segments = [int(j["params"]["experiment.segments"]) for j in done]
        positions = np.arange(len(done))
        fig, (memory_ax, time_ax) = figure(
            "Gradient checkpointing sweep: memory against recomputation", 1, 2, size=(14, 5))
        for key, label, style in (("peak_saved_bytes", "peak, with recomputation", "o-"),
                                  ("saved_bytes", "after forward", "s--")):
            values = [j["metrics"][f"{key}.checkpointed"] / MIB for j in done]
            memory_ax.plot(positions, values, style, label=label)
        peaks = [j["metrics"]["peak_saved_bytes.checkpointed"] for j in done]
        best = int(np.argmin(peaks))
        memory_ax.scatter([positions[best]], [peaks[best] / MIB], s=250, marker="*",
                          color="tab:red", zorder=3,
                          label=f"lowest peak: {segments[best]} segments")
        memory_ax.set(title="Saved activations", xlabel="segments (0 = no checkpointing)",
                      ylabel="MiB saved for backward")
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

