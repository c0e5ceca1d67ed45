"""Section 4.2: gradient descent on a 2-D test function, with divergence as a result."""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from contourpy import contour_generator
from matplotlib.collections import LineCollection
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gradkit.core.experiment import Check, Experiment, Result, RunContext
from gradkit.core.validation import ConfigError, integer, number, vector
from gradkit.lib.functions import Objective, objective
from gradkit.plotting import colorbar, figure, lean_log_ticks

GRADIENT_TOLERANCE = 1e-10
TRAJECTORY_TOLERANCE = 1e-10  # replayed steps vs recorded, relative to the largest step
RISE_TOLERANCE = 1e-12  # a loss rise below this x the largest |loss| is rounding
SEGMENT_SAMPLES = 9  # points per step at which the path's curvature is sampled
RADIUS_TOLERANCE = 1e-9  # |spectral radius at the stability limit - 1|
MANY_MINIMA = 20  # more minima than this (a valley of them) are drawn as dots
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


def descent_check(losses: list[float], certified: torch.Tensor) -> Check:
    """The largest rise of the loss over a certified step, relative to the largest |loss|."""
    rises = np.diff(losses)[certified.numpy()[:len(losses) - 1]]
    scale = max(abs(v) for v in losses) or 1.0
    return Check(max(0.0, float(rises.max(initial=0.0))) / scale, RISE_TOLERANCE)


def spectral_radius(step: float, momentum: float) -> float:
    """The spectral radius of heavy-ball descent on λ/2 x² at lr·λ = `step`:
    [x_k+1, x_k] = [[1 + β - step, -β], [1, 0]] [x_k, x_k-1]."""
    matrix = np.array([[1 + momentum - step, -momentum], [1.0, 0.0]])
    return float(np.abs(np.linalg.eigvals(matrix)).max())


