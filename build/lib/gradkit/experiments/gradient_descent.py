"""Section 4.2: gradient descent on a 2-D test function, with divergence as a result."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from contourpy import contour_generator
from matplotlib.collections import LineCollection
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gradkit.core.experiment import Check, Experiment, Result, RunContext
from gradkit.core.validation import ConfigError, integer, number, vector
from gradkit.lib.functions import OBJECTIVES, Objective, objective
from gradkit.plotting import figure, lean_log_ticks

GRADIENT_TOLERANCE = 1e-10
EXPLOSION_FACTOR = 1e6  # a loss this many times the starting loss (or 1) counts as divergence
DIVERGED_OBJECTIVE = 1e10  # what a diverged run returns to a sweeper: large but finite
LEARNING_RATE = "experiment.learning_rate"
INCIDENTAL = ("plotting.", "tracking.", "threads")  # keys that do not change a descent
OUTCOMES = {"converged": "converged", "max_iterations": "stopped at max_iterations",
            "diverged": "diverged (last finite loss)"}


def outcome_marker(outcome: str, color: str) -> dict[str, Any]:
    """How a job's outcome is drawn: filled when converged, hollow at max_iterations, a red X
    when diverged."""
    if outcome == "diverged":
        return {"marker": "X", "s": 160, "color": "tab:red"}
    fill = color if outcome == "converged" else "none"
    return {"marker": "o", "s": 50, "facecolors": fill, "edgecolors": color}


@dataclass
class Descent:
    """The finite part of a descent: points visited, loss and gradient norm at each."""

    points: list[tuple[float, float]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    step_sizes: list[float] = field(default_factory=list)
    status: str = "max_iterations"

    @property
    def iterations(self) -> int:
        return len(self.step_sizes)


def descend(f, start: tuple[float, float], learning_rate: float, max_iterations: int,
            tolerance: float, momentum: float = 0.0) -> Descent:
    """Heavy-ball gradient descent (plain when momentum = 0) with autograd gradients.

    The two coordinates live as Python floats between steps (float64, like the tensors):
    a step then costs one forward and one backward pass and little else.

    Stops when the gradient norm falls below `tolerance` (converged), when the loss or
    gradient stops being finite or explodes (diverged), or after `max_iterations` steps.
    """
    x, velocity = list(start), [0.0] * len(start)
    trace = Descent()
    limit = None
    for _ in range(max_iterations + 1):
        point = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        loss = f(point)
        (grad,) = torch.autograd.grad(loss, point)
        loss_value, gradient = loss.item(), grad.tolist()
        grad_norm = math.hypot(*gradient)
        limit = limit or EXPLOSION_FACTOR * max(1.0, abs(loss_value))
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)) or loss_value > limit:
            trace.status = "diverged"
            break
        trace.points.append(tuple(x))
        trace.losses.append(loss_value)
        trace.grad_norms.append(grad_norm)
        if grad_norm < tolerance:
            trace.status = "converged"
            break
        if trace.iterations == max_iterations:
            break
        velocity = [momentum * v + g for v, g in zip(velocity, gradient, strict=True)]
        step = [learning_rate * v for v in velocity]
        trace.step_sizes.append(math.hypot(*step))
        x = [xi - si for xi, si in zip(x, step, strict=True)]
    return trace


class GradientDescent(Experiment):
    """Minimise a 2-D test function by gradient descent from `start`."""

    proves = "autograd's gradient at the start equals the analytic gradient"

    def __init__(self, function: str = "rosenbrock", start: list[float] = (-1.5, 2.5),
                 learning_rate: float = 1e-3, max_iterations: int = 2000,
                 tolerance: float = 1e-6, momentum: float = 0.0):
        self.objective: Objective = objective(function)
        self.start = vector("experiment.start", start, 2)
        self.learning_rate = number("experiment.learning_rate", learning_rate, positive=True)
        self.max_iterations = integer("experiment.max_iterations", max_iterations, minimum=1)
        self.tolerance = number("experiment.tolerance", tolerance, positive=True)
        self.momentum = number("experiment.momentum", momentum, minimum=0.0, maximum=0.999)
        at_start = self.objective.value(torch.tensor(self.start, dtype=torch.float64)).item()
        if not math.isfinite(at_start):
            raise ConfigError(f"experiment.start={list(self.start)}: f = {at_start} there")

    def run(self, ctx: RunContext) -> Result:
        fn = self.objective
        trace = descend(fn.value, self.start, self.learning_rate, self.max_iterations,
                        self.tolerance, self.momentum)
        diverged = trace.status == "diverged"
        end = torch.tensor(trace.points[-1], dtype=torch.float64)
        metrics = {
            "final_loss": trace.losses[-1],
            "final_grad_norm": trace.grad_norms[-1],
            "iterations": trace.iterations,
            "distance_travelled": math.fsum(trace.step_sizes),
            "distance_to_minimum": fn.distance_to_minimum(end),
            "converged": float(trace.status == "converged"),
            "diverged": float(diverged),
            "stability_limit": fn.stability_limit,
        }
        xs, ys = zip(*trace.points, strict=True)
        return Result(
            metrics=metrics,
            series={"loss": trace.losses, "grad_norm": trace.grad_norms,
                    "step_size": trace.step_sizes, "x": list(xs), "y": list(ys)},
            checks={"gradient": self.gradient_check()},
            figures={"descent": self.plot(trace)},
            summary={"function": fn.name, "start": list(self.start), "end": list(trace.points[-1]),
                     "status": trace.status, "minima": [list(m) for m in fn.minima]},
            tags={"status": trace.status},
            objective=DIVERGED_OBJECTIVE if diverged else trace.losses[-1],
        )

    def gradient_check(self) -> Check:
        """Autograd's gradient at the start point against the analytic gradient."""
        start = torch.tensor(self.start, dtype=torch.float64, requires_grad=True)
        (autograd,) = torch.autograd.grad(self.objective.value(start), start)
        analytic = self.objective.gradient(start.detach())
        scale = max(1.0, analytic.abs().max().item())
        return Check((autograd - analytic).abs().max().item() / scale, GRADIENT_TOLERANCE)

    def plot(self, trace: Descent) -> Figure:
        """Six views: path on contours, loss, gradient norm, step size, x and y, improvement."""
        fn = self.objective
        title = (f"Gradient descent on {fn.name}: lr = {self.learning_rate:g}, "
                 f"momentum = {self.momentum:g}, start = {list(self.start)} → {trace.status} "
                 f"after {trace.iterations} iterations")
        fig, axes = figure(title, 2, 3, size=(15, 8.5), layout=None)
        fig.subplots_adjust(left=0.06, right=0.98, bottom=0.07, top=0.9, wspace=0.3, hspace=0.32)
        for top, bottom in zip(axes[0, 1:], axes[1, 1:], strict=True):
            top.sharex(bottom)  # iterations labelled once per column, below
            top.tick_params(labelbottom=False)
        path = np.array(trace.points)
        plot_path(axes[0, 0], fn, path)
        iters = np.arange(len(trace.losses))
        short = {"marker": "o", "markersize": 4} if len(iters) < 50 else {}
        axes[0, 1].semilogy(iters, trace.losses, color="tab:blue", **short)
        axes[0, 1].set(title="Loss (log scale)", ylabel="f(x, y)")
        axes[0, 2].semilogy(iters, trace.grad_norms, color="tab:orange", **short)
        axes[0, 2].set(title="Gradient norm (log scale)", ylabel="‖∇f(x, y)‖")
        axes[1, 0].semilogy(trace.step_sizes, color="tab:green", **short)
        axes[1, 0].set(title="Step size (log scale)", xlabel="iteration",
                       ylabel="‖step‖ = lr · ‖velocity‖")
        target = fn.minima[int(np.argmin([np.hypot(*(path[-1] - m)) for m in fn.minima]))]
        for i, (name, color) in enumerate((("x", "tab:blue"), ("y", "tab:red"))):
            axes[1, 1].plot(path[:, i], color=color, label=name, **short)
            axes[1, 1].axhline(target[i], color=color, linestyle="--", alpha=0.6,
                               label=f"{name} at nearest minimum")
        axes[1, 1].set(title="Parameters", xlabel="iteration", ylabel="value")
        axes[1, 1].legend(fontsize=8, ncol=2)
        improvement = -np.diff(trace.losses)
        axes[1, 2].semilogy(np.abs(improvement), color="tab:purple", **short)
        rises = int((improvement < 0).sum())
        axes[1, 2].set(title=f"Loss change per iteration (rises: {rises})", xlabel="iteration",
                       ylabel="|f(xₖ) − f(xₖ₊₁)| (log scale)")
        for ax in axes.flat[1:]:
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
            if ax.get_yscale() == "log":
                lean_log_ticks(ax.yaxis)
            if short:
                ax.set_xlim(-0.5, len(iters) - 0.5)
        return fig

    @classmethod
    def sweep_figure(cls, jobs: list[dict[str, Any]]) -> Figure | None:
        """Final loss against learning rate: one line per combination of the other parameters
        that vary (start, momentum, function, seed...), each job's outcome marked."""
        done = [j for j in jobs if "final_loss" in j["metrics"]
                and "experiment.learning_rate" in j["params"]]
        if not done:
            return None
        fig, ax = figure("Gradient descent sweep: final loss against learning rate",
                         size=(9, 6))
        varying = sorted(key for key in {k for j in done for k in j["params"]}
                         if key != LEARNING_RATE and not key.startswith(INCIDENTAL)
                         and len({j["params"].get(key) for j in done}) > 1)
        groups: dict[str, list[dict[str, Any]]] = {}
        for job in done:
            label = " ".join(f"{key.removeprefix('experiment.')}={job['params'].get(key)}"
                             for key in varying)
            groups.setdefault(label or "all jobs", []).append(job)
        for label, group in sorted(groups.items()):
            group.sort(key=lambda j: float(j["params"][LEARNING_RATE]))
            lrs = [float(j["params"][LEARNING_RATE]) for j in group]
            losses = [j["metrics"]["final_loss"] for j in group]
            (line,) = ax.loglog(lrs, losses, label=label)
            for lr, loss, job in zip(lrs, losses, group, strict=True):
                ax.scatter([lr], [loss], zorder=3,
                           **outcome_marker(job["outcome"], line.get_color()))
        for outcome, label in OUTCOMES.items():
            ax.scatter([], [], label=label, **outcome_marker(outcome, "black"))
        functions = {j["params"].get("experiment.function") for j in done}
        if len(functions) == 1 and (name := functions.pop()) in OBJECTIVES:
            limit = OBJECTIVES[name].stability_limit
            ax.axvline(limit, color="gray", linestyle="--",
                       label=f"stability limit 2/λmax(∇²f) at the minimum = {limit:.4g}")
        failed = len(jobs) - len(done)
        title = f"{len(done)} job{'s' if len(done) != 1 else ''}"
        ax.set(xlabel="learning rate", ylabel="final loss",
               title=title + (f", {failed} not shown (failed or not run)" if failed else ""))
        ax.legend(fontsize=8)
        return fig


