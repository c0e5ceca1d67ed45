"""Section 4.1: a 2-D function's gradient over a whole grid, and every critical point in it."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.cm import ScalarMappable
from matplotlib.colorbar import Colorbar
from matplotlib.colors import LogNorm, Normalize, SymLogNorm
from matplotlib.figure import Figure

from gradkit.core.experiment import Check, Experiment, Result, RunContext
from gradkit.core.validation import ConfigError, integer, vector
from gradkit.lib.curvature import KINDS, STATIONARY_TOLERANCE, kind_by_cholesky, point_kind
from gradkit.lib.derivatives import batched_gradient, batched_hessian, gradient_per_point
from gradkit.lib.functions import (
    OBJECTIVES,
    Objective,
    Window,
    distinct,
    gradient_scale,
    inside,
    lattice,
    notebook_quadratic,
    objective,
    stationary_points,
    window_size,
)
from gradkit.lib.timing import now
from gradkit.plotting import colorbar, figure, lean_log_ticks

MAX_RESOLUTION = 2000
GRADIENT_TOLERANCE = 1e-12
HESSIAN_TOLERANCE = 1e-10  # autograd vs analytic Hessian at the critical points, relative
LOOP_SAMPLE = 64  # grid points the per-point backward loop recomputes
NEWTON_STEPS = 200  # Newton converges only linearly at degenerate points (x^4: 2/3 a step)
NEWTON_STOP = 1e-15  # a step below this fraction of the window: that start has converged
MAX_SEEDS = 1000  # the grid's local minima of |grad f| that seed Newton, smallest first
SEED_LATTICE = 32  # per axis: further seeds evenly over the window, whatever the resolution
LINK_SPACINGS = 2  # degenerate points this many seed spacings apart belong to one set
MATCH_DISTANCE = 1e-6  # an oracle point this close (fraction of the window) is found
MARKERS = {"minimum": ("*", "tab:green"), "maximum": ("^", "tab:red"),
           "saddle": ("X", "tab:orange"), "degenerate": ("o", "tab:purple")}


def builtins() -> dict[str, Objective]:
    """The built-in functions: the 2-D test functions and the notebook's quadratic."""
    return {**OBJECTIVES, "quadratic": notebook_quadratic()}


def window_range(key: str, value: Any, default: tuple[float, float]) -> tuple[float, float]:
    """A [low, high] range with low < high; null takes `default`."""
    if value is None:
        return default
    low, high = vector(key, value, 2)
    if not low < high:
        raise ConfigError(f"{key}={[low, high]} must be increasing: [low, high] with low < high")
    return low, high


def grid(x_range: tuple[float, float], y_range: tuple[float, float],
         resolution: int, device: torch.device) -> torch.Tensor:
    """Points (resolution, resolution, 2): row i has y = ys[i], column j has x = xs[j]."""
    xs = torch.linspace(*x_range, resolution, dtype=torch.float64, device=device)
    ys = torch.linspace(*y_range, resolution, dtype=torch.float64, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def seeds(points: torch.Tensor, grads: torch.Tensor, window: Window) -> torch.Tensor:
    """Newton's starts: the grid's local minima of |grad f| and a fixed lattice over the window
    (on a coarse grid two critical points can share one local minimum)."""
    magnitude = grads.norm(dim=-1)
    padded = F.pad(magnitude[None, None], (1, 1, 1, 1), value=float("inf"))
    neighbourhood_min = -F.max_pool2d(-padded, 3, stride=1)[0, 0]
    is_seed = magnitude <= neighbourhood_min
    order = magnitude[is_seed].argsort()[:MAX_SEEDS]
    return torch.cat([points[is_seed][order], lattice(window, SEED_LATTICE).to(points.device)])


def newton(fn: Objective, x: torch.Tensor, window: Window) -> torch.Tensor:
    """Newton's method on grad f from each row of x, with autograd's gradients and Hessians
    (least squares where the Hessian is singular); a start stops once it moves less than
    NEWTON_STOP of the window in a step, or strays a window's size beyond the window."""
    size = window_size(window).to(x.device)
    low = torch.tensor([window[0][0], window[1][0]], dtype=x.dtype, device=x.device)
    high = low + size
    gradient = torch.func.vmap(torch.func.grad(fn.value))
    x, moving = x.clone(), torch.ones(len(x), dtype=torch.bool, device=x.device)
    for _ in range(NEWTON_STEPS):
        if not moving.any():
            break
        at = x[moving]
        step = torch.linalg.lstsq(batched_hessian(fn.value, at),
                                  gradient(at).unsqueeze(-1)).solution.squeeze(-1)
        step = torch.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)
        x[moving] = torch.clamp(at - step, low - size, high + size)
        moved = ((x[moving] - at).abs() / size).amax(-1)
        astray = ((x[moving] == low - size) | (x[moving] == high + size)).any(-1)
        moving[moving.clone()] = (moved >= NEWTON_STOP) & ~astray
    return x


