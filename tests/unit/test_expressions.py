"""Expressions of x and y: the whitelist, torch values, SymPy's exact derivatives, the oracle."""

from __future__ import annotations

import math

import pytest
import torch

from gradkit.core.validation import ConfigError
from gradkit.lib.expressions import Expression
from gradkit.lib.functions import objective, stationary_points

HIMMELBLAU = "(x**2 + y - 11)**2 + (x + y**2 - 7)**2"


def points(seed: int = 0, shape: tuple[int, ...] = (6, 2)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.empty(shape, dtype=torch.float64).uniform_(-3, 3, generator=generator)


def finite_difference_gradient(f, p: torch.Tensor, step: float = 1e-6) -> torch.Tensor:
    """Central differences of the torch values: an oracle that knows neither autograd nor SymPy."""
    columns = []
    for j in range(2):
        offset = torch.zeros(2, dtype=torch.float64)
        offset[j] = step
        columns.append((f(p + offset) - f(p - offset)) / (2 * step))
    return torch.stack(columns, -1)


@pytest.mark.parametrize(("text", "formula"), [
    ("x**4 + y**4", lambda x, y: x**4 + y**4),
    (HIMMELBLAU, lambda x, y: (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2),
    ("1e8 * (x**2 - y)", lambda x, y: 1e8 * (x**2 - y)),
    ("cos(3*x) + cos(3*y)", lambda x, y: math.cos(3 * x) + math.cos(3 * y)),
    ("-x/2 + exp(y) * sqrt(x**2 + 1) - pi + e", lambda x, y: -x / 2 + math.exp(y) *
     math.sqrt(x * x + 1) - math.pi + math.e),
    ("tanh(x) * sinh(y) + cosh(x) - atan(y) + log(x**2 + 1) + abs(y) + tan(x / 4)",
     lambda x, y: math.tanh(x) * math.sinh(y) + math.cosh(x) - math.atan(y)
     + math.log(x * x + 1) + abs(y) + math.tan(x / 4)),
])
def test_values_match_the_formula_and_derivatives_match_autograd_and_differences(text, formula):
    expression = Expression(text)
    p = points()

    values = expression.value(p)
    assert values.shape == (6,)
    for value, (x, y) in zip(values.tolist(), p.tolist(), strict=True):
        assert value == pytest.approx(formula(x, y), rel=1e-12)
    autograd = torch.func.vmap(torch.func.grad(expression.value))(p)
    torch.testing.assert_close(expression.gradient(p), autograd, rtol=1e-11, atol=1e-9)
    torch.testing.assert_close(expression.gradient(p),
                               finite_difference_gradient(expression.value, p),
                               rtol=1e-5, atol=1e-2 if "1e8" in text else 1e-6)
    torch.testing.assert_close(expression.hessian(p),
                               torch.func.vmap(torch.func.hessian(expression.value))(p),
                               rtol=1e-10, atol=1e-7)


def test_batched_over_leading_dimensions_and_constants_broadcast():
    p = points(1, (4, 5, 2))

    assert Expression("x * y").value(p).shape == (4, 5)
    assert Expression("x * y").hessian(p).shape == (4, 5, 2, 2)
    assert torch.equal(Expression("3").value(p), torch.full((4, 5), 3.0, dtype=torch.float64))
    assert torch.equal(Expression("x + 2*y").hessian(p), torch.zeros(4, 5, 2, 2,
                                                                      dtype=torch.float64))
    assert torch.equal(Expression("x + 2*y").gradient(p)[..., 1],
                       torch.full((4, 5), 2.0, dtype=torch.float64))


def test_sympy_derivatives_are_exact():
    hessian = Expression("x**3 - 3*x*y**2").hessian(torch.tensor([2.0, 1.0],
                                                                  dtype=torch.float64))
    assert hessian.tolist() == [[12.0, -6.0], [-6.0, -12.0]]  # 6x, -6y; -6y, -6x


@pytest.mark.parametrize(("text", "what"), [
    ("__import__('os').system('ls')", "call"),
    ("__import__('os')", "call '__import__'"),
    ("x.real", "attribute"),
    ("open(x)", "call 'open'"),
    ("[x, y]", "list"),
    ("x if y else 1", "ifexp"),
    ("lambda: x", "lambda"),
    ("x[0]", "subscript"),
    ("x @ y", "operator MatMult"),
    ("x // y", "operator FloorDiv"),
    ("x == y", "compare"),
    ("sin(x, y)", "sin with other than one argument"),
    ("'x'", "constant 'x'"),
    ("True * x", "constant True"),
    ("1e400 * x", "constant inf"),
    ("z + x", "name 'z'"),
])
def test_anything_off_the_whitelist_is_refused_in_one_line(text, what):
    with pytest.raises(ConfigError) as raised:
        objective(text)

    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"experiment.function={text!r}: {what}")
    assert "is not allowed" in message
    assert "rosenbrock | himmelblau or an expression: use x, y" in message


@pytest.mark.parametrize(("text", "says"), [
    ("x +", "is not an expression"),
    ("9**9**9 + x", "not a finite number"),
    ("1/0 + x", "not a finite number"),
    ("x" + " + x" * 300, "at most 500"),
])
def test_broken_or_unbounded_expressions_are_refused(text, says):
    with pytest.raises(ConfigError, match=r"experiment\.function") as raised:
        objective(text)

    assert says in str(raised.value)


def test_an_expression_objective_carries_its_text_and_the_default_window():
    fn = objective(HIMMELBLAU)

    assert fn.name == HIMMELBLAU
    assert fn.window == ((-5.0, 5.0), (-5.0, 5.0))


@pytest.mark.parametrize(("text", "count"), [
    (HIMMELBLAU, 9), ("1e8 * " + f"({HIMMELBLAU})", 9), ("1e-8 * " + f"({HIMMELBLAU})", 9),
    ("cos(3*x) + cos(3*y)", 81),  # k pi / 3 with |k| <= 4 on each axis
    ("x**4 + y**4", 1), ("x**4 - y**4", 1), ("x**3 - 3*x*y**2", 1), ("x + y", 0),
])
def test_the_oracle_finds_every_stationary_point(text, count):
    fn = objective(text)

    found = stationary_points(fn, fn.window)

    assert len(found) == count
    assert (fn.gradient(found).norm(dim=-1) < 1e-6 * max(1.0, abs(float(text[:4]))
                                                         if text.startswith("1e") else 1.0)
            ).all()


def test_minima_of_an_expression_tell_degenerate_minima_from_saddles():
    [minimum] = objective("x**4 + y**4").minima
    assert minimum == pytest.approx((0.0, 0.0), abs=1e-6)
    assert objective("x**4 - y**4").minima == ()
    assert objective("x + y").minima == ()
    assert len(objective(HIMMELBLAU).minima) == 4


def test_stability_limit_of_an_expression():
    assert objective(HIMMELBLAU).stability_limit() == pytest.approx(
        objective("himmelblau").stability_limit(), rel=1e-6)
    assert objective("x**2 + 4*y**2").stability_limit(0.5) == pytest.approx(2 * 1.5 / 8)
    assert objective("x**4 + y**4").stability_limit() == math.inf  # degenerate minimum
    assert math.isnan(objective("x + y").stability_limit())
