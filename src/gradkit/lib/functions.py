"""Objective functions of two variables, batched over leading dimensions, in float64: the
built-in test functions with hand-written derivatives, and any expression of x and y."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from gradkit.lib.curvature import EIGENVALUE_TOLERANCE, STATIONARY_TOLERANCE, definiteness
from gradkit.lib.expressions import Expression

Window = tuple[tuple[float, float], tuple[float, float]]
EXPRESSION_WINDOW: Window = ((-5.0, 5.0), (-5.0, 5.0))
ORACLE_STARTS = 48  # per axis: the oracle's Newton starts on a lattice over the window
ORACLE_STEPS = 150  # enough for the linear convergence at degenerate points (x^6: 4/5 a step)
MERGE_DISTANCE = 1e-7  # points closer than this fraction of the window are one point
EDGE = 1e-9  # fraction of the window a point may lie outside it and still count as inside


@dataclass(frozen=True)
class Objective:
    """A test function with its analytic derivatives, a plotting window and its minima (known,
    or else found by `stationary_points` in the window).

    `hessian` maps points (..., n) to Hessians (..., n, n).
    """

    name: str
    value: Callable[[torch.Tensor], torch.Tensor]
    gradient: Callable[[torch.Tensor], torch.Tensor]
    known_minima: tuple[tuple[float, ...], ...] | None
    window: Window
    hessian: Callable[[torch.Tensor], torch.Tensor] | None = None

    @functools.cached_property
    def minima(self) -> tuple[tuple[float, ...], ...]:
        """The known minima, or the oracle's stationary points with a definite Hessian."""
        if self.known_minima is not None:
            return self.known_minima
        points = stationary_points(self, self.window)
        return tuple(tuple(p.tolist()) for p in points if self.is_minimum(p))

    def is_minimum(self, point: torch.Tensor) -> bool:
        """A stationary point with a positive (semi)definite Hessian and f no lower on a small
        circle around it (which tells x⁴ + y⁴ from x⁴ - y⁴, both of zero Hessian)."""
        kind = definiteness(torch.linalg.eigvalsh(self.hessian(point)).tolist())
        angles = torch.linspace(0, 2 * math.pi, 17, dtype=torch.float64)[:-1]
        radius = 1e-3 * window_size(self.window).min()
        ring = point + radius * torch.stack([angles.cos(), angles.sin()], -1)
        return (kind in ("positive_definite", "positive_semidefinite")
                and bool((self.value(ring) >= self.value(point)).all()))

    @functools.cached_property
    def sharpness(self) -> float:
        """The largest analytic Hessian eigenvalue over the minima: nan without minima, 0 when
        below EIGENVALUE_TOLERANCE x the largest over the window (a degenerate minimum)."""
        if not self.minima:
            return math.nan
        largest = torch.linalg.eigvalsh(
            self.hessian(torch.tensor(self.minima, dtype=torch.float64))).max().item()
        window = torch.linalg.eigvalsh(self.hessian(lattice(self.window, ORACLE_STARTS)))
        scale = window.abs().nan_to_num(nan=0.0, posinf=0.0).max().item()
        return largest if largest > EIGENVALUE_TOLERANCE * scale else 0.0

    def stability_limit(self, momentum: float = 0.0) -> float:
        """The largest stable step of heavy-ball descent near the minima, 2 (1 + β) / λmax
        (2 / λmax for plain descent; inf at a degenerate minimum, nan without one)."""
        return 2 * (1 + momentum) / self.sharpness if self.sharpness else math.inf

    def distance_to_minimum(self, point: torch.Tensor) -> float:
        """Distance from `point` to the nearest minimum (nan without minima)."""
        if not self.minima:
            return math.nan
        minima = torch.tensor(self.minima, dtype=point.dtype)
        return torch.linalg.vector_norm(minima - point, dim=-1).min().item()


def window_size(window: Window) -> torch.Tensor:
    """(width, height) of a window."""
    (x0, x1), (y0, y1) = window
    return torch.tensor([x1 - x0, y1 - y0], dtype=torch.float64)


