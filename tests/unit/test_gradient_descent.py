"""Gradient descent: the `descend` loop, the experiment's Result, validation, the sweep figure."""

from __future__ import annotations

import dataclasses
import logging
import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from gradkit.core.experiment import RunContext
from gradkit.core.validation import ConfigError
from gradkit.experiments import gradient_descent
from gradkit.experiments.gradient_descent import (
    DIVERGED_OBJECTIVE,
    OUTCOMES,
    Descent,
    GradientDescent,
    descend,
    path_contours,
)
from gradkit.lib.functions import Objective, objective

CURVATURE = 2.0  # f(p) = a/2 |p|^2 with a = CURVATURE


START = (1.0, -0.5)


ROSENBROCK_START = [-1.5, 2.5]


def quadratic(p: torch.Tensor) -> torch.Tensor:
    return CURVATURE / 2 * (p**2).sum()


def make_context(output_dir) -> RunContext:
    return RunContext(torch.device("cpu"), torch.float64, torch.Generator(), output_dir,
                      logging.getLogger("test"))


@pytest.fixture
def ctx(tmp_path) -> RunContext:
    return make_context(tmp_path)


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    """Rosenbrock from (-1.5, 2.5) at a learning rate five times its stability limit."""
    return GradientDescent(start=ROSENBROCK_START, learning_rate=0.01).run(
        make_context(tmp_path_factory.mktemp("diverged")))


@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    """Rosenbrock from (-1.5, 2.5) below the stability limit: 2000 steps, still descending."""
    return GradientDescent(start=ROSENBROCK_START, learning_rate=1e-3).run(
        make_context(tmp_path_factory.mktemp("slow")))


def test_plain_descent_on_a_quadratic_follows_the_closed_form():
    lr = 0.1
    trace = descend(quadratic, START, lr, max_iterations=500, tolerance=1e-8)

    assert trace.status == "converged"
    assert trace.grad_norms[-1] < 1e-8 <= min(trace.grad_norms[:-1])
    for k, point in enumerate(trace.points):
        expected = tuple((1 - lr * CURVATURE) ** k * x0 for x0 in START)
        assert point == pytest.approx(expected, rel=1e-12)
        assert trace.losses[k] == pytest.approx(CURVATURE / 2 * sum(e**2 for e in expected),
                                               rel=1e-12)


def test_momentum_changes_the_path_and_still_converges():
    plain = descend(quadratic, START, 0.05, max_iterations=500, tolerance=1e-8)
    heavy = descend(quadratic, START, 0.05, max_iterations=500, tolerance=1e-8, momentum=0.5)

    assert plain.status == heavy.status == "converged"
    assert plain.points[:2] == heavy.points[:2]  # the first step has no velocity yet
    assert heavy.points[2] != pytest.approx(plain.points[2])
    # heavy ball: v_k = m v_(k-1) + a x_k, x_(k+1) = x_k - lr v_k
    x, v = START[0], 0.0
    for point in heavy.points[:10]:
        assert point[0] == pytest.approx(x, rel=1e-12)
        v = 0.5 * v + CURVATURE * x
        x -= 0.05 * v
    assert heavy.iterations < plain.iterations  # 0.05 * 2 = 0.1 is a small step: momentum helps


def test_one_iteration_takes_exactly_one_step():
    trace = descend(quadratic, START, 0.1, max_iterations=1, tolerance=1e-12)

    assert trace.status == "max_iterations"
    assert trace.iterations == 1
    assert len(trace.points) == len(trace.losses) == len(trace.grad_norms) == 2
    assert trace.points[1] == pytest.approx(tuple(0.8 * x0 for x0 in START), rel=1e-12)


def test_descent_starting_at_a_minimum_converges_without_a_step():
    trace = descend(quadratic, (0.0, 0.0), 0.1, max_iterations=10, tolerance=1e-8)

    assert (trace.status, trace.iterations, trace.points) == ("converged", 0, [(0.0, 0.0)])


