"""Loss curvature: Lanczos and Hutchinson against exact answers."""

from __future__ import annotations

import dataclasses
import math
import re
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
)
from gradkit.lib.curvature import (
    gaussian_density,
    hutchinson,
    hutchinson_std,
    lanczos,
    mean_operator,
    quadrature,
    rademacher,
)
from gradkit.lib.data import regression_batch
from gradkit.lib.derivatives import hessian_operator
from gradkit.lib.models import mlp, parameter_count


def curvature(ctx, **kwargs):
    """The experiment's result on its own model and data, prepared as the job does."""
    experiment = LossCurvature(**kwargs)
    experiment.prepare(ctx)
    return experiment.run(ctx)


def own_loss(hidden: list[int], batch_size: int, seed: int = 0):
    """The own model's loss and parameters rebuilt from the seed: weights first, then the
    batch, from one stream."""
    generator = torch.Generator().manual_seed(seed)
    model = mlp(INPUT_DIM, hidden, 1, activation="tanh", generator=generator).double()
    x, y = regression_batch(batch_size, INPUT_DIM, 1, generator, dtype=torch.float64)
    return flat_loss(model, x, y)


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


def test_lanczos_bottom_ritz_values_find_the_smallest_eigenvalues():
    eigenvalues = [10.0, 7.0, 5.0, -9.0, -6.0, -4.0, *torch.linspace(-2, 2, 94).tolist()]
    matrix = symmetric(eigenvalues, seed=4)
    start = torch.randn(100, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    ritz = lanczos(lambda v: matrix @ v, start, 40)[-1]

    assert ritz[:3].tolist() == pytest.approx([-9.0, -6.0, -4.0], rel=1e-10)
    assert ritz.flip(0)[:3].tolist() == pytest.approx([10.0, 7.0, 5.0], rel=1e-10)


def test_quadrature_of_a_diagonal_operator_has_the_trace_over_n_as_its_mean():
    diagonal = torch.tensor([3.0, -1.0, 0.5, 2.0, -2.5, 4.0, 1.0, 0.0], dtype=torch.float64)
    probe = rademacher(1, 8, torch.Generator().manual_seed(3), diagonal)[0]

    for steps in (1, 3, 8):
        nodes, weights = quadrature(lambda v: diagonal * v, probe, steps)
        assert weights.sum().item() == pytest.approx(1.0, abs=1e-14)
        # Rademacher: uᵢ² = 1/n, so the measure's moments are those of the spectrum
        assert (weights * nodes).sum().item() == pytest.approx(diagonal.mean().item(),
                                                               abs=1e-14)
        if steps > 1:  # exact up to degree 2 x steps - 1
            assert (weights * nodes**2).sum().item() == pytest.approx(
                (diagonal**2).mean().item(), abs=1e-13)
    # with as many steps as dimensions, the nodes are the eigenvalues, each of weight 1/n
    assert nodes.tolist() == pytest.approx(sorted(diagonal.tolist()), abs=1e-12)
    assert weights.tolist() == pytest.approx([1 / 8] * 8, abs=1e-12)


def test_gaussian_density_integrates_to_one_with_the_nodes_mean():
    nodes = [torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64),
             torch.tensor([0.0, 3.0], dtype=torch.float64)]
    weights = [torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64),
               torch.tensor([0.6, 0.4], dtype=torch.float64)]
    grid = torch.linspace(-3, 5, 4001, dtype=torch.float64)

    rho = gaussian_density(nodes, weights, grid, 0.1)

    assert torch.trapezoid(rho, grid).item() == pytest.approx(1.0, abs=1e-12)
    mean = (0.5 * (-0.2 + 0.25 + 0.6) + 0.5 * (0.0 + 1.2))
    assert torch.trapezoid(grid * rho, grid).item() == pytest.approx(mean, abs=1e-12)
    # a peak of height w / (width √(2π)) at a lone node (the other Gaussians are far)
    assert rho[torch.argmin((grid + 1).abs())].item() == pytest.approx(
        0.5 * 0.2 / (0.1 * math.sqrt(2 * math.pi)), rel=1e-9)


