"""Section 6.1: gradient accumulation over micro-batches against training on the full batch.

Both ways train under Adam (the notebook's optimizer) and under plain SGD. The checks compare
the first accumulated gradients, the first step's losses and the SGD-trained parameters: Adam's
update barely depends on the gradient's scale (a 4x gradient moves its parameters by 1e-4
relative), and it divides by the root of the gradient's running square, which blows rounding in
near-zero gradients up by as much as 1 / eps (1.6e-4 relative after 50 correct steps), so its
parameter gap is reported, not checked.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import TensorDataset

from gradkit.core.components import OWN, Workload
from gradkit.core.experiment import DTYPE_TOLERANCE, Check, Experiment, Result, RunContext
from gradkit.core.validation import ConfigError, boolean, integer, number
from gradkit.lib.data import regression_batch
from gradkit.lib.memory import SavedTensorMeter, cuda_peak
from gradkit.lib.models import check_widths, mlp, parameter_count
from gradkit.lib.timing import now
from gradkit.plotting import figure, lean_log_ticks


class SharedDropout(nn.Module):
    """Dropout whose mask (already scaled by 1 / (1 - p)) is set from outside, so that both
    ways of training drop the same units of the same samples. `shape` is one sample's shape,
    seen on its last forward pass."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.shape: tuple[int, ...] | None = None
        self.mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shape = tuple(x.shape[1:])
        return x * self.mask if self.training else x


def with_shared_dropout(model: nn.Module, sample: torch.Tensor) -> list[SharedDropout]:
    """Replace every nn.Dropout of the model, at any depth, by a SharedDropout on its parent
    module, learn their sample shapes from one eval-mode forward pass on `sample`, and return
    them in the order of `model.modules()`."""
    shared = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Dropout):
            parent, _, child = name.rpartition(".")
            shared.append(SharedDropout(module.p))
            setattr(model.get_submodule(parent), child, shared[-1])
    if shared:
        model.eval()
        with torch.no_grad():
            model(sample)
        model.train()
    return shared


def has_batch_norm(model: nn.Module) -> bool:
    """Whether any module normalises by batch statistics (BatchNorm1d/2d/3d, SyncBatchNorm)."""
    return any(isinstance(m, _BatchNorm) for m in model.modules())


def micro_share(loss: nn.Module, rows: int, total: int) -> float:
    """The weight of a micro-batch's loss in the accumulated one: its share of the batch for a
    loss that averages over the batch, 1 for one that sums (reduction="sum")."""
    return 1.0 if getattr(loss, "reduction", "mean") == "sum" else rows / total


def rounding_tolerance(dtype: torch.dtype, items: int) -> float:
    """How closely the accumulated and full-batch results must agree, relative to their size:
    the dtype's tolerance times the square root of the items summed per step (rounding a sum
    of n terms in another order moves it by about sqrt(n) roundings)."""
    return DTYPE_TOLERANCE[dtype] * math.sqrt(items)


