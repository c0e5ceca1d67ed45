"""Beyond the notebook: the curvature of a network's loss from Hessian-vector products alone.

Top and bottom eigenvalues by Lanczos (PyHessian uses power iteration), the trace by
Hutchinson's estimator and the spectral density by stochastic Lanczos quadrature (as
PyHessian does), never building the Hessian; checked against the full Hessian when it is
affordable. Any model, data and loss: the Hessian is that of the mean loss over the chosen
batches of the train split, with respect to all the model's parameters, the model in eval
mode (batch norm uses its running statistics, dropout is off).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import TensorDataset

from gradkit.core.experiment import Check, Experiment, Result, RunContext
from gradkit.core.validation import ConfigError, boolean, integer
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
from gradkit.lib.models import check_activation, check_widths, mlp, parameter_count
from gradkit.lib.progress import track
from gradkit.plotting import figure, lean_log_ticks

INPUT_DIM, OUTPUT_DIM = 4, 1
EXACT_LIMIT = 2000  # parameters up to which the full Hessian is built for the checks
EXACT_CHUNK = 64  # Hessian rows per vectorised call while building the full Hessian
EIGENVALUE_TOLERANCE = 1e-6  # relative (the bottom ones: to the largest |λ|)
TRACE_SIGMAS = 5.0  # the Hutchinson check allows this many standard deviations of its mean
PROBE_TOLERANCE = 1e-10  # relative: the same probes through the full Hessian
DENSITY_WIDTH = 0.01  # the density's Gaussians: this fraction of the nodes' spread
DENSITY_POINTS = 2000  # grid points, over the nodes' range widened by DENSITY_MARGIN widths
DENSITY_MARGIN = 8.0
DENSITY_TOLERANCE = 1e-4  # |∫ρ − 1|
Loss = Callable[[torch.Tensor], torch.Tensor]


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """All the model's parameters, detached, in one flat vector."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def flat_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None,
              loss_of: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
              = nn.functional.mse_loss) -> tuple[Loss, torch.Tensor]:
    """The loss of batch (x, y) as a function of all the model's parameters in one flat
    vector (its buffers kept as they are), and its current parameters as such a vector."""
    named = list(model.named_parameters())
    shapes = [p.shape for _, p in named]
    sizes = [p.numel() for _, p in named]

    def loss(theta: torch.Tensor) -> torch.Tensor:
        params = {name: chunk.view(shape) for (name, _), chunk, shape in
                  zip(named, theta.split(sizes), shapes, strict=True)}
        return loss_of(torch.func.functional_call(model, params, (x,)), y)

    return loss, flat_parameters(model)


def exact_hessian(losses: Sequence[tuple[Loss, int]], theta: torch.Tensor) -> torch.Tensor:
    """The full Hessian of the mean loss over batches, Σ_b (n_b / N) ∇²f_b, each built by
    torch.func forward over reverse (jvp of jacrev, as torch.func.hessian), EXACT_CHUNK rows
    at a time (the jvp of torch.func.grad fails on mse_loss)."""
    total = sum(size for _, size in losses)
    rows = torch.eye(len(theta), dtype=theta.dtype, device=theta.device).split(EXACT_CHUNK)

    def rows_of(f: Loss) -> Callable[[torch.Tensor], torch.Tensor]:
        return torch.func.vmap(lambda v: torch.func.jvp(torch.func.jacrev(f), (theta,), (v,))[1])

    return sum(size / total * torch.cat([rows_of(f)(chunk) for chunk in rows])
               for f, size in losses)


def batch_count(key: str, value: Any) -> int | None:
    """None for `all`, else `value` as a number of batches of at least 1."""
    if value == "all":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value!r} must be all or a number of batches >= 1")
    return value