def test_hessian_vector_product_over_batches_is_that_of_the_concatenated_batch():
    generator = torch.Generator().manual_seed(5)
    model = mlp(INPUT_DIM, [5], 1, activation="tanh", generator=generator).double()
    x, y = regression_batch(17, INPUT_DIM, 1, generator, dtype=torch.float64)
    pieces = [(x[:6], y[:6]), (x[6:13], y[6:13]), (x[13:], y[13:])]  # 6, 7 and 4 items
    losses = [(flat_loss(model, bx, by)[0], len(bx)) for bx, by in pieces]
    whole, theta = flat_loss(model, x, y)
    v = torch.randn(len(theta), generator=generator, dtype=torch.float64)

    product = mean_operator([(hessian_operator(f, theta), n) for f, n in losses])

    # the oracle: the Hessian of the one concatenated batch's mean loss, built whole
    oracle = torch.autograd.functional.hessian(whole, theta) @ v
    torch.testing.assert_close(product(v), oracle, rtol=1e-12, atol=1e-14)
    unweighted = sum(hessian_operator(f, theta)(v) for f, _ in losses) / 3
    assert not torch.allclose(unweighted, oracle, rtol=1e-6)  # the weights matter here


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

    assert parameter_count(model) == sum((i + 1) * o for i, o in pairwise([INPUT_DIM, *hidden, 1]))
    assert len(theta) == parameter_count(model)
    expected = torch.nn.functional.mse_loss(model(x), y)
    assert loss(theta).item() == pytest.approx(expected.item(), rel=1e-14)
    grads = torch.autograd.grad(expected, list(model.parameters()))
    torch.testing.assert_close(torch.func.grad(loss)(theta),
                               torch.cat([g.reshape(-1) for g in grads]), rtol=1e-12,
                               atol=1e-14)


def test_flat_loss_of_a_batch_norm_model_in_eval_mode_keeps_its_buffers():
    generator = torch.Generator().manual_seed(6)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4),
                                torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    model[1].running_mean.fill_(0.3)
    model[1].running_var.fill_(2.0)
    model.eval()
    x = torch.randn(9, 3, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 2, (9,), generator=generator)

    loss, theta = flat_loss(model, x, y, torch.nn.functional.cross_entropy)
    product = hessian_operator(loss, theta)
    product(torch.ones_like(theta))

    assert len(theta) == 16 + 8 + 10  # the batch norm's weight and bias are parameters
    expected = torch.nn.functional.cross_entropy(model(x), y)  # by the running statistics
    assert loss(theta).item() == pytest.approx(expected.item(), rel=1e-14)
    assert model[1].running_mean.tolist() == [0.3] * 4
    assert model[1].running_var.tolist() == [2.0] * 4
    full = torch.autograd.functional.hessian(loss, theta)
    v = torch.randn(len(theta), generator=generator, dtype=torch.float64)
    torch.testing.assert_close(product(v), full @ v, rtol=1e-12, atol=1e-14)


def test_top_and_bottom_eigenvalues_and_trace_against_the_full_hessian(ctx):
    result = curvature(ctx, hidden=[6], batch_size=16, iterations=30, hutchinson_samples=50,
                       top_k=2, bottom_k=3)

    # rebuild the same model and batch from the same seed; the oracle is an independent
    # full Hessian (torch.autograd.functional, double backward row by row)
    loss, theta = own_loss([6], 16)
    full = torch.autograd.functional.hessian(loss, theta)
    exact = torch.linalg.eigvalsh(full)

    m = result.metrics
    assert m["parameters"] == 6 * (INPUT_DIM + 1) + 7 == len(theta)
    assert [m["top_eigenvalue/0"], m["top_eigenvalue/1"]] == pytest.approx(
        exact.flip(0)[:2].tolist(), rel=1e-10)
    assert [m[f"bottom_eigenvalue/{i}"] for i in range(3)] == pytest.approx(
        exact[:3].tolist(), rel=1e-9)
    assert exact[0] < 0 and m["lambda_min"] == m["bottom_eigenvalue/0"]
    assert result.checks["top_eigenvalues"].error < 1e-10
    assert result.checks["bottom_eigenvalues"].error < 1e-10
    assert m["stability_limit"] == 2 / m["top_eigenvalue/0"]
    assert m["exact_trace"] == pytest.approx(torch.trace(full).item(), rel=1e-12)
    assert m["min_eigenvalue"] == pytest.approx(exact[0].item(), rel=1e-9, abs=1e-12)
    assert abs(m["trace_estimate"] - m["exact_trace"]) <= 5 * hutchinson_std(full, 50)
    assert m["loss"] == pytest.approx(loss(theta).item(), rel=1e-14)
    assert m["items"] == 16 and m["batches"] == 1
    assert set(result.checks) == {"top_eigenvalues", "bottom_eigenvalues", "trace",
                                  "trace_probes"}
    assert result.failed_checks == []
    assert result.tags == {"exact_comparison": "done"}
    assert len(result.series["ritz_value/0"]) == m["lanczos_iterations"] == 30
    assert len(result.series["bottom_ritz_value/2"]) == 30
    assert result.series["trace_running_mean"][-1] == pytest.approx(m["trace_estimate"])
    assert result.summary["model"] == "MLP 4→6→1 (tanh)"


def test_the_spectral_density_integrates_to_one_with_the_trace_over_n_as_its_mean(ctx):
    result = curvature(ctx, hidden=[6], batch_size=16, iterations=30, hutchinson_samples=50,
                       density=True, density_probes=20)

    loss, theta = own_loss([6], 16)
    full = torch.autograd.functional.hessian(loss, theta)
    m, n = result.metrics, len(theta)
    assert m["density_mass"] == pytest.approx(1.0, abs=1e-6)
    assert abs(m["density_mean"] - torch.trace(full).item() / n) <= (
        5 * hutchinson_std(full, 20) / n)
    assert {"density_mass", "density_probes", "density_mean"} <= set(result.checks)
    assert result.checks["density_probes"].error < 1e-12
    assert result.failed_checks == []