@dataclass
class Way:
    """One way of training: its model, optimizer, dropout modules and what it recorded."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    dropouts: list[SharedDropout]
    losses: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # per optimizer step
    first_grads: list[torch.Tensor] = field(default_factory=list)


OPTIMIZERS = ("adam", "sgd")  # each trains its own pair of copies; adam's gradients are compared


class Accumulation(Experiment):
    """Copies of one model (copied before any step): for Adam and for SGD, one trained on full
    batches of the train split, one by accumulating micro-batch gradients with each loss
    scaled by the micro-batch's share of the batch (1 / accumulation_steps)."""

    headline = ("grad_rel_diff", "param_rel_diff/sgd")
    proves = ("accumulated micro-batch gradients, losses and the parameters they train under "
              "SGD equal full-batch training (without batch norm)")
    workload: Workload | None = None  # set by prepare

    def __init__(self, micro_batch: int | None = 32, effective_batch: int | None = None,
                 accumulation_steps: int = 4, optimizer_steps: int = 10, dropout: float = 0.1,
                 batch_norm: bool = False, learning_rate: float = 1e-3, input_dim: int = 50,
                 hidden: list[int] = (100, 50), output_dim: int = 10):
        self.accumulation_steps = integer("experiment.accumulation_steps", accumulation_steps,
                                          minimum=1)
        self.micro_batch = self._micro_batch(micro_batch, effective_batch)
        self.optimizer_steps = integer("experiment.optimizer_steps", optimizer_steps, minimum=1)
        self.dropout = number("experiment.dropout", dropout, minimum=0.0)
        if self.dropout >= 1:
            raise ConfigError(f"experiment.dropout={dropout} must be in [0, 1)")
        self.batch_norm = boolean("experiment.batch_norm", batch_norm)
        if batch_norm and self.micro_batch < 2:
            raise ConfigError(f"experiment.micro_batch={self.micro_batch} must be >= 2 with "
                              "batch_norm (batch statistics need two samples)")
        self.learning_rate = number("experiment.learning_rate", learning_rate, positive=True)
        self.input_dim = integer("experiment.input_dim", input_dim, minimum=1)
        self.hidden = check_widths("experiment.hidden", hidden)
        self.output_dim = integer("experiment.output_dim", output_dim, minimum=1)

    def _micro_batch(self, micro_batch: int | None, effective_batch: int | None) -> int:
        """The micro-batch size: given, or effective_batch / accumulation_steps."""
        if (micro_batch is None) == (effective_batch is None):
            raise ConfigError(f"experiment.micro_batch={micro_batch} and experiment."
                              f"effective_batch={effective_batch}: set exactly one (null the "
                              "other)")
        if micro_batch is not None:
            return integer("experiment.micro_batch", micro_batch, minimum=1)
        effective = integer("experiment.effective_batch", effective_batch, minimum=1)
        if effective % self.accumulation_steps:
            raise ConfigError(f"experiment.effective_batch={effective} must be a multiple of "
                              f"experiment.accumulation_steps={self.accumulation_steps}")
        return effective // self.accumulation_steps

    @property
    def effective_batch(self) -> int:
        return self.micro_batch * self.accumulation_steps

    def prepare(self, ctx: RunContext) -> None:
        seed = ctx.generator.initial_seed()
        self.workload = ctx.components.resolve(
            ctx, lambda: self._own_data(ctx),
            lambda shape, outputs: self._own_model(shape, outputs,
                                                   torch.Generator().manual_seed(seed)))

    def _own_model(self, input_shape: tuple[int, ...], outputs: int,
                   generator: torch.Generator) -> nn.Module:
        """The notebook's MLP sized to the data (inputs flattened), with the experiment's
        dropout and batch norm, its weights drawn from `generator`."""
        body = mlp(math.prod(input_shape), self.hidden, outputs, dropout=self.dropout,
                   batch_norm=self.batch_norm, generator=generator)
        return nn.Sequential(nn.Flatten(), *body) if len(input_shape) > 1 else body

    def _own_data(self, ctx: RunContext) -> dict[str, TensorDataset]:
        """One full batch per optimizer step of synthetic regression data, drawn from the
        run's generator after the own model's weights (the order they were always drawn in,
        so that a seed gives the same numbers)."""
        self._own_model((self.input_dim,), self.output_dim, ctx.generator)  # the weights' draws
        x, y = regression_batch(self.optimizer_steps * self.effective_batch, self.input_dim,
                                self.output_dim, ctx.generator, dtype=ctx.dtype)
        return {"train": TensorDataset(x, y)}

    def run(self, ctx: RunContext) -> Result:
        if self.workload is None:  # called directly, not by the job
            self.prepare(ctx)
        gen, device, data = ctx.generator, ctx.device, self.workload.data
        model = self.workload.new_model()
        first, _ = data.tensors("train", self.effective_batch)
        with_shared_dropout(model, first[:2])
        pairs = {name: tuple(self._way(copy.deepcopy(model), name) for _ in range(2))
                 for name in OPTIMIZERS}
        memory = self._memory(model, first, ctx)
        for batch in data.cycled("train", self.effective_batch, self.optimizer_steps):
            masks = [(torch.rand(len(batch[0]), *d.shape, generator=gen) >= d.p)
                     .to(device, ctx.dtype) / (1 - d.p) for d in pairs["adam"][0].dropouts]
            for full, accumulated in pairs.values():
                self._full_step(full, batch, masks, device)
                self._accumulated_step(accumulated, batch, masks, device)
        return self._result(pairs, memory, ctx)

    def _way(self, model: nn.Module, optimizer: str) -> Way:
        dropouts = [m for m in model.modules() if isinstance(m, SharedDropout)]
        kind = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
        return Way(model, kind(model.parameters(), lr=self.learning_rate), dropouts)

    def _full_step(self, way: Way, batch, masks, device) -> None:
        start = now(device)
        way.optimizer.zero_grad()
        for dropout, mask in zip(way.dropouts, masks, strict=True):
            dropout.mask = mask
        loss = self.workload.loss_of(way.model(batch[0]), batch[1])
        loss.backward()
        _keep_first_grads(way)
        way.optimizer.step()
        way.seconds.append(now(device) - start)
        way.losses.append(loss.item())

    def _accumulated_step(self, way: Way, batch, masks, device) -> None:
        start = now(device)
        way.optimizer.zero_grad()
        total, (x, y), size = 0.0, batch, len(batch[0])
        for first in range(0, size, self.micro_batch):  # a pass's last batch may be shorter
            rows = slice(first, first + self.micro_batch)
            for dropout, mask in zip(way.dropouts, masks, strict=True):
                dropout.mask = mask[rows]
            loss = self.workload.loss_of(way.model(x[rows]), None if y is None else y[rows])
            loss = loss * micro_share(self.workload.loss, len(x[rows]), size)
            loss.backward()
            total += loss.item()  # the scaled losses add up to the full batch's loss
        _keep_first_grads(way)
        way.optimizer.step()
        way.seconds.append(now(device) - start)
        way.losses.append(total)

    def _memory(self, model: nn.Module, x: torch.Tensor, ctx: RunContext) -> dict[str, float]:
        """Saved-activation bytes (and the CUDA peak) of one forward/backward pass on the full
        batch and on one micro-batch, measured on a throw-away copy of the model."""
        memory = {}
        for name, size in (("full_batch", self.effective_batch), ("micro_batch", self.micro_batch)):
            rows = x[:size].clone()  # its own storage, as a loader's batch would have
            probe = copy.deepcopy(model)
            for dropout in probe.modules():
                if isinstance(dropout, SharedDropout):
                    dropout.mask = torch.ones(len(rows), *dropout.shape, device=ctx.device,
                                              dtype=ctx.dtype)
            meter = SavedTensorMeter(exclude=probe.parameters())
            with cuda_peak(ctx.device) as peak:
                with meter.measure():
                    out = probe(rows)
                out.square().mean().backward()
            memory[f"saved_bytes/{name}"] = float(meter.bytes)
            if peak:
                memory[f"cuda_peak_bytes/{name}"] = peak["bytes"]
        return memory

    def _result(self, pairs: dict[str, tuple[Way, Way]], memory: dict[str, float],
                ctx: RunContext) -> Result:
        full, accumulated = pairs["adam"]
        grad_gap, grad_scale, gaps = _gaps(full.first_grads, accumulated.first_grads)
        param_gaps = dict(zip((name for name, _ in full.model.named_parameters()), gaps,
                              strict=True))
        param_gap, param_scale = _parameter_gap(full, accumulated)
        sgd_gap, sgd_scale = _parameter_gap(*pairs["sgd"])
        relative = max(grad_gap / grad_scale, param_gap / param_scale)
        metrics = {
            "grad_max_abs_diff": grad_gap, "grad_rel_diff": grad_gap / grad_scale,
            "param_max_abs_diff": param_gap, "param_rel_diff": param_gap / param_scale,
            "param_max_abs_diff/sgd": sgd_gap, "param_rel_diff/sgd": sgd_gap / sgd_scale,
            "loss_full": full.losses[0], "loss_accumulated": accumulated.losses[0],
            "final_loss_full": full.losses[-1],
            "final_loss_accumulated": accumulated.losses[-1],
            "seconds_per_step/full": float(np.median(full.seconds)),
            "seconds_per_step/accumulated": float(np.median(accumulated.seconds)),
            "effective_batch": float(self.effective_batch),
            "micro_batch": float(self.micro_batch),
            "parameters": float(parameter_count(full.model)),
            **memory,
            "saved_bytes_ratio": memory["saved_bytes/micro_batch"] / memory[
                "saved_bytes/full_batch"],
            **{f"grad_diff/{name}": gap for name, gap in param_gaps.items()},
        }
        batch_norm = has_batch_norm(full.model)
        if batch_norm:
            metrics["batchnorm_gap"] = relative
            checks, equivalence = {}, "broken_by_batch_norm"
        else:
            tolerance = rounding_tolerance(ctx.dtype, self.effective_batch)
            loss_gap = abs(accumulated.losses[0] - full.losses[0]) / abs(full.losses[0])
            checks = {"equivalence": Check(grad_gap / grad_scale, tolerance),
                      "loss": Check(loss_gap, tolerance),
                      "equivalence_sgd": Check(sgd_gap / sgd_scale, tolerance)}
            equivalence = "holds" if all(c.passed for c in checks.values()) else "broken"
        return Result(
            metrics=metrics,
            series={"loss_full": full.losses, "loss_accumulated": accumulated.losses},
            checks=checks,
            figures={"accumulation": self.plot(full, accumulated, metrics, param_gaps,
                                               ctx.components.names, batch_norm)},
            summary={"effective_batch": self.effective_batch, "micro_batch": self.micro_batch,
                     "dropout_masks": "drawn once per full batch, sliced per micro-batch",
                     "parameters": int(metrics["parameters"]),
                     "train_items": self.workload.data.size("train"),
                     "batch_norm": ("batch statistics per micro-batch: the gap is reported, "
                                    "not checked") if batch_norm else "none"},
            tags={"equivalence": equivalence},
            objective=relative,
        )

    def plot(self, full: Way, accumulated: Way, metrics: dict[str, float],
             param_gaps: dict[str, float], names: dict[str, str], batch_norm: bool) -> Figure:
        """Gradient gap by parameter, both loss curves, saved-activation memory per forward."""
        model = (f"dropout {self.dropout:g}" if names["model"] == OWN
                 else f"model={names['model']}")
        data = "" if names["data"] == OWN else f" on data={names['data']}"
        title = (f"Gradient accumulation: {self.accumulation_steps} x {self.micro_batch} vs one "
                 f"batch of {self.effective_batch}{data} ({model}"
                 f"{', batch norm' if batch_norm else ''})")
        fig, (gaps_ax, loss_ax, memory_ax) = figure(title, 1, 3, size=(17, 5), layout=None)
        fig.subplots_adjust(left=0.05, right=0.985, bottom=0.15, top=0.83, wspace=0.2)
        gaps_ax.bar(list(param_gaps), [max(g, 1e-30) for g in param_gaps.values()],
                    color="tab:purple")
        gaps_ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        gaps_ax.set_yscale("log")
        lean_log_ticks(gaps_ax.yaxis)
        gaps_ax.set(title="Gradient gap after the first accumulation",
                    xlabel="parameter",
                    ylabel="max |g_full − g_accumulated| (log)")
        steps = np.arange(1, len(full.losses) + 1)
        loss_ax.plot(steps, full.losses, "o-", label="full batch")
        loss_ax.plot(steps, accumulated.losses, "x--", markersize=9, label="accumulated")
        loss_ax.set(title=f"Loss under Adam\n(parameter gap after {len(steps)} steps: Adam "
                          f"{metrics['param_max_abs_diff']:.1e}, SGD "
                          f"{metrics['param_max_abs_diff/sgd']:.1e})",
                    xlabel="optimizer step",
                    ylabel=f"{type(self.workload.loss).__name__} (of the whole batch)")
        loss_ax.legend()
        kib = [metrics["saved_bytes/full_batch"] / 1024, metrics["saved_bytes/micro_batch"] / 1024]
        bars = memory_ax.bar([f"full batch\n({self.effective_batch})",
                              f"micro-batch\n({self.micro_batch})"], kib,
                             color=["tab:blue", "tab:orange"])
        memory_ax.bar_label(bars, [f"{v:.0f} KiB" for v in kib])
        memory_ax.set(title="Activations saved for backward, per forward pass",
                      ylabel="saved tensors (KiB)")
        return fig

    @classmethod
    def sweep_figure(cls, jobs: list[dict[str, Any]]) -> Figure | None:
        """Saved-activation memory, gradient/parameter gaps and time against accumulation
        steps."""
        done = sorted((j for j in jobs if "saved_bytes/micro_batch" in j["metrics"]
                       and "experiment.accumulation_steps" in j["params"]),
                      key=lambda j: int(j["params"]["experiment.accumulation_steps"]))
        if not done:
            return None
        steps = [int(j["params"]["experiment.accumulation_steps"]) for j in done]
        metric = {key: [j["metrics"].get(key, math.nan) for j in done] for key in (
            "saved_bytes/micro_batch", "grad_rel_diff", "param_rel_diff", "param_rel_diff/sgd",
            "seconds_per_step/full", "seconds_per_step/accumulated",
            "check/equivalence/tolerance")}
        fig, axes = figure("Gradient accumulation sweep: memory falls, gradients stay equal",
                           1, 3, size=(17, 5))
        kib = np.array(metric["saved_bytes/micro_batch"]) / 1024
        axes[0].plot(steps, kib, "o-", label="measured")
        axes[0].plot(steps, kib[0] * steps[0] / np.array(steps), "--", color="gray",
                     label="first point × 1/steps")
        axes[0].set_yscale("log")
        axes[0].set_yticks(kib, [f"{v:.0f}" for v in kib])
        axes[0].yaxis.set_minor_formatter(NullFormatter())
        axes[0].set(title="Activations saved per micro-batch forward",
                    xlabel="accumulation steps", ylabel="saved tensors (KiB, log)")
        for key, marker in (("grad_rel_diff", "o"), ("param_rel_diff", "s"),
                            ("param_rel_diff/sgd", "D")):
            values = np.array(metric[key])
            axes[1].plot(steps, np.where(values > 0, values, np.nan), marker=marker, label=key)
            for x in np.array(steps)[values == 0]:
                axes[1].annotate("= 0", (x, 0.03), xycoords=("data", "axes fraction"),
                                 ha="center", color="tab:green", fontweight="bold")
        axes[1].plot(steps, metric["check/equivalence/tolerance"], color="tab:red",
                     linestyle="--", label="tolerance")
        axes[1].set_yscale("log")
        axes[1].set(title="Full batch vs accumulated: relative gap (= 0: identical)",
                    xlabel="accumulation steps", ylabel="max |difference| / max |value| (log)")
        for key in ("seconds_per_step/full", "seconds_per_step/accumulated"):
            axes[2].plot(steps, np.array(metric[key]) * 1e3, "o-", label=key.split("/")[1])
        axes[2].set(title="Time per optimizer step", xlabel="accumulation steps",
                    ylabel="milliseconds")
        for ax in axes:
            ax.set_xscale("log", base=2)
            ax.set_xticks(steps, [str(s) for s in steps])
            ax.set_xlim(steps[0] / 1.3, steps[-1] * 1.3)
            ax.legend(fontsize=8)
        return fig


def _keep_first_grads(way: Way) -> None:
    """The first step's gradients (zeros for a parameter the loss does not reach)."""
    if not way.first_grads:
        way.first_grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
                           for p in way.model.parameters()]


def _parameter_gap(full: Way, accumulated: Way) -> tuple[float, float]:
    """Largest |difference| between the two ways' parameters, and their largest |value|."""
    gap, scale, _ = _gaps([p.detach() for p in full.model.parameters()],
                          [p.detach() for p in accumulated.model.parameters()])
    return gap, scale


def _gaps(first: list[torch.Tensor], second: list[torch.Tensor]
          ) -> tuple[float, float, list[float]]:
    """Largest |first - second| over all tensors, largest |first|, and each tensor's largest
    |first - second|."""
    gaps = [(a - b).abs().max().item() for a, b in zip(first, second, strict=True)]
    scale = max(a.abs().max().item() for a in first) or 1.0
    return max(gaps), scale, gaps

