"""Hessian: three methods against the analytic Hessian, eigen-analysis, point kinds."""

from __future__ import annotations

import dataclasses
import math
import sys

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from gradkit.core.validation import ConfigError
from gradkit.experiments import hessian as hessian_experiment
from gradkit.experiments.hessian import Hessian, contour_levels, level_decimals
from gradkit.lib.curvature import definiteness, kind_by_cholesky, point_kind
from gradkit.lib.derivatives import (
    HESSIANS,
    default_hessian_method,
    finite_difference_jacobian,
    hessian,
    hessian_operator,
)

ROOT = math.sqrt(1002**2 - 4 * 400)  # Rosenbrock at (1, 1): H = [[802, -400], [-400, 200]]


def rosenbrock_hessian(x: float, y: float) -> torch.Tensor:
    """Written from the formula, independent of gradkit.lib.functions."""
    return torch.tensor([[1200 * x * x - 400 * y + 2, -400 * x], [-400 * x, 200.0]],
                        dtype=torch.float64)


def test_rosenbrock_at_its_minimum(ctx):
    result = Hessian(function="rosenbrock", point=[1, 1]).run(ctx)
    m = result.metrics

    assert (m["eigenvalue/0"], m["eigenvalue/1"]) == pytest.approx(
        ((1002 - ROOT) / 2, (1002 + ROOT) / 2), rel=1e-12)
    assert (round(m["eigenvalue/0"], 5), round(m["eigenvalue/1"], 5)) == (0.39936, 1001.60064)
    assert m["determinant"] == pytest.approx(802 * 200 - 400**2, rel=1e-12)
    assert m["trace"] == pytest.approx(1002, rel=1e-12)
    assert m["condition_number"] == pytest.approx((1002 + ROOT) / (1002 - ROOT), rel=1e-10)
    assert m["grad_norm"] == 0.0
    assert result.tags == {"definiteness": "positive_definite", "point_kind": "minimum"}
    assert set(result.checks) == {"rows", "torch_func", "autograd_functional", "gradient",
                                  "classification"}
    assert result.failed_checks == []
    assert {"seconds/rows", "seconds/torch_func", "seconds/autograd_functional"} <= set(m)
    torch.testing.assert_close(torch.tensor(result.summary["hessian"], dtype=torch.float64),
                               rosenbrock_hessian(1, 1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("point", "grad_norm"), [((0.0, 0.0), 2.0), ((0.5, 0.25), 1.0)])
def test_a_positive_definite_hessian_off_the_minimum_is_not_a_minimum(point, grad_norm, ctx):
    result = Hessian(function="rosenbrock", point=list(point)).run(ctx)

    assert result.tags == {"definiteness": "positive_definite", "point_kind": "not_critical"}
    assert result.metrics["grad_norm"] == pytest.approx(grad_norm, rel=1e-12)
    eigenvalues = torch.linalg.eigvalsh(rosenbrock_hessian(*point)).tolist()
    assert [result.metrics["eigenvalue/0"], result.metrics["eigenvalue/1"]] == pytest.approx(
        eigenvalues, rel=1e-12)


def test_notebook_quadratic_at_its_default_point(ctx):
    result = Hessian().run(ctx)
    m = result.metrics

    # A = [[3, 1], [1, 2]]: eigenvalues (5 -+ sqrt 5) / 2; grad = A [2, 1] + [1, -2] = [8, 2]
    assert (m["eigenvalue/0"], m["eigenvalue/1"]) == pytest.approx(
        ((5 - 5**0.5) / 2, (5 + 5**0.5) / 2), rel=1e-12)
    assert (m["determinant"], m["trace"]) == pytest.approx((5.0, 5.0), rel=1e-12)
    assert m["grad_norm"] == pytest.approx(68**0.5, rel=1e-12)
    assert m["value"] == pytest.approx(0.5 * (12 + 2 + 2 + 2) + 0 + 5, rel=1e-12)
    assert result.tags["point_kind"] == "not_critical"


@pytest.mark.parametrize(("matrix", "kind", "definite"), [
    ([[3, 1], [1, 2]], "minimum", "positive_definite"),
    ([[-3, 1], [1, -2]], "maximum", "negative_definite"),
    ([[1, 2], [2, 1]], "saddle", "indefinite"),
    ([[1, 0], [0, 0]], "degenerate", "positive_semidefinite"),
    ([[0, 0], [0, -2]], "degenerate", "negative_semidefinite"),
])
def test_quadratic_at_its_stationary_point(matrix, kind, definite, ctx):
    # b = 0: the origin is stationary whatever A is
    result = Hessian(matrix=matrix, vector=[0, 0], point=[0, 0]).run(ctx)

    assert result.tags == {"definiteness": definite, "point_kind": kind}
    singular = kind == "degenerate"
    assert math.isinf(result.metrics["condition_number"]) is singular


def test_random_problem_of_higher_dimension(ctx):
    experiment = Hessian(dim=30)
    result = experiment.run(ctx)
    fn = experiment.objective(torch.Generator().manual_seed(0))

    eigenvalues = [result.metrics[f"eigenvalue/{i}"] for i in range(30)]
    assert eigenvalues == sorted(eigenvalues)
    assert eigenvalues[0] >= 1 and eigenvalues[-1] <= 100
    assert result.tags["definiteness"] == "positive_definite"
    assert result.failed_checks == []
    assert result.summary["default_method"] == "autograd_functional"
    point = torch.tensor(result.summary["point"], dtype=torch.float64)
    assert len(point) == 30
    matrix = fn.hessian(point)
    torch.testing.assert_close(matrix, matrix.T)
    assert torch.linalg.eigvalsh(matrix).tolist() == pytest.approx(eigenvalues, rel=1e-10)
    assert result.metrics["trace"] == pytest.approx(sum(eigenvalues), rel=1e-10)


def test_a_wrong_analytic_hessian_fails_every_check(ctx, monkeypatch):
    experiment = Hessian(function="rosenbrock", point=[0.3, -0.2])
    right = experiment.objective(ctx.generator)
    wrong = dataclasses.replace(right, hessian=lambda p: right.hessian(p) * (1 + 1e-9))
    monkeypatch.setattr(experiment, "objective", lambda generator: wrong)

    assert sorted(experiment.run(ctx).failed_checks) == sorted(HESSIANS)


def smooth(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(x[0]) * torch.exp(x[1]) + x[2] ** 3 * x[0] + torch.tanh(x[1] * x[2])


@pytest.mark.parametrize("method", HESSIANS)
def test_each_method_matches_finite_differences_of_the_gradient(method):
    x = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)

    def gradient(p):
        return torch.func.grad(smooth)(p)

    found = HESSIANS[method](smooth, x)

    torch.testing.assert_close(found, finite_difference_jacobian(gradient, x),
                               rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(found, found.T, rtol=1e-12, atol=1e-12)


def test_hessian_operator_and_default_hessian_agree_with_the_full_hessian():
    x = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)
    full = HESSIANS["rows"](smooth, x)
    v = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    batch = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    product = hessian_operator(smooth, x)

    torch.testing.assert_close(product(v), full @ v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(product(batch), batch @ full, rtol=1e-12, atol=1e-12)
    forward_over_reverse = torch.func.jvp(torch.func.grad(smooth), (x,), (v,))[1]
    torch.testing.assert_close(product(v), forward_over_reverse, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hessian(smooth, x), full, rtol=1e-12, atol=1e-12)
    assert default_hessian_method(2) == "rows"
    assert default_hessian_method(200) == "autograd_functional"


@pytest.mark.parametrize(("eigenvalues", "expected"), [
    ([1.0, 2.0], "positive_definite"), ([-1.0, -2.0], "negative_definite"),
    ([0.0, 2.0], "positive_semidefinite"), ([-1.0, 1e-13], "negative_semidefinite"),
    ([-1.0, 2.0], "indefinite"), ([-1.0, 0.0, 1.0], "indefinite"),
])
def test_definiteness_with_a_relative_tolerance(eigenvalues, expected):
    assert definiteness(eigenvalues) == expected


@pytest.mark.parametrize(("eigenvalues", "scale", "expected"), [
    ([1.0, 1.1e-12], 0.0, "positive_definite"),  # the tolerance, 1e-12 of the largest |λ|
    ([1.0, 0.9e-12], 0.0, "positive_semidefinite"),
    ([1.0, -1.1e-12], 0.0, "indefinite"),
    ([1e-30, 2e-30], 0.0, "positive_definite"),  # scale-free without a scale
    ([1e-30, 2e-30], 1.0, "positive_semidefinite"),  # zero against the function's scale
    ([-1e-30, 2e-30], 1.0, "positive_semidefinite"),
])
def test_definiteness_tolerance_is_relative_to_the_scale(eigenvalues, scale, expected):
    assert definiteness(eigenvalues, scale=scale) == expected


def test_point_kind_needs_a_vanishing_gradient_relative_to_its_scale():
    assert point_kind([1.0, 2.0], 0.0, 1.0) == "minimum"
    assert point_kind([1.0, 2.0], 1e-3, 1.0) == "not_critical"
    assert point_kind([1.0, 2.0], math.nan, 1.0) == "not_critical"
    assert point_kind([-1.0, 2.0], 0.9e-10, 1.0) == "saddle"  # the tolerance: 1e-10 x scale
    assert point_kind([-1.0, 2.0], 1.1e-10, 1.0) == "not_critical"
    assert point_kind([-1.0, 2.0], 1e-12, 1e-6) == "not_critical"
    assert point_kind([0.0, 0.0], 0.0, 0.0) == "degenerate"
    assert point_kind([1e-20, 1.0], 0.0, 1.0, curvature_scale=1e9) == "degenerate"


NOTEBOOK = [[3.0, 1.0], [1.0, 2.0]]


@pytest.mark.parametrize(("kwargs", "definite", "kind"), [
    # 1e-12 x the notebook quadratic: [2, 1] is not critical at any scale; its minimum is one
    ({"matrix": [[1e-12 * a for a in row] for row in NOTEBOOK], "vector": [1e-12, -2e-12],
      "point": [2, 1]}, "positive_definite", "not_critical"),
    ({"matrix": [[1e-12 * a for a in row] for row in NOTEBOOK], "vector": [1e-12, -2e-12],
      "point": [-0.8, 1.4]}, "positive_definite", "minimum"),
    ({"matrix": [[1e12 * a for a in row] for row in NOTEBOOK], "vector": [1e12, -2e12],
      "point": [-0.8, 1.4]}, "positive_definite", "minimum"),
    ({"matrix": [[1, 0], [0, 1e-11]], "vector": [0, 0], "point": [0, 0]},
     "positive_definite", "minimum"),
    ({"matrix": [[1, 0], [0, -1e-11]], "vector": [0, 0], "point": [0, 0]},
     "indefinite", "saddle"),
    ({"matrix": [[1, 0], [0, 1e-13]], "vector": [0, 0], "point": [0, 0]},
     "positive_semidefinite", "degenerate"),
    ({"function": "x**3 - 3*x*y**2", "point": [0, 0]}, "positive_semidefinite", "degenerate"),
    ({"function": "1e-12 * ((x**2 + y - 11)**2 + (x + y**2 - 7)**2)", "point": [3, 2]},
     "positive_definite", "minimum"),
    ({"function": "1e-12 * ((x**2 + y - 11)**2 + (x + y**2 - 7)**2)", "point": [3, 2.001]},
     "positive_definite", "not_critical"),
])
def test_classification_holds_at_any_scale(kwargs, definite, kind, ctx):
    result = Hessian(**kwargs).run(ctx)

    assert result.tags == {"definiteness": definite, "point_kind": kind}
    assert result.failed_checks == []


def test_an_expression_is_checked_against_sympys_hessian(ctx):
    result = Hessian(function="x**2 * y + sin(y)", point=[1.5, 0.5]).run(ctx)

    x, y = 1.5, 0.5
    expected = [[2 * y, 2 * x], [2 * x, -math.sin(y)]]
    torch.testing.assert_close(torch.tensor(result.summary["analytic_hessian"]),
                               torch.tensor(expected), rtol=1e-15, atol=0)
    assert result.summary["function"] == "x**2 * y + sin(y)"
    assert result.failed_checks == []


def test_a_wrong_sympy_hessian_fails_the_run(ctx, monkeypatch):
    experiment = Hessian(function="x**2 * y + sin(y)", point=[1.5, 0.5])
    fn = experiment.given
    experiment.given = dataclasses.replace(fn, hessian=lambda p: fn.hessian(p) * 1.0001)

    assert experiment.run(ctx).failed_checks == ["rows", "torch_func", "autograd_functional"]


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"matrix": [[1, 2], [3, 4]]}, "experiment.matrix"),
    ({"matrix": [[1, 2, 0], [2, 1, 0], [0, 0, 1]]}, "experiment.matrix"),
    ({"matrix": [[1, float("nan")], [float("nan"), 1]]}, "experiment.matrix"),
    ({"matrix": "identity"}, "experiment.matrix"),
    ({"function": "rosenbrock", "point": [1, 2, 3]}, "experiment.point"),
    ({"point": [1]}, "experiment.point"),
    ({"vector": [1, 2, 3]}, "experiment.vector"),
    ({"function": "rosenbrock", "dim": 3}, "experiment.dim"),
    ({"dim": 5, "matrix": [[1, 0], [0, 1]]}, "experiment.matrix"),
    ({"dim": 1}, "experiment.dim"),
    ({"constant": float("inf")}, "experiment.constant"),
    ({"function": "sphere"}, "experiment.function"),
    ({"function": "x.real"}, "experiment.function"),
    ({"function": "log(x)", "point": [-1, 0]}, "experiment.point"),
], ids=lambda v: str(v) if isinstance(v, dict) else None)
def test_invalid_parameter_names_its_key(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as raised:
        Hessian(**kwargs)
    assert "\n" not in str(raised.value)


def job(num: int, point: str, eigenvalues, grad_norm, condition) -> dict:
    done = eigenvalues is not None
    metrics = ({**{f"eigenvalue/{i}": v for i, v in enumerate(eigenvalues)},
                "grad_norm": grad_norm, "condition_number": condition} if done else {})
    return {"job": num, "experiment": "hessian", "overrides": f"point={point}",
            "status": "COMPLETED" if done else "KILLED", "outcome": "",
            "params": {"experiment.function": "rosenbrock", "experiment.point": point}
            if done else {}, "metrics": metrics}


def test_sweep_figure_labels_each_point_by_its_kind():
    jobs = [job(0, "[1, 1]", [0.4, 1001.6], 0.0, 2508.0),
            job(1, "[0, 0]", [2.0, 200.0], 2.0, 100.0),
            job(2, "[0, 0]", [0.0, 1.0], 0.0, sys.float_info.max),  # inf as MLflow stores it
            job(3, "[2, 2]", None, None, None)]

    fig = Hessian.sweep_figure(jobs)

    assert isinstance(fig, Figure)
    [ax] = fig.axes
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["2508 (minimum)", "100 (not_critical)", "∞ (degenerate)"]
    assert "1 jobs not completed" in ax.get_title()


def test_sweep_figure_is_none_without_completed_jobs():
    assert Hessian.sweep_figure([job(0, "[1, 1]", None, None, None)]) is None


@pytest.mark.parametrize(("levels", "decimals"), [
    ([1.0, 2.0, 3.0], 0),
    ([7.2504, 7.2509, 7.2531, 19.72], 3),
    ([0.5, 0.25, 0.125], 1),  # 0.5, 0.2, 0.1
    ([1.0, 1.0 + 1e-9], 6),  # no closer than the most decimals shown
])
def test_contour_levels_get_distinct_labels(levels, decimals):
    assert level_decimals(np.array(levels)) == decimals


def test_contour_levels_crowd_a_minimum_inside_the_window_only():
    offsets = torch.linspace(-1, 1, 41, dtype=torch.float64)
    x, y = torch.meshgrid(offsets, offsets, indexing="xy")
    bowl = contour_levels(x**2 + y**2)  # its minimum at the centre
    gaps = np.diff(bowl)
    assert bowl[0] > 0 and np.all(gaps > 0) and gaps[0] < gaps[-1] / 100
    slope = contour_levels(x + 2 * y)  # lowest at a corner: lines spread evenly
    assert np.allclose(np.diff(slope), 6 / 21) and -3 < slope[0] < slope[-1] < 3


@pytest.mark.parametrize("eigenvalues", [
    [1.0, 2.0], [-1.0, -2.0], [-1.0, 2.0], [0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [1.0, 1e-13],
    [1.0, 1e-11], [1.0, -1e-11], [-1.0, 1e-13], [3.0, -1e-13, 2.0], [1e-30, 2e-30],
])
@pytest.mark.parametrize("curvature_scale", [0.0, 1.0])
def test_cholesky_classification_agrees_with_the_eigenvalues(eigenvalues, curvature_scale):
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues),
                                       generator=torch.Generator().manual_seed(3),
                                       dtype=torch.float64))
    matrix = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T

    for grad_norm in (0.0, 1.0):
        assert kind_by_cholesky(matrix, grad_norm, 1.0, curvature_scale) == point_kind(
            eigenvalues, grad_norm, 1.0, curvature_scale)


