"""Section 3.2: how gradients flow through the layers of an MLP after one backward pass."""

from __future__ import annotations

import ast
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from gradkit.core.experiment import DTYPE_TOLERANCE, Check, Experiment, Result, RunContext
from gradkit.core.validation import integer
from gradkit.lib.data import regression_batch
from gradkit.lib.diagnostics import (
    STATS_TOLERANCE,
    ActivationStats,
    Finding,
    GradStats,
    Thresholds,
    dead_units_check,
    findings,
    layer_gradient_stats,
    layer_metrics,
    layer_stats_check,
    recorded_activations,
    rules_check,
    verdict,
)
from gradkit.lib.models import check_activation, check_init, check_widths, linear_layers, mlp
from gradkit.plotting import figure, lean_log_ticks

MAX_LABELLED = 25  # layers named on an x axis before only every k-th is


class GradientFlow(Experiment):
    """One forward/backward pass of a seeded MLP on a seeded regression batch."""

    proves = ("the reported per-layer statistics equal a float64 recomputation, every "
              "parameter's gradient equals torch.func.grad, and the rules answer probes right")

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

    def run(self, ctx: RunContext) -> Result:
        model = mlp(self.input_dim, self.hidden, self.output_dim, activation=self.activation,
                    init=self.init, generator=ctx.generator).to(ctx.device, ctx.dtype)
        x, y = (t.to(ctx.device) for t in regression_batch(
            self.batch_size, self.input_dim, self.output_dim, ctx.generator, dtype=ctx.dtype))
        with recorded_activations(model) as activations:
            loss = F.mse_loss(model(x), y)
        loss.backward()
        grads = layer_gradient_stats(model)
        found = findings(grads, activations, self.thresholds, loss.item())
        health_metrics, tags = verdict(found)
        total = math.sqrt(sum(p.grad.double().pow(2).sum().item() for p in model.parameters()))
        norms = [stats.norm for stats in grads.values()]
        ratios = [stats.grad_to_weight for stats in grads.values()]
        metrics = {**layer_metrics(grads, activations), **health_metrics, "loss": loss.item(),
                   "total_grad_norm": total, "min_grad_norm": min(norms),
                   "max_grad_norm": max(norms), "min_grad_to_weight": min(ratios),
                   "max_grad_to_weight": max(ratios), "depth": float(len(self.hidden))}
        values = {name: layer.weight.grad.detach().cpu().double().flatten().numpy()
                  for name, layer in linear_layers(model)}
        checks = {
            "per_layer": layer_stats_check(model, x, y, F.mse_loss, grads,
                                           STATS_TOLERANCE[ctx.dtype]),
            "per_parameter": per_parameter_check(model, x, y, DTYPE_TOLERANCE[ctx.dtype]),
            "dead_units": dead_units_check(model, x, activations),
            "rules": rules_check(self.thresholds),
        }
        return Result(
            metrics=metrics,
            checks=checks,
            figures={"gradient_flow": self.plot(values, grads, activations, found)},
            summary={"layers": {layer: vars(stats) for layer, stats in grads.items()},
                     "activations": {layer: vars(s) for layer, s in activations.items()},
                     "findings": [f.as_dict() for f in found],
                     "thresholds": vars(self.thresholds)},
            tags=tags,
            objective=metrics["max_min_ratio"],
        )

    def plot(self, values: dict[str, np.ndarray], grads: dict[str, GradStats],
             activations: dict[str, ActivationStats], found: list[Finding]) -> Figure:
        """‖∂L/∂W‖ / ‖W‖ by layer, the distribution of gradient entries, activations by depth."""
        hidden = (f"{len(self.hidden)} x {self.hidden[0]}" if len(set(self.hidden)) == 1
                  and len(self.hidden) > 3 else " → ".join(map(str, self.hidden)))
        widths = f"{self.input_dim} → {hidden} → {self.output_dim}"
        fig, axes = figure(f"Gradient flow: {widths}, {self.activation}, {self.init} init",
                           1, 3, size=(17, 5.5), layout=None)
        fig.subplots_adjust(left=0.045, right=0.955, bottom=0.17, top=0.89, wspace=0.2)
        plot_layer_norms(axes[0], {k: s.grad_to_weight for k, s in grads.items()},
                         found, self.thresholds)
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


