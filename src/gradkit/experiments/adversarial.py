"""Section 7.2: FGSM and PGD attacks on a trained digits classifier, over the whole test set.

The classifier is trained once per configuration and kept in the weight cache, so an epsilon
sweep attacks the same model in every job. PGD's random start draws from its own seed
(`attack_seed`), apart from the data split and the model, so it varies without retraining.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from gradkit.core.experiment import Check, Experiment, Result, RunContext
from gradkit.core.validation import boolean, choice, integer, number
from gradkit.lib.data import DIGIT_CLASSES, digits
from gradkit.lib.models import CLASSIFIERS
from gradkit.lib.training import TrainSpec, single_threaded, trained_classifier
from gradkit.plotting import figure

ATTACKS = ("fgsm", "pgd")
TRAINING_OPTIMIZER = "adam"
ALPHA_FACTOR = 2.5  # PGD's default step: 2.5 * epsilon / steps, a common rule of thumb
START_SIGMAS = 5.0  # the random-start check allows this many standard deviations of its mean
LOSS_ROUNDING = 16  # units of rounding the loss check allows, times the clean loss
START_MIN_PIXELS = 100  # pixels the start must be free to move in (x ± epsilon in [0, 1])


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∇x of the summed cross-entropy (summed, so small per-example gradients do not underflow)."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    return grad


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Fast gradient sign method: x + epsilon * sign(∇x loss), clipped to [0, 1]."""
    return (x + epsilon * input_gradient(model, x, y).sign()).clamp(0, 1)