def inside(points: torch.Tensor, window: Window) -> torch.Tensor:
    """Which points (m, 2) lie in the window (up to EDGE of its size)."""
    (x0, x1), (y0, y1) = window
    slack = EDGE * window_size(window).to(points.device)
    low = torch.tensor([x0, y0], dtype=points.dtype, device=points.device) - slack
    high = torch.tensor([x1, y1], dtype=points.dtype, device=points.device) + slack
    return ((points >= low) & (points <= high)).all(-1)


def distinct(points: torch.Tensor, window: Window) -> torch.Tensor:
    """The points (m, 2) with near-duplicates (MERGE_DISTANCE of the window) dropped."""
    size = window_size(window).to(points.device)
    cells = torch.round(points / (MERGE_DISTANCE * size))  # first one point a cell (cheap),
    _, cell = torch.unique(cells, dim=0, return_inverse=True)  # then pairs across cell edges
    order = torch.arange(len(points), device=points.device)
    first = torch.full_like(cell, len(points)).scatter_reduce(0, cell, order, "amin")
    points = points[first[first < len(points)].sort().values]
    apart = ((points[:, None] - points[None]).abs() / size).amax(-1)
    return points[~((apart <= MERGE_DISTANCE).tril(-1)).any(-1)]


def lattice(window: Window, per_axis: int) -> torch.Tensor:
    """per_axis² points (m, 2) evenly over the window, corners included."""
    (x0, x1), (y0, y1) = window
    xs = torch.linspace(x0, x1, per_axis, dtype=torch.float64)
    ys = torch.linspace(y0, y1, per_axis, dtype=torch.float64)
    return torch.cartesian_prod(xs, ys)


def stationary_points(fn: Objective, window: Window) -> torch.Tensor:
    """Where fn's analytic gradient vanishes in the window: the independent oracle for the
    landscape's search. Newton's method with the analytic gradient and Hessian (no autograd,
    a pseudo-inverse step) from a dense lattice of starts, each until it stops moving; kept
    where ‖∇f‖ ≤
    STATIONARY_TOLERANCE x the largest ‖∇f‖ on the lattice."""
    x = lattice(window, ORACLE_STARTS)
    size = window_size(window)
    low, high = x.min(0).values - size, x.max(0).values + size
    scale = gradient_scale(fn.gradient(x))
    moving = torch.ones(len(x), dtype=torch.bool)
    for _ in range(ORACLE_STEPS):
        at = x[moving]
        g, h = fn.gradient(at), fn.hessian(at)
        finite = torch.isfinite(g).all(-1) & torch.isfinite(h).flatten(1).all(-1)
        step = torch.linalg.pinv(torch.where(finite[:, None, None], h, 0.0)) @ \
            torch.where(finite[:, None], g, 0.0).unsqueeze(-1)
        x[moving] = torch.clamp(at - step.squeeze(-1), low, high)
        moving[moving.clone()] = ((x[moving] - at).abs() / size).amax(-1) > 0
        if not moving.any():
            break
    critical = fn.gradient(x).norm(dim=-1) <= STATIONARY_TOLERANCE * scale
    return distinct(x[critical & inside(x, window)], window)


def gradient_scale(gradients: torch.Tensor) -> float:
    """The function's own gradient scale: the largest finite ‖∇f‖ among `gradients`."""
    norms = gradients.norm(dim=-1)
    return norms[torch.isfinite(norms)].max().item() if torch.isfinite(norms).any() else 0.0


def rosenbrock(p: torch.Tensor) -> torch.Tensor:
    """(1 - x)^2 + 100 (y - x^2)^2; minimum 0 at (1, 1)."""
    x, y = p.unbind(-1)
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def rosenbrock_gradient(p: torch.Tensor) -> torch.Tensor:
    x, y = p.unbind(-1)
    return torch.stack([-2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)], dim=-1)


