"""Section 5.1: the Hessian at a point three ways, its eigen-analysis, and what the point is."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from gradkit.core.experiment import Check, Experiment, Result, RunContext
from gradkit.core.validation import ConfigError, integer, number
from gradkit.core.validation import vector as coordinates
from gradkit.lib.curvature import (
    EIGENVALUE_TOLERANCE,
    definiteness,
    kind_by_cholesky,
    local_gradient_scale,
    point_kind,
)
from gradkit.lib.derivatives import HESSIANS, default_hessian_method
from gradkit.lib.functions import (
    NOTEBOOK_QUADRATIC,
    OBJECTIVES,
    Objective,
    notebook_quadratic,
    objective,
    quadratic,
)
from gradkit.lib.timing import best_of
from gradkit.plotting import figure, lean_log_ticks

NOTEBOOK_POINT = (2.0, 1.0)
TOLERANCE = 1e-12
SYMMETRY_TOLERANCE = 1e-12
REPEATS = 3  # each method is timed as the best of this many calls, after a warm-up call
MIN_ARROW = 0.15  # shortest eigenvector arrow, as a fraction of the longest
LEVEL_DECIMALS = 6  # most decimals on a contour colour bar; beyond, %.3g
HEATMAP_MAX_DIM = 10  # larger Hessians are shown by their spectrum
ARROW_COLOURS = {1: "tab:blue", -1: "tab:red", 0: "tab:gray"}  # by the eigenvalue's sign


def square_symmetric(key: str, value: Any, dim: int) -> torch.Tensor:
    """`value` as a finite symmetric dim x dim float64 matrix."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(f"{key}={value!r} must be a {dim}x{dim} list of rows, e.g. "
                          "[[3, 1], [1, 2]]")
    if len(value) != dim:
        raise ConfigError(f"{key} has {len(value)} rows; it must be {dim}x{dim} "
                          f"(experiment.dim={dim})")
    rows = [coordinates(f"{key}[{i}]", row, dim) for i, row in enumerate(value)]
    matrix = torch.tensor(rows, dtype=torch.float64)
    asymmetry = (matrix - matrix.T).abs().max().item()
    if asymmetry > SYMMETRY_TOLERANCE * max(1.0, matrix.abs().max().item()):
        raise ConfigError(f"{key}={rows} is not symmetric (|A - Aᵀ| up to {asymmetry:g}); "
                          "a Hessian is symmetric")
    return matrix


def random_spd(dim: int, generator: torch.Generator) -> torch.Tensor:
    """A symmetric positive-definite matrix Q diag(λ) Qᵀ, λ log-uniform in [1, 100]."""
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    eigenvalues = 10 ** (2 * torch.rand(dim, generator=generator, dtype=torch.float64))
    matrix = q @ torch.diag(eigenvalues) @ q.T
    return (matrix + matrix.T) / 2


