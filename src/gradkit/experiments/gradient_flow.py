"""Section 3.2: how gradients flow through the layers of a network after one backward pass
(its own MLP on a seeded regression batch, or a chosen model, data and loss)."""

from __future__ import annotations

import ast
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import nn
from torch.utils.data import TensorDataset

from gradkit.core.experiment import DTYPE_TOLERANCE, Check, Experiment, Result, RunContext
from gradkit.core.validation import integer
from gradkit.lib.data import regression_batch
from gradkit.lib.diagnostics import (
    STATS_TOLERANCE,
    ActivationStats,
    Finding,
    GradStats,
    Loss,
    Thresholds,
    dead_units_check,
    findings,
    judged,
    parameter_metrics,
    parameter_stats,
    parameter_stats_check,
    recorded_activations,
    rules_check,
    verdict,
)
from gradkit.lib.models import check_activation, check_init, check_widths, mlp, parameter_count
from gradkit.plotting import figure, lean_log_ticks

MAX_LABELLED = 25  # parameters named on an x axis before only every k-th is
SIDE_BY_SIDE = 40  # characters of labels that fit across one panel; longer: upright


class GradientFlow(Experiment):
    """One forward/backward pass of a seeded network on one batch: gradient statistics of
    every parameter and activation statistics of every module output, by module path."""

    headline = ("total_grad_norm", "health_level")
    proves = ("the reported per-parameter statistics equal a float64 recomputation, every "
              "parameter's gradient equals torch.func.grad, the dead units a finite-difference "
              "recount, and the rules answer probes right")

    def __init__(self, input_dim: int = 3, hidden: list[int] = (4, 6, 4), output_dim: int = 2,
                 batch_size: int = 8, activation: str = "relu", init: str = "xavier_normal",
                 vanishing: float = Thresholds.vanishing,
                 exploding: float = Thresholds.exploding,
                 imbalance: float = Thresholds.imbalance,
                 dead_units: float = Thresholds.dead_units):
        self.input_dim = integer("experiment.input_dim", input_dim, minimum=1)
        self.hidden = check_widths("experiment.hidden", hidden)
        self.output_dim = integer("experiment.output_dim", output_dim, minimum=1)
        self.batch_size = integer("experiment.batch_size", batch_size, minimum=2)
        self.activation = check_activation("experiment.activation", activation)
        self.init = check_init("experiment.init", init)
        self.thresholds = Thresholds.checked("experiment", vanishing, exploding, imbalance,
                                             dead_units)

    def own_model(self, input_shape: tuple[int, ...], outputs: int,
                  generator: torch.Generator) -> nn.Sequential:
        """The MLP of `hidden`, `activation` and `init`, sized to the data (inputs flattened),
        its weights drawn from `generator`."""
        body = mlp(math.prod(input_shape), self.hidden, outputs, activation=self.activation,
                   init=self.init, generator=generator)
        return nn.Sequential(nn.Flatten(), *body) if len(input_shape) > 1 else body

    def own_data(self, seed: int, dtype: torch.dtype) -> dict[str, TensorDataset]:
        """`batch_size` regression samples, drawn after the own MLP's weights from one
        generator seeded by `seed` (so the numbers are those of one seeded draw)."""
        generator = torch.Generator().manual_seed(seed)
        self.own_model((self.input_dim,), self.output_dim, generator)  # the weights first
        return {"train": TensorDataset(*regression_batch(
            self.batch_size, self.input_dim, self.output_dim, generator, dtype=dtype))}

    def prepare(self, ctx: RunContext) -> None:
        seed = ctx.generator.initial_seed()
        self.workload = ctx.components.resolve(
            ctx, lambda: self.own_data(seed, ctx.dtype),
            lambda shape, outputs: self.own_model(shape, outputs,
                                                  torch.Generator().manual_seed(seed)))
        self.names = ctx.components.names

    def run(self, ctx: RunContext) -> Result:
        workload = self.workload
        model = workload.new_model()
        x, y = workload.data.tensors("train", self.batch_size)
        with recorded_activations(model) as activations:
            loss = workload.loss_of(model(x), y)
        loss.backward()
        grads = parameter_stats(model)
        found = findings(grads, activations, self.thresholds, loss.item())
        health_metrics, tags = verdict(found)
        weights = judged(grads)
        norms = [stats.norm for stats in weights.values()] or [math.nan]
        ratios = [stats.grad_to_weight for stats in weights.values()] or [math.nan]
        total = math.sqrt(sum(s.norm ** 2 for s in grads.values()))
        size = parameter_count(model)
        metrics = {**parameter_metrics(grads, activations), **health_metrics,
                   "loss": loss.item(), "total_grad_norm": total, "min_grad_norm": min(norms),
                   "max_grad_norm": max(norms), "min_grad_to_weight": min(ratios),
                   "max_grad_to_weight": max(ratios), "parameters": float(size)}
        if self.names["model"] == "own":
            metrics["depth"] = float(len(self.hidden))
        values = {name: (p.grad if p.grad is not None else torch.zeros_like(p))
                  .detach().cpu().double().flatten().numpy()
                  for name, p in model.named_parameters() if p.requires_grad}
        checks = {
            "per_parameter_stats": parameter_stats_check(
                model, x, y, workload.loss_of, grads, STATS_TOLERANCE[ctx.dtype]),
            "per_parameter": per_parameter_check(model, x, y, workload.loss_of,
                                                 DTYPE_TOLERANCE[ctx.dtype]),
            "dead_units": dead_units_check(model, x, activations),
            "rules": rules_check(self.thresholds),
        }
        return Result(
            metrics=metrics,
            checks=checks,
            figures={"gradient_flow": self.plot(values, grads, activations, found)},
            summary={**self.names, "parameters": size, "batch": list(x.shape),
                     "gradients": {name: vars(stats) for name, stats in grads.items()},
                     "activations": {name: vars(s) for name, s in activations.items()},
                     "findings": [f.as_dict() for f in found],
                     "thresholds": vars(self.thresholds)},
            tags=tags,
            objective=metrics["max_min_ratio"],
        )

    def title(self) -> str:
        """The own MLP's widths, activation and init, else the chosen components."""
        if self.names["model"] != "own" or self.names["data"] != "own":
            return "Gradient flow: " + ", ".join(f"{k}={v}" for k, v in self.names.items())
        hidden = (f"{len(self.hidden)} x {self.hidden[0]}" if len(set(self.hidden)) == 1
                  and len(self.hidden) > 3 else " → ".join(map(str, self.hidden)))
        widths = f"{self.input_dim} → {hidden} → {self.output_dim}"
        return f"Gradient flow: {widths}, {self.activation}, {self.init} init"

    def plot(self, values: dict[str, np.ndarray], grads: dict[str, GradStats],
             activations: dict[str, ActivationStats], found: list[Finding]) -> Figure:
        """‖∂L/∂W‖ / ‖W‖ by parameter, the distribution of gradient entries, activations by
        module output."""
        fig, axes = figure(self.title(), 1, 3, size=(17, 6.5), layout=None)
        fig.subplots_adjust(left=0.045, right=0.955, bottom=0.24, top=0.9, wspace=0.2)
        plot_layer_norms(axes[0], grads, found, self.thresholds)
        plot_distributions(axes[1], values)
        plot_activations(axes[2], activations)
        return fig

    @classmethod
    def sweep_figure(cls, jobs: list[dict[str, Any]]) -> Figure | None:
        """Smallest layer ‖∂L/∂W‖ / ‖W‖ and max/min ratio against depth, one line per
        activation; jobs whose flow is not healthy are ringed."""
        done = [j for j in jobs if "min_grad_to_weight" in j["metrics"]
                and "experiment.hidden" in j["params"]]
        if not done:
            return None
        fig, axes = figure("Gradient flow sweep: depth against the smallest gradient", 1, 2,
                           size=(14, 5.5))
        groups: dict[str, list[dict[str, Any]]] = {}
        for job in done:
            label = f"{job['params'].get('experiment.activation')}, "
            label += f"{job['params'].get('experiment.init')}"
            groups.setdefault(label, []).append(job)
        for (label, group), marker in zip(sorted(groups.items()), itertools.cycle("osD^v<>p")):
            group.sort(key=_depth)
            depths = [_depth(job) for job in group]
            for ax, key in zip(axes, ("min_grad_to_weight", "max_min_ratio"), strict=True):
                ys = [job["metrics"][key] for job in group]
                ax.semilogy(depths, ys, marker=marker, label=label)
                sick = [(d, v) for d, v, job in zip(depths, ys, group, strict=True)
                        if job["metrics"].get("health_level", 0) > 0]
                if sick:
                    ax.scatter(*zip(*sick, strict=True), s=180, facecolors="none",
                               edgecolors="tab:red", linewidths=1.5, zorder=3)
        ax_min, ax_ratio = axes
        params = done[0]["params"]
        for ax, key in ((ax_min, "experiment.vanishing"), (ax_ratio, "experiment.imbalance")):
            if key in params:
                ax.axhline(float(params[key]), color="gray", linestyle="--",
                           label=f"{key.split('.')[1]} threshold = {float(params[key]):g}")
        ax_min.scatter([], [], s=180, facecolors="none", edgecolors="tab:red",
                       label="not healthy (a rule fired)")
        ax_min.set(title="Smallest layer gradient, relative to its weights",
                   xlabel="hidden layers", ylabel="min over layers of ‖∂L/∂W‖ / ‖W‖ (log)")
        ax_ratio.set(title="Imbalance between layers", xlabel="hidden layers",
                     ylabel="largest / smallest ‖∂L/∂W‖ / ‖W‖ (log)")
        for ax in axes:
            ax.set_xticks(sorted({_depth(job) for job in done}))
            ax.legend(fontsize=8)
        failed = len(jobs) - len(done)
        if failed:
            fig.text(0.01, 0.01, f"{failed} failed jobs not shown", fontsize=9)
        return fig