def critical_points(fn: Objective, points: torch.Tensor, grads: torch.Tensor, window: Window
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every critical point in the window, classified by its Hessian, and the critical sets
    (curves of degenerate points, like the ring of (x² + y² - 1)²), each reported once.

    A point counts as critical where ‖∇f‖ ≤ STATIONARY_TOLERANCE x the largest ‖∇f‖ on the
    grid; an eigenvalue as zero below EIGENVALUE_TOLERANCE x that scale over the window's
    diagonal (or x the point's largest |λ|).
    """
    scale = gradient_scale(grads.reshape(-1, 2))
    curvature = scale / window_size(window).norm().item()
    gradient = torch.func.vmap(torch.func.grad(fn.value))
    x = newton(fn, seeds(points, grads, window), window)
    keep = (gradient(x).norm(dim=-1) <= STATIONARY_TOLERANCE * scale) & inside(x, window)
    found = distinct(x[keep], window)
    if not len(found):
        return [], []
    eigenvalues = torch.linalg.eigvalsh(batched_hessian(fn.value, found))
    rows = []
    for point, eig in zip(found, eigenvalues, strict=True):
        grad_norm = gradient(point[None]).norm().item()
        rows.append({"x": point[0].item(), "y": point[1].item(),
                     "value": fn.value(point).item(),
                     "kind": point_kind(eig.tolist(), grad_norm, scale, curvature),
                     "eigenvalues": eig.tolist(), "grad_norm": grad_norm})
    isolated, sets = split_sets(rows, window)
    order = {kind: i for i, kind in enumerate(KINDS)}  # anything else (a bug) last, for checks
    return sorted(isolated, key=lambda r: (order.get(r["kind"], len(KINDS)), r["x"], r["y"])), sets


def split_sets(rows: list[dict[str, Any]], window: Window
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Isolated points, and the groups of degenerate points that chain within LINK_SPACINGS
    seed spacings of each other: a non-isolated critical set, each summarised once."""
    degenerate = [r for r in rows if r["kind"] == "degenerate"]
    at = torch.tensor([[r["x"], r["y"]] for r in degenerate], dtype=torch.float64)
    linked = distances(at, at) <= link_distance(window) if degenerate else None
    group = torch.arange(len(degenerate))
    while degenerate:  # each point takes the smallest label it links to, until none changes
        smaller = torch.where(linked, group[None], len(degenerate)).amin(-1)
        if torch.equal(smaller, group):
            break
        group = smaller
    members: dict[int, list[dict[str, Any]]] = {}
    for row, g in zip(degenerate, group.tolist(), strict=True):
        members.setdefault(g, []).append(row)
    sets = [summarise_set(m) for m in members.values() if len(m) > 1]
    on_sets = {id(r) for m in members.values() if len(m) > 1 for r in m}
    return [r for r in rows if id(r) not in on_sets], sets


def link_distance(window: Window) -> float:
    """How near two degenerate points lie on one critical set: LINK_SPACINGS seed spacings."""
    return LINK_SPACINGS * (window_size(window) / (SEED_LATTICE - 1)).norm().item()


def summarise_set(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A critical set: how many of its points were found, where it lies, f along it."""
    xs, ys, values = ([r[k] for r in rows] for k in ("x", "y", "value"))
    return {"points": len(rows), "x": [min(xs), max(xs)], "y": [min(ys), max(ys)],
            "value": [min(values), max(values)],
            "members": [[x, y] for x, y in zip(xs, ys, strict=True)]}


def distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the rows of a and b, exactly (no matrix-product shortcut,
    which rounds distances below ~1e-8 of the coordinates to 0)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def disagreements(oracle: torch.Tensor, found: list[dict[str, Any]],
                  sets: list[dict[str, Any]], window: Window) -> int:
    """How far the search and the oracle disagree, both ways: oracle points neither within
    MATCH_DISTANCE of a found point nor within a link of a found set's point; found points
    with no oracle point that near; found sets with no oracle point on them; and degenerate
    points called isolated with another oracle point within a link (on a set, then)."""
    size, link = window_size(window), link_distance(window)
    points = torch.tensor([[r["x"], r["y"]] for r in found], dtype=torch.float64).reshape(-1, 2)
    oracle = oracle.cpu().reshape(-1, 2)
    near = ((points[:, None] - oracle[None]).abs() / size).amax(-1) <= MATCH_DISTANCE
    degenerate = torch.tensor([r["kind"] == "degenerate" for r in found], dtype=torch.bool)
    crowded = ((distances(points, oracle) <= link) & ~near).any(-1) & degenerate
    on_sets = torch.zeros(len(oracle), dtype=torch.bool)
    unconfirmed_sets = 0
    for s in sets:
        on_set = (distances(oracle, torch.tensor(s["members"], dtype=torch.float64))
                  <= link).any(-1)
        on_sets |= on_set
        unconfirmed_sets += not bool(on_set.any())
    missed = int((~(near.any(0) | on_sets)).sum())
    return missed + int((~near.any(1)).sum()) + unconfirmed_sets + int(crowded.sum())


class Landscape(Experiment):
    """Values and gradients of a 2-D function on a grid; its critical points, classified."""

    headline = ("value_min", "grad_norm_max")
    proves = ("the batched gradient equals the analytic one and the per-point loop on the grid,"
              " every critical point found is stationary and of the kind the analytic Hessian"
              " says, and an independent search finds the same ones")

    def __init__(self, function: str = "rosenbrock", x_range: list[float] | None = None,
                 y_range: list[float] | None = None, resolution: int = 200):
        self.objective = objective(function, builtins=builtins())
        (x_window, y_window) = self.objective.window
        self.x_range = window_range("experiment.x_range", x_range, x_window)
        self.y_range = window_range("experiment.y_range", y_range, y_window)
        self.resolution = integer("experiment.resolution", resolution, minimum=2)
        if self.resolution > MAX_RESOLUTION:
            raise ConfigError(f"experiment.resolution={resolution} must be <= {MAX_RESOLUTION}")
        self.require_finite(function)

    def require_finite(self, function: str) -> None:
        """A ConfigError unless f is finite at every grid point of the window."""
        points = grid(self.x_range, self.y_range, self.resolution, torch.device("cpu"))
        bad = ~torch.isfinite(self.objective.value(points))
        if bad.any():
            x, y = points[bad][0].tolist()
            raise ConfigError(
                f"experiment.function={function!r} is not finite at {int(bad.sum())} of "
                f"{bad.numel()} grid points of [{self.x_range[0]:g}, {self.x_range[1]:g}] x "
                f"[{self.y_range[0]:g}, {self.y_range[1]:g}] (e.g. ({x:g}, {y:g})); choose "
                "experiment.x_range and experiment.y_range where it is defined")

    def run(self, ctx: RunContext) -> Result:
        fn = self.objective
        points = grid(self.x_range, self.y_range, self.resolution, ctx.device)
        batched_gradient(fn.value, points[:2, :2])  # first-call costs are not the method's
        start = now(ctx.device)
        values, grads = batched_gradient(fn.value, points)
        seconds = now(ctx.device) - start
        magnitude = grads.norm(dim=-1)
        found, sets = critical_points(fn, points, grads, self.window)
        counts = {kind: sum(p["kind"] == kind for p in found) for kind in KINDS}
        metrics = {
            "value_min": values.min().item(), "value_max": values.max().item(),
            "value_mean": values.mean().item(), "value_std": values.std().item(),
            "grad_norm_mean": magnitude.mean().item(), "grad_norm_max": magnitude.max().item(),
            "gradient_seconds": seconds,
            **{f"critical_points/{kind}": float(n) for kind, n in counts.items()},
            "critical_sets": float(len(sets)),
        }
        return Result(
            metrics=metrics,
            checks=self.checks(points, grads, found, sets),
            figures={"landscape": self.plot(points.cpu(), values.cpu(), grads.cpu(), found,
                                            sets)},
            summary={"function": fn.name, "x_range": list(self.x_range),
                     "y_range": list(self.y_range), "resolution": self.resolution,
                     "critical_points": found, "critical_sets": sets},
            objective=metrics["grad_norm_mean"],
        )

    @property
    def window(self) -> Window:
        return self.x_range, self.y_range

    def checks(self, points: torch.Tensor, grads: torch.Tensor, found: list[dict[str, Any]],
               sets: list[dict[str, Any]]) -> dict[str, Check]:
        """Batched autograd vs the analytic gradient everywhere and vs the per-point loop on
        a fixed sample, then the checks of the critical points."""
        flat_points, flat_grads = points.reshape(-1, 2), grads.reshape(-1, 2)
        analytic = self.objective.gradient(flat_points)
        scale = analytic.abs().max().item() or 1.0
        sample = torch.linspace(0, len(flat_points) - 1, LOOP_SAMPLE,
                                device=points.device).round().long().unique()
        looped = gradient_per_point(self.objective.value, flat_points[sample])
        return {
            "gradient": Check((flat_grads - analytic).abs().max().item() / scale,
                              GRADIENT_TOLERANCE),
            "loop_agreement": Check((looped - flat_grads[sample]).abs().max().item() / scale,
                                    GRADIENT_TOLERANCE),
            **self.critical_checks(found, sets, gradient_scale(analytic.cpu()) or 1.0),
        }

    def critical_checks(self, found: list[dict[str, Any]], sets: list[dict[str, Any]],
                        scale: float) -> dict[str, Check]:
        """At every critical point and set member: the analytic gradient, relative to `scale`
        (the largest analytic ‖∇f‖ on the grid); autograd's Hessian against the analytic one;
        the kind against Cholesky factorisations of the analytic Hessian (`kind_by_cholesky`).
        And the same critical points as the oracle's (`stationary_points`: Newton with the
        analytic derivatives from its own starts), counted both ways."""
        fn = self.objective
        at = torch.tensor([[p["x"], p["y"]] for p in found]
                          + [m for s in sets for m in s["members"]],
                          dtype=torch.float64).reshape(-1, 2)
        claimed = [p["kind"] for p in found] + ["degenerate" for s in sets for _ in s["members"]]
        grad_norms, hessians = fn.gradient(at).norm(dim=-1), fn.hessian(at)
        autograd = batched_hessian(fn.value, at) if len(at) else hessians
        curvature = scale / window_size(self.window).norm().item()
        hessian_scale = max([curvature, *hessians.abs().flatten().tolist()])
        disagree = sum(kind != kind_by_cholesky(h, g, scale, curvature)
                       for kind, h, g in zip(claimed, hessians, grad_norms.tolist(),
                                             strict=True))
        oracle = stationary_points(fn, self.window)
        return {
            "stationary": Check(grad_norms.max().item() / scale if len(at) else 0.0,
                                STATIONARY_TOLERANCE),
            "hessian": Check((autograd - hessians).abs().max().item() / hessian_scale
                             if len(at) else 0.0, HESSIAN_TOLERANCE),
            "classification": Check(float(disagree), 0.0),
            "complete": Check(float(disagreements(oracle, found, sets, self.window)), 0.0),
        }

    def plot(self, points: torch.Tensor, values: torch.Tensor, grads: torch.Tensor,
             found: list[dict[str, Any]], sets: list[dict[str, Any]]) -> Figure:
        """The notebook's nine views: contours, surface, field, |grad|, df/dx, df/dy,
        histograms of values, magnitudes and directions."""
        x, y = points[..., 0].numpy(), points[..., 1].numpy()
        z, g = values.numpy(), grads.numpy()
        magnitude = np.hypot(g[..., 0], g[..., 1])
        extent = (*self.x_range, *self.y_range)
        counts = ", ".join([count_label(sum(p["kind"] == k for p in found), k)
                            for k in KINDS if any(p["kind"] == k for p in found)]
                           + [f"{len(sets)} critical set{'s' * (len(sets) != 1)}"] * bool(sets))
        title = (f"{self.objective.name} on [{self.x_range[0]:g}, {self.x_range[1]:g}] × "
                 f"[{self.y_range[0]:g}, {self.y_range[1]:g}], {self.resolution}² points: "
                 f"critical points: {counts or 'none'}")
        fig, axes = figure(title, 3, 3, size=(17, 14.5), layout=None)
        fig.subplots_adjust(left=0.05, right=0.97, bottom=0.05, top=0.93, wspace=0.4,
                            hspace=0.3)
        norm = value_norm(z)
        logarithmic = isinstance(norm, LogNorm)
        contours(fig, axes[0, 0], x, y, z, norm, found, sets)
        heatmap(fig, axes[0, 1], z, extent, norm, "viridis", "f(x, y)",
                f"Surface f ({'log' if logarithmic else 'linear'} colour scale)")
        gradient_field(fig, axes[0, 2], x, y, g, magnitude)
        heatmap(fig, axes[1, 0], magnitude, extent, positive_norm(magnitude), "plasma",
                "‖∇f‖", "Gradient magnitude ‖∇f‖ (log colour scale)")
        for ax, component, name in ((axes[1, 1], g[..., 0], "∂f/∂x"),
                                    (axes[1, 2], g[..., 1], "∂f/∂y")):
            diverging_heatmap(fig, ax, component, extent, name)
        histogram(axes[2, 0], z, "f(x, y)", "Distribution of values", "tab:blue")
        histogram(axes[2, 1], magnitude, "‖∇f‖", "Distribution of gradient magnitudes",
                  "tab:orange")
        angles = np.arctan2(g[..., 1], g[..., 0]).ravel()
        counts, edges = np.histogram(angles, bins=72, range=(-np.pi, np.pi))
        axes[2, 2].stairs(counts, edges, fill=True, color="tab:green")
        axes[2, 2].set_xticks(np.linspace(-np.pi, np.pi, 5), ["−π", "−π/2", "0", "π/2", "π"])
        axes[2, 2].set(title="Distribution of gradient directions",
                       xlabel="angle of ∇f (radians, 0 = +x)", ylabel="grid points")
        return fig

    @classmethod
    def sweep_figure(cls, jobs: list[dict[str, Any]]) -> Figure | None:
        """Batched gradient time against grid size, one line per function."""
        done = [j for j in jobs if "gradient_seconds" in j["metrics"]
                and "experiment.resolution" in j["params"]]
        if not done:
            return None
        fig, ax = figure("Landscape sweep: batched gradient time against grid size",
                         size=(9, 6))
        groups: dict[str, list[dict[str, Any]]] = {}
        for job in done:
            groups.setdefault(job["params"].get("experiment.function", "?"), []).append(job)
        for (name, group), marker in zip(sorted(groups.items()), itertools.cycle("osD^v")):
            group.sort(key=lambda j: int(j["params"]["experiment.resolution"]))
            sizes = [int(j["params"]["experiment.resolution"]) ** 2 for j in group]
            seconds = [j["metrics"]["gradient_seconds"] for j in group]
            found = {sum(j["metrics"].get(f"critical_points/{k}", 0) for k in KINDS)
                     for j in group}
            counts = "/".join(f"{n:.0f}" for n in sorted(found))
            ax.loglog(sizes, seconds, marker=marker,
                      label=f"{name} ({counts} critical point{'' if found == {1} else 's'})")
        sizes = np.array(sorted({int(j["params"]["experiment.resolution"]) ** 2 for j in done}))
        reference = max(j["metrics"]["gradient_seconds"] for j in done) / sizes[-1]
        ax.loglog(sizes, reference * sizes, color="gray", linestyle="--",
                  label="linear in grid points")
        failed = len(jobs) - len(done)
        ax.set(xlabel="grid points (resolution²)", ylabel="batched gradient time (s)",
               title=f"{len(done)} jobs" + (f", {failed} not completed (not shown)"
                                            if failed else ""))
        ax.legend()
        return fig


PLURALS = {"minimum": "minima", "maximum": "maxima", "saddle": "saddles",
           "degenerate": "degenerate"}


def count_label(count: int, kind: str) -> str:
    return f"{count} {kind if count == 1 else PLURALS[kind]}"


def contours(fig: Figure, ax, x: np.ndarray, y: np.ndarray, z: np.ndarray, norm: Normalize,
             found: list[dict[str, Any]], sets: list[dict[str, Any]]) -> None:
    """Contours of f (log-spaced under a log norm) with the critical points marked by kind
    and the points found on critical sets as small dots."""
    logarithmic = isinstance(norm, LogNorm)
    if logarithmic:
        levels, z = np.geomspace(norm.vmin, norm.vmax, 25), np.clip(z, norm.vmin, None)
    else:
        levels = np.linspace(norm.vmin, norm.vmax, 25)
    ax.contour(x, y, z, levels=levels, norm=norm, cmap="viridis", linewidths=0.8)
    colorbar(fig, ScalarMappable(norm, "viridis"), ax, label="f(x, y)")
    for kind in KINDS:
        at = [(p["x"], p["y"]) for p in found if p["kind"] == kind]
        if at:
            marker, color = MARKERS[kind]
            ax.scatter(*zip(*at, strict=True), marker=marker, color=color, s=150,
                       edgecolor="black", zorder=3, label=count_label(len(at), kind))
    for number, members in enumerate(s["members"] for s in sets):
        ax.scatter(*zip(*members, strict=True), s=12, color="tab:purple", zorder=3,
                   label=f"critical set ({len(members)} points found)" if not number else None)
    if found or sets:
        ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    spaced = "log-spaced" if logarithmic else "evenly spaced"
    ax.set(title=f"Contours ({spaced}), critical points", xlabel="x", ylabel="y")


def diverging_heatmap(fig: Figure, ax, values: np.ndarray, extent: tuple[float, ...],
                      name: str) -> None:
    """Signed values on a symmetric log scale centred at 0 (white), a tick per decade."""
    limit = max(float(np.abs(values).max()), 1e-300)
    linthresh = limit * 1e-3
    norm = SymLogNorm(linthresh=linthresh, vmin=-limit, vmax=limit)
    bar = heatmap(fig, ax, values, extent, norm, "RdBu_r", name,
                  f"{name} (symmetric log scale, 0 = white)")
    decades = 10.0 ** np.arange(np.ceil(np.log10(linthresh)), np.floor(np.log10(limit)) + 1)
    bar.set_ticks([*-decades[::-1], 0.0, *decades])


def positive_norm(values: np.ndarray) -> LogNorm:
    """A log colour scale over the positive values (zeros clip to the smallest)."""
    positive = values[values > 0]
    top = float(values.max()) if positive.size else 1.0
    bottom = float(positive.min()) if positive.size else top * 1e-12
    return LogNorm(vmin=max(bottom, top * 1e-12), vmax=top, clip=True)


def value_norm(values: np.ndarray) -> Normalize:
    """Log colours for non-negative values spanning two decades or more, else linear."""
    norm = positive_norm(values)
    if values.min() >= 0 and norm.vmax >= 100 * norm.vmin:
        return norm
    return Normalize(vmin=float(values.min()), vmax=float(values.max()))


def heatmap(fig: Figure, ax, values: np.ndarray, extent: tuple[float, ...], norm: Normalize,
            cmap: str, label: str, title: str) -> Colorbar:
    image = ax.imshow(values, extent=extent, origin="lower", aspect="auto", norm=norm,
                      cmap=cmap, interpolation="nearest")
    ax.set(title=title, xlabel="x", ylabel="y")
    ax.grid(False)
    return colorbar(fig, image, ax, label=label)


def gradient_field(fig: Figure, ax, x: np.ndarray, y: np.ndarray, g: np.ndarray,
                   magnitude: np.ndarray, arrows: int = 21) -> None:
    """Unit arrows on a subsampled grid, coloured by log10 of the gradient magnitude."""
    step = max(1, len(x) // arrows)
    xs, ys, gs, ms = x[::step, ::step], y[::step, ::step], g[::step, ::step], \
        magnitude[::step, ::step]
    length = 0.8 * min(xs[0, 1] - xs[0, 0], ys[1, 0] - ys[0, 0]) if len(xs) > 1 else 1.0
    safe = np.where(ms > 0, ms, 1.0) / length
    colours = np.log10(np.where(ms > 0, ms, np.nan))
    quiver = ax.quiver(xs, ys, gs[..., 0] / safe, gs[..., 1] / safe, colours, cmap="plasma",
                       pivot="mid", angles="xy", scale_units="xy", scale=1, width=0.004)
    colorbar(fig, quiver, ax, label="log₁₀ ‖∇f‖")
    ax.set(title="Gradient direction (unit arrows, colour = magnitude)", xlabel="x",
           ylabel="y", xlim=(x.min(), x.max()), ylim=(y.min(), y.max()))


def histogram(ax, values: np.ndarray, label: str, title: str, color: str) -> None:
    """A histogram with log-spaced bins when the values are positive and span decades."""
    values = values.ravel()
    norm = value_norm(values)
    if isinstance(norm, LogNorm):
        counts, edges = np.histogram(np.clip(values, norm.vmin, None),
                                     bins=np.geomspace(norm.vmin, norm.vmax, 61))
        ax.set_xscale("log")
        lean_log_ticks(ax.xaxis)
        title += " (log bins)"
    else:
        counts, edges = np.histogram(values, bins=60)
    ax.stairs(counts, edges, fill=True, color=color)
    ax.set(title=title, xlabel=label, ylabel="grid points")