def pgd_iterates(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float,
                 alpha: float, steps: int, random_start: bool = True,
                 generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Projected gradient descent in the L-infinity ball (Madry et al. 2018): its start, then
    each iterate.

    From a uniform random point of the ball (or from x), `steps` signed-gradient ascent steps of
    size `alpha`, each projected back onto the ball and the pixel range [0, 1].
    """
    lower, upper = x - epsilon, x + epsilon
    adversarial = x.detach()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        adversarial = (x + epsilon * (2 * noise - 1)).clamp(0, 1)
    yield adversarial
    for _ in range(steps):
        adversarial = adversarial + alpha * input_gradient(model, adversarial, y).sign()
        adversarial = torch.minimum(torch.maximum(adversarial, lower), upper).clamp(0, 1)
        yield adversarial.detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float, alpha: float,
        steps: int, random_start: bool = True,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """PGD's last iterate (`pgd_iterates`)."""
    *_, last = pgd_iterates(model, x, y, epsilon, alpha, steps, random_start, generator)
    return last


def ball_excess(x: torch.Tensor, adversarial: torch.Tensor, epsilon: float) -> float:
    """How far `adversarial` leaves the L-infinity ball of radius `epsilon` around x or the
    pixel range [0, 1] (0 inside both)."""
    linf = (adversarial - x).abs().max().item()
    return max(linf - epsilon, -adversarial.min().item(), adversarial.max().item() - 1.0, 0.0)


def start_spread(x: torch.Tensor, start: torch.Tensor, epsilon: float) -> tuple[float, int]:
    """Mean |start - x| / epsilon over the pixels free to move (x ± epsilon inside [0, 1],
    so clipping cannot bind), and their count. A uniform start in the ball gives 1/2 with
    standard deviation sqrt(1/12) per pixel."""
    free = (x >= epsilon) & (x <= 1 - epsilon)
    count = int(free.sum()) if epsilon > 0 else 0
    if not count:
        return math.nan, count
    return ((start - x).abs()[free] / epsilon).mean().item(), count


class Adversarial(Experiment):
    """Attack a trained digits classifier (L-infinity, radius epsilon) on its whole test set."""

    proves = ("every perturbation stays within epsilon and the pixel range, and FGSM equals "
              "one-step PGD bit for bit")

    def __init__(self, attack: str = "pgd", epsilon: float = 0.1, steps: int = 10,
                 alpha: float | None = None, random_start: bool = True, model: str = "cnn",
                 examples: int = 6, epochs: int = 8, batch_size: int = 64,
                 learning_rate: float = 5e-3, test_fraction: float = 0.2, cache: bool = True,
                 attack_seed: int = 0):
        self.attack = choice("experiment.attack", attack, ATTACKS)
        self.epsilon = number("experiment.epsilon", epsilon, minimum=0.0, maximum=1.0)
        self.steps = integer("experiment.steps", steps, minimum=1)
        self.alpha = (ALPHA_FACTOR * self.epsilon / self.steps if alpha is None
                      else number("experiment.alpha", alpha, positive=True))
        self.random_start = boolean("experiment.random_start", random_start)
        self.model = choice("experiment.model", model, CLASSIFIERS)
        self.examples = integer("experiment.examples", examples, minimum=1)
        self.epochs = integer("experiment.epochs", epochs, minimum=1)
        self.batch_size = integer("experiment.batch_size", batch_size, minimum=1)
        self.learning_rate = number("experiment.learning_rate", learning_rate, positive=True)
        self.test_fraction = number("experiment.test_fraction", test_fraction, minimum=0.05,
                                    maximum=0.5)
        self.cache = boolean("experiment.cache", cache)
        self.attack_seed = integer("experiment.attack_seed", attack_seed, minimum=0)

    @single_threaded()
    def run(self, ctx: RunContext) -> Result:
        seed = ctx.generator.initial_seed()
        data = digits(seed, self.test_fraction, ctx.dtype,
                      ctx.cache_dir if self.cache else None).to(ctx.device)
        spec = TrainSpec(self.model, self.epochs, self.batch_size, self.learning_rate,
                         TRAINING_OPTIMIZER, self.test_fraction, seed, str(ctx.dtype),
                         ctx.device.type)
        model, entry = trained_classifier(spec, data, ctx, use_cache=self.cache)
        ctx.log.info("adversarial: classifier %s (cache %s)", entry.key, entry.status)
        model.requires_grad_(False)
        x, y = data.test_x, data.test_y
        checks = {}
        if self.attack == "fgsm":
            adversarial = fgsm(model, x, y, self.epsilon)
        else:
            adversarial, checks = self.attack_pgd(model, x, y, ctx.dtype)
        one_step = pgd(model, x, y, self.epsilon, self.epsilon, 1, random_start=False)
        identity = (fgsm(model, x, y, self.epsilon) - one_step).abs().max().item()

        with torch.no_grad():
            clean_logits, attacked_logits = model(x), model(adversarial)
        clean_loss = F.cross_entropy(clean_logits, y).item()
        attacked_loss = F.cross_entropy(attacked_logits, y).item()
        outcome = Outcome(x, y, adversarial, torch.softmax(clean_logits, dim=1),
                          torch.softmax(attacked_logits, dim=1))
        metrics = {
            "clean_accuracy": outcome.correct.float().mean().item(),
            "robust_accuracy": (outcome.attacked_pred == y).float().mean().item(),
            "attack_success_rate": outcome.success_rate,
            "linf": outcome.linf.mean().item(),
            "l2": outcome.l2.mean().item(),
            "confidence_drop": (outcome.clean_true - outcome.attacked_true).mean().item(),
            "clean_loss": clean_loss,
            "attacked_loss": attacked_loss,
        }
        if self.attack == "pgd":
            metrics["alpha"] = self.alpha  # the step size used, default or not
        return Result(
            metrics=metrics,
            series={"train_loss": list(entry.payload["epoch_loss"])},
            checks={"epsilon_ball": self.ball_check(outcome, ctx.dtype),
                    "fgsm_equals_one_step_pgd": Check(identity, 0.0),
                    "loss_raised": self.loss_check(clean_loss, attacked_loss, ctx.dtype),
                    **checks},
            figures={"examples": self.plot_examples(outcome),
                     "confusion": self.plot_confusion(outcome, metrics)},
            summary={"test_size": len(y), "train_size": len(data.train_x),
                     "cache_entry": entry.key, "cache": entry.status},
            tags={"cache": entry.status, "cache_entry": entry.key},
            objective=metrics["robust_accuracy"],
        )

    def attack_pgd(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   dtype: torch.dtype) -> tuple[torch.Tensor, dict[str, Check]]:
        """PGD's last iterate, with checks that every iterate (the start included) stays in
        the ball and, with a random start, that the start fills the ball uniformly."""
        generator = torch.Generator().manual_seed(self.attack_seed)
        iterates = pgd_iterates(model, x, y, self.epsilon, self.alpha, self.steps,
                                self.random_start, generator)
        start = adversarial = next(iterates)
        excess = ball_excess(x, start, self.epsilon)
        for adversarial in iterates:
            excess = max(excess, ball_excess(x, adversarial, self.epsilon))
        checks = {"iterates_in_ball": Check(excess, 2 * torch.finfo(dtype).eps)}
        spread, count = start_spread(x, start, self.epsilon)
        if self.random_start and count >= START_MIN_PIXELS:
            checks["random_start"] = Check(abs(spread - 0.5),
                                           START_SIGMAS * math.sqrt(1 / 12 / count))
        return adversarial, checks

    @staticmethod
    def loss_check(clean_loss: float, attacked_loss: float, dtype: torch.dtype) -> Check:
        """The attack does not lower the mean cross-entropy (a step along the loss's signed
        gradient raises it to first order), up to the rounding of the mean."""
        return Check(max(clean_loss - attacked_loss, 0.0),
                     LOSS_ROUNDING * torch.finfo(dtype).eps * clean_loss)

    def ball_check(self, outcome: Outcome, dtype: torch.dtype) -> Check:
        """Every perturbation within epsilon (L-infinity) and every input inside [0, 1], up to
        the rounding of x + epsilon - x."""
        return Check(ball_excess(outcome.x, outcome.adversarial, self.epsilon),
                     2 * torch.finfo(dtype).eps)

    def describe(self) -> str:
        if self.attack == "fgsm":
            return f"FGSM, ε = {self.epsilon:g}"
        start = "random start" if self.random_start else "no random start"
        return f"PGD, ε = {self.epsilon:g}, {self.steps} steps of α = {self.alpha:.3g}, {start}"

    def plot_examples(self, outcome: Outcome) -> Figure:
        """Originals, perturbations and adversarial inputs, successful attacks first."""
        chosen = outcome.examples(self.examples)
        fig, axes = figure(f"{self.model.upper()} on 8x8 digits under {self.describe()}", 3,
                           len(chosen), size=(2.1 * len(chosen) + 1.6, 7.6), layout=None)
        axes = np.asarray(axes).reshape(3, len(chosen))
        fig.subplots_adjust(left=0.09, right=0.86, top=0.84, bottom=0.03, wspace=0.15,
                            hspace=0.5)
        limit = self.epsilon or 1.0
        for column, i in enumerate(chosen):
            label, before, after = outcome.y[i].item(), outcome.clean[i], outcome.attacked[i]
            clean_image = outcome.x[i, 0].cpu().numpy()  # matplotlib reads arrays, not tensors
            image = axes[0, column].imshow(clean_image, cmap="gray", vmin=0, vmax=1)
            axes[0, column].set_title(f"true {label}\npred {before.argmax().item()} "
                                      f"({before.max().item():.2f})", fontsize=9)
            attacked_image = outcome.adversarial[i, 0].cpu().numpy()
            delta = axes[1, column].imshow(attacked_image - clean_image,
                                           cmap="RdBu_r", vmin=-limit, vmax=limit)
            predicted = after.argmax().item()
            axes[2, column].imshow(attacked_image, cmap="gray", vmin=0, vmax=1)
            fooled = predicted != label
            axes[2, column].set_title(f"pred {predicted} ({after.max().item():.2f})\n"
                                      f"{'fooled' if fooled else 'still right'}", fontsize=9,
                                      color="tab:red" if fooled else "black")
        for row, name in enumerate(("original", "perturbation", "adversarial")):
            axes[row, 0].set_ylabel(name, fontsize=10, fontweight="bold")
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        for row, (mappable, label) in enumerate(((image, "pixel"), (delta, "x_adv − x"),
                                                 (image, "pixel"))):
            box = axes[row, -1].get_position()
            cax = fig.add_axes((box.x1 + 0.02, box.y0, 0.012, box.height))
            fig.colorbar(mappable, cax=cax, label=label)
        return fig

    def plot_confusion(self, outcome: Outcome, metrics: dict[str, float]) -> Figure:
        """True class against predicted class, before and after the attack."""
        fig, axes = figure(f"Predictions before and after the attack ({self.describe()})", 1, 2,
                           size=(13, 6), layout=None)
        fig.subplots_adjust(left=0.05, right=0.94, bottom=0.1, top=0.89, wspace=0.21)
        views = ((outcome.clean_pred, f"clean: accuracy {metrics['clean_accuracy']:.3f}"),
                 (outcome.attacked_pred,
                  f"attacked: accuracy {metrics['robust_accuracy']:.3f}"))
        for ax, (predicted, title) in zip(axes, views, strict=True):
            counts = confusion(outcome.y, predicted)
            image = ax.imshow(counts, cmap="Blues", vmin=0, vmax=counts.sum(axis=1).max())
            for (row, column), count in np.ndenumerate(counts):
                if count:
                    ax.text(column, row, str(count), ha="center", va="center", fontsize=8,
                            color="white" if count > counts.max() / 2 else "black")
            ax.set(title=title, xlabel="predicted class", ylabel="true class",
                   xticks=range(DIGIT_CLASSES), yticks=range(DIGIT_CLASSES))
            ax.grid(False)
            fig.colorbar(image, ax=ax, fraction=0.046, label="test images")
        return fig

    @classmethod
    def sweep_figure(cls, jobs: list[dict[str, Any]]) -> Figure | None:
        """Robust accuracy against epsilon, one line per attack, clean accuracy at epsilon 0."""
        done = [j for j in jobs if "robust_accuracy" in j["metrics"]
                and "experiment.epsilon" in j["params"]]
        if not done:
            return None
        fig, ax = figure("Robust accuracy against the attack radius ε (L-infinity)", size=(9, 6))
        by_attack: dict[str, list[dict[str, Any]]] = {}
        for job in done:
            by_attack.setdefault(job["params"].get("experiment.attack", "?"), []).append(job)
        for (attack, group), marker in zip(sorted(by_attack.items()), itertools.cycle("osD^")):
            group.sort(key=lambda j: float(j["params"]["experiment.epsilon"]))
            ax.plot([float(j["params"]["experiment.epsilon"]) for j in group],
                    [j["metrics"]["robust_accuracy"] for j in group], marker=marker,
                    label=attack.upper())
        clean = sorted({round(j["metrics"]["clean_accuracy"], 6) for j in done})
        ax.plot([0.0] * len(clean), clean, "*", color="black", markersize=16,
                label=f"clean accuracy {', '.join(f'{c:.3f}' for c in clean)}")
        failed = len(jobs) - len(done)
        ax.set(xlabel="ε (pixel range [0, 1])", ylabel="accuracy on the attacked test set",
               ylim=(-0.03, 1.03),
               title=f"{len(done)} jobs" + (f", {failed} not completed (not shown)" if failed
                                             else ""))
        ax.legend()
        return fig


class Outcome:
    """Inputs, labels, adversarial inputs and class probabilities before and after."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, adversarial: torch.Tensor,
                 clean: torch.Tensor, attacked: torch.Tensor):
        self.x, self.y, self.adversarial = x, y, adversarial
        self.clean, self.attacked = clean, attacked
        self.clean_pred, self.attacked_pred = clean.argmax(dim=1), attacked.argmax(dim=1)
        self.correct = self.clean_pred == y
        rows = torch.arange(len(y), device=y.device)
        self.clean_true, self.attacked_true = clean[rows, y], attacked[rows, y]
        delta = (adversarial - x).flatten(1)
        self.linf, self.l2 = delta.abs().amax(dim=1), torch.linalg.vector_norm(delta, dim=1)

    @property
    def fooled(self) -> torch.Tensor:
        """Inputs classified correctly before the attack and wrongly after it."""
        return self.correct & (self.attacked_pred != self.y)

    @property
    def success_rate(self) -> float:
        """The share of correctly classified inputs the attack turns wrong."""
        correct = int(self.correct.sum())
        return int(self.fooled.sum()) / correct if correct else 0.0

    def examples(self, count: int) -> list[int]:
        """Up to `count` test indices: fooled inputs first, then the other correct ones."""
        order = torch.cat([self.fooled.nonzero().flatten(),
                           (self.correct & ~self.fooled).nonzero().flatten()])
        return order[:count].tolist() or [0]


def confusion(true: torch.Tensor, predicted: torch.Tensor) -> np.ndarray:
    """Counts of (true class, predicted class)."""
    flat = (true * DIGIT_CLASSES + predicted).cpu()
    return torch.bincount(flat, minlength=DIGIT_CLASSES**2).reshape(
        DIGIT_CLASSES, DIGIT_CLASSES).numpy()

