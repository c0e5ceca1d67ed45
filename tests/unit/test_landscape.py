"""Landscape: batched gradients on a grid, critical points found and classified."""

from __future__ import annotations

import dataclasses
import logging
import math

import pytest
import torch
from matplotlib.figure import Figure

from gradkit.core.experiment import RunContext
from gradkit.core.validation import ConfigError
from gradkit.experiments import landscape
from gradkit.experiments.landscape import Landscape, critical_points, grid
from gradkit.lib.curvature import point_kind
from gradkit.lib.derivatives import batched_gradient, gradient_per_point

# Himmelblau's nine stationary points (published to 6 decimals) and their kinds.
HIMMELBLAU_CRITICAL = [
    ((3.0, 2.0), "minimum"), ((-2.805118, 3.131312), "minimum"),
    ((-3.779310, -3.283186), "minimum"), ((3.584428, -1.848127), "minimum"),
    ((-0.270845, -0.923039), "maximum"),
    ((0.086678, 2.884255), "saddle"), ((-3.073026, -0.081353), "saddle"),
    ((3.385154, 0.073852), "saddle"), ((-0.127961, -1.953715), "saddle"),
]


def himmelblau_gradient(x, y):
    """Written from the formula, independent of gradkit.lib.functions."""
    u, v = x * x + y - 11, x + y * y - 7
    return 4 * x * u + 2 * v, 2 * u + 4 * y * v


def himmelblau_hessian_eigenvalues(x, y):
    u, v = x * x + y - 11, x + y * y - 7
    h = torch.tensor([[4 * u + 8 * x * x + 2, 4 * (x + y)], [4 * (x + y), 4 * v + 8 * y * y + 2]],
                     dtype=torch.float64)
    return torch.linalg.eigvalsh(h).tolist()


@pytest.fixture(autouse=True)
def _no_drawing(monkeypatch):
    """A blank figure: these tests read critical points and checks (test_pngs draws the real
    nine panels, a third of each run's time)."""
    monkeypatch.setattr(Landscape, "plot", lambda self, *args, **kwargs: Figure())


@pytest.fixture(scope="module")
def himmelblau(tmp_path_factory):
    ctx = RunContext(torch.device("cpu"), torch.float32, torch.Generator(),
                     tmp_path_factory.mktemp("himmelblau"), logging.getLogger("test"))
    return Landscape(function="himmelblau", resolution=60).run(ctx)


def test_himmelblau_has_four_minima_four_saddles_and_one_maximum(himmelblau):
    found = himmelblau.summary["critical_points"]

    assert len(found) == 9
    for (x, y), kind in HIMMELBLAU_CRITICAL:
        [match] = [p for p in found if math.hypot(p["x"] - x, p["y"] - y) < 1e-5]
        assert match["kind"] == kind
        gx, gy = himmelblau_gradient(match["x"], match["y"])
        assert math.hypot(gx, gy) < 1e-10
        assert match["eigenvalues"] == pytest.approx(
            himmelblau_hessian_eigenvalues(match["x"], match["y"]), rel=1e-9)
        assert match["value"] == pytest.approx(
            (x * x + y - 11) ** 2 + (x + y * y - 7) ** 2, abs=1e-9)
    metrics = himmelblau.metrics
    assert (metrics["critical_points/minimum"], metrics["critical_points/saddle"],
            metrics["critical_points/maximum"], metrics["critical_points/degenerate"]) == (
        4.0, 4.0, 1.0, 0.0)
    assert all(check.passed for check in himmelblau.checks.values())


