"""Objective functions of two variables, batched over leading dimensions, in float64."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gradkit.core.validation import choice


@dataclass(frozen=True)
class Objective:
    """A test function with its analytic derivatives, known minima and a plotting window.

    `hessian` maps points (..., n) to Hessians (..., n, n).
    """

    name: str
    value: Callable[[torch.Tensor], torch.Tensor]
    gradient: Callable[[torch.Tensor], torch.Tensor]
    minima: tuple[tuple[float, ...], ...]
    window: tuple[tuple[float, float], tuple[float, float]]
    hessian: Callable[[torch.Tensor], torch.Tensor] | None = None

    @functools.cached_property
    def stability_limit(self) -> float:
        """The largest stable gradient-descent step near the minima: 2 / max Hessian eigenvalue."""
        hessian = torch.autograd.functional.hessian
        hessians = [hessian(self.value, torch.tensor(m, dtype=torch.float64)) for m in self.minima]
        return 2 / max(torch.linalg.eigvalsh(h).max().item() for h in hessians)

    def distance_to_minimum(self, point: torch.Tensor) -> float:
        """Distance from `point` to the nearest known minimum."""
        minima = torch.tensor(self.minima, dtype=point.dtype)
        return torch.linalg.vector_norm(minima - point, dim=-1).min().item()


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


def objective(name: str, key: str = "experiment.function") -> Objective:
    """The objective called `name`, or a ConfigError listing the known ones."""
    return OBJECTIVES[choice(key, name, OBJECTIVES)]


def notebook_quadratic() -> Objective:
    """The notebook's 2-D quadratic (section 5.1), minimum at (-0.8, 1.4)."""
    q = NOTEBOOK_QUADRATIC
    return quadratic(torch.tensor(q["matrix"]), torch.tensor(q["vector"]), q["constant"])