def plot_path(ax, fn: Objective, path: np.ndarray) -> None:
    """The descent path over log-spaced contours, with start, end and minima marked."""
    (x0, x1), (y0, y1) = fn.window
    near = path[(np.abs(path[:, 0]) < 10 * max(abs(x0), abs(x1)))
                & (np.abs(path[:, 1]) < 10 * max(abs(y0), abs(y1)))]
    near = np.vstack([path[:1], near])  # far-flung points of a divergence are cut; the start not
    x0, x1 = min(x0, near[:, 0].min() - 0.2), max(x1, near[:, 0].max() + 0.2)
    y0, y1 = min(y0, near[:, 1].min() - 0.2), max(y1, near[:, 1].max() + 0.2)
    lines, line_levels, levels = log_contours(fn, (x0, x1, y0, y1))
    ax.add_collection(LineCollection(lines, array=line_levels, cmap="viridis", linewidths=0.8,
                                     norm=LogNorm(levels[0], levels[-1])))
    ax.plot(path[:, 0], path[:, 1], ".-", color="tab:red", markersize=2, linewidth=1,
            label="path")
    ax.plot(*path[0], "o", color="tab:green", markersize=10, label="start")
    ax.plot(*path[-1], "s", color="tab:red", markersize=9, label="end")
    minima = np.array(fn.minima)
    ax.plot(minima[:, 0], minima[:, 1], "*", color="black", markersize=14, label="minima")
    ax.set(xlim=(x0, x1), ylim=(y0, y1), title="Path on log-spaced contours of f", xlabel="x",
           ylabel="y")
    ax.legend(loc="upper right", fontsize=8)


@functools.lru_cache(maxsize=16)
def log_contours(fn: Objective, window: tuple[float, float, float, float],
                 ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Contour lines of `fn` over `window` (x0, x1, y0, y1), the level of each, and the 25
    log-spaced levels. Cached: the jobs of a sweep mostly share a function and window."""
    x0, x1, y0, y1 = window
    gx, gy = np.meshgrid(np.linspace(x0, x1, 300), np.linspace(y0, y1, 300))
    z = fn.value(torch.from_numpy(np.stack([gx, gy], axis=-1))).numpy()
    generator = contour_generator(gx, gy, z)
    levels = np.logspace(np.log10(max(z.min(), 1e-3)), np.log10(z.max()), 25)
    lines, line_levels = [], []
    for level in levels:
        for line in generator.lines(level):
            lines.append(line)
            line_levels.append(level)
    return lines, np.array(line_levels), levels