def per_parameter_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None,
                        loss_fn: Loss, tolerance: float) -> Check:
    """Every trainable parameter's `.grad` (None: zero) against `torch.func.grad` over
    `functional_call` (on copies of the buffers, which a batch norm updates)."""
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}

    def loss_of(weights, buffers):
        return loss_fn(torch.func.functional_call(model, {**weights, **buffers}, (x,)), y)

    expected = torch.func.grad(loss_of)(params, buffers)
    error = 0.0
    for name, p in model.named_parameters():
        if name in expected:
            grad = torch.zeros_like(p) if p.grad is None else p.grad
            scale = expected[name].abs().max().clamp_min(torch.finfo(p.dtype).tiny)
            error = max(error, ((grad - expected[name]).abs().max() / scale).item())
    return Check(error, tolerance)


def _depth(job: dict[str, Any]) -> int:
    return len(ast.literal_eval(job["params"]["experiment.hidden"]))


def plot_layer_norms(ax, grads: dict[str, GradStats], found: list[Finding],
                     thresholds: Thresholds) -> None:
    """Bars of ‖∂L/∂W‖ / ‖W‖ by parameter (log): weight tensors blue, flagged ones red, 1-D
    parameters (no rule reads them) grey; a parameter whose value is 0, not finite or taken
    over NaN/Inf entries gets no bar but its value written at the bottom (if named)."""
    flagged = {f.layer for f in found}
    names = list(grads)
    ratios = [math.nan if s.nan_count or s.inf_count else s.grad_to_weight
              for s in grads.values()]
    heights = [v if 0 < v < math.inf else math.nan for v in ratios]
    colors = ["tab:red" if name in flagged else "tab:blue" if s.matrix else "silver"
              for name, s in grads.items()]
    ax.bar(range(len(names)), heights, color=colors)
    label_layers(ax, range(len(names)), names)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_yscale("log")
    lean_log_ticks(ax.yaxis)
    ax.axhline(thresholds.vanishing, color="tab:purple", linestyle="--",
               label=f"vanishing below {thresholds.vanishing:g}")
    ax.axhline(thresholds.exploding, color="tab:orange", linestyle="--",
               label=f"exploding above {thresholds.exploding:g}")
    step = _label_step(len(names))  # values written under named parameters only
    for i, (value, height) in enumerate(zip(ratios, heights, strict=True)):
        if math.isnan(height) and i % step == 0:
            ax.text(i, 0.02, f"{value:g}", transform=ax.get_xaxis_transform(), ha="center",
                    color=colors[i] if colors[i] != "tab:blue" else "tab:red",
                    fontweight="bold")
    ax.set(title="Gradient relative to weights, by parameter",
           xlabel="parameter (input → output)", ylabel="‖∂L/∂W‖ / ‖W‖ (log scale)")
    handles, _ = ax.get_legend_handles_labels()
    if not all(s.matrix for s in grads.values()):
        handles.append(Patch(color="silver", label="1-D (bias, norm): no rule"))
    if flagged:
        handles.append(Patch(color="tab:red", label="parameter with a finding"))
    ax.legend(handles=handles, fontsize=8)