def timed(method, f, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The method's Hessian and its best time of REPEATS calls after a warm-up."""
    hessian = method(f, x)
    return hessian, best_of(lambda: method(f, x), REPEATS, x.device)


class Hessian(Experiment):
    """The Hessian of a test function at `point`: three ways checked, eigen-analysed."""

    headline = ("condition_number", "determinant")
    proves = ("row-by-row double backward, torch.func.hessian and autograd.functional.hessian "
              "each give the analytic Hessian (SymPy's for an expression), autograd the analytic "
              "gradient, and the point's kind "
              "from the eigenvalues is the one Cholesky factorisations of the analytic Hessian "
              "give")

    def __init__(self, function: str = "quadratic", point: list[float] | None = None,
                 matrix: list[list[float]] | None = None, vector: list[float] | None = None,
                 constant: float = NOTEBOOK_QUADRATIC["constant"], dim: int = 2):
        self.given = objective(function, builtins={"quadratic": notebook_quadratic(),
                                                   **OBJECTIVES})
        self.function = function
        self.dim = integer("experiment.dim", dim, minimum=2)
        if self.function != "quadratic" and self.dim != 2:
            raise ConfigError(f"experiment.dim={dim}: {function} is 2-D; only the quadratic "
                              "takes dim > 2")
        if self.dim > 2 and matrix is not None:
            raise ConfigError(f"experiment.matrix: with experiment.dim={dim} the matrix is drawn "
                              "from the seed; leave it null")
        self.constant = number("experiment.constant", constant)
        self.matrix = (square_symmetric("experiment.matrix", matrix, 2) if matrix is not None
                       else torch.tensor(NOTEBOOK_QUADRATIC["matrix"], dtype=torch.float64)
                       if self.dim == 2 else None)
        self.vector = (coordinates("experiment.vector", vector, self.dim) if vector is not None
                       else NOTEBOOK_QUADRATIC["vector"] if self.dim == 2 else None)
        self.point = (coordinates("experiment.point", point, self.dim) if point is not None
                      else NOTEBOOK_POINT if self.dim == 2 else None)
        if self.function != "quadratic":
            value = self.given.value(torch.tensor(self.point, dtype=torch.float64)).item()
            if not math.isfinite(value):
                raise ConfigError(f"experiment.point={list(self.point)}: {function} = {value} "
                                  "there; choose a point where it is defined")

    def objective(self, generator: torch.Generator) -> Objective:
        """The function, its quadratic's random parts drawn from `generator` when dim > 2."""
        if self.function != "quadratic":
            return self.given
        matrix = self.matrix if self.matrix is not None else random_spd(self.dim, generator)
        b = (torch.tensor(self.vector, dtype=torch.float64) if self.vector is not None
             else torch.randn(self.dim, generator=generator, dtype=torch.float64))
        return quadratic(matrix, b, self.constant)

    def run(self, ctx: RunContext) -> Result:
        fn = self.objective(ctx.generator)
        point = (torch.tensor(self.point, dtype=torch.float64) if self.point is not None
                 else torch.randn(self.dim, generator=ctx.generator, dtype=torch.float64))
        x = point.to(ctx.device)
        expected = fn.hessian(x)
        scale = expected.abs().max().item() or 1.0
        hessians, seconds, checks = {}, {}, {}
        for name, method in HESSIANS.items():
            hessians[name], seconds[name] = timed(method, fn.value, x)
            checks[name] = Check((hessians[name] - expected).abs().max().item() / scale,
                                 TOLERANCE)
        default = default_hessian_method(self.dim)
        hessian = hessians[default].cpu()
        eigenvalues, eigenvectors = torch.linalg.eigh(hessian)
        eig = eigenvalues.tolist()
        analytic_gradient = fn.gradient(x)
        grad_norm = analytic_gradient.norm().item()
        checks["gradient"] = gradient_check(fn, x, analytic_gradient)
        gradient_scale = local_gradient_scale(expected.cpu(), point)
        magnitudes = eigenvalues.abs()
        singular = magnitudes.min() <= EIGENVALUE_TOLERANCE * magnitudes.max()
        condition = math.inf if singular else (magnitudes.max() / magnitudes.min()).item()
        tags = {"definiteness": definiteness(eig),
                "point_kind": point_kind(eig, grad_norm, gradient_scale)}
        independent = kind_by_cholesky(expected.cpu(), grad_norm, gradient_scale)
        checks["classification"] = Check(float(independent != tags["point_kind"]), 0.0)
        metrics = {
            **{f"eigenvalue/{i}": v for i, v in enumerate(eig)},
            "determinant": torch.linalg.det(hessian).item(),
            "trace": torch.trace(hessian).item(),
            "condition_number": condition,
            "grad_norm": grad_norm,
            "gradient_scale": gradient_scale,
            "value": fn.value(x).item(),
            **{f"seconds/{name}": s for name, s in seconds.items()},
        }
        return Result(
            metrics=metrics,
            checks=checks,
            figures={"hessian": plot_hessian(fn, point, hessian, eigenvalues, eigenvectors,
                                             tags)},
            summary={"function": fn.name, "point": point.tolist(), "hessian": hessian.tolist(),
                     "analytic_hessian": expected.cpu().tolist(), "eigenvalues": eig,
                     "eigenvectors": eigenvectors.T.tolist(),
                     "fastest": min(seconds, key=seconds.get), "default_method": default},
            tags=tags,
            objective=condition,
        )

    @classmethod
    def sweep_figure(cls, jobs: list[dict[str, Any]]) -> Figure | None:
        """Condition number by job, each bar coloured by what its point is.

        MLflow stores an infinite condition number as the largest float: drawn as ∞.
        """
        done = [j for j in jobs if "condition_number" in j["metrics"]
                and "eigenvalue/0" in j["metrics"]]
        if not done:
            return None
        fig, ax = figure("Hessian sweep: condition number and point kind",
                         size=(9, 2.5 + 0.45 * len(done)))
        colours = {"minimum": "tab:green", "maximum": "tab:red", "saddle": "tab:orange",
                   "degenerate": "tab:purple", "not_critical": "tab:gray"}
        labels, values, kinds = [], [], []
        for job in done:
            metrics = job["metrics"]
            eig = [metrics[f"eigenvalue/{i}"] for i in range(len(metrics))
                   if f"eigenvalue/{i}" in metrics]
            kinds.append(point_kind(eig, metrics.get("grad_norm", math.inf),
                                    metrics.get("gradient_scale", 0.0)))
            labels.append(f"#{job['job']} {job['params'].get('experiment.function', '?')} at "
                          f"{job['params'].get('experiment.point', '?')}")
            condition = metrics["condition_number"]
            values.append(math.inf if condition >= sys.float_info.max else condition)
        finite = [v for v in values if math.isfinite(v)]
        cap = max(finite, default=1.0) * 10
        bars = ax.barh(labels, [v if math.isfinite(v) else cap for v in values],
                       color=[colours[k] for k in kinds])
        ax.bar_label(bars, [f"{v:.4g} ({k})" if math.isfinite(v) else f"∞ ({k})"
                            for v, k in zip(values, kinds, strict=True)], padding=3, fontsize=9)
        ax.set_xscale("log")
        ax.set_xlim(right=cap * 100)
        ax.invert_yaxis()
        not_done = len(jobs) - len(done)
        ax.set(xlabel="condition number |λ|max / |λ|min (log scale)", ylabel="job",
               title="green minimum, red maximum, orange saddle, grey not critical"
               + (f"; {not_done} jobs not completed" if not_done else ""))
        return fig


def gradient_check(fn: Objective, x: torch.Tensor, analytic: torch.Tensor) -> Check:
    """Autograd's gradient at x against the analytic one that decides whether x is critical,
    relative to the larger of its size and the Hessian's times (‖x‖ + 1)."""
    at = x.detach().requires_grad_(True)
    (autograd,) = torch.autograd.grad(fn.value(at), at)
    scale = max(analytic.abs().max().item(),
                local_gradient_scale(fn.hessian(x).cpu(), x.cpu())) or 1.0
    return Check((autograd - analytic).abs().max().item() / scale, TOLERANCE)


def plot_hessian(fn: Objective, point: torch.Tensor, hessian: torch.Tensor,
                 eigenvalues: torch.Tensor, eigenvectors: torch.Tensor,
                 tags: dict[str, str]) -> Figure:
    """f and its second-order Taylor model around the point with the eigenvectors drawn, and
    H as a heatmap (small dim) or its spectrum (large dim)."""
    dim = len(point)
    title = (f"Hessian of {fn.name} (dim {dim}) at {_short(point.tolist())}: "
             f"{tags['definiteness'].replace('_', ' ')}, point: "
             f"{tags['point_kind'].replace('_', ' ')}")
    fig, axes = figure(title, 1, 3, size=(18, 5.8), layout=None)
    fig.subplots_adjust(left=0.045, right=0.97, bottom=0.1, top=0.87, wspace=0.3)
    # the plane: the coordinate axes in 2-D, else the eigenvectors of the largest and
    # smallest eigenvalue
    basis = torch.eye(2, dtype=torch.float64) if dim == 2 else eigenvectors[:, [-1, 0]]
    radius = 1.0
    offsets = torch.linspace(-radius, radius, 121, dtype=torch.float64)
    s, t = torch.meshgrid(offsets, offsets, indexing="xy")
    steps = s[..., None] * basis[:, 0] + t[..., None] * basis[:, 1]
    values = fn.value(point + steps) - fn.value(point)  # differences: f may be 5 + 1e-12 x ...
    taylor = steps @ fn.gradient(point) + 0.5 * ((steps @ hessian) * steps).sum(-1)
    levels = contour_levels(values, taylor)
    decimals = level_decimals(levels)
    names = ("x", "y") if dim == 2 else ("along v(λmax)", "along v(λmin)")
    origin = point[:2].numpy() if dim == 2 else np.zeros(2)
    grid_x, grid_y = s.numpy() + origin[0], t.numpy() + origin[1]
    largest = eigenvalues.abs().max().item() or 1.0
    zero = EIGENVALUE_TOLERANCE * eigenvalues.abs().max().item()
    for ax, z, what in ((axes[0], values, "f"), (axes[1], taylor, "Taylor model")):
        lines = ax.contour(grid_x, grid_y, z.numpy(), levels=levels, cmap="viridis")
        fig.colorbar(lines, ax=ax, label="f − f(point) (same levels in both panels)",
                     format=f"%.{decimals}f" if decimals < LEVEL_DECIMALS else "%.3g")
        ax.plot(*origin, "ko", markersize=6, label="point")
        for value, vec in zip(eigenvalues.tolist(), eigenvectors.T, strict=True):
            direction = (basis.T @ vec).numpy()
            if np.hypot(*direction) < 0.5:  # mostly out of the plane shown
                continue
            length = max(abs(value) / largest, MIN_ARROW) * 0.8 * radius
            tip = origin + direction * length
            colour = ARROW_COLOURS[sign(value, zero)]
            ax.annotate("", tip, origin, arrowprops={"arrowstyle": "-|>", "color": colour,
                                                     "lw": 2.5})
            ax.annotate(f"λ = {value + 0.0:.4g}", tip, textcoords="offset points",
                        xytext=(4, 4), fontsize=9, color=colour,
                        bbox={"boxstyle": "round", "fc": "white", "alpha": 0.8, "lw": 0})
        ax.plot([], [], color="tab:blue", lw=2.5,
                label=f"eigenvector, λ > 0 (length ∝ |λ|, at least {MIN_ARROW:.0%})")
        ax.plot([], [], color="tab:red", lw=2.5, label="eigenvector, λ < 0")
        if any(sign(v, zero) == 0 for v in eigenvalues.tolist()):
            ax.plot([], [], color="tab:gray", lw=2.5, label="eigenvector, λ ≈ 0")
        ax.set(title=f"{what} around the point", xlabel=names[0], ylabel=names[1])
        ax.set_aspect("equal")
        ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    axes[1].set_title("Taylor model f(p) + gᵀd + ½ dᵀHd")
    if dim <= HEATMAP_MAX_DIM:
        _heatmap(fig, axes[2], hessian.numpy())
    else:
        _spectrum(axes[2], eigenvalues.numpy())
    return fig


def sign(value: float, zero: float) -> int:
    """1, -1, or 0 for an eigenvalue within `zero` of 0."""
    return 0 if abs(value) <= zero else (1 if value > 0 else -1)


def contour_levels(*surfaces: torch.Tensor, count: int = 20) -> np.ndarray:
    """Levels log-spaced above the lowest value of the surfaces when it lies inside the
    window (dense near a minimum), else evenly spaced: far from a minimum the lines then
    spread over the window instead of bunching at its lowest edge."""
    lowest = min(surfaces, key=lambda z: z.min().item())
    low = lowest.min().item()
    span = max(z.max().item() for z in surfaces) - low
    if span <= 0:
        return np.array([low])
    row, col = divmod(int(lowest.argmin()), lowest.shape[1])
    if 0 < row < lowest.shape[0] - 1 and 0 < col < lowest.shape[1] - 1:
        return low + np.geomspace(span * 1e-4, span, count)
    return np.linspace(low, low + span, count + 2)[1:-1]


def level_decimals(levels: np.ndarray, most: int = LEVEL_DECIMALS) -> int:
    """The fewest decimals (up to `most`) that tell every two neighbouring levels apart."""
    for decimals in range(most + 1):
        shown = np.round(levels, decimals)
        if len(np.unique(shown)) == len(levels):
            return decimals
    return most


def _heatmap(fig: Figure, ax, hessian: np.ndarray) -> None:
    limit = max(np.abs(hessian).max(), 1e-12)
    image = ax.imshow(hessian, cmap="RdBu_r", vmin=-limit, vmax=limit)
    fig.colorbar(image, ax=ax, label="∂²f/∂xᵢ∂xⱼ")
    for (i, j), value in np.ndenumerate(hessian):
        ax.text(j, i, f"{value + 0.0:.4g}", ha="center", va="center", fontsize=11,
                color="white" if abs(value) > 0.6 * limit else "black")
    ticks = range(len(hessian))
    ax.set_xticks(ticks, [f"x{j}" for j in ticks])
    ax.set_yticks(ticks, [f"x{i}" for i in ticks])
    ax.set(title="Hessian H", xlabel="j", ylabel="i")
    ax.grid(False)


def _spectrum(ax, eigenvalues: np.ndarray) -> None:
    colours = np.where(eigenvalues > 0, "tab:blue", "tab:red")
    ax.scatter(np.arange(len(eigenvalues)), np.abs(eigenvalues), c=colours, s=12)
    ax.set_yscale("log")
    lean_log_ticks(ax.yaxis)
    ax.set(title=f"Spectrum: {len(eigenvalues)} eigenvalues\n(blue λ > 0, red λ < 0)",
           xlabel="index (ascending λ)", ylabel="|λ| (log scale)")


def _short(values: list[float]) -> str:
    shown = ", ".join(f"{v:.4g}" for v in values[:4])
    return f"[{shown}{', …' if len(values) > 4 else ''}]"