class GradientDescent(Experiment):
    """Minimise a 2-D test function by gradient descent from `start`."""

    headline = ("final_loss", "iterations", "converged")
    proves = ("autograd's gradient at the start equals the analytic one, every step replays "
              "with the analytic gradient, the loss never rises where the descent lemma says so, "
              "the outcome agrees with the path, and the stability limit is where the iteration "
              "turns unstable")
    log_scale = ("final_loss", "learning_rate")  # learning rate x start -> final loss

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
            "stability_limit": fn.stability_limit(self.momentum),
        }
        sharpness = self.step_sharpness(trace)
        certified = (sharpness * self.learning_rate < 2) if self.momentum == 0 else None
        metrics["path_sharpness"] = sharpness.max().item() if len(sharpness) else math.nan
        metrics["certified_steps"] = float(certified.sum()) if certified is not None else 0.0
        xs, ys = zip(*trace.points, strict=True)
        return Result(
            metrics=metrics,
            series={"loss": trace.losses, "grad_norm": trace.grad_norms,
                    "step_size": trace.step_sizes, "x": list(xs), "y": list(ys)},
            checks=self.checks(trace, certified),
            figures={"descent": self.plot(trace)},
            summary={"function": fn.name, "start": list(self.start), "end": list(trace.points[-1]),
                     "status": trace.status, "minima": [list(m) for m in fn.minima]},
            tags={"status": trace.status},
            objective=DIVERGED_OBJECTIVE if diverged else trace.losses[-1],
        )

    def checks(self, trace: Descent, certified: torch.Tensor | None) -> dict[str, Check]:
        """The gradient at the start, the replayed path, the outcome; the descent property on
        the steps where the descent lemma guarantees it (`certified`: momentum 0 and
        lr < 2 / the step's sharpness); the stability limit where a minimum has curvature."""
        checks = {"gradient": self.gradient_check(), "trajectory": self.trajectory_check(trace),
                  "outcome": Check(float(self.outcome(trace) != trace.status), 0.0)}
        if certified is not None and bool(certified.any()):
            checks["descent"] = descent_check(trace.losses, certified)
        if self.objective.sharpness > 0:
            checks["stability_limit"] = self.stability_check()
        return checks

    def gradient_check(self) -> Check:
        """Autograd's gradient at the start point against the analytic gradient."""
        start = torch.tensor(self.start, dtype=torch.float64, requires_grad=True)
        (autograd,) = torch.autograd.grad(self.objective.value(start), start)
        analytic = self.objective.gradient(start.detach())
        scale = analytic.abs().max().item() or 1.0
        return Check((autograd - analytic).abs().max().item() / scale, GRADIENT_TOLERANCE)

    def replay(self, trace: Descent) -> tuple[torch.Tensor, torch.Tensor]:
        """The heavy-ball steps lr·v_k from the recorded points with the analytic gradient,
        and the size lr·Σ β^(k-j) ‖g_j‖ of the terms each sums."""
        grads = self.objective.gradient(torch.tensor(trace.points, dtype=torch.float64))
        (vx, vy), size, beta, lr = (0.0, 0.0), 0.0, self.momentum, self.learning_rate
        steps, sizes = [], []
        for gx, gy in grads.tolist():  # floats: a recurrence of 1e5 steps in well under 1 s
            vx, vy, size = beta * vx + gx, beta * vy + gy, beta * size + math.hypot(gx, gy)
            steps.append((lr * vx, lr * vy))
            sizes.append(lr * size)
        return (torch.tensor(steps, dtype=torch.float64).reshape(-1, 2),
                torch.tensor(sizes, dtype=torch.float64))

    def trajectory_check(self, trace: Descent) -> Check:
        """Each recorded step and step size against the step replayed with the analytic
        gradient, relative to the largest step's terms."""
        if len(trace.points) < 2:  # no step, or the first one diverged (see `outcome`)
            return Check(0.0, TRAJECTORY_TOLERANCE)
        steps, sizes = self.replay(trace)
        points = torch.tensor(trace.points, dtype=torch.float64)
        taken = points[:-1] - points[1:]
        replayed = steps[:len(taken)]
        recorded = torch.tensor(trace.step_sizes[:len(taken)], dtype=torch.float64)
        error = max((taken - replayed).norm(dim=-1).max().item(),
                    (recorded - replayed.norm(dim=-1)).abs().max().item())
        return Check(error / (sizes.max().item() or 1.0), TRAJECTORY_TOLERANCE)

    def outcome(self, trace: Descent) -> str:
        """What the recorded path says the outcome is: converged where the analytic gradient
        first falls below the tolerance, diverged where the replayed next step leaves the
        finite, unexploded losses, else max_iterations."""
        points = torch.tensor(trace.points, dtype=torch.float64)
        norms = self.objective.gradient(points).norm(dim=-1)
        below = (norms < self.tolerance).nonzero()
        if len(below):
            return "converged" if below[0].item() == len(points) - 1 else "converged early"
        if trace.iterations == self.max_iterations:
            return "max_iterations"
        steps, _ = self.replay(trace)
        following = points[-1] - steps[-1]
        loss = self.objective.value(following).item()
        limit = EXPLOSION_FACTOR * max(1.0, abs(trace.losses[0]))
        finite = math.isfinite(loss) and torch.isfinite(self.objective.gradient(following)).all()
        return "diverged" if not finite or loss > limit else "stopped without a reason"

    def step_sharpness(self, trace: Descent) -> torch.Tensor:
        """For each step, the largest analytic Hessian eigenvalue sampled along its segment:
        the L of the descent lemma (a plain step with lr < 2 / L never raises the loss)."""
        points = torch.tensor(trace.points, dtype=torch.float64)
        t = torch.linspace(0, 1, SEGMENT_SAMPLES, dtype=torch.float64)[:, None, None]
        along = points[:-1] + t * (points[1:] - points[:-1])  # (samples, steps, 2)
        eigenvalues = torch.linalg.eigvalsh(self.objective.hessian(along.reshape(-1, 2)))
        per_sample = eigenvalues.nan_to_num(nan=math.inf).amax(-1).reshape(len(t), -1)
        return per_sample.amax(0)

    def stability_check(self) -> Check:
        """At lr = stability_limit the heavy-ball iteration on the quadratic model at the
        sharpest minimum (autograd's Hessian, not the analytic one the limit comes from) is
        marginal: its spectral radius is 1."""
        minima = torch.tensor(self.objective.minima, dtype=torch.float64)
        hessians = torch.func.vmap(torch.func.hessian(self.objective.value))(minima)
        eigenvalues = torch.linalg.eigvalsh(hessians).flatten()
        lr, beta = self.objective.stability_limit(self.momentum), self.momentum
        radius = max(spectral_radius(lr * e, beta) for e in eigenvalues.tolist())
        return Check(abs(radius - 1), RADIUS_TOLERANCE)

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
        positive = min(trace.losses) > 0
        (axes[0, 1].semilogy if positive else axes[0, 1].plot)(iters, trace.losses,
                                                               color="tab:blue", **short)
        axes[0, 1].set(title="Loss (log scale)" if positive else "Loss", ylabel="f(x, y)")
        axes[0, 2].semilogy(iters, trace.grad_norms, color="tab:orange", **short)
        axes[0, 2].set(title="Gradient norm (log scale)", ylabel="‖∇f(x, y)‖")
        axes[1, 0].semilogy(trace.step_sizes, color="tab:green", **short)
        axes[1, 0].set(title="Step size (log scale)", xlabel="iteration",
                       ylabel="‖step‖ = lr · ‖velocity‖")
        nearest = [np.hypot(*(path[-1] - m)) for m in fn.minima]
        for i, (name, color) in enumerate((("x", "tab:blue"), ("y", "tab:red"))):
            axes[1, 1].plot(path[:, i], color=color, label=name, **short)
            if nearest:
                axes[1, 1].axhline(fn.minima[int(np.argmin(nearest))][i], color=color,
                                   linestyle="--", alpha=0.6, label=f"{name} at nearest minimum")
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
        if (other := searched(done, varying)) is not None:
            return search_figure(done, other, len(jobs))
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
        momenta = sorted({float(j["params"].get("experiment.momentum", 0)) for j in done})
        if len(functions) == 1 and (name := functions.pop()) is not None:
            fn = objective(name)
            for beta, style in zip(momenta, itertools.cycle(("--", ":", "-."))):
                limit = fn.stability_limit(beta)
                ax.axvline(limit, color="gray", linestyle=style,
                           label=f"stability limit 2(1+β)/λmax at the minimum, β = {beta:g}: "
                                 f"{limit:.4g}")
        failed = len(jobs) - len(done)
        title = f"{len(done)} job{'s' if len(done) != 1 else ''}"
        ax.set(xlabel="learning rate", ylabel="final loss",
               title=title + (f", {failed} not shown (failed or not run)" if failed else ""))
        ax.legend(fontsize=8)
        return fig


