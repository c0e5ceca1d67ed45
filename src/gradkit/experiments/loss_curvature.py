"""Beyond the notebook: the curvature of a network's loss from Hessian-vector products alone.

Top eigenvalues by Lanczos (PyHessian uses power iteration) and the trace by Hutchinson's
estimator (as PyHessian does), never building the Hessian; checked against the full Hessian
when it is affordable.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from gradkit.core.experiment import Check, Experiment, Result, RunContext
from gradkit.core.validation import ConfigError, integer
from gradkit.lib.curvature import hutchinson, hutchinson_std, lanczos, rademacher
from gradkit.lib.data import regression_batch
from gradkit.lib.derivatives import hessian_operator
from gradkit.lib.models import check_activation, check_widths, mlp
from gradkit.plotting import figure, lean_log_ticks

INPUT_DIM, OUTPUT_DIM = 4, 1
EXACT_LIMIT = 2000  # parameters up to which the full Hessian is built for the checks
EIGENVALUE_TOLERANCE = 1e-6  # relative
TRACE_SIGMAS = 5.0  # the Hutchinson check allows this many standard deviations of its mean
PROBE_TOLERANCE = 1e-10  # relative: the same probes through the full Hessian


def parameter_count(hidden: Sequence[int]) -> int:
    """Weights and biases of the MLP INPUT_DIM -> hidden -> OUTPUT_DIM."""
    return sum((fan_in + 1) * fan_out
               for fan_in, fan_out in pairwise([INPUT_DIM, *hidden, OUTPUT_DIM]))


def flat_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """The mean squared error as a function of all parameters in one flat vector, and the
    model's current parameters as such a vector."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]

    def loss(theta: torch.Tensor) -> torch.Tensor:
        params = {name: chunk.view(shape) for name, chunk, shape in
                  zip(names, theta.split(sizes), shapes, strict=True)}
        return ((torch.func.functional_call(model, params, (x,)) - y) ** 2).mean()

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return loss, theta