class LossCurvature(Experiment):
    """Sharpness (top Hessian eigenvalues), the bottom eigenvalues, the trace and the spectral
    density of a network's loss (own: an MLP on a regression batch)."""

    headline = ("top_eigenvalue/0", "lambda_min")
    proves = ("Lanczos' top and bottom eigenvalues equal the full Hessian's, Hutchinson's trace "
              "is within its error of the exact trace, and the SLQ density integrates to 1 with "
              "the trace / n as its mean")

    def __init__(self, hidden: list[int] = (16, 16), activation: str = "tanh",
                 batch_size: int = 64, batches: int | str = 1, iterations: int = 40,
                 hutchinson_samples: int = 10000, top_k: int = 3, bottom_k: int = 3,
                 density: bool = False, density_probes: int = 10):
        self.hidden = check_widths("experiment.hidden", hidden)
        self.activation = check_activation("experiment.activation", activation)
        self.batch_size = integer("experiment.batch_size", batch_size, minimum=1)
        self.batches = batch_count("experiment.batches", batches)
        self.iterations = integer("experiment.iterations", iterations, minimum=1)
        self.hutchinson_samples = integer("experiment.hutchinson_samples", hutchinson_samples,
                                          minimum=2)
        self.top_k = integer("experiment.top_k", top_k, minimum=1)
        self.bottom_k = integer("experiment.bottom_k", bottom_k, minimum=1)
        self.density = boolean("experiment.density", density)
        self.density_probes = integer("experiment.density_probes", density_probes, minimum=1)
        for key, value in (("top_k", self.top_k), ("bottom_k", self.bottom_k)):
            if value > self.iterations:
                raise ConfigError(f"experiment.{key}={value} must be <= "
                                  f"experiment.iterations={iterations}")

    def own_model(self, input_shape: tuple[int, ...], outputs: int,
                  generator: torch.Generator) -> nn.Module:
        """The MLP inputs -> hidden -> outputs (inputs flattened), weights from `generator`."""
        body = mlp(math.prod(input_shape), self.hidden, outputs, activation=self.activation,
                   generator=generator)
        return nn.Sequential(nn.Flatten(), *body) if len(input_shape) > 1 else body

    def own_data(self, generator: torch.Generator) -> dict[str, TensorDataset]:
        """The seeded synthetic regression batch of `batch_size` items (the train split). It
        comes after the own model's weights in the seed's stream, as it always has, so a seed
        gives the same batch as before models and data could be chosen."""
        self.own_model((INPUT_DIM,), OUTPUT_DIM, generator)  # the weights' draws come first
        x, y = regression_batch(self.batch_size, INPUT_DIM, OUTPUT_DIM, generator,
                                dtype=torch.float64)
        return {"train": TensorDataset(x, y)}

    def prepare(self, ctx: RunContext) -> None:
        """The model, data and loss, in float64 (the exact comparison holds to 1e-6 only in
        double precision); the batches and eigenvalue counts checked against them."""
        seed = ctx.generator.initial_seed()
        self.workload = ctx.components.resolve(
            dataclasses.replace(ctx, dtype=torch.float64),
            lambda: self.own_data(ctx.generator),
            lambda shape, outputs: self.own_model(shape, outputs,
                                                  torch.Generator().manual_seed(seed)))
        self.parameters = parameter_count(self.workload.new_model())
        for key, value in (("top_k", self.top_k), ("bottom_k", self.bottom_k)):
            if value > self.parameters:
                raise ConfigError(f"experiment.{key}={value} must be <= the {self.parameters} "
                                  f"parameters of {self.model_name()}")
        items = self.workload.data.size("train")
        available = None if items is None else math.ceil(items / self.batch_size)
        if self.batches is not None and available is not None and self.batches > available:
            raise ConfigError(
                f"experiment.batches={self.batches}: data={self.workload.data.name} has "
                f"{available} train batches of experiment.batch_size={self.batch_size} "
                f"({items} items); choose all or at most {available}")

    def model_name(self) -> str:
        """`MLP 4→16→16→1 (tanh)` for the own model, else the chosen model's name."""
        choice = self.workload.components.model
        if choice.chosen:
            return f"model={choice.name}"
        widths = [math.prod(self.workload.input_shape), *self.hidden, self.workload.outputs]
        return f"MLP {'→'.join(map(str, widths))} ({self.activation})"

    def run(self, ctx: RunContext) -> Result:
        workload = self.workload
        model = workload.new_model().eval()  # batch norm by its running statistics
        batches = list(itertools.islice(workload.data.batches("train", self.batch_size),
                                        self.batches))
        losses = [(flat_loss(model, x, y, workload.loss_of)[0], len(x)) for x, y in batches]
        theta = flat_parameters(model)
        items = sum(size for _, size in losses)
        product = mean_operator([(hessian_operator(f, theta), size) for f, size in losses])
        dtype = theta.dtype
        start = torch.randn(self.parameters, generator=ctx.generator, dtype=dtype)
        history = lanczos(product, start.to(theta.device), self.iterations)
        top = history[-1].flip(0)[:self.top_k].tolist()
        bottom = history[-1][:self.bottom_k].tolist()
        probes = rademacher(self.hutchinson_samples, self.parameters, ctx.generator, theta)
        samples = hutchinson(product, probes)
        trace = samples.mean().item()
        metrics = {
            **{f"top_eigenvalue/{i}": v for i, v in enumerate(top)},
            **{f"bottom_eigenvalue/{i}": v for i, v in enumerate(bottom)},
            "lambda_min": bottom[0],
            "trace_estimate": trace,
            "trace_std_error": (samples.std() / math.sqrt(len(samples))).item(),
            "parameters": float(self.parameters),
            "items": float(items),
            "batches": float(len(losses)),
            "stability_limit": 2 / top[0] if top[0] > 0 else math.inf,
            "loss": sum(size / items * f(theta) for f, size in losses).item(),
            "lanczos_iterations": float(len(history)),
        }
        series = {f"ritz_value/{i}": [h.flip(0)[i].item() if len(h) > i else math.nan
                                      for h in history] for i in range(self.top_k)}
        series |= {f"bottom_ritz_value/{i}": [h[i].item() if len(h) > i else math.nan
                                              for h in history] for i in range(self.bottom_k)}
        series["trace_running_mean"] = (samples.cumsum(0) / torch.arange(
            1, len(samples) + 1, device=samples.device)).tolist()
        checks, spectrum, full = {}, None, None
        if self.parameters <= EXACT_LIMIT:
            full = exact_hessian(losses, theta)
            spectrum = torch.linalg.eigvalsh(full).cpu()
            exact_trace = torch.trace(full).item()
            checks = {
                "top_eigenvalues": self.eigenvalue_check(top, spectrum.flip(0)),
                "bottom_eigenvalues": self.eigenvalue_check(bottom, spectrum,
                                                            spectrum.abs().max().item()),
                "trace": Check(abs(trace - exact_trace),
                               TRACE_SIGMAS * hutchinson_std(full, len(samples))),
                "trace_probes": self.probe_check(trace, probes, full),
            }
            metrics |= {"exact_trace": exact_trace, "min_eigenvalue": spectrum[0].item()}
            exact = "done"
        else:
            exact = f"skipped: {self.parameters} parameters > {EXACT_LIMIT}"
        density = None
        if self.density:
            density = self.spectral_density(product, ctx.generator, theta)
            checks |= self.density_checks(density, samples, full)
            metrics |= {"density_mass": density["mass"], "density_mean": density["mean"]}
        return Result(
            metrics=metrics,
            series=series,
            checks=checks,
            figures={"loss_curvature": self.plot(series, top, bottom, spectrum, metrics,
                                                 checks.get("trace"), density)},
            summary={"model": self.model_name(), "hidden": list(self.hidden),
                     "top_eigenvalues": top, "bottom_eigenvalues": bottom,
                     "exact_spectrum": spectrum.tolist() if spectrum is not None else None},
            tags={"exact_comparison": exact},
            objective=top[0],
        )

    @staticmethod
    def eigenvalue_check(found: list[float], exact: torch.Tensor,
                         scale: float | None = None) -> Check:
        """The largest error of `found` against the first of `exact` (in the same order),
        relative to each exact eigenvalue, or to `scale` where one is given."""
        reference = exact[:len(found)]
        error = (torch.tensor(found, dtype=exact.dtype) - reference).abs()
        return Check((error / (reference.abs() if scale is None else scale)).max().item(),
                     EIGENVALUE_TOLERANCE)

    def spectral_density(self, product: Loss, generator: torch.Generator,
                         theta: torch.Tensor) -> dict[str, Any]:
        """Stochastic Lanczos quadrature: `density_probes` Rademacher starting vectors,
        `iterations` steps each; the Gaussian-broadened density on a grid over the nodes, its
        mass (∫ρ), its mean (∫λρ, an estimate of trace / n) and what that mean must be for
        these probes u (unit vectors): the mean of uᵀHu, one more product each."""
        probes = rademacher(self.density_probes, self.parameters, generator, theta)
        nodes, weights = zip(*(quadrature(product, v, self.iterations) for v in
                               track(probes, len(probes), "spectral density", "probes")),
                             strict=True)
        every = torch.cat(nodes)
        spread = (every.max() - every.min()).item() or max(every.abs().max().item(), 1.0)
        width = DENSITY_WIDTH * spread
        grid = torch.linspace(every.min().item() - DENSITY_MARGIN * width,
                              every.max().item() + DENSITY_MARGIN * width, DENSITY_POINTS,
                              dtype=theta.dtype, device=theta.device)
        rho = gaussian_density(nodes, weights, grid, width)
        units = probes / math.sqrt(self.parameters)
        forms = (units * product(units)).sum(-1)
        return {"grid": grid.cpu(), "density": rho.cpu(), "width": width,
                "mass": torch.trapezoid(rho, grid).item(),
                "mean": torch.trapezoid(grid * rho, grid).item(),
                "probe_mean": forms.mean().item(), "probe_scale": forms.abs().mean().item()}

    def density_checks(self, density: dict[str, Any], samples: torch.Tensor,
                       full: torch.Tensor | None) -> dict[str, Check]:
        """∫ρ = 1; ∫λρ = the mean of uᵀHu over the same probes (the quadrature is exact for
        degree 1: relative to the mean |uᵀHu|); and ∫λρ = trace / n within TRACE_SIGMAS
        standard errors of that mean: against the exact trace when there is one, else
        against Hutchinson's estimate, both errors counted."""
        n, probes = self.parameters, self.density_probes
        mass = Check(abs(density["mass"] - 1), DENSITY_TOLERANCE)
        same_probes = Check(abs(density["mean"] - density["probe_mean"])
                            / density["probe_scale"], PROBE_TOLERANCE)
        if full is not None:
            mean = Check(abs(density["mean"] - torch.trace(full).item() / n),
                         TRACE_SIGMAS * hutchinson_std(full, probes) / n)
        else:
            spread = samples.std().item()
            mean = Check(abs(density["mean"] - samples.mean().item() / n),
                         TRACE_SIGMAS * spread * math.sqrt(1 / probes + 1 / len(samples)) / n)
        return {"density_mass": mass, "density_probes": same_probes, "density_mean": mean}

    @staticmethod
    def probe_check(trace: float, probes: torch.Tensor, full: torch.Tensor) -> Check:
        """The estimate against the mean of vᵀHv for the same probes and the full Hessian,
        relative to that mean's scale (the mean of |vᵀHv|)."""
        forms = ((probes @ full) * probes).sum(-1)
        return Check(abs(trace - forms.mean().item()) / forms.abs().mean().item(),
                     PROBE_TOLERANCE)

    def plot(self, series: dict[str, list[float]], top: list[float], bottom: list[float],
             spectrum: torch.Tensor | None, metrics: dict[str, float],
             trace_check: Check | None, density: dict[str, Any] | None) -> Figure:
        """Lanczos convergence, its error, the spectrum (exact, SLQ density) and Hutchinson's
        running mean."""
        title = (f"Loss curvature of {self.model_name()}, {self.parameters} parameters, "
                 f"{int(metrics['items'])} items: λmax = {top[0]:.4g}, λmin = "
                 f"{bottom[0]:.4g}, 2/λmax = {metrics['stability_limit']:.3g}")
        fig, axes = figure(title, 2, 2, size=(14, 10), layout=None)
        fig.subplots_adjust(left=0.07, right=0.97, bottom=0.07, top=0.9, wspace=0.25,
                            hspace=0.3)
        steps = np.arange(1, len(series["ritz_value/0"]) + 1)
        scale = spectrum.abs().max().item() if spectrum is not None else None
        ends = [(f"ritz_value/{i}", f"top {i}", "-", spectrum.flip(0)[i].item()
                 if spectrum is not None else None) for i in range(self.top_k)]
        ends += [(f"bottom_ritz_value/{i}", f"bottom {i}", ":", spectrum[i].item()
                  if spectrum is not None else None) for i in range(self.bottom_k)]
        colours = itertools.cycle(["tab:blue", "tab:orange", "tab:green", "tab:red",
                                   "tab:purple", "tab:brown"])
        for (key, label, style, exact), colour in zip(ends, colours, strict=False):
            ritz = np.array(series[key])
            axes[0, 0].plot(steps, ritz, color=colour, linestyle=style, label=label)
            if exact is not None:
                axes[0, 0].axhline(exact, color=colour, linestyle="--", linewidth=0.8)
                relative_to = abs(exact) if style == "-" else scale
                error = np.abs(ritz - exact) / relative_to
                axes[0, 1].semilogy(steps, np.maximum(error, 1e-17), color=colour,
                                    linestyle=style, label=label)
        axes[0, 0].set(title="Top (solid) and bottom (dotted) Ritz values by Lanczos"
                       + (" (dashed: exact)" if spectrum is not None else ""),
                       xlabel="Lanczos iteration (Hessian-vector products)",
                       ylabel="Ritz value")
        axes[0, 0].legend(fontsize=8, ncol=2)
        if spectrum is not None:
            axes[0, 1].axhline(EIGENVALUE_TOLERANCE, color="gray", linestyle=":",
                               label="check tolerance")
            axes[0, 1].set(title="Error against the exact eigenvalues (bottom: relative to "
                                 "max |λ|)",
                           xlabel="Lanczos iteration", ylabel="relative error (log scale)")
            axes[0, 1].legend(fontsize=8, ncol=2)
            lean_log_ticks(axes[0, 1].yaxis)
        else:
            self.no_exact(axes[0, 1])
        if density is not None:
            self.plot_density(axes[1, 0], density, spectrum, metrics)
        elif spectrum is not None:
            axes[1, 0].hist(spectrum.numpy(), bins=80, color="tab:blue")
            axes[1, 0].set_yscale("log")
            lean_log_ticks(axes[1, 0].yaxis)
            for value in (*spectrum.flip(0)[:self.top_k].tolist(),
                          *spectrum[:self.bottom_k].tolist()):
                axes[1, 0].axvline(value, color="tab:red", linestyle="--", linewidth=1)
            axes[1, 0].plot([], [], color="tab:red", linestyle="--",
                            label="top and bottom eigenvalues")
            axes[1, 0].legend(fontsize=8)
            axes[1, 0].set(title="Exact spectrum of the full Hessian",
                           xlabel="eigenvalue λ", ylabel="count (log scale)")
        else:
            self.no_exact(axes[1, 0])
        running = series["trace_running_mean"]
        samples = np.arange(1, len(running) + 1)
        axes[1, 1].plot(samples, running, color="tab:green", label="running mean of vᵀHv")
        axes[1, 1].set_xscale("log")
        if trace_check is not None:
            exact, tolerance = metrics["exact_trace"], trace_check.tolerance
            axes[1, 1].axhline(exact, color="black", linestyle="--",
                               label=f"exact trace {exact:.4g}")
            axes[1, 1].axhspan(exact - tolerance, exact + tolerance, color="gray", alpha=0.15,
                               label=f"check: within {tolerance:.3g} ({TRACE_SIGMAS:g} σ of "
                                     "the mean)")
            half = max(4 * tolerance, 1.5 * abs(metrics["trace_estimate"] - exact))
            axes[1, 1].set_ylim(exact - half, exact + half)
        axes[1, 1].set(title=f"Hutchinson trace estimate: {metrics['trace_estimate']:.4g} ± "
                             f"{metrics['trace_std_error']:.2g}",
                       xlabel="samples (Rademacher vectors, log scale)", ylabel="tr H estimate")
        axes[1, 1].legend(fontsize=8)
        return fig

    def no_exact(self, ax: Any) -> None:
        """An empty panel saying why the exact comparison is missing."""
        ax.text(0.5, 0.5, f"no exact Hessian:\n{self.parameters} parameters > {EXACT_LIMIT}",
                ha="center", va="center", transform=ax.transAxes, fontsize=12)
        ax.set(title="Exact comparison skipped", xticks=[], yticks=[])

    def plot_density(self, ax: Any, density: dict[str, Any], spectrum: torch.Tensor | None,
                     metrics: dict[str, float]) -> None:
        """The SLQ density (log scale), over the exact spectrum's histogram when there is one."""
        grid, rho = density["grid"].numpy(), density["density"].numpy()
        if spectrum is not None:
            ax.hist(spectrum.numpy(), bins=80, density=True, color="tab:blue", alpha=0.35,
                    label=f"exact eigenvalues (histogram, {len(spectrum)})")
        ax.semilogy(grid, np.maximum(rho, 1e-12), color="black",
                    label=f"SLQ density ({self.density_probes} probes x {self.iterations} "
                          f"steps, width {density['width']:.2g})")
        ax.set_ylim(max(rho.max() * 1e-6, 1e-12), rho.max() * 3)
        lean_log_ticks(ax.yaxis)
        ax.set(title=f"Spectral density: ∫ρ = {metrics['density_mass']:.6f}, mean "
                     f"{metrics['density_mean']:.4g} (trace / n)",
               xlabel="eigenvalue λ", ylabel="density (log scale)")
        ax.legend(fontsize=8)

    @classmethod
    def sweep_figure(cls, jobs: list[dict[str, Any]]) -> Figure | None:
        """Top eigenvalue and trace against the parameter count, one point per width."""
        done = [j for j in jobs if {"parameters", "top_eigenvalue/0", "trace_estimate"}
                <= set(j["metrics"])]
        if not done:
            return None
        done.sort(key=lambda j: j["metrics"]["parameters"])
        fig, axes = figure("Loss curvature sweep: sharpness and trace against model size", 1, 2,
                           size=(13, 5.5))
        sizes = [j["metrics"]["parameters"] for j in done]
        for ax, key, label in ((axes[0], "top_eigenvalue/0", "top eigenvalue λmax"),
                               (axes[1], "trace_estimate", "Hutchinson trace estimate")):
            values = [j["metrics"][key] for j in done]
            errors = [j["metrics"].get("trace_std_error", 0.0) if key == "trace_estimate"
                      else 0.0 for j in done]
            ax.errorbar(sizes, values, yerr=errors, marker="o", capsize=4, label=label)
            for size, value, job in zip(sizes, values, done, strict=True):
                ax.annotate(job["params"].get("experiment.hidden", job["overrides"]),
                            (size, value), textcoords="offset points", xytext=(5, 5),
                            fontsize=8)
            ax.set_xscale("log")
            ax.set(xlabel="parameters (log scale)", ylabel=label, title=label)
        exact = [(j["metrics"]["parameters"], j["metrics"]["exact_trace"]) for j in done
                 if "exact_trace" in j["metrics"]]
        if exact:
            axes[1].scatter(*zip(*exact, strict=True), marker="x", s=80, color="black",
                            zorder=3, label="exact trace")
        axes[1].legend(fontsize=8)
        axes[1].set_title("Hutchinson trace estimate ± its standard error")
        not_done = len(jobs) - len(done)
        if not_done:
            fig.suptitle(f"{fig.get_suptitle()} ({not_done} jobs not completed)")
        return fig