def searched(done: list[dict[str, Any]], varying: list[str]) -> str | None:
    """The other parameter of a search's trials, beside the learning rate: the only one that
    varies, a number; each trial has its own value of both (as a search samples them) and an
    objective. None for a grid."""
    if len(varying) != 1 or not all("objective" in job["metrics"] for job in done):
        return None
    try:
        pairs = [(float(job["params"][LEARNING_RATE]), float(job["params"][varying[0]]))
                 for job in done]
    except (KeyError, ValueError):
        return None
    distinct = all(len(set(axis)) == len(done) for axis in zip(*pairs, strict=True))
    return varying[0] if len(done) > 1 and distinct else None


def search_figure(done: list[dict[str, Any]], other: str, total: int) -> Figure:
    """A search's trials: objective against learning rate, coloured by `other` (a colour
    bar), shaped by outcome, the best trial ringed."""
    name = other.removeprefix("experiment.")
    fig, ax = figure(f"Gradient descent search: objective against learning rate, by {name}",
                     size=(9, 6))
    lrs = np.array([float(job["params"][LEARNING_RATE]) for job in done])
    objectives = np.array([job["metrics"]["objective"] for job in done])
    values = np.array([float(job["params"][other]) for job in done])
    norm = Normalize(values.min(), values.max())
    shapes = {"converged": "o", "max_iterations": "s", "diverged": "X"}
    labels = {**OUTCOMES, "diverged": f"diverged (objective {DIVERGED_OBJECTIVE:g})"}
    for outcome, marker in shapes.items():
        mine = np.array([job["outcome"] == outcome for job in done], dtype=bool)
        points = ax.scatter(lrs[mine], objectives[mine], c=values[mine], norm=norm,
                            cmap="viridis", marker=marker, s=70, edgecolors="black",
                            linewidths=0.5, zorder=3)
        ax.scatter([], [], marker=marker, color="gray", label=labels[outcome])
    best = int(np.argmin(objectives))
    ax.scatter(lrs[best], objectives[best], s=300, facecolors="none", edgecolors="tab:red",
               linewidths=1.5, zorder=4, label="best trial (lowest objective)")
    colorbar(fig, points, ax, label=name)
    ax.set(xscale="log", yscale="log", xlabel="learning rate",
           ylabel="objective (final loss, or its penalty when diverged)")
    missing = total - len(done)
    ax.set_title(f"{len(done)} trial{'s' if len(done) != 1 else ''}"
                 + (f", {missing} not shown (failed or not run)" if missing else ""))
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
    lines, line_levels, levels = path_contours(fn, (x0, x1, y0, y1))
    logarithmic = levels[0] > 0
    norm = (LogNorm if logarithmic else Normalize)(levels[0], levels[-1])
    ax.add_collection(LineCollection(lines, array=line_levels, cmap="viridis", linewidths=0.8,
                                     norm=norm))
    ax.plot(path[:, 0], path[:, 1], ".-", color="tab:red", markersize=2, linewidth=1,
            label="path")
    ax.plot(*path[0], "o", color="tab:green", markersize=10, label="start")
    ax.plot(*path[-1], "s", color="tab:red", markersize=9, label="end")
    if fn.minima:
        minima = np.array(fn.minima)
        ax.plot(minima[:, 0], minima[:, 1], "*", color="black", label="minima",
                markersize=14 if len(minima) <= MANY_MINIMA else 3)
    spacing = "log-spaced" if logarithmic else "evenly spaced"
    ax.set(xlim=(x0, x1), ylim=(y0, y1), title=f"Path on {spacing} contours of f", xlabel="x",
           ylabel="y")
    ax.legend(loc="upper right", fontsize=8)


@functools.lru_cache(maxsize=16)
def path_contours(fn: Objective, window: tuple[float, float, float, float],
                  ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Contour lines of `fn` over `window` (x0, x1, y0, y1), the level of each, and the 25
    levels: log-spaced from min(1e-3, 1e-6 x the largest value) for a non-negative f, else
    evenly spaced. Cached: the jobs of a sweep mostly share a function and window."""
    x0, x1, y0, y1 = window
    gx, gy = np.meshgrid(np.linspace(x0, x1, 300), np.linspace(y0, y1, 300))
    z = fn.value(torch.from_numpy(np.stack([gx, gy], axis=-1))).numpy()
    generator = contour_generator(gx, gy, z)
    if z.min() >= 0 and z.max() > 0:
        floor = min(1e-3, 1e-6 * z.max())
        levels = np.logspace(np.log10(max(z.min(), floor)), np.log10(z.max()), 25)
    else:
        levels = np.linspace(z.min(), z.max(), 27)[1:-1]
    lines, line_levels = [], []
    for level in levels:
        for line in generator.lines(level):
            lines.append(line)
            line_levels.append(level)
    return lines, np.array(line_levels), levels