class LossCurvature(Experiment):
    """Sharpness (top Hessian eigenvalues) and Hessian trace of an MLP's regression loss."""

    proves = ("Lanczos' top eigenvalues equal the full Hessian's and Hutchinson's trace is "
              "within its error of the exact trace")

    def __init__(self, hidden: list[int] = (16, 16), activation: str = "tanh",
                 batch_size: int = 64, iterations: int = 40, hutchinson_samples: int = 10000,
                 top_k: int = 3):
        self.hidden = check_widths("experiment.hidden", hidden)
        self.activation = check_activation("experiment.activation", activation)
        self.batch_size = integer("experiment.batch_size", batch_size, minimum=1)
        self.iterations = integer("experiment.iterations", iterations, minimum=1)
        self.hutchinson_samples = integer("experiment.hutchinson_samples", hutchinson_samples,
                                          minimum=2)
        self.top_k = integer("experiment.top_k", top_k, minimum=1)
        self.parameters = parameter_count(self.hidden)
        if self.top_k > min(self.parameters, self.iterations):
            raise ConfigError(
                f"experiment.top_k={top_k} must be <= the model's {self.parameters} parameters "
                f"(hidden={list(self.hidden)}) and <= experiment.iterations={iterations}")

    def run(self, ctx: RunContext) -> Result:
        dtype = torch.float64  # the exact comparison holds to 1e-6 only in double precision
        model = mlp(INPUT_DIM, self.hidden, OUTPUT_DIM, activation=self.activation,
                    generator=ctx.generator).to(device=ctx.device, dtype=dtype)
        x, y = regression_batch(self.batch_size, INPUT_DIM, OUTPUT_DIM, ctx.generator,
                                dtype=dtype)
        loss, theta = flat_loss(model, x.to(ctx.device), y.to(ctx.device))
        start = torch.randn(self.parameters, generator=ctx.generator, dtype=dtype)
        product = hessian_operator(loss, theta)
        history = lanczos(product, start.to(ctx.device), self.iterations)
        top = history[-1].flip(0)[:self.top_k].tolist()
        probes = rademacher(self.hutchinson_samples, self.parameters, ctx.generator, theta)
        samples = hutchinson(product, probes)
        trace = samples.mean().item()
        metrics = {
            **{f"top_eigenvalue.{i}": v for i, v in enumerate(top)},
            "trace_estimate": trace,
            "trace_std_error": (samples.std() / math.sqrt(len(samples))).item(),
            "parameters": float(self.parameters),
            "stability_limit": 2 / top[0] if top[0] > 0 else math.inf,
            "loss": loss(theta).item(),
            "lanczos_iterations": float(len(history)),
        }
        series = {f"ritz_value.{i}": [h.flip(0)[i].item() if len(h) > i else math.nan
                                      for h in history] for i in range(self.top_k)}
        series["trace_running_mean"] = (samples.cumsum(0) / torch.arange(
            1, len(samples) + 1, device=samples.device)).tolist()
        checks, spectrum = {}, None
        if self.parameters <= EXACT_LIMIT:
            full = torch.func.hessian(loss)(theta)
            spectrum = torch.linalg.eigvalsh(full).cpu()
            exact_top = spectrum.flip(0)[:self.top_k]
            relative = (torch.tensor(top, dtype=dtype) - exact_top).abs() / exact_top.abs()
            exact_trace = torch.trace(full).item()
            checks = {
                "top_eigenvalues": Check(relative.max().item(), EIGENVALUE_TOLERANCE),
                "trace": Check(abs(trace - exact_trace),
                               TRACE_SIGMAS * hutchinson_std(full, len(samples))),
                "trace_probes": self.probe_check(trace, probes, full),
            }
            metrics |= {"exact_trace": exact_trace, "min_eigenvalue": spectrum[0].item()}
            exact = "done"
        else:
            exact = f"skipped: {self.parameters} parameters > {EXACT_LIMIT}"
        return Result(
            metrics=metrics,
            series=series,
            checks=checks,
            figures={"loss_curvature": self.plot(series, top, spectrum, metrics,
                                                 checks.get("trace"))},
            summary={"hidden": list(self.hidden), "top_eigenvalues": top,
                     "exact_spectrum": spectrum.tolist() if spectrum is not None else None},
            tags={"exact_comparison": exact},
            objective=top[0],
        )

    @staticmethod
    def probe_check(trace: float, probes: torch.Tensor, full: torch.Tensor) -> Check:
        """The estimate against the mean of vᵀHv for the same probes and the full Hessian,
        relative to that mean's scale (the mean of |vᵀHv|)."""
        forms = ((probes @ full) * probes).sum(-1)
        return Check(abs(trace - forms.mean().item()) / forms.abs().mean().item(),
                     PROBE_TOLERANCE)

    def plot(self, series: dict[str, list[float]], top: list[float],
             spectrum: torch.Tensor | None, metrics: dict[str, float],
             trace_check: Check | None) -> Figure:
        """Lanczos convergence, its error, the exact spectrum and Hutchinson's running mean."""
        title = (f"Loss curvature of an MLP {INPUT_DIM}→{'→'.join(map(str, self.hidden))}→"
                 f"{OUTPUT_DIM} ({self.parameters} parameters, {self.activation}, batch "
                 f"{self.batch_size}): λmax = {top[0]:.4g}, 2/λmax = "
                 f"{metrics['stability_limit']:.3g}")
        fig, axes = figure(title, 2, 2, size=(14, 10), layout=None)
        fig.subplots_adjust(left=0.07, right=0.97, bottom=0.07, top=0.9, wspace=0.25,
                            hspace=0.3)
        steps = np.arange(1, len(series["ritz_value.0"]) + 1)
        colours = itertools.cycle(["tab:blue", "tab:orange", "tab:green", "tab:red",
                                   "tab:purple", "tab:brown"])
        shown = zip(range(self.top_k), colours, strict=False)  # the colours cycle
        exact_top = spectrum.flip(0)[:self.top_k].tolist() if spectrum is not None else None
        for i, colour in shown:
            ritz = np.array(series[f"ritz_value.{i}"])
            axes[0, 0].plot(steps, ritz, color=colour, label=f"Ritz value {i}")
            if exact_top is not None:
                axes[0, 0].axhline(exact_top[i], color=colour, linestyle="--", linewidth=0.8)
                error = np.abs(ritz - exact_top[i]) / abs(exact_top[i])
                axes[0, 1].semilogy(steps, np.maximum(error, 1e-17), color=colour,
                                    label=f"eigenvalue {i}")
        axes[0, 0].set(title="Top eigenvalues by Lanczos"
                       + (" (dashed: exact)" if exact_top is not None else ""),
                       xlabel="Lanczos iteration (Hessian-vector products)",
                       ylabel="Ritz value")
        axes[0, 0].legend(fontsize=8)
        if exact_top is not None:
            axes[0, 1].axhline(EIGENVALUE_TOLERANCE, color="gray", linestyle=":",
                               label="check tolerance")
            axes[0, 1].set(title="Relative error against the exact eigenvalues",
                           xlabel="Lanczos iteration", ylabel="|Ritz − λ| / |λ| (log scale)")
            axes[0, 1].legend(fontsize=8)
            lean_log_ticks(axes[0, 1].yaxis)
            axes[1, 0].hist(spectrum.numpy(), bins=80, color="tab:blue")
            axes[1, 0].set_yscale("log")
            lean_log_ticks(axes[1, 0].yaxis)
            for value in exact_top:
                axes[1, 0].axvline(value, color="tab:red", linestyle="--", linewidth=1)
            axes[1, 0].plot([], [], color="tab:red", linestyle="--", label="top eigenvalues")
            axes[1, 0].legend(fontsize=8)
            axes[1, 0].set(title="Exact spectrum of the full Hessian",
                           xlabel="eigenvalue λ", ylabel="count (log scale)")
        else:
            for ax in (axes[0, 1], axes[1, 0]):
                ax.text(0.5, 0.5, f"no exact Hessian:\n{self.parameters} parameters > "
                        f"{EXACT_LIMIT}", ha="center", va="center", transform=ax.transAxes,
                        fontsize=12)
                ax.set(title="Exact comparison skipped", xticks=[], yticks=[])
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

    @classmethod
    def sweep_figure(cls, jobs: list[dict[str, Any]]) -> Figure | None:
        """Top eigenvalue and trace against the parameter count, one point per width."""
        done = [j for j in jobs if {"parameters", "top_eigenvalue.0", "trace_estimate"}
                <= set(j["metrics"])]
        if not done:
            return None
        done.sort(key=lambda j: j["metrics"]["parameters"])
        fig, axes = figure("Loss curvature sweep: sharpness and trace against model size", 1, 2,
                           size=(13, 5.5))
        sizes = [j["metrics"]["parameters"] for j in done]
        for ax, key, label in ((axes[0], "top_eigenvalue.0", "top eigenvalue λmax"),
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
