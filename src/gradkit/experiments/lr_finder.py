"""Section 7.1: the learning-rate range test, its advice checked by training.

On any model, data and loss (its own: an MLP on the 8x8 digits, split by the seed).

The range test as torch-lr-finder runs it: `num_iter` optimizer steps whatever the dataset
size (the batches cycle), each on `accumulation_steps` micro-batches whose losses are divided
by their number; the learning rate ramped from `start_lr` to `end_lr` exponentially
(torch-lr-finder's and fastai's default) or linearly (Smith 2015); the loss of each step, the
validation loss after it (torch-lr-finder's `val_loader`) or the training batch's (without
one), smoothed exponentially; a stop once the smoothed loss exceeds `diverge_th` times its
best, and the suggestion at the steepest descent of the smoothed loss between the skipped
ends. Everything is chosen on the validation split; the test split is evaluated once, at the
end, and never chooses anything.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import TensorDataset

from gradkit.core.components import OWN, Workload
from gradkit.core.experiment import Check, Experiment, Result, RunContext
from gradkit.core.validation import ConfigError, boolean, choice, integer, number
from gradkit.lib.data import digits, hold_out
from gradkit.lib.datasets import SPLITS, Batch
from gradkit.lib.models import mlp_for, parameter_count
from gradkit.lib.progress import track
from gradkit.lib.training import OPTIMIZERS, evaluate_batches, make_optimizer, single_threaded
from gradkit.plotting import figure, lean_log_ticks

# The validation runs: the suggestion, ten times lower and ten times higher.
VALIDATION_FACTORS = {"lr_over_10": 0.1, "suggested": 1.0, "lr_times_10": 10.0}
RULE_TOLERANCE = 1e-12  # a rule recomputed in another order, relative to its values
# torch-lr-finder's ExponentialLR and LinearLR at r = i / (num_iter - 1)
RAMPS: dict[str, Callable[[float, float, float], float]] = {
    "exp": lambda start, end, r: start * (end / start) ** r,
    "linear": lambda start, end, r: start + r * (end - start)}
SCHEDULE_ORACLES = {"exp": np.geomspace, "linear": np.linspace}
SCORES = ("validation", "train")
EVALUATION_BATCH = 1024  # items per forward pass when evaluating (the mean does not depend on it)
LossFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def lr_schedule(start_lr: float, end_lr: float, num_iter: int,
                step_mode: str = "exp") -> list[float]:
    """lr_i for i = 0 .. num_iter - 1 and r = i / (num_iter - 1): start_lr (end_lr /
    start_lr)^r (`exp`) or start_lr + r (end_lr - start_lr) (`linear`)."""
    ramp = RAMPS[step_mode]
    return [ramp(start_lr, end_lr, i / (num_iter - 1)) for i in range(num_iter)]


def new_scaler(amp: bool) -> torch.amp.GradScaler | None:
    """A CUDA GradScaler for mixed precision, else None."""
    return torch.amp.GradScaler("cuda") if amp else None


def micro_batches(loader: Iterable[Batch], k: int) -> Iterator[tuple[Batch, ...]]:
    """Consecutive groups of `k` batches of `loader` (an incomplete last group dropped)."""
    return zip(*[iter(loader)] * k, strict=False)


def gradient_norm(model: nn.Module) -> float:
    """The norm of every parameter gradient of `model` together."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer,
               group: Sequence[Batch], loss_fn: LossFn,
               scaler: torch.amp.GradScaler | None = None) -> tuple[float, float]:
    """One optimizer step on the micro-batches of `group`, as torch-lr-finder takes it: each
    one's loss divided by their number and backpropagated (under autocast on the batch's
    device and scaled by `scaler` when given), then one step. Returns the accumulated loss
    (the sum of those shares) and the norm of the accumulated gradient (unscaled)."""
    model.train()
    optimizer.zero_grad()
    total = 0.0
    for x, y in group:
        with torch.autocast(x.device.type) if scaler is not None else contextlib.nullcontext():
            loss = loss_fn(model(x), y) / len(group)
        (loss if scaler is None else scaler.scale(loss)).backward()
        total += loss.item()
    if scaler is None:
        norm = gradient_norm(model)
        optimizer.step()
    else:
        scaler.unscale_(optimizer)
        norm = gradient_norm(model)
        scaler.step(optimizer)  # skipped when a gradient is not finite
        scaler.update()
    return total, norm