def per_parameter_check(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                        tolerance: float) -> Check:
    """Every parameter's `.grad` against `torch.func.grad` over `functional_call`."""
    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss_of(weights):
        return F.mse_loss(torch.func.functional_call(model, weights, (x,)), y)

    expected = torch.func.grad(loss_of)(params)
    error = max(((p.grad - expected[name]).abs().max() / expected[name].abs().max().clamp_min(
        torch.finfo(p.dtype).tiny)).item() for name, p in model.named_parameters())
    return Check(error, tolerance)


def _depth(job: dict[str, Any]) -> int:
    return len(ast.literal_eval(job["params"]["experiment.hidden"]))


def plot_layer_norms(ax, norms: dict[str, float], found: list[Finding],
                     thresholds: Thresholds) -> None:
    """Bars of ‖∂L/∂W‖ / ‖W‖ by layer (log), flagged layers in red; a layer whose value is 0
    or not finite gets no bar but its value written at the bottom (if named)."""
    flagged = {f.layer for f in found}
    layers = list(norms)
    heights = [v if 0 < v < math.inf else math.nan for v in norms.values()]
    colors = ["tab:red" if layer in flagged else "tab:blue" for layer in layers]
    ax.bar(range(len(layers)), heights, color=colors)
    label_layers(ax, range(len(layers)), layers)
    ax.set_xlim(-0.6, len(layers) - 0.4)
    ax.set_yscale("log")
    lean_log_ticks(ax.yaxis)
    ax.axhline(thresholds.vanishing, color="tab:purple", linestyle="--",
               label=f"vanishing below {thresholds.vanishing:g}")
    ax.axhline(thresholds.exploding, color="tab:orange", linestyle="--",
               label=f"exploding above {thresholds.exploding:g}")
    step = _label_step(len(layers))  # values written under named layers only
    for i, (value, height) in enumerate(zip(norms.values(), heights, strict=True)):
        if math.isnan(height) and i % step == 0:
            ax.text(i, 0.02, f"{value:g}", transform=ax.get_xaxis_transform(), ha="center",
                    color="tab:red", fontweight="bold")
    ax.set(title="Gradient relative to weights, by layer",
           xlabel="Linear layer (input → output)", ylabel="‖∂L/∂W‖ / ‖W‖ (log scale)")
    handles, _ = ax.get_legend_handles_labels()
    if flagged:
        handles.append(Patch(color="tab:red", label="layer with a finding"))
    ax.legend(handles=handles, fontsize=8)


def plot_distributions(ax, values: dict[str, np.ndarray]) -> None:
    """Box plots of log10 |gradient entry| per layer (exact zeros left out)."""
    logs = [np.log10(np.abs(v[v != 0])) if np.any(v != 0) else np.array([np.nan])
            for v in values.values()]
    ax.boxplot(logs, showfliers=False)
    label_layers(ax, range(1, len(values) + 1), list(values))
    ax.set(title="Gradient entries by layer", xlabel="Linear layer (input → output)",
           ylabel="log₁₀ |∂L/∂wᵢⱼ|")


def plot_activations(ax, activations: dict[str, ActivationStats]) -> None:
    """Mean and std of each hidden layer's activations, and its dead units, by depth."""
    layers = list(activations)
    depth = np.arange(1, len(layers) + 1)
    ax.plot(depth, [activations[k].mean for k in layers], "o-", label="mean")
    ax.plot(depth, [activations[k].std for k in layers], "s-", label="std")
    dead = ax.twinx()
    dead.bar(depth, [activations[k].dead_fraction for k in layers], alpha=0.25,
             color="tab:red", label="dead units")
    dead.set_ylim(0, 1)
    dead.set_ylabel("dead units (slope < 1% of peak on ≥ 95% of samples)")
    dead.grid(False)
    ax.set(title="Activations by depth", xlabel="hidden layer", ylabel="activation value")
    label_layers(ax, depth, [str(d) for d in depth])
    lines, labels = ax.get_legend_handles_labels()
    bars, bar_labels = dead.get_legend_handles_labels()
    ax.legend(lines + bars, labels + bar_labels, fontsize=8)


def label_layers(ax, positions: Sequence[int], names: Sequence[str]) -> None:
    """Layer names under their positions: every layer up to MAX_LABELLED of them, else every
    k-th (first included); turned upright past 8 labels."""
    step = _label_step(len(names))
    shown = list(names)[::step]
    ax.set_xticks(list(positions)[::step], shown)
    if len(shown) > 8:
        ax.tick_params(axis="x", labelrotation=90)


def _label_step(layers: int) -> int:
    """k such that naming every k-th of `layers` layers names at most MAX_LABELLED."""
    return math.ceil(layers / MAX_LABELLED)