def test_a_wrong_eigenvalue_threshold_fails_the_run(ctx, monkeypatch):
    # eigenvalues 0 and 0 counted as positive (> replaced by >=): the monkey saddle a minimum
    def wrong(eigenvalues, grad_norm, gradient_scale, curvature_scale=0.0):
        kind = point_kind(eigenvalues, grad_norm, gradient_scale, curvature_scale)
        return "minimum" if kind == "degenerate" else kind

    monkeypatch.setattr(hessian_experiment, "point_kind", wrong)

    result = Hessian(function="x**3 - 3*x*y**2", point=[0, 0]).run(ctx)

    assert result.failed_checks == ["classification"]


def test_zero_eigenvalues_are_drawn_as_neither_sign(ctx):
    fig = Hessian(function="x**3 - 3*x*y**2", point=[0, 0]).run(ctx).figures["hessian"]

    labels = {t.get_text() for t in fig.axes[0].get_legend().get_texts()}
    assert "eigenvector, λ ≈ 0" in labels
    arrows = [a.get_text() for a in fig.axes[0].texts if a.get_text()]
    assert arrows == ["λ = 0", "λ = 0"]  # no "-0"


def test_a_wrong_analytic_gradient_fails_the_run(ctx):
    experiment = Hessian(function="x**2 * y + sin(y)", point=[1.5, 0.5])
    fn = experiment.given
    experiment.given = dataclasses.replace(fn, gradient=lambda p: -fn.gradient(p))

    assert experiment.run(ctx).failed_checks == ["gradient"]
