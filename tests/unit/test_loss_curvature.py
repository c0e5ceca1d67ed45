"""Loss curvature: Lanczos and Hutchinson against exact answers."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from matplotlib.figure import Figure

from gradkit.core.experiment import Check
from gradkit.core.validation import ConfigError
from gradkit.experiments import loss_curvature
from gradkit.experiments.loss_curvature import (
    EXACT_LIMIT,
    INPUT_DIM,
    LossCurvature,
    flat_loss,
    parameter_count,
)
from gradkit.lib.curvature import hutchinson, hutchinson_std, lanczos, rademacher
from gradkit.lib.data import regression_batch
from gradkit.lib.models import mlp


def symmetric(eigenvalues: list[float], seed: int = 0) -> torch.Tensor:
    """Q diag(eigenvalues) Qᵀ for a random orthogonal Q."""
    generator = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


def test_lanczos_finds_the_top_eigenvalues_of_a_known_spectrum():
    eigenvalues = [10.0, 7.0, 5.0, *torch.linspace(-2, 2, 97).tolist()]
    matrix = symmetric(eigenvalues)
    start = torch.randn(100, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    history = lanczos(lambda v: matrix @ v, start, 40)

    assert len(history) == 40
    assert history[-1].flip(0)[:3].tolist() == pytest.approx([10.0, 7.0, 5.0], rel=1e-10)
    assert history[0].shape == (1,) and history[-1].shape == (40,)
    # Ritz values interlace: the largest can only grow towards the true one
    tops = [h[-1].item() for h in history]
    assert all(b >= a - 1e-12 for a, b in pairwise(tops))


def test_lanczos_stops_when_the_krylov_space_is_invariant():
    matrix = symmetric([3.0, 1.0, -1.0, 0.5, 2.0, 4.0])
    history = lanczos(lambda v: matrix @ v, torch.ones(6, dtype=torch.float64), 50)

    assert len(history) == 6
    assert history[-1].tolist() == pytest.approx([-1.0, 0.5, 1.0, 2.0, 3.0, 4.0], abs=1e-12)


def test_hutchinson_is_exact_for_a_diagonal_matrix():
    diagonal = torch.tensor([1.0, -2.0, 3.5, 0.25], dtype=torch.float64)
    matrix = torch.diag(diagonal)

    samples = hutchinson(lambda v: v @ matrix,
                         rademacher(10, 4, torch.Generator().manual_seed(0), diagonal))

    assert samples.tolist() == pytest.approx([2.75] * 10, abs=1e-15)
    assert hutchinson_std(matrix, 10) == 0.0


def test_hutchinson_spread_follows_the_formula():
    matrix = symmetric([4.0, 3.0, 1.0, -1.0, 0.5, 2.0, 0.0, 1.5], seed=3)
    probes = rademacher(40000, 8, torch.Generator().manual_seed(2), matrix)
    samples = hutchinson(lambda v: v @ matrix, probes)  # in chunks of products

    torch.testing.assert_close(samples, ((probes @ matrix) * probes).sum(-1), rtol=0, atol=1e-12)

    assert samples.mean().item() == pytest.approx(torch.trace(matrix).item(),
                                                  abs=5 * hutchinson_std(matrix, 40000))
    assert samples.std().item() == pytest.approx(hutchinson_std(matrix, 1), rel=0.03)


@pytest.mark.parametrize("hidden", [(3,), (5, 4), (2, 3, 2)])
def test_parameter_count_and_flat_loss_match_the_model(hidden):
    generator = torch.Generator().manual_seed(0)
    model = mlp(INPUT_DIM, hidden, 1, activation="tanh", generator=generator).double()
    x, y = regression_batch(9, INPUT_DIM, 1, generator, dtype=torch.float64)

    loss, theta = flat_loss(model, x, y)

    assert parameter_count(hidden) == sum(p.numel() for p in model.parameters()) == len(theta)
    expected = torch.nn.functional.mse_loss(model(x), y)
    assert loss(theta).item() == pytest.approx(expected.item(), rel=1e-14)
    grads = torch.autograd.grad(expected, list(model.parameters()))
    torch.testing.assert_close(torch.func.grad(loss)(theta),
                               torch.cat([g.reshape(-1) for g in grads]), rtol=1e-12,
                               atol=1e-14)


def test_top_eigenvalues_and_trace_against_the_full_hessian(ctx):
    experiment = LossCurvature(hidden=[6], batch_size=16, iterations=30,
                               hutchinson_samples=50, top_k=2)
    result = experiment.run(ctx)

    # rebuild the same model and batch from the same seed; the oracle is an independent
    # full Hessian (torch.autograd.functional, double backward row by row)
    generator = torch.Generator().manual_seed(0)
    model = mlp(INPUT_DIM, [6], 1, activation="tanh", generator=generator).double()
    x, y = regression_batch(16, INPUT_DIM, 1, generator, dtype=torch.float64)
    loss, theta = flat_loss(model, x, y)
    full = torch.autograd.functional.hessian(loss, theta)
    exact = torch.linalg.eigvalsh(full).flip(0)

    m = result.metrics
    assert m["parameters"] == 6 * (INPUT_DIM + 1) + 7 == len(theta)
    assert [m["top_eigenvalue.0"], m["top_eigenvalue.1"]] == pytest.approx(
        exact[:2].tolist(), rel=1e-10)
    assert result.checks["top_eigenvalues"].error < 1e-10
    assert m["stability_limit"] == 2 / m["top_eigenvalue.0"]
    assert m["exact_trace"] == pytest.approx(torch.trace(full).item(), rel=1e-12)
    assert m["min_eigenvalue"] == pytest.approx(exact[-1].item(), rel=1e-9, abs=1e-12)
    assert abs(m["trace_estimate"] - m["exact_trace"]) <= 5 * hutchinson_std(full, 50)
    assert m["loss"] == pytest.approx(loss(theta).item(), rel=1e-14)
    assert set(result.checks) == {"top_eigenvalues", "trace", "trace_probes"}
    assert result.failed_checks == []
    assert result.tags == {"exact_comparison": "done"}
    assert len(result.series["ritz_value.0"]) == m["lanczos_iterations"] == 30
    assert result.series["trace_running_mean"][-1] == pytest.approx(m["trace_estimate"])


def test_at_the_defaults_the_trace_tolerance_is_well_inside_the_trace(ctx):
    result = LossCurvature().run(ctx)
    exact, check = result.metrics["exact_trace"], result.checks["trace"]

    assert check.passed and result.failed_checks == []
    assert check.tolerance < 0.2 * abs(exact)
    assert not Check(abs(0.0 - exact), check.tolerance).passed  # an estimate of 0 fails
    assert not Check(abs(0.8 * exact - exact), check.tolerance).passed


def test_a_biased_mean_fails_the_probe_check_which_no_tolerance_on_the_trace_sees(
        ctx, monkeypatch):
    def biased(matvecs, probes):  # the mean of these is sum / (samples - 1)
        return hutchinson(matvecs, probes) * len(probes) / (len(probes) - 1)

    monkeypatch.setattr(loss_curvature, "hutchinson", biased)

    result = LossCurvature(hidden=[8], hutchinson_samples=500).run(ctx)

    assert result.failed_checks == ["trace_probes"]


def test_too_few_iterations_fail_the_eigenvalue_check(ctx):
    result = LossCurvature(hidden=[8], iterations=4, hutchinson_samples=10).run(ctx)

    assert "top_eigenvalues" in result.failed_checks


def test_a_model_too_large_for_the_full_hessian_skips_the_exact_comparison(ctx):
    hidden = [44, 44]
    assert parameter_count(hidden) > EXACT_LIMIT
    result = LossCurvature(hidden=hidden, iterations=8, hutchinson_samples=4,
                           top_k=1).run(ctx)

    assert result.checks == {}
    assert result.tags["exact_comparison"] == f"skipped: 2245 parameters > {EXACT_LIMIT}"
    assert "exact_trace" not in result.metrics
    assert math.isfinite(result.metrics["top_eigenvalue.0"])


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"hidden": [1], "top_k": 8}, "experiment.top_k"),  # 7 parameters
    ({"iterations": 5, "top_k": 6}, "experiment.top_k"),
    ({"top_k": 0}, "experiment.top_k"),
    ({"hidden": []}, "experiment.hidden"),
    ({"hidden": [16, 0]}, "experiment.hidden"),
    ({"batch_size": 0}, "experiment.batch_size"),
    ({"iterations": 0}, "experiment.iterations"),
    ({"hutchinson_samples": 1}, "experiment.hutchinson_samples"),
    ({"activation": "swish"}, "experiment.activation"),
], ids=lambda v: str(v) if isinstance(v, dict) else None)
def test_invalid_parameter_names_its_key(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as raised:
        LossCurvature(**kwargs)
    assert "\n" not in str(raised.value)


def job(num: int, hidden: str, parameters: float | None, top: float = 1.0) -> dict:
    done = parameters is not None
    return {"job": num, "experiment": "loss_curvature", "overrides": f"hidden={hidden}",
            "status": "COMPLETED" if done else "NOT_RUN", "outcome": "",
            "params": {"experiment.hidden": hidden} if done else {},
            "metrics": {"parameters": parameters, "top_eigenvalue.0": top,
                        "trace_estimate": 2 * top} if done else {}}


def test_sweep_figure_plots_sharpness_and_trace_against_size():
    jobs = [job(0, "[16, 16]", 369.0, 6.1), job(1, "[8]", 49.0, 3.8), job(2, "[64, 64]", None)]

    fig = LossCurvature.sweep_figure(jobs)

    assert isinstance(fig, Figure)
    left, right = fig.axes
    assert list(left.get_lines()[0].get_xdata()) == [49.0, 369.0]
    assert list(left.get_lines()[0].get_ydata()) == [3.8, 6.1]
    assert list(right.get_lines()[0].get_ydata()) == [7.6, 12.2]
    assert "1 jobs not completed" in fig.get_suptitle()


def test_sweep_figure_is_none_without_completed_jobs():
    assert LossCurvature.sweep_figure([job(0, "[8]", None)]) is None