def test_value_and_gradient_statistics_match_the_formula(himmelblau):
    xs = torch.linspace(-5, 5, 60, dtype=torch.float64)
    x, y = torch.meshgrid(xs, xs, indexing="xy")
    values = (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2
    gx, gy = himmelblau_gradient(x, y)
    magnitude = torch.hypot(gx, gy)

    metrics = himmelblau.metrics
    assert metrics["value_min"] == pytest.approx(values.min().item(), rel=1e-12)
    assert metrics["value_max"] == pytest.approx(values.max().item(), rel=1e-12)
    assert metrics["value_mean"] == pytest.approx(values.mean().item(), rel=1e-12)
    assert metrics["value_std"] == pytest.approx(values.std().item(), rel=1e-12)
    assert metrics["grad_norm_mean"] == pytest.approx(magnitude.mean().item(), rel=1e-12)
    assert metrics["grad_norm_max"] == pytest.approx(magnitude.max().item(), rel=1e-12)
    assert metrics["gradient_seconds"] > 0


@pytest.mark.parametrize(("function", "expected"), [
    ("rosenbrock", (1.0, 1.0)),
    ("quadratic", (-0.8, 1.4)),  # -A^-1 b for A = [[3, 1], [1, 2]], b = [1, -2]
])
def test_single_minimum(function, expected, ctx):
    result = Landscape(function=function, resolution=41).run(ctx)

    [point] = result.summary["critical_points"]
    assert point["kind"] == "minimum"
    assert (point["x"], point["y"]) == pytest.approx(expected, abs=1e-12)
    assert result.metrics["critical_points/minimum"] == 1.0
    assert result.failed_checks == []


def test_a_window_without_stationary_points_finds_none(ctx):
    result = Landscape(function="rosenbrock", x_range=[-2, -1], y_range=[2, 3],
                       resolution=20).run(ctx)

    assert result.summary["critical_points"] == []
    assert sum(result.metrics[f"critical_points/{k}"] for k in
               ("minimum", "maximum", "saddle", "degenerate")) == 0
    assert result.checks["stationary"].passed


def test_a_window_edge_cuts_off_points_outside(ctx):
    result = Landscape(function="himmelblau", x_range=[0, 5], y_range=[0, 5],
                       resolution=40).run(ctx)

    kinds = sorted(p["kind"] for p in result.summary["critical_points"])
    assert kinds == ["minimum", "saddle", "saddle"]  # (3, 2), (0.09, 2.88), (3.39, 0.07)


def test_batched_gradient_equals_the_per_point_loop_and_the_formula():
    points = grid((-5.0, 5.0), (-4.0, 6.0), 13, torch.device("cpu"))

    def f(p):
        x, y = p.unbind(-1)
        return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2

    values, grads = batched_gradient(f, points)
    looped = gradient_per_point(f, points.reshape(-1, 2)).reshape(grads.shape)

    assert torch.equal(values, f(points))
    assert torch.equal(grads, looped)
    gx, gy = himmelblau_gradient(points[..., 0], points[..., 1])
    torch.testing.assert_close(grads, torch.stack([gx, gy], -1), rtol=1e-12, atol=1e-12)
    assert points[0, 1, 0] > points[0, 0, 0] and points[1, 0, 1] > points[0, 0, 1]


def test_a_wrong_analytic_gradient_fails_the_gradient_check(ctx):
    experiment = Landscape(function="quadratic", resolution=10)
    right = experiment.objective
    experiment.objective = dataclasses.replace(right, gradient=lambda p: 1.001 * right.gradient(p))

    result = experiment.run(ctx)

    assert result.failed_checks == ["gradient"]


def test_critical_points_of_a_saddle_function():
    """f = x^2 - y^2 + x^4: one saddle at the origin, Hessian eigenvalues -2 and 2."""
    objective = dataclasses.replace(
        Landscape(function="quadratic").objective,
        value=lambda p: p[..., 0] ** 2 - p[..., 1] ** 2 + p[..., 0] ** 4)
    points = grid((-1.0, 1.3), (-1.2, 1.0), 24, torch.device("cpu"))
    _, grads = batched_gradient(objective.value, points)

    [point], sets = critical_points(objective, points, grads, ((-1.0, 1.3), (-1.2, 1.0)))

    assert point["kind"] == "saddle"
    assert (point["x"], point["y"]) == pytest.approx((0.0, 0.0), abs=1e-12)
    assert point["eigenvalues"] == pytest.approx([-2.0, 2.0], abs=1e-12)
    assert sets == []


@pytest.mark.parametrize("resolution", [10, 12, 15, 20])
def test_coarse_grids_find_all_nine_himmelblau_points(resolution, ctx):
    result = Landscape(function="himmelblau", resolution=resolution).run(ctx)

    found = result.summary["critical_points"]
    for (x, y), kind in HIMMELBLAU_CRITICAL:
        [match] = [p for p in found if math.hypot(p["x"] - x, p["y"] - y) < 1e-5]
        assert match["kind"] == kind
    assert len(found) == 9
    assert result.failed_checks == []


@pytest.mark.parametrize("factor", ["1e8", "1e-8", "1e-12"])
def test_a_scaled_function_has_the_same_critical_points(factor, ctx):
    function = f"{factor} * ((x**2 + y - 11)**2 + (x + y**2 - 7)**2)"

    result = Landscape(function=function, resolution=60).run(ctx)

    found = result.summary["critical_points"]
    assert sorted(p["kind"] for p in found) == sorted(k for _, k in HIMMELBLAU_CRITICAL)
    for (x, y), _ in HIMMELBLAU_CRITICAL:
        assert any(math.hypot(p["x"] - x, p["y"] - y) < 1e-5 for p in found)
    assert result.failed_checks == []


@pytest.mark.parametrize("function", ["x**4 + y**4", "x**4 - y**4", "x**4 + y**2",
                                      "x**3 - 3*x*y**2", "(x**2 + y**2)**2"])
def test_a_degenerate_critical_point_is_found_and_called_degenerate(function, ctx):
    result = Landscape(function=function, resolution=50).run(ctx)

    [point] = result.summary["critical_points"]
    assert (point["x"], point["y"]) == pytest.approx((0.0, 0.0), abs=1e-6)
    assert point["kind"] == "degenerate"
    assert result.metrics["critical_points/degenerate"] == 1.0
    assert result.summary["critical_sets"] == []
    assert result.failed_checks == []


def test_cosines_have_sixteen_minima_twenty_five_maxima_forty_saddles(ctx):
    # cos(3x) + cos(3y): critical where x, y are multiples of pi/3 (|k| <= 4 in [-5, 5]);
    # a minimum where both are odd multiples (4 x 4), a maximum where both even (5 x 5)
    result = Landscape(function="cos(3*x) + cos(3*y)", resolution=20).run(ctx)

    metrics = result.metrics
    assert (metrics["critical_points/minimum"], metrics["critical_points/maximum"],
            metrics["critical_points/saddle"]) == (16.0, 25.0, 40.0)
    for p in result.summary["critical_points"]:
        kx, ky = (round(v / (math.pi / 3)) for v in (p["x"], p["y"]))
        assert (p["x"], p["y"]) == pytest.approx((kx * math.pi / 3, ky * math.pi / 3), abs=1e-9)
        assert p["kind"] == {(1, 1): "minimum", (0, 0): "maximum"}.get((kx % 2, ky % 2),
                                                                        "saddle")
    assert result.failed_checks == []


def test_a_ring_of_minima_is_one_critical_set(ctx):
    result = Landscape(function="(x**2 + y**2 - 1)**2", resolution=50).run(ctx)

    [ring] = result.summary["critical_sets"]
    assert ring["points"] > 20
    assert all(abs(math.hypot(x, y) - 1) < 1e-8 for x, y in ring["members"])
    assert ring["x"] == pytest.approx([-1, 1], abs=0.05)
    assert ring["value"] == pytest.approx([0, 0], abs=1e-15)
    [centre] = result.summary["critical_points"]  # the maximum at the origin, alone
    assert centre["kind"] == "maximum"
    assert result.metrics["critical_sets"] == 1.0
    assert result.metrics["critical_points/degenerate"] == 0.0
    assert result.failed_checks == []


def test_the_complete_check_fails_when_the_search_misses_points(ctx, monkeypatch):
    starts = landscape.seeds
    monkeypatch.setattr(landscape, "seeds", lambda *args: starts(*args)[:1])

    result = Landscape(function="himmelblau", resolution=40).run(ctx)

    assert len(result.summary["critical_points"]) < 9
    assert result.failed_checks == ["complete"]
    assert result.checks["complete"].error == 9 - len(result.summary["critical_points"])


def test_the_stationary_check_is_relative_to_the_functions_scale(ctx):
    experiment = Landscape(function="1e-12 * (x**2 + y**2)", resolution=20)
    right = experiment.objective
    experiment.objective = dataclasses.replace(  # its oracle's gradient off by 1e-13 at 0
        right, gradient=lambda p: right.gradient(p) + 1e-13)

    result = experiment.run(ctx)

    assert "stationary" in result.failed_checks


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"resolution": 1}, "experiment.resolution"),
    ({"resolution": 5000}, "experiment.resolution"),
    ({"resolution": 20.5}, "experiment.resolution"),
    ({"x_range": [2, -2]}, "experiment.x_range"),
    ({"y_range": [1, 1]}, "experiment.y_range"),
    ({"x_range": [0, 1, 2]}, "experiment.x_range"),
    ({"function": "sphere"}, "experiment.function"),
    ({"function": "log(x)"}, "experiment.function"),  # NaN on half the window
    ({"function": "__import__('os')"}, "experiment.function"),
], ids=lambda v: str(v) if isinstance(v, dict) else None)
def test_invalid_parameter_names_its_key(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as raised:
        Landscape(**kwargs)
    assert "\n" not in str(raised.value)


def job(num: int, function: str, resolution: int, seconds: float | None,
        status: str = "COMPLETED") -> dict:
    done = seconds is not None
    return {"job": num, "experiment": "landscape", "overrides": f"resolution={resolution}",
            "status": status if done else "FAILED", "outcome": "",
            "params": {"experiment.function": function,
                       "experiment.resolution": str(resolution)} if done else {},
            "metrics": {"gradient_seconds": seconds, "critical_points/minimum": 1.0}
            if done else {}}


def test_sweep_figure_plots_time_against_grid_size():
    jobs = [job(0, "rosenbrock", 100, 0.001), job(1, "rosenbrock", 400, 0.01),
            job(2, "himmelblau", 100, 0.002), job(3, "himmelblau", 400, None)]

    fig = Landscape.sweep_figure(jobs)

    assert isinstance(fig, Figure)
    [ax] = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    rosenbrock = lines["rosenbrock (1 critical point)"]
    assert list(rosenbrock.get_xdata()) == [100**2, 400**2]
    assert list(rosenbrock.get_ydata()) == [0.001, 0.01]
    assert "1 not completed" in ax.get_title()


def test_sweep_figure_is_none_without_completed_jobs():
    assert Landscape.sweep_figure([job(0, "rosenbrock", 100, None)]) is None


def test_a_wrong_classification_fails_the_run(ctx, monkeypatch):
    def saddles_as_minima(*args, **kwargs):
        kind = point_kind(*args, **kwargs)
        return "minimum" if kind == "saddle" else kind

    monkeypatch.setattr(landscape, "point_kind", saddles_as_minima)

    result = Landscape(function="himmelblau", resolution=30).run(ctx)

    assert result.failed_checks == ["classification"]
    assert result.checks["classification"].error == 4.0


def test_a_wrong_analytic_hessian_fails_the_hessian_check(ctx):
    experiment = Landscape(function="himmelblau", resolution=30)
    right = experiment.objective
    experiment.objective = dataclasses.replace(right, hessian=lambda p: 2 * right.hessian(p))

    assert experiment.run(ctx).failed_checks == ["hessian"]  # the kinds are still right


def test_the_complete_check_fails_on_points_the_oracle_does_not_confirm(ctx, monkeypatch):
    monkeypatch.setattr(landscape, "stationary_points", lambda fn, window: torch.zeros(0, 2))

    result = Landscape(function="himmelblau", resolution=30).run(ctx)

    assert result.failed_checks == ["complete"]
    assert result.checks["complete"].error == 9.0


def test_a_critical_set_reported_as_isolated_points_fails_the_run(ctx, monkeypatch):
    monkeypatch.setattr(landscape, "split_sets", lambda rows, window: (rows, []))

    result = Landscape(function="(x**2 + y**2 - 1)**2", resolution=30).run(ctx)

    assert result.metrics["critical_points/degenerate"] > 20
    assert result.failed_checks == ["complete"]