def rosenbrock_hessian(p: torch.Tensor) -> torch.Tensor:
    x, y = p.unbind(-1)
    return _symmetric_2x2(1200 * x**2 - 400 * y + 2, -400 * x, torch.full_like(x, 200.0))


def himmelblau(p: torch.Tensor) -> torch.Tensor:
    """(x^2 + y - 11)^2 + (x + y^2 - 7)^2; four minima of value 0."""
    x, y = p.unbind(-1)
    return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2


def himmelblau_gradient(p: torch.Tensor) -> torch.Tensor:
    x, y = p.unbind(-1)
    u, v = x**2 + y - 11, x + y**2 - 7
    return torch.stack([4 * x * u + 2 * v, 2 * u + 4 * y * v], dim=-1)


def himmelblau_hessian(p: torch.Tensor) -> torch.Tensor:
    x, y = p.unbind(-1)
    u, v = x**2 + y - 11, x + y**2 - 7
    return _symmetric_2x2(4 * u + 8 * x**2 + 2, 4 * (x + y), 4 * v + 8 * y**2 + 2)


def _symmetric_2x2(xx: torch.Tensor, xy: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.stack([xx, xy], -1), torch.stack([xy, yy], -1)], -2)


def quadratic(matrix: torch.Tensor, vector: torch.Tensor, constant: float,
              window: tuple[tuple[float, float], tuple[float, float]] = ((-3.0, 3.0), (-3.0, 3.0)),
              ) -> Objective:
    """f(x) = x^T A x / 2 + b^T x + c for a symmetric A; its minimum -A^-1 b if A is definite."""
    matrix, vector = matrix.to(torch.float64), vector.to(torch.float64)

    def value(p: torch.Tensor) -> torch.Tensor:
        a, b = matrix.to(p.device), vector.to(p.device)
        return 0.5 * ((p @ a) * p).sum(-1) + p @ b + constant

    def gradient(p: torch.Tensor) -> torch.Tensor:
        return p @ matrix.to(p.device) + vector.to(p.device)

    def hessian(p: torch.Tensor) -> torch.Tensor:
        return matrix.to(p.device).expand(*p.shape[:-1], *matrix.shape)

    definite = bool((torch.linalg.eigvalsh(matrix) > 0).all())
    minima = (tuple(torch.linalg.solve(matrix, -vector).tolist()),) if definite else ()
    return Objective("quadratic", value, gradient, minima, window, hessian)


# The notebook's quadratic: A = [[3, 1], [1, 2]], b = [1, -2], c = 5.
NOTEBOOK_QUADRATIC = {"matrix": [[3.0, 1.0], [1.0, 2.0]], "vector": [1.0, -2.0], "constant": 5.0}


OBJECTIVES = {
    "rosenbrock": Objective("rosenbrock", rosenbrock, rosenbrock_gradient, ((1.0, 1.0),),
                            ((-2.0, 2.0), (-1.0, 3.0)), rosenbrock_hessian),
    "himmelblau": Objective(
        "himmelblau", himmelblau, himmelblau_gradient,
        ((3.0, 2.0), (-2.805118, 3.131312), (-3.779310, -3.283186), (3.584428, -1.848127)),
        ((-5.0, 5.0), (-5.0, 5.0)), himmelblau_hessian),
}


def objective(name: str, key: str = "experiment.function",
              builtins: Mapping[str, Objective] | None = None) -> Objective:
    """The built-in objective called `name`, else `name` read as an expression of x and y
    (a ConfigError naming what is not allowed, and the built-in names)."""
    builtins = OBJECTIVES if builtins is None else builtins
    if name in builtins:
        return builtins[name]
    expression = Expression(str(name), key, " | ".join(builtins))
    return Objective(expression.text, expression.value, expression.gradient, None,
                     EXPRESSION_WINDOW, expression.hessian)


def notebook_quadratic() -> Objective:
    """The notebook's 2-D quadratic (section 5.1), minimum at (-0.8, 1.4)."""
    q = NOTEBOOK_QUADRATIC
    return quadratic(torch.tensor(q["matrix"]), torch.tensor(q["vector"]), q["constant"])
