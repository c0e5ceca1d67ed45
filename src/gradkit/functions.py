"""Objective functions of two variables, batched over leading dimensions, in float64."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gradkit.validation import choice


@dataclass(frozen=True)
class Objective:
    """A 2-D test function with its analytic gradient, known minima and a plotting window."""

    name: str
    value: Callable[[torch.Tensor], torch.Tensor]
    gradient: Callable[[torch.Tensor], torch.Tensor]
    minima: tuple[tuple[float, float], ...]
    window: tuple[tuple[float, float], tuple[float, float]]

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


def himmelblau(p: torch.Tensor) -> torch.Tensor:
    """(x^2 + y - 11)^2 + (x + y^2 - 7)^2; four minima of value 0."""
    x, y = p.unbind(-1)
    return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2


def himmelblau_gradient(p: torch.Tensor) -> torch.Tensor:
    x, y = p.unbind(-1)
    u, v = x**2 + y - 11, x + y**2 - 7
    return torch.stack([4 * x * u + 2 * v, 2 * u + 4 * y * v], dim=-1)


OBJECTIVES = {
    "rosenbrock": Objective("rosenbrock", rosenbrock, rosenbrock_gradient, ((1.0, 1.0),),
                            ((-2.0, 2.0), (-1.0, 3.0))),
    "himmelblau": Objective(
        "himmelblau", himmelblau, himmelblau_gradient,
        ((3.0, 2.0), (-2.805118, 3.131312), (-3.779310, -3.283186), (3.584428, -1.848127)),
        ((-5.0, 5.0), (-5.0, 5.0))),
}


def objective(name: str, key: str = "experiment.function") -> Objective:
    """The objective called `name`, or a ConfigError listing the known ones."""
    return OBJECTIVES[choice(key, name, OBJECTIVES)]