def test_rosenbrock_at_a_large_learning_rate_diverges(diverged):
    assert diverged.summary["status"] == "diverged"
    assert diverged.tags == {"status": "diverged"}
    assert diverged.metrics["diverged"] == 1.0
    assert diverged.metrics["converged"] == 0.0
    assert diverged.objective == DIVERGED_OBJECTIVE
    assert all(math.isfinite(v) for values in diverged.series.values() for v in values)
    assert all(math.isfinite(v) for v in diverged.metrics.values())
    assert isinstance(diverged.figures["descent"], Figure)
    assert not diverged.failed_checks


def test_rosenbrock_at_a_small_learning_rate_runs_out_of_iterations(slow):
    assert slow.tags == {"status": "max_iterations"}
    assert slow.metrics["iterations"] == 2000
    assert (slow.metrics["converged"], slow.metrics["diverged"]) == (0.0, 0.0)
    assert slow.metrics["final_loss"] < slow.series["loss"][0] == 12.5
    assert slow.objective == slow.metrics["final_loss"] == slow.series["loss"][-1]
    assert slow.checks["gradient"].passed
    assert isinstance(slow.figures["descent"], Figure)


@pytest.mark.parametrize("result_of", ["diverged", "slow"])
def test_series_lengths_and_distance_travelled_agree(result_of, request):
    result = request.getfixturevalue(result_of)
    series, metrics = result.series, result.metrics

    assert len(series["x"]) == len(series["y"]) == len(series["loss"]) == len(
        series["grad_norm"])
    assert len(series["step_size"]) == metrics["iterations"]
    assert metrics["distance_travelled"] == pytest.approx(sum(series["step_size"]), rel=1e-12)
    assert [series["x"][0], series["y"][0]] == ROSENBROCK_START
    assert result.summary["end"] == [series["x"][-1], series["y"][-1]]
    assert metrics["final_grad_norm"] == series["grad_norm"][-1]


def test_himmelblau_from_near_a_minimum_converges_to_it(ctx):
    result = GradientDescent(function="himmelblau", start=[3.2, 2.1], learning_rate=0.01).run(ctx)

    assert result.tags == {"status": "converged"}
    assert result.metrics["converged"] == 1.0
    assert result.metrics["final_grad_norm"] < 1e-6
    assert result.metrics["distance_to_minimum"] < 1e-6
    assert result.summary["end"] == pytest.approx([3.0, 2.0], abs=1e-6)
    assert result.metrics["iterations"] < 2000


def test_max_iterations_one_runs_one_step(ctx):
    result = GradientDescent(start=ROSENBROCK_START, max_iterations=1).run(ctx)

    assert result.metrics["iterations"] == 1
    assert len(result.series["step_size"]) == 1
    assert len(result.series["loss"]) == 2