def plot_distributions(ax, values: dict[str, np.ndarray]) -> None:
    """Box plots of log10 |gradient entry| per parameter (exact zeros left out)."""
    logs = [np.log10(np.abs(v[v != 0])) if np.any(v != 0) else np.array([np.nan])
            for v in values.values()]
    ax.boxplot(logs, showfliers=False)
    label_layers(ax, range(1, len(values) + 1), list(values))
    ax.set(title="Gradient entries by parameter", xlabel="parameter (input → output)",
           ylabel="log₁₀ |∂L/∂wᵢⱼ|")


def plot_activations(ax, activations: dict[str, ActivationStats]) -> None:
    """Mean and std of each activated module output, and its dead units, by depth."""
    names = list(activations)
    depth = np.arange(1, len(names) + 1)
    ax.plot(depth, [activations[k].mean for k in names], "o-", label="mean")
    ax.plot(depth, [activations[k].std for k in names], "s-", label="std")
    dead = ax.twinx()
    dead.bar(depth, [activations[k].dead_fraction for k in names], alpha=0.25,
             color="tab:red", label="dead units")
    dead.set_ylim(0, 1)
    dead.set_ylabel("dead units or channels (slope < 1% of peak on ≥ 95% of positions)")
    dead.grid(False)
    ax.set(title="Activations by depth", xlabel="activated module output",
           ylabel="activation value")
    label_layers(ax, depth, names)
    lines, labels = ax.get_legend_handles_labels()
    bars, bar_labels = dead.get_legend_handles_labels()
    ax.legend(lines + bars, labels + bar_labels, fontsize=8)


def label_layers(ax, positions: Sequence[int], names: Sequence[str]) -> None:
    """Names under their positions: every one up to MAX_LABELLED of them, else every k-th
    (first included); turned upright when they do not fit side by side."""
    step = _label_step(len(names))
    shown = list(names)[::step]
    ax.set_xticks(list(positions)[::step], shown)
    if sum(len(name) + 1 for name in shown) > SIDE_BY_SIDE:
        ax.tick_params(axis="x", labelrotation=90)


def _label_step(layers: int) -> int:
    """k such that naming every k-th of `layers` names names at most MAX_LABELLED."""
    return math.ceil(layers / MAX_LABELLED)