def test_quadrature_weights_of_the_wrong_eigenvector_entries_fail_the_probe_check(
        ctx, monkeypatch):
    def last_entries(matvec, start, iterations):  # rows of an orthogonal matrix: still sum 1
        nodes, weights = quadrature(matvec, start, iterations)
        return nodes, weights.flip(0)

    monkeypatch.setattr(loss_curvature, "quadrature", last_entries)

    result = curvature(ctx, hidden=[6], batch_size=16, iterations=30, hutchinson_samples=50,
                       density=True, density_probes=20)

    assert result.failed_checks == ["density_probes"]  # too small for the statistical check


def test_too_few_iterations_fail_the_bottom_eigenvalue_check(ctx):
    result = curvature(ctx, hidden=[16, 16], iterations=12, hutchinson_samples=10, top_k=1,
                       bottom_k=3)

    assert "bottom_eigenvalues" in result.failed_checks


def test_at_the_defaults_the_trace_tolerance_is_well_inside_the_trace(ctx):
    result = curvature(ctx)
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

    result = curvature(ctx, hidden=[8], hutchinson_samples=500)

    assert result.failed_checks == ["trace_probes"]


def test_too_few_iterations_fail_the_eigenvalue_check(ctx):
    result = curvature(ctx, hidden=[8], iterations=4, hutchinson_samples=10, bottom_k=1)

    assert "top_eigenvalues" in result.failed_checks


def test_a_model_too_large_for_the_full_hessian_still_reports_lambda_min_and_density(ctx):
    hidden = [44, 44]
    assert parameter_count(mlp(INPUT_DIM, hidden, 1)) > EXACT_LIMIT
    result = curvature(ctx, hidden=hidden, iterations=8, hutchinson_samples=20, top_k=1,
                       bottom_k=1, density=True, density_probes=2)

    assert set(result.checks) == {"density_mass", "density_probes", "density_mean"}
    assert result.failed_checks == []
    assert result.tags["exact_comparison"] == f"skipped: 2245 parameters > {EXACT_LIMIT}"
    assert "exact_trace" not in result.metrics
    assert math.isfinite(result.metrics["top_eigenvalue/0"])
    assert result.metrics["lambda_min"] < 0


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"iterations": 5, "top_k": 6}, "experiment.top_k"),
    ({"iterations": 5, "bottom_k": 6}, "experiment.bottom_k"),
    ({"bottom_k": 0}, "experiment.bottom_k"),
    ({"batches": -1}, "experiment.batches"),
    ({"batches": 0}, "experiment.batches"),
    ({"batches": "abc"}, "experiment.batches"),
    ({"batches": True}, "experiment.batches"),
    ({"density": "yes"}, "experiment.density"),
    ({"density_probes": 0}, "experiment.density_probes"),
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


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"hidden": [1], "top_k": 8}, "experiment.top_k=8 must be <= the 7 parameters of MLP "
                                  "4→1→1 (tanh)"),
    ({"hidden": [1], "bottom_k": 8}, "experiment.bottom_k=8 must be <= the 7 parameters"),
    ({"batches": 2}, "experiment.batches=2: data=own has 1 train batches of "
                     "experiment.batch_size=64 (64 items); choose all or at most 1"),
], ids=["top_k", "bottom_k", "batches"])
def test_what_the_data_and_model_cannot_give_is_refused_in_prepare(ctx, kwargs, message):
    experiment = LossCurvature(**kwargs)
    with pytest.raises(ConfigError, match=re.escape(message)) as raised:
        experiment.prepare(ctx)
    assert "\n" not in str(raised.value)


def test_batches_all_and_one_give_the_same_own_batch_as_before(ctx):
    loss, theta = own_loss([16, 16], 64)  # weights, then the batch, from the seed's stream

    for batches in ("all", 1):
        fresh = dataclasses.replace(ctx, generator=torch.Generator().manual_seed(0))
        result = curvature(fresh, batches=batches, iterations=20, hutchinson_samples=10)
        assert result.metrics["loss"] == pytest.approx(loss(theta).item(), rel=1e-14)
        assert result.metrics["items"] == 64


def job(num: int, hidden: str, parameters: float | None, top: float = 1.0) -> dict:
    done = parameters is not None
    return {"job": num, "experiment": "loss_curvature", "overrides": f"hidden={hidden}",
            "status": "COMPLETED" if done else "NOT_RUN", "outcome": "",
            "params": {"experiment.hidden": hidden} if done else {},
            "metrics": {"parameters": parameters, "top_eigenvalue/0": top,
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