def test_start_where_the_loss_overflows_is_not_a_crash(ctx):
    """Rosenbrock's 100 x^4 overflows float64 at x = 1e100: refuse the start or diverge."""
    try:
        result = GradientDescent(start=[1e100, 1e100]).run(ctx)
    except ConfigError as error:
        assert "experiment.start" in str(error)
    else:
        assert result.tags == {"status": "diverged"}
        assert result.objective == DIVERGED_OBJECTIVE


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"learning_rate": -1e-3}, "experiment.learning_rate"),
    ({"learning_rate": 0}, "experiment.learning_rate"),
    ({"start": [1.0, 2.0, 3.0]}, "experiment.start"),
    ({"start": "origin"}, "experiment.start"),
    ({"momentum": 1.0}, "experiment.momentum"),
    ({"momentum": -0.1}, "experiment.momentum"),
    ({"max_iterations": 0}, "experiment.max_iterations"),
    ({"max_iterations": 1.5}, "experiment.max_iterations"),
    ({"tolerance": 0.0}, "experiment.tolerance"),
    ({"function": "sphere"}, "experiment.function"),
], ids=lambda v: str(v) if isinstance(v, dict) else None)
def test_invalid_parameter_names_its_key(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        GradientDescent(**kwargs)


def sweep_row(job: int, lr: str, final_loss: float | None, diverged: bool = False,
              start: str = "[-1.5, 2.5]") -> dict:
    """A row of the sweep report; a job without a final loss failed before logging metrics."""
    params = {"experiment.learning_rate": lr, "experiment.start": start,
              "experiment.function": "rosenbrock"}
    metrics = {} if final_loss is None else {"final_loss": final_loss,
                                             "diverged": float(diverged)}
    return {"job": job, "overrides": f"learning_rate={lr}",
            "status": "FAILED" if final_loss is None else "COMPLETED",
            "outcome": "diverged" if diverged else "max_iterations",
            "params": params, "metrics": metrics}


def test_sweep_figure_plots_final_loss_against_learning_rate():
    jobs = [sweep_row(0, "0.001", 0.25), sweep_row(1, "0.01", 4507.95, diverged=True),
            sweep_row(2, "0.0005", 1.5, start="[0.5, 0.5]"), sweep_row(3, "0.002", None)]

    fig = GradientDescent.sweep_figure(jobs)

    assert isinstance(fig, Figure)
    [ax] = fig.axes
    assert len(ax.get_lines()) == 3  # one line per start, plus the stability limit
    assert ax.get_title() == "3 jobs, 1 not shown (failed or not run)"


def test_sweep_figure_draws_every_start_point():
    starts = [f"[{x}, 0.0]" for x in range(12)]
    jobs = [sweep_row(i, "0.001", 1.0, start=start) for i, start in enumerate(starts)]

    [ax] = GradientDescent.sweep_figure(jobs).axes

    drawn = [line.get_label() for line in ax.get_lines()]
    assert {f"start={start}" for start in starts} <= set(drawn)


@pytest.mark.parametrize("jobs", [[], [sweep_row(0, "0.001", None), sweep_row(1, "0.01", None)]],
                         ids=["no jobs", "only failed jobs"])
def test_sweep_figure_is_none_without_metrics(jobs):
    assert GradientDescent.sweep_figure(jobs) is None


def test_a_start_far_outside_the_plot_window_is_still_drawn(tmp_path):
    ctx = RunContext(torch.device("cpu"), torch.float64, torch.Generator(), tmp_path,
                     logging.getLogger())
    result = GradientDescent(start=[100.0, 100.0], learning_rate=1e-9, max_iterations=3).run(ctx)
    (ax,) = [a for a in result.figures["descent"].axes if a.get_title().startswith("Path")]
    assert ax.get_xlim()[1] >= 100.0 and ax.get_ylim()[1] >= 100.0


def descent_job(num: int, lr: float, outcome: str, **params: str) -> dict:
    return {"job": num, "status": "COMPLETED", "outcome": outcome,
            "params": {"experiment.learning_rate": str(lr), "experiment.function": "rosenbrock",
                       "plotting.figures": str(num % 2 == 0), **params},
            "metrics": {"final_loss": 1.0 + num, "diverged": float(outcome == "diverged")}}


def test_sweep_figure_draws_one_line_per_combination_of_the_other_varying_parameters():
    jobs = [descent_job(n, lr, outcome, **{"experiment.momentum": momentum})
            for n, (momentum, lr, outcome) in enumerate(
                (m, lr, o) for m in ("0.0", "0.9")
                for lr, o in ((1e-3, "max_iterations"), (2e-3, "converged"), (1e-2, "diverged")))]
    fig = GradientDescent.sweep_figure(jobs)
    ax = fig.axes[0]

    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert [line.get_label() for line in ax.get_lines() if not line.get_label().startswith(
        ("_", "stability"))] == ["momentum=0.0", "momentum=0.9"]
    assert {"converged", "stopped at max_iterations", "diverged (last finite loss)"} <= set(labels)
    assert not any("plotting" in label for label in labels)
    assert ax.get_title() == "6 jobs"
    plt.close(fig)


def test_sweep_figure_says_one_job_and_counts_the_jobs_not_shown():
    fig = GradientDescent.sweep_figure([
        descent_job(0, 1e-3, "max_iterations"),
        {"job": 1, "status": "NOT_RUN", "outcome": "", "params": {}, "metrics": {}}])

    assert fig.axes[0].get_title() == "1 job, 1 not shown (failed or not run)"
    assert fig.axes[0].get_legend().get_texts()[0].get_text() == "all jobs"
    plt.close(fig)


def test_descent_figure_labels_every_panel_also_on_a_narrow_log_range():
    """Losses within 0.3..0.5 hold no power of ten: the log panels are read off minor labels."""
    n = 30
    decay = 0.9 ** np.arange(n)
    trace = Descent(points=[(0.1 * k, 0.0) for k in range(n)], losses=list(0.3 + 0.2 * decay),
                    grad_norms=list(1.5 + 0.5 * decay), step_sizes=list(0.05 + 0.02 * decay[1:]))
    fig = GradientDescent().plot(trace)
    fig.canvas.draw()

    assert len(fig.axes) == 6 and all(ax.get_title() for ax in fig.axes)
    for ax in fig.axes:
        assert shown_tick_labels(ax.yaxis), ax.get_title()
    for ax in fig.axes[:1] + fig.axes[3:]:  # iterations are labelled once per column, below
        assert shown_tick_labels(ax.xaxis), ax.get_title()
    (loss,) = [ax for ax in fig.axes if ax.get_title().startswith("Loss (")]
    assert shown_tick_labels(loss.yaxis) == ["4×10⁻¹", "5×10⁻¹"]  # losses 0.31..0.5
    assert not any("$" in text for ax in fig.axes for text in shown_tick_labels(ax.yaxis))
    plt.close(fig)


def shown_tick_labels(axis) -> list[str]:
    """The non-empty tick labels of `axis` inside its view, major and minor."""
    lo, hi = sorted(axis.get_view_interval())
    ticks = (axis.get_major_ticks(len(axis.get_majorticklocs()))
             + axis.get_minor_ticks(len(axis.get_minorticklocs())))
    return sorted(t.label1.get_text() for t in ticks
                  if t.label1.get_visible() and t.label1.get_text() and lo <= t.get_loc() <= hi)


def test_contour_lines_are_those_matplotlib_draws():
    fn = objective("rosenbrock")
    window = (-2.0, 2.0, -1.0, 3.0)
    lines, line_levels, levels = path_contours(fn, window)
    x = np.linspace(-2.0, 2.0, 300)
    gx, gy = np.meshgrid(x, np.linspace(-1.0, 3.0, 300))
    z = fn.value(torch.from_numpy(np.stack([gx, gy], axis=-1))).numpy()
    fig, ax = plt.subplots()
    expected = ax.contour(gx, gy, z, levels=levels)

    assert len(levels) == 25 and levels[0] == pytest.approx(1e-3 if z.min() < 1e-3 else z.min())
    for level, segments in zip(levels, expected.allsegs, strict=True):
        mine = [line for line, at in zip(lines, line_levels, strict=True) if at == level]
        assert len(mine) == len(segments)
        for got, want in zip(mine, segments, strict=True):
            np.testing.assert_allclose(got, want)
    assert path_contours(fn, window)[0] is lines  # cached per function and window
    plt.close(fig)


def rosenbrock_sharpness() -> float:
    """λmax of Rosenbrock's Hessian at (1, 1), [[802, -400], [-400, 200]], by the formula."""
    return (1002 + math.sqrt(1002**2 - 4 * 400)) / 2


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
def test_stability_limit_metric_includes_the_momentum(momentum, ctx):
    result = GradientDescent(momentum=momentum, max_iterations=5).run(ctx)

    assert result.metrics["stability_limit"] == pytest.approx(
        2 * (1 + momentum) / rosenbrock_sharpness(), rel=1e-12)
    assert result.checks["stability_limit"].passed


def test_heavy_ball_below_its_limit_converges_where_plain_descent_would_not(ctx):
    # 0.0035 > 2/λmax = 0.002 but < 2(1 + 0.9)/λmax = 0.0038: stable with momentum 0.9
    result = GradientDescent(start=[1.05, 1.1], momentum=0.9, learning_rate=0.0035,
                             max_iterations=20000).run(ctx)

    assert result.tags == {"status": "converged"}
    assert result.failed_checks == []


def test_a_run_certifies_its_path_outcome_and_descent(slow):
    assert set(slow.checks) == {"gradient", "trajectory", "outcome", "descent",
                                "stability_limit"}
    assert slow.failed_checks == []
    assert slow.metrics["certified_steps"] > 0
    assert slow.metrics["path_sharpness"] > 0


def test_no_descent_check_where_the_lemma_guarantees_nothing(diverged, ctx):
    assert "descent" not in diverged.checks  # lr = 0.01 above 2 / the path's sharpness
    assert "descent" not in GradientDescent(momentum=0.5, max_iterations=5).run(ctx).checks


def climbing(f, start, learning_rate, *args, **kwargs):
    """Gradient ascent dressed as descent: the sign of the step flipped."""
    return descend(f, start, -learning_rate, *args, **kwargs)


def test_a_descent_that_climbs_fails_the_run(ctx, monkeypatch):
    monkeypatch.setattr(gradient_descent, "descend", climbing)

    result = GradientDescent(function="himmelblau", start=[3.2, 2.1], learning_rate=1e-3,
                             max_iterations=50).run(ctx)

    assert {"trajectory", "descent"} <= set(result.failed_checks)


def test_a_wrong_outcome_fails_the_run(ctx, monkeypatch):
    def claims_convergence(*args, **kwargs):
        trace = descend(*args, **kwargs)
        trace.status = "converged"
        return trace

    monkeypatch.setattr(gradient_descent, "descend", claims_convergence)

    assert GradientDescent(max_iterations=20).run(ctx).failed_checks == ["outcome"]


def test_a_divergence_is_confirmed_by_the_replayed_step(diverged):
    assert diverged.checks["outcome"].passed
    assert diverged.checks["trajectory"].passed


def test_a_stability_limit_without_the_momentum_fails_the_run(ctx, monkeypatch):
    monkeypatch.setattr(Objective, "stability_limit", lambda self, momentum=0.0:
                        2 / self.sharpness)

    result = GradientDescent(momentum=0.9, max_iterations=5).run(ctx)

    assert result.failed_checks == ["stability_limit"]


def test_an_expression_descends_like_the_built_in_function(ctx):
    built_in = GradientDescent(function="himmelblau", start=[0.0, 0.0], learning_rate=0.01)
    written = GradientDescent(function="(x**2 + y - 11)**2 + (x + y**2 - 7)**2",
                              start=[0.0, 0.0], learning_rate=0.01)

    a, b = built_in.run(ctx), written.run(ctx)

    assert b.series["loss"] == a.series["loss"]
    assert b.summary["function"] == "(x**2 + y - 11)**2 + (x + y**2 - 7)**2"
    assert b.metrics["stability_limit"] == pytest.approx(a.metrics["stability_limit"], rel=1e-6)
    assert b.metrics["distance_to_minimum"] < 1e-6
    assert b.failed_checks == a.failed_checks == []


def test_an_expression_without_minima_runs_and_says_so(ctx):
    result = GradientDescent(function="x + 2*y", learning_rate=0.1, max_iterations=10).run(ctx)

    assert math.isnan(result.metrics["stability_limit"])
    assert math.isnan(result.metrics["distance_to_minimum"])
    assert "stability_limit" not in result.checks
    assert result.failed_checks == []


def test_an_expression_outside_the_whitelist_is_refused():
    with pytest.raises(ConfigError, match=r"experiment\.function=.*not allowed"):
        GradientDescent(function="__import__('os').getcwd()")


def test_sweep_figure_draws_the_stability_limit_of_each_momentum():
    jobs = [descent_job(n, lr, "max_iterations", **{"experiment.momentum": m})
            for n, (m, lr) in enumerate([("0.0", 1e-3), ("0.9", 1e-3)])]

    [ax] = GradientDescent.sweep_figure(jobs).axes

    limits = {line.get_label(): line.get_xdata()[0] for line in ax.get_lines()
              if line.get_label().startswith("stability")}
    assert sorted(limits.values()) == pytest.approx(
        [2 / rosenbrock_sharpness(), 3.8 / rosenbrock_sharpness()], rel=1e-12)


def test_a_wrong_analytic_hessian_fails_the_stability_check(ctx):
    experiment = GradientDescent(max_iterations=5)
    right = experiment.objective
    experiment.objective = dataclasses.replace(right, hessian=lambda p: 2 * right.hessian(p))

    assert experiment.run(ctx).failed_checks == ["stability_limit"]


def test_a_divergence_at_the_first_step_is_certified(ctx):
    result = GradientDescent(learning_rate=1.0).run(ctx)

    assert result.tags == {"status": "diverged"}
    assert result.metrics["iterations"] == 1 and len(result.series["loss"]) == 1
    assert result.failed_checks == []


def test_wrong_step_sizes_fail_the_trajectory_check(ctx, monkeypatch):
    def long_steps(*args, **kwargs):
        trace = descend(*args, **kwargs)
        trace.step_sizes = [2 * s for s in trace.step_sizes]
        return trace

    monkeypatch.setattr(gradient_descent, "descend", long_steps)

    assert GradientDescent(max_iterations=20).run(ctx).failed_checks == ["trajectory"]


def search_trials(count: int) -> list[dict]:
    """Rows of an Optuna search's jobs: learning rate and momentum sampled, one of each per
    trial; a diverged trial scores the penalty objective."""
    rng = np.random.default_rng(0)
    rows = []
    for num in range(count):
        lr, momentum = 10 ** rng.uniform(-5, np.log10(5e-3)), rng.uniform(0, 0.95)
        outcome = ("diverged", "converged", "max_iterations")[num % 3]
        loss = float(rng.uniform(1e-4, 1.0))
        rows.append({"job": num, "status": "COMPLETED", "outcome": outcome,
                     "params": {"experiment.learning_rate": str(lr),
                                "experiment.momentum": str(momentum),
                                "experiment.function": "rosenbrock"},
                     "metrics": {"final_loss": loss, "objective": DIVERGED_OBJECTIVE
                                 if outcome == "diverged" else loss}})
    return rows


def test_a_searchs_figure_scatters_objective_against_lr_coloured_by_the_other_parameter():
    trials = search_trials(20)

    fig = GradientDescent.sweep_figure(
        [*trials, {"job": 20, "status": "FAILED", "outcome": "", "params": {}, "metrics": {}}])

    ax, bar = fig.axes
    assert bar.get_ylabel() == "momentum"
    drawn = [c for c in ax.collections if len(c.get_offsets()) and c.get_array() is not None]
    points = sorted(tuple(xy) for c in drawn for xy in c.get_offsets())
    assert points == sorted((float(t["params"]["experiment.learning_rate"]),
                             t["metrics"]["objective"]) for t in trials)
    colours = sorted(v for c in drawn for v in c.get_array())
    assert colours == pytest.approx(sorted(float(t["params"]["experiment.momentum"])
                                           for t in trials))
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels == [OUTCOMES["converged"], OUTCOMES["max_iterations"],
                      "diverged (objective 1e+10)", "best trial (lowest objective)"]
    assert ax.get_title() == "20 trials, 1 not shown (failed or not run)"
    plt.close(fig)
