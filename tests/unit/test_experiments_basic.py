"""The first three experiments' math, each checked at several points against independent oracles.

The oracles are written here from the formulas (no gradkit code) or are finite differences,
so a wrong derivative in an experiment cannot agree with its own check by construction.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from matplotlib.figure import Figure

from gradkit.core.experiment import Check, Experiment, Result, RunContext
from gradkit.core.validation import ConfigError
from gradkit.experiments import jacobian
from gradkit.experiments.basic_gradients import BasicGradients
from gradkit.experiments.computational_graph import ComputationalGraph
from gradkit.experiments.jacobian import Jacobian
from gradkit.lib.derivatives import finite_difference_jacobian, jacobian_by_rows

FD_STEP = 1e-6


@pytest.fixture
def ctx(tmp_path) -> RunContext:
    return RunContext(device=torch.device("cpu"), dtype=torch.float64,
                      generator=torch.Generator().manual_seed(0), output_dir=tmp_path,
                      log=logging.getLogger())


def central_difference(f, x: float, step: float = FD_STEP) -> float:
    return (f(x + step) - f(x - step)) / (2 * step)


CONTRACT = [
    # experiment, its name, metrics it must report, its checks
    (BasicGradients(), "basic_gradients", {"value", "grad", "analytic_grad"}, {"grad"}),
    (ComputationalGraph(), "computational_graph", {"grad", "manual_grad"}, {"chain_rule"}),
    (Jacobian(), "jacobian", {"jacobian_norm", "determinant"},
     {"backward_rows", "jacrev", "jacfwd"}),
]


@pytest.mark.parametrize(("experiment", "name", "metrics", "checks"), CONTRACT,
                         ids=[row[1] for row in CONTRACT])
def test_result_contract(experiment: Experiment, name, metrics, checks, ctx):
    result = experiment.run(ctx)

    assert isinstance(result, Result)
    assert type(experiment).__module__ == f"gradkit.experiments.{name}"
    assert metrics <= set(result.metrics)
    assert all(math.isfinite(value) for value in result.metrics.values())
    assert set(result.checks) == checks
    assert result.failed_checks == []
    assert math.isfinite(result.objective)
    assert result.figures
    for fig in result.figures.values():
        assert isinstance(fig, Figure)
        assert fig.get_suptitle().strip()


@pytest.mark.parametrize(("error", "tolerance", "passed"), [
    (0.0, 1e-12, True),
    (1e-12, 1e-12, True),          # the tolerance itself is allowed
    (2e-12, 1e-12, False),
    (0.5, 0.1, False),
    (math.nan, 1.0, False),
    (math.inf, math.inf, False),
    (-math.inf, 1.0, False),
])
def test_check_passes_only_within_tolerance(error, tolerance, passed):
    assert Check(error, tolerance).passed is passed


def test_result_lists_failed_checks():
    result = Result(checks={"ok": Check(0.0, 1.0), "bad": Check(2.0, 1.0),
                            "nan": Check(math.nan, 1.0)})
    assert result.failed_checks == ["bad", "nan"]


@pytest.mark.parametrize(("a", "b", "c", "x"), [
    (1.0, 3.0, 1.0, 2.0),
    (1.0, 3.0, 1.0, -1.5),
    (1.0, 3.0, 1.0, 0.0),
    (-2.0, 0.5, 4.0, 3.25),
    (0.0, -1.0, 2.0, -4.0),        # a = 0: a line
])
def test_basic_gradients_matches_analytic_and_finite_difference(a, b, c, x, ctx):
    result = BasicGradients(a=a, b=b, c=c, x=x).run(ctx)

    def f(t):
        return a * t * t + b * t + c

    expected = 2 * a * x + b
    assert result.metrics["value"] == pytest.approx(f(x), rel=1e-12, abs=1e-12)
    assert result.metrics["analytic_grad"] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert result.metrics["grad"] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert result.metrics["grad"] == pytest.approx(central_difference(f, x), abs=1e-6)
    assert result.checks["grad"].passed
    assert result.objective == result.metrics["value"]


# e as a function of each node's value, everything upstream of that node held fixed.
DOWNSTREAM = {
    "x": lambda v: math.sin((3 * v + 1) ** 2),
    "a": lambda v: math.sin((v + 1) ** 2),
    "b": lambda v: math.sin(v**2),
    "c": math.sin,
    "d": lambda v: v,
    "e": lambda v: v,
}


GRAD_FNS = {"x": "leaf", "a": "MulBackward0", "b": "AddBackward0", "c": "PowBackward0",
            "d": "SinBackward0", "e": "MeanBackward0"}


def hand_forward(x: float) -> dict[str, float]:
    a = 3 * x
    b = a + 1
    c = b * b
    d = math.sin(c)
    return {"x": x, "a": a, "b": b, "c": c, "d": d, "e": d}


def hand_chain_rule(x: float) -> dict[str, float]:
    b = 3 * x + 1
    de_dc = math.cos(b * b)
    de_db = 2 * b * de_dc
    return {"e": 1.0, "d": 1.0, "c": de_dc, "b": de_db, "a": de_db, "x": 3 * de_db}


@pytest.mark.parametrize("x", [2.0, -1.25, 0.0, 0.3, -1 / 3])
def test_computational_graph_node_gradients(x, ctx):
    result = ComputationalGraph(x=x).run(ctx)
    nodes = {row["node"]: row for row in result.summary["nodes"]}
    values, grads = hand_forward(x), hand_chain_rule(x)

    assert list(nodes) == ["x", "a", "b", "c", "d", "e"]
    for name, row in nodes.items():
        assert row["grad_fn"] == GRAD_FNS[name]
        assert row["value"] == pytest.approx(values[name], rel=1e-12, abs=1e-12)
        assert row["grad"] == pytest.approx(grads[name], rel=1e-10, abs=1e-12)
        assert row["manual_grad"] == pytest.approx(grads[name], rel=1e-10, abs=1e-12)
        finite_difference = central_difference(DOWNSTREAM[name], values[name])
        assert row["grad"] == pytest.approx(finite_difference, rel=1e-6, abs=1e-6), name
    assert result.metrics["grad"] == pytest.approx(grads["x"], rel=1e-10, abs=1e-12)
    assert result.metrics["manual_grad"] == pytest.approx(grads["x"], rel=1e-10, abs=1e-12)
    assert result.checks["chain_rule"].passed
    assert result.objective == pytest.approx(values["e"], rel=1e-12, abs=1e-12)


POINTS = [(1.0, 2.0, 3.0), (-1.5, 0.0, 2.0), (0.0, 0.0, 0.0), (2.0, -3.0, -0.5)]


def hand_jacobian(p) -> torch.Tensor:
    x1, x2, x3 = p
    return torch.tensor([[2 * x1, 0, 0], [x2, x1, 0], [0, x3, x2]], dtype=torch.float64)


@pytest.mark.parametrize("point", POINTS)
def test_jacobian_experiment_at_point(point, ctx):
    result = Jacobian(point=list(point)).run(ctx)
    expected = hand_jacobian(point)
    x1, x2, _ = point

    entries = [[result.metrics[f"jacobian/{i}{j}"] for j in range(3)] for i in range(3)]
    for reported in (result.summary["jacobian"], result.summary["analytic_jacobian"], entries):
        torch.testing.assert_close(torch.tensor(reported, dtype=torch.float64), expected,
                                   rtol=1e-12, atol=1e-12)
    # lower triangular: det = 2 x1 * x1 * x2
    assert result.metrics["determinant"] == pytest.approx(2 * x1 * x1 * x2, abs=1e-12)
    norm = torch.linalg.matrix_norm(expected).item()
    assert result.metrics["jacobian_norm"] == pytest.approx(norm, rel=1e-12, abs=1e-12)
    for name, check in result.checks.items():
        assert check.passed, name
        assert check.error <= 1e-12


@pytest.mark.parametrize("way", ["backward_rows", "jacrev", "jacfwd"])
@pytest.mark.parametrize("point", POINTS)
def test_each_jacobian_way_matches_analytic_and_finite_difference(way, point):
    compute = {"backward_rows": lambda x: jacobian_by_rows(jacobian.f, x),
               "jacrev": torch.func.jacrev(jacobian.f),
               "jacfwd": torch.func.jacfwd(jacobian.f)}[way]
    x = torch.tensor(point, dtype=torch.float64)

    found = compute(x)

    torch.testing.assert_close(found, hand_jacobian(point), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(found, finite_difference_jacobian(jacobian.f, x),
                               rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(jacobian.analytic_jacobian(x), hand_jacobian(point))


def wide(x: torch.Tensor) -> torch.Tensor:
    """R^3 -> R^4, non-polynomial."""
    return torch.stack([torch.sin(x[0]) * x[1], torch.exp(x[1]) - x[2] ** 2,
                        x[0] * x[1] * x[2], torch.tanh(x[0] + x[2])])


def narrow(x: torch.Tensor) -> torch.Tensor:
    """R^4 -> R^2."""
    return torch.stack([(x**2).sum(), torch.log1p(x[0] ** 2) * torch.cos(x[3])])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("f", [wide, narrow])
def test_jacobian_by_rows_matches_jacrev_on_other_functions(f, seed):
    dim = 3 if f is wide else 4
    x = torch.randn(dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))

    found = jacobian_by_rows(f, x)

    assert found.shape == (f(x).numel(), dim)
    torch.testing.assert_close(found, torch.func.jacrev(f)(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(found, finite_difference_jacobian(f, x), rtol=1e-6, atol=1e-6)
    assert not x.requires_grad  # the caller's tensor is left alone


def test_finite_difference_jacobian_of_linear_map_is_the_matrix():
    matrix = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]], dtype=torch.float64)
    x = torch.tensor([0.3, -0.7, 2.0], dtype=torch.float64)

    found = finite_difference_jacobian(lambda v: matrix @ v, x)

    torch.testing.assert_close(found, matrix, rtol=1e-8, atol=1e-8)


def test_jacobian_norm_is_finite_where_the_true_norm_is(ctx):
    # J = [[2, 0, 0], [1e-200, 1, 0], [0, 1e200, 1e-200]]: squaring 1e200 overflows float64,
    # the Frobenius norm itself (~1e200) does not.
    result = Jacobian(point=[1.0, 1e-200, 1e200]).run(ctx)

    assert result.metrics["jacobian_norm"] == pytest.approx(1e200, rel=1e-12)
    assert not result.failed_checks


@pytest.mark.parametrize(("make", "key"), [
    (lambda: BasicGradients(x=1e155), "experiment.x"),
    (lambda: BasicGradients(a=1e308), "experiment.x"),
    (lambda: ComputationalGraph(x=-1e160), "experiment.x"),
    (lambda: Jacobian(point=[1e103, 1e103, 1e103]), "experiment.point"),  # det J overflows
])
def test_inputs_that_overflow_float64_are_refused(make, key):
    with pytest.raises(ConfigError, match=rf"^{key}=.*overflow"):
        make()
