"""The 2-D objectives: values, analytic gradients against autograd, minima, Hessian limits."""

from __future__ import annotations

import pytest
import torch

from gradkit.core.validation import ConfigError
from gradkit.lib.functions import (
    OBJECTIVES,
    himmelblau,
    himmelblau_gradient,
    objective,
    rosenbrock,
    rosenbrock_gradient,
)

FUNCTIONS = {"rosenbrock": (rosenbrock, rosenbrock_gradient),
             "himmelblau": (himmelblau, himmelblau_gradient)}


SHAPES = [(2,), (7, 2), (4, 5, 2)]


def random_points(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.empty(shape, dtype=torch.float64).uniform_(-4, 4, generator=generator)


def autograd_gradient(f, points: torch.Tensor) -> torch.Tensor:
    """Per-point gradients by backward through the sum (points are independent)."""
    points = points.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(points).sum(), points)
    return grad


def func_gradient(f, points: torch.Tensor) -> torch.Tensor:
    """torch.func.grad of the scalar function, vmapped once per leading dimension."""
    grad = torch.func.grad(f)
    for _ in range(points.dim() - 1):
        grad = torch.func.vmap(grad)
    return grad(points)


@pytest.mark.parametrize(("f", "point", "expected"), [
    (rosenbrock, (1.0, 1.0), 0.0),
    (rosenbrock, (0.0, 0.0), 1.0),
    (rosenbrock, (-1.0, 1.0), 4.0),
    (rosenbrock, (1.0, 2.0), 100.0),
    (rosenbrock, (-1.5, 2.5), 12.5),
    (himmelblau, (3.0, 2.0), 0.0),
    (himmelblau, (0.0, 0.0), 170.0),
    (himmelblau, (1.0, 1.0), 106.0),
    (himmelblau, (-1.0, 2.0), 80.0),
])
def test_value_at_known_points(f, point, expected):
    assert f(torch.tensor(point, dtype=torch.float64)).item() == expected


@pytest.mark.parametrize("name", FUNCTIONS)
def test_value_is_batched_over_leading_dimensions(name):
    f, _ = FUNCTIONS[name]
    points = random_points((4, 5, 2))

    values = f(points)

    assert values.shape == (4, 5)
    assert values[2, 3].item() == f(points[2, 3]).item()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", FUNCTIONS)
def test_analytic_gradient_matches_autograd_and_torch_func(name, shape):
    f, gradient = FUNCTIONS[name]
    points = random_points(shape, seed=len(shape))

    analytic = gradient(points)

    assert analytic.shape == points.shape
    assert analytic.dtype == torch.float64
    torch.testing.assert_close(analytic, autograd_gradient(f, points), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(analytic, func_gradient(f, points), rtol=1e-12, atol=1e-12)


# Himmelblau's minima are listed to 6 decimals, so each is up to 0.5e-6 * sqrt(2) away from
# the true one; with Hessian eigenvalues up to ~134 there, |grad| < 1e-4 and f < 1e-10.
MINIMUM_TOLERANCE = {"rosenbrock": (0.0, 0.0), "himmelblau": (1e-10, 1e-4)}


@pytest.mark.parametrize(("name", "minimum"), [
    (name, minimum) for name, fn in OBJECTIVES.items() for minimum in fn.minima])
def test_every_listed_minimum_has_zero_value_and_gradient(name, minimum):
    fn = OBJECTIVES[name]
    value_tol, grad_tol = MINIMUM_TOLERANCE[name]
    point = torch.tensor(minimum, dtype=torch.float64)

    assert fn.value(point).item() == pytest.approx(0.0, abs=value_tol)
    assert fn.gradient(point).abs().max().item() <= grad_tol


def test_rosenbrock_stability_limit_is_two_over_the_largest_hessian_eigenvalue():
    x, y = 1.0, 1.0
    hessian = torch.tensor([[1200 * x**2 - 400 * y + 2, -400 * x], [-400 * x, 200.0]],
                           dtype=torch.float64)
    largest = torch.linalg.eigvalsh(hessian).max().item()

    assert largest == pytest.approx(1001.6, abs=0.01)
    assert OBJECTIVES["rosenbrock"].stability_limit() == pytest.approx(2 / largest, rel=1e-12)


def test_himmelblau_stability_limit_is_set_by_its_sharpest_minimum():
    fn = OBJECTIVES["himmelblau"]
    largest = max(torch.linalg.eigvalsh(torch.func.hessian(fn.value)(
        torch.tensor(m, dtype=torch.float64))).max().item() for m in fn.minima)

    assert fn.stability_limit() == pytest.approx(2 / largest, rel=1e-12)


def heavy_ball_grows(curvature: float, learning_rate: float, momentum: float) -> bool:
    """Whether heavy-ball descent on curvature/2 x^2 from x = 1 ends farther than it began."""
    x, velocity = 1.0, 0.0
    for _ in range(4000):
        velocity = momentum * velocity + curvature * x
        x -= learning_rate * velocity
    return abs(x) > 1


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
def test_stability_limit_with_momentum_is_where_heavy_ball_turns_unstable(momentum):
    fn = OBJECTIVES["rosenbrock"]
    limit = fn.stability_limit(momentum)
    largest = torch.linalg.eigvalsh(fn.hessian(torch.tensor([1.0, 1.0],
                                                            dtype=torch.float64))).max().item()

    assert limit == pytest.approx(2 * (1 + momentum) / largest, rel=1e-12)
    assert not heavy_ball_grows(largest, 0.99 * limit, momentum)
    assert heavy_ball_grows(largest, 1.01 * limit, momentum)


@pytest.mark.parametrize(("name", "point", "expected"), [
    ("rosenbrock", (1.0, 1.0), 0.0),
    ("rosenbrock", (4.0, 5.0), 5.0),
    ("rosenbrock", (-2.0, 1.0), 3.0),
    ("himmelblau", (3.0, 2.0), 0.0),
    ("himmelblau", (3.3, 2.4), 0.5),
    ("himmelblau", (-2.805118 - 0.6, 3.131312 + 0.8), 1.0),
    ("himmelblau", (-3.779310, -3.283186 - 0.25), 0.25),
])
def test_distance_to_nearest_minimum(name, point, expected):
    distance = OBJECTIVES[name].distance_to_minimum(torch.tensor(point, dtype=torch.float64))

    assert distance == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", OBJECTIVES)
def test_objective_by_name(name):
    assert objective(name) is OBJECTIVES[name]
    assert objective(name).name == name


def test_unknown_objective_names_the_key_and_the_choices():
    with pytest.raises(ConfigError) as raised:
        objective("nope")

    message = str(raised.value)
    assert "experiment.function" in message
    assert "'nope'" in message
    assert "rosenbrock" in message and "himmelblau" in message