@dataclass
class RangeTest:
    """What the test recorded at each step it ran: lr, the loss it smooths (the validation
    loss after the step, or the training batch's loss without a validation score), the
    training batch's loss, the smoothed loss and the batch's gradient norm."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    batch_losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    diverged: bool = False


def range_test(model: nn.Module, optimizer: torch.optim.Optimizer,
               loader: Iterable[Batch], schedule: list[float],
               smooth_f: float = 0.05, diverge_th: float = 5.0,
               score: Callable[[nn.Module], float] | None = None,
               loss_fn: LossFn = F.cross_entropy, accumulation_steps: int = 1,
               scaler: torch.amp.GradScaler | None = None) -> RangeTest:
    """One `train_step` per learning rate of `schedule`, on `accumulation_steps` batches each.

    loss_i is `score(model)` after the step (the validation loss), or the step's accumulated
    batch loss without `score`; smoothed_0 = loss_0, smoothed_i = smooth_f * loss_i + (1 -
    smooth_f) * smoothed_(i-1); the test stops after the first step whose smoothed loss
    exceeds `diverge_th` times the best so far (or is not finite). Model and optimizer state
    are put back as they were, whatever happens.
    """
    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    trace = RangeTest()
    try:
        for lr, group in track(zip(schedule, micro_batches(loader, accumulation_steps),
                                   strict=False), len(schedule), "lr_finder: range test"):
            for param_group in optimizer.param_groups:
                param_group["lr"] = lr
            loss, norm = train_step(model, optimizer, group, loss_fn, scaler)
            value = loss if score is None else score(model)
            smoothed = value if not trace.smoothed else (
                smooth_f * value + (1 - smooth_f) * trace.smoothed[-1])
            trace.lrs.append(lr)
            trace.losses.append(value)
            trace.batch_losses.append(loss)
            trace.smoothed.append(smoothed)
            trace.grad_norms.append(norm)
            if not math.isfinite(smoothed) or smoothed > diverge_th * min(trace.smoothed):
                trace.diverged = True
                break
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
    return trace


def evaluate_split(model: nn.Module, workload: Workload, split: str) -> tuple[float, float]:
    """Mean loss of `model` over `split` of the workload's data, batch by batch, and its
    accuracy (NaN unless the targets are class labels)."""
    return evaluate_batches(model, workload.data.batches(split, EVALUATION_BATCH),
                            workload.loss_of)


def steepest_descent(smoothed: list[float], skip_start: int, skip_end: int) -> int | None:
    """Index of the most negative gradient (np.gradient) of `smoothed` once the first
    `skip_start` and last `skip_end` points are dropped; None when fewer than 2 remain."""
    window = np.asarray(smoothed[skip_start:len(smoothed) - skip_end], dtype=float)
    if len(window) < 2 or not np.isfinite(slopes := np.gradient(window)).any():
        return None
    return skip_start + int(np.nanargmin(np.where(np.isfinite(slopes), slopes, np.nan)))


def schedule_error(lrs: Sequence[float], start_lr: float, end_lr: float, num_iter: int,
                   step_mode: str = "exp") -> float:
    """Largest relative gap between the logged learning rates and the first of `num_iter`
    points from `start_lr` to `end_lr` spaced evenly in log (`exp`: np.geomspace) or evenly
    (`linear`: np.linspace); inf if more were logged."""
    if len(lrs) > num_iter:
        return math.inf
    expected = SCHEDULE_ORACLES[step_mode](start_lr, end_lr, num_iter)[:len(lrs)]
    return float(np.max(np.abs(np.asarray(lrs) - expected) / expected, initial=0.0))


def smoothing_error(losses: Sequence[float], smoothed: Sequence[float],
                    smooth_f: float) -> float:
    """Largest gap between the logged smoothed loss and the smoothing rule recomputed from the
    logged losses (s_0 = loss_0, s_i = s_(i-1) + smooth_f (loss_i - s_(i-1))), relative to the
    largest finite |s|; inf where they disagree on being finite or on the length."""
    if len(losses) != len(smoothed):
        return math.inf
    gap, scale, previous = 0.0, 0.0, 0.0
    for i, (loss, logged) in enumerate(zip(losses, smoothed, strict=True)):
        previous = loss if i == 0 else previous + smooth_f * (loss - previous)
        if math.isfinite(previous) != math.isfinite(logged):
            return math.inf
        if math.isfinite(logged):
            gap, scale = max(gap, abs(previous - logged)), max(scale, abs(logged))
    return gap / scale if scale else gap


def stop_rule_error(smoothed: Sequence[float], diverged: bool, num_iter: int,
                    diverge_th: float) -> float:
    """Steps between where the logged curve ends and where the stop rule ends it (the first
    smoothed loss that is not finite or exceeds `diverge_th` times the best before it, else
    step `num_iter`), plus one if the logged `diverged` disagrees."""
    stop = next((i for i, value in enumerate(smoothed) if not math.isfinite(value)
                 or (i and value > diverge_th * min(smoothed[:i]))), None)
    expected = num_iter if stop is None else stop + 1
    return float(abs(len(smoothed) - expected) + (diverged != (stop is not None)))


def suggestion_error(smoothed: Sequence[float], skip_start: int, skip_end: int,
                     index: int | None) -> float:
    """Steps between the reported suggestion and the argmin of the slope of the logged smoothed
    loss recomputed by hand (one-sided differences at the ends of the kept window, central ones
    inside, non-finite slopes ignored); 0 when both say there is none, inf when one does."""
    window = list(smoothed[skip_start:len(smoothed) - skip_end])
    slopes = [] if len(window) < 2 else [
        window[1] - window[0],
        *((window[i + 1] - window[i - 1]) / 2 for i in range(1, len(window) - 1)),
        window[-1] - window[-2]]
    finite = [(slope, i) for i, slope in enumerate(slopes) if math.isfinite(slope)]
    expected = skip_start + min(finite)[1] if finite else None
    if expected is None or index is None:
        return 0.0 if expected == index else math.inf
    return float(abs(expected - index))


def state_mismatches(before: Any, after: Any) -> int:
    """How many leaves of two (nested) state dicts differ; tensors must be bit-identical."""
    if isinstance(before, torch.Tensor) or isinstance(after, torch.Tensor):
        same = (isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor)
                and before.dtype == after.dtype and before.device == after.device
                and torch.equal(before, after))
        return int(not same)
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        return (len(before.keys() ^ after.keys())
                + sum(state_mismatches(before[k], after[k]) for k in before.keys() & after.keys()))
    if isinstance(before, list | tuple) and isinstance(after, list | tuple):
        return abs(len(before) - len(after)) + sum(
            state_mismatches(b, a) for b, a in zip(before, after, strict=False))
    return int(before != after)


def own_model(input_shape: tuple[int, ...], outputs: int) -> nn.Module:
    """The own network: the inputs flattened, 64 ReLU units, a Linear head (`model=mlp`)."""
    return mlp_for(input_shape, outputs, hidden=(64,))


class LrFinder(Experiment):
    """Range-test the learning rate of a model on its data and loss (by default an MLP on the
    digits), then train at the advice."""

    headline = ("suggested_lr", "min_loss_lr")
    proves = ("the model and optimizer are restored bit for bit after the range test, and the "
              "schedule, smoothing, stop and suggestion rules hold on the logged curve")
    # status tag -> its meaning: the test ends at its divergence threshold by design
    normal_ends = (("diverged", "stopped at its divergence threshold"),)

    def __init__(self, optimizer: str = "sgd", start_lr: float = 1e-7, end_lr: float = 10.0,
                 num_iter: int = 100, step_mode: str = "exp", score: str = "validation",
                 smooth_f: float = 0.05, diverge_th: float = 5.0, skip_start: int = 10,
                 skip_end: int = 5, batch_size: int = 64, accumulation_steps: int = 1,
                 amp: bool = False, validation_steps: int = 100, test_fraction: float = 0.2,
                 validation_fraction: float = 0.2):
        self.optimizer = choice("experiment.optimizer", optimizer, OPTIMIZERS)
        self.start_lr = number("experiment.start_lr", start_lr, positive=True)
        self.end_lr = number("experiment.end_lr", end_lr, positive=True)
        if self.start_lr >= self.end_lr:
            raise ConfigError(f"experiment.start_lr={self.start_lr:g} must be below "
                              f"experiment.end_lr={self.end_lr:g}")
        self.skip_start = integer("experiment.skip_start", skip_start)
        self.skip_end = integer("experiment.skip_end", skip_end)
        self.num_iter = integer("experiment.num_iter", num_iter,
                                minimum=self.skip_start + self.skip_end + 2)
        self.step_mode = choice("experiment.step_mode", step_mode, RAMPS)
        self.score = choice("experiment.score", score, SCORES)
        self.smooth_f = number("experiment.smooth_f", smooth_f, positive=True, maximum=1.0)
        self.diverge_th = number("experiment.diverge_th", diverge_th, minimum=1.0)
        self.batch_size = integer("experiment.batch_size", batch_size, minimum=1)
        self.accumulation_steps = integer("experiment.accumulation_steps", accumulation_steps,
                                          minimum=1)
        self.amp = boolean("experiment.amp", amp)
        self.validation_steps = integer("experiment.validation_steps", validation_steps,
                                        minimum=1)
        self.test_fraction = number("experiment.test_fraction", test_fraction, minimum=0.05,
                                    maximum=0.5)
        self.validation_fraction = number("experiment.validation_fraction",
                                          validation_fraction, minimum=0.05, maximum=0.5)

    def prepare(self, ctx: RunContext) -> None:
        """The run's model, data and loss (its own: the MLP on the digits split by the seed);
        mixed precision refused off CUDA."""
        if self.amp and ctx.device.type != "cuda":
            raise ConfigError(f"experiment.amp=true needs device=cuda (autocast with a "
                              f"GradScaler); this run's device is {ctx.device}")
        seed = ctx.generator.initial_seed()
        self.names = ctx.components.names
        self.workload = ctx.components.resolve(ctx, lambda: self.own_digits(seed, ctx),
                                               own_model)

    def own_digits(self, seed: int, ctx: RunContext) -> dict[str, TensorDataset]:
        """The digits: `test_fraction` held out for the test, `validation_fraction` of the
        rest for validation, both by the seed."""
        data = digits(seed, self.test_fraction, ctx.dtype, ctx.cache_dir)
        train, validation = hold_out(data.train_x, data.train_y, self.validation_fraction, seed)
        return {"train": TensorDataset(*train), "validation": TensorDataset(*validation),
                "test": TensorDataset(data.test_x, data.test_y)}

    @single_threaded()
    def run(self, ctx: RunContext) -> Result:
        workload = self.workload
        model = workload.new_model()
        optimizer = make_optimizer(self.optimizer, model.parameters(), self.start_lr)
        before = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
        schedule = lr_schedule(self.start_lr, self.end_lr, self.num_iter, self.step_mode)
        loader = workload.data.cycled("train", self.batch_size,
                                      self.num_iter * self.accumulation_steps, ctx.generator)
        score = ((lambda m: evaluate_split(m, workload, "validation")[0])
                 if self.score == "validation" else None)
        trace = range_test(model, optimizer, loader, schedule, self.smooth_f, self.diverge_th,
                           score, workload.loss_of, self.accumulation_steps,
                           new_scaler(self.amp))
        restored = state_mismatches(before, (model.state_dict(), optimizer.state_dict()))

        best = int(np.nanargmin(trace.smoothed))
        sizes = {split: workload.data.size(split) for split in SPLITS}
        metrics = {"min_loss_lr": trace.lrs[best], "min_smoothed_loss": trace.smoothed[best],
                   "iterations_run": len(trace.lrs), "diverged": float(trace.diverged),
                   "parameters": float(parameter_count(model)),
                   **{f"data/{split}_size": size for split, size in sizes.items()
                      if size is not None}}
        if trace.diverged:
            metrics["diverged_at_lr"] = trace.lrs[-1]
        index = steepest_descent(trace.smoothed, self.skip_start, self.skip_end)
        scores: dict[str, tuple[float, float, float]] = {}
        test_accuracy = None
        if index is not None:
            metrics["suggested_lr"] = trace.lrs[index]
            runs_seed = int(torch.randint(2**31 - 1, (), generator=ctx.generator))
            trained = self.train_at(model, trace.lrs[index], runs_seed)
            scores = {which: (lr, *evaluate_split(m, workload, "validation"))
                      for which, (lr, m) in trained.items()}
            for which, (_, loss, accuracy) in scores.items():
                metrics[f"validation/loss/{which}"] = loss
                if not math.isnan(accuracy):
                    metrics[f"validation/accuracy/{which}"] = accuracy
            metrics["test/loss"], test_accuracy = evaluate_split(trained["suggested"][1],
                                                                 workload, "test")
            if not math.isnan(test_accuracy):
                metrics["test/accuracy"] = test_accuracy
        status = "no_suggestion" if index is None else (
            "diverged" if trace.diverged else "completed")
        series = {"lr": trace.lrs, "batch_loss": trace.batch_losses,
                  "smoothed_loss": trace.smoothed, "grad_norm": trace.grad_norms}
        if self.score == "validation":
            series["validation_loss"] = trace.losses
        return Result(
            metrics=metrics,
            series=series,
            checks=self.checks(trace, index, restored),
            figures={"lr_finder": self.plot(trace, index, scores, test_accuracy)},
            summary={**self.names, "parameters": int(metrics["parameters"]),
                     "data_splits": workload.data.describe(),
                     "loss_module": type(workload.loss).__name__,
                     "optimizer": self.optimizer, "step_mode": self.step_mode,
                     "score": self.score, "accumulation_steps": self.accumulation_steps,
                     "amp": self.amp, "suggested_step": index},
            tags={"status": status},
            objective=scores["suggested"][1] if scores else math.nan,
        )

    def checks(self, trace: RangeTest, index: int | None, restored: int) -> dict[str, Check]:
        """The state put back, and the schedule, smoothing, stop and suggestion rules
        recomputed from the logged curve."""
        return {
            "state_restored": Check(float(restored), 0.0),
            "schedule": Check(schedule_error(trace.lrs, self.start_lr, self.end_lr,
                                             self.num_iter, self.step_mode), RULE_TOLERANCE),
            "smoothing": Check(smoothing_error(trace.losses, trace.smoothed, self.smooth_f),
                               RULE_TOLERANCE),
            "stop_rule": Check(stop_rule_error(trace.smoothed, trace.diverged, self.num_iter,
                                               self.diverge_th), 0.0),
            "suggestion": Check(suggestion_error(trace.smoothed, self.skip_start,
                                                 self.skip_end, index), 0.0),
        }

    def train_at(self, initial: nn.Module, lr: float,
                 seed: int) -> dict[str, tuple[float, nn.Module]]:
        """(lr, model) after `validation_steps` steps (accumulated as in the range test) on
        the train split from the same initial weights and batch order at lr / 10, lr and
        lr x 10."""
        trained = {}
        for which, factor in VALIDATION_FACTORS.items():
            model = copy.deepcopy(initial)
            optimizer = make_optimizer(self.optimizer, model.parameters(), lr * factor)
            loader = self.workload.data.cycled(
                "train", self.batch_size, self.validation_steps * self.accumulation_steps,
                torch.Generator().manual_seed(seed))
            scaler = new_scaler(self.amp)
            for group in track(micro_batches(loader, self.accumulation_steps),
                               self.validation_steps,
                               f"lr_finder: validation training at lr={lr * factor:.3g}"):
                train_step(model, optimizer, group, self.workload.loss_of, scaler)
            trained[which] = (lr * factor, model)
        return trained

    def plot(self, trace: RangeTest, index: int | None,
             validation: dict[str, tuple[float, float, float]],
             test_accuracy: float | None) -> Figure:
        """Scored and smoothed loss and gradient norm against lr, and the validation
        accuracy (the loss without class labels) of the short trainings (the suggestion's
        test accuracy in the title)."""
        verdict = f"suggested lr = {trace.lrs[index]:.3g}" if index is not None else (
            "no suggestion (too few points)")
        batch = f"{self.batch_size}" + (f" x {self.accumulation_steps} accumulated"
                                        if self.accumulation_steps > 1 else "")
        title = (f"LR range test: {self.describe()}, {self.optimizer.upper()}, batch {batch}, "
                 f"{self.step_mode} ramp, {len(trace.lrs)} of {self.num_iter} steps → {verdict}")
        fig, (loss_ax, grad_ax, bar_ax) = figure(title, 1, 3, size=(17, 5.2), layout=None)
        fig.subplots_adjust(left=0.04, right=0.98, bottom=0.16, top=0.84, wspace=0.2)
        kept = slice(self.skip_start, len(trace.lrs) - self.skip_end)
        scored = "validation loss" if self.score == "validation" else "training batch loss"
        if self.score == "validation":
            loss_ax.plot(trace.lrs, trace.batch_losses, color="tab:gray", alpha=0.4,
                         linewidth=0.8, label="training batch loss")
        loss_ax.plot(trace.lrs, trace.losses, color="tab:blue", alpha=0.3, label=scored)
        loss_ax.plot(trace.lrs, trace.smoothed, color="tab:blue", linewidth=2,
                     label=f"smoothed {scored} (smooth_f = {self.smooth_f:g})")
        if trace.lrs[kept]:
            loss_ax.axvspan(trace.lrs[kept][0], trace.lrs[kept][-1], color="tab:green",
                            alpha=0.08, label="points the suggestion considers")
        best = int(np.nanargmin(trace.smoothed))
        loss_ax.plot(trace.lrs[best], trace.smoothed[best], "v", color="tab:purple",
                     markersize=10, label=f"minimum smoothed loss at lr = {trace.lrs[best]:.3g}")
        if trace.diverged:
            loss_ax.axvline(trace.lrs[-1], color="tab:red", linestyle=":", linewidth=2,
                            label=f"stopped (> {self.diverge_th:g} x best) at lr = "
                                  f"{trace.lrs[-1]:.3g}")
        for ax in (loss_ax, grad_ax):
            if index is not None:
                ax.axvline(trace.lrs[index], color="tab:orange", linestyle="--",
                           label=f"suggestion (steepest descent) = {trace.lrs[index]:.3g}")
        finite = [v for v in trace.smoothed if math.isfinite(v)]
        lowest = min(v for v in trace.losses + trace.batch_losses + finite if math.isfinite(v))
        loss_ax.set_ylim(lowest * 0.95, min(max(finite), 3 * trace.smoothed[0]) * 1.05)
        scale = "log" if self.step_mode == "exp" else "linear"  # the points evenly spread
        loss_ax.set(title="Loss against learning rate", xlabel=f"learning rate ({scale} scale)",
                    ylabel=f"loss ({type(self.workload.loss).__name__})", xscale=scale)
        loss_ax.legend(fontsize=8, loc="best")
        grad_ax.plot(trace.lrs, trace.grad_norms, color="tab:green")
        grad_ax.set(title="Gradient norm against learning rate", xscale=scale, yscale="log",
                    xlabel=f"learning rate ({scale} scale)", ylabel="‖∇loss‖ (log scale)")
        log_axes = [grad_ax.yaxis] + ([loss_ax.xaxis, grad_ax.xaxis] if scale == "log" else [])
        for axis in log_axes:
            lean_log_ticks(axis)
        if index is not None:
            grad_ax.legend(fontsize=8, loc="upper left")
        self.plot_validation(bar_ax, validation, test_accuracy)
        return fig

    def plot_validation(self, ax, validation: dict[str, tuple[float, float, float]],
                        test_accuracy: float | None) -> None:
        """Bars of validation accuracy (of the loss without class labels) at each lr."""
        labelled = self.workload.classes is not None
        what = "accuracy" if labelled else "loss"
        test = "" if test_accuracy is None or not labelled else (
            f"\ntest accuracy at the suggestion: {test_accuracy:.3f} (reported once)")
        ax.set(title=f"Validation {what} after {self.validation_steps} steps from the same "
                     f"start{test}", xlabel="learning rate", ylabel=f"validation {what}")
        if not validation:
            ax.text(0.5, 0.5, "no suggestion to validate", ha="center", transform=ax.transAxes)
            return
        labels = [f"{lr:.3g}\n({which.replace('_', ' ')})"
                  for which, (lr, _, _) in validation.items()]
        heights = [accuracy if labelled else loss for _, loss, accuracy in validation.values()]
        finite = [h for h in heights if math.isfinite(h)]
        colors = ["tab:gray", "tab:orange", "tab:gray"]
        bars = ax.bar(labels, [h if math.isfinite(h) else 0.0 for h in heights], color=colors)
        texts = [f"acc {a:.3f}\nloss {loss:.3g}" if labelled else f"loss {loss:.3g}"
                 for _, loss, a in validation.values()]
        ax.bar_label(bars, texts, padding=3, fontsize=9)
        ax.set_ylim(0, 1.12 if labelled else 1.25 * max(finite, default=1.0))

    def describe(self) -> str:
        """`own MLP on own digits (CrossEntropyLoss)`, or the chosen names."""
        model = "own MLP" if self.names["model"] == OWN else f"model={self.names['model']}"
        data = "own digits" if self.names["data"] == OWN else f"data={self.names['data']}"
        return f"{model} on {data} ({type(self.workload.loss).__name__})"

    @classmethod
    def sweep_figure(cls, jobs: list[dict[str, Any]]) -> Figure | None:
        """Each job's smoothed loss curve (from its series.csv, where the job folder is at
        hand) overlaid, and its suggestion with the validation accuracy there."""
        done = [j for j in jobs if j["status"] == "COMPLETED" and j["params"]]
        if not done:
            return None
        fig, (curve_ax, bar_ax) = figure("LR range test sweep: smoothed loss and suggestions", 1,
                                         2, size=(16, 6))
        labels = [_job_label(job) for job in done]
        starts = []
        for job, label in zip(done, labels, strict=True):
            curve = _smoothed_curve(job.get("output_dir"))
            if curve and curve[0]:
                (line,) = curve_ax.semilogx(*curve, label=label)
                starts.append(curve[1][0])
                if "suggested_lr" in job["metrics"]:
                    curve_ax.axvline(job["metrics"]["suggested_lr"], color=line.get_color(),
                                     linestyle="--", alpha=0.7)
        curve_ax.set(title="Smoothed loss (dashed: each suggestion)",
                     xlabel="learning rate (log scale)", ylabel="smoothed cross-entropy")
        if starts:
            curve_ax.set_ylim(top=1.5 * max(starts))  # divergence spikes would flatten the rest
            curve_ax.legend(fontsize=8)
        else:
            curve_ax.text(0.5, 0.5, "job folders not at hand: no curves", ha="center",
                          transform=curve_ax.transAxes)
        rows = range(len(done))
        for row, job in zip(rows, done, strict=True):
            lr = job["metrics"].get("suggested_lr")
            accuracy = job["metrics"].get("validation/accuracy/suggested")
            if lr is None or accuracy is None:
                bar_ax.text(0.5, row, "no suggestion", ha="center", va="center",
                            transform=bar_ax.get_yaxis_transform())
                continue
            bar_ax.plot(lr, row, "o", color="tab:orange", markersize=9)
            bar_ax.annotate(f"{lr:.3g}  (validation acc {accuracy:.3f})", (lr, row),
                            xytext=(8, 0), textcoords="offset points", va="center", fontsize=9)
        bar_ax.set_xscale("log")
        bar_ax.set_yticks(list(rows), labels)
        bar_ax.set_ylim(len(done) - 0.5, -0.5)
        bar_ax.margins(x=0.5)
        failed = len(jobs) - len(done)
        bar_ax.set(title="Suggested lr, and validation accuracy after training at it"
                   + (f" ({failed} jobs failed)" if failed else ""),
                   xlabel="suggested learning rate (log scale)")
        return fig


def _job_label(job: dict[str, Any]) -> str:
    optimizer, batch = (job["params"].get(f"experiment.{key}", "?")
                        for key in ("optimizer", "batch_size"))
    target = job["params"].get("model._target_", "None")
    model = OWN if target == "None" else target.rsplit(".", 1)[-1]
    return f"#{job['job']} {model} {optimizer} batch {batch}"


def _smoothed_curve(output_dir: str | None) -> tuple[list[float], list[float]] | None:
    """(lr, smoothed loss) from a job folder's series.csv, or None if it is not there."""
    path = Path(output_dir) / "series.csv" if output_dir else None
    if path is None or not path.is_file():
        return None
    columns: dict[str, list[float]] = {"lr": [], "smoothed_loss": []}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["series"] in columns:
                columns[row["series"]].append(float(row["value"]))
    return columns["lr"], columns["smoothed_loss"]
