"""Section 7.2: FGSM, PGD (L-infinity and L2) and APGD attacks on a trained classifier.

The whole test split is attacked, batch by batch. The classifier (the digits CNN by default,
or any `model=` on any classification `data=`) is trained once per training setting and kept
in the weight cache, so an epsilon sweep attacks the same model in every job. Random starts
and random targets draw from their own seed (`attack_seed`), apart from the data split and the
model, so they vary without retraining.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import TensorDataset

from gradkit.core.components import Workload
from gradkit.core.experiment import Check, Experiment, Result, RunContext
from gradkit.core.validation import ConfigError, boolean, choice, integer, number, vector
from gradkit.lib.data import digits
from gradkit.lib.models import conv_net, parameter_count
from gradkit.lib.progress import track
from gradkit.lib.training import TrainSpec, single_threaded, trained_classifier
from gradkit.plotting import figure

NORMS = {"fgsm": "linf", "pgd": "linf", "pgd_l2": "l2", "apgd": "linf", "apgd_l2": "l2"}
ATTACKS = tuple(NORMS)
STEPPED = ("pgd", "pgd_l2")  # the attacks with a step size alpha
TRAINING_OPTIMIZER = "adam"
ALPHA_FACTOR = 2.5  # PGD's default step: 2.5 * epsilon / steps, a common rule of thumb
START_SIGMAS = 5.0  # the random-start check allows this many standard deviations of its mean
LOSS_ROUNDING = 16  # units of rounding the loss check allows, times the clean loss
START_MIN_PIXELS = 100  # pixels the start must be free to move in (x ± epsilon in the box)
PGD_L2_GUARD = 1e-10  # torchattacks' PGDL2: added to gradient norms before dividing
APGD_GUARD = 1e-12  # torchattacks' APGD: added to norms before dividing
APGD_MOMENTUM = 0.75  # weight of the new step; 1 - it on the previous one (Croce & Hein 2020)
APGD_RHO = 0.75  # a step size is halved when at most rho of the steps since the last check rose

Box = tuple[float, float]  # the inputs' range, the attack's box


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   targeted: bool = False) -> torch.Tensor:
    """∇x of the summed cross-entropy to labels y (summed, so small per-example gradients do
    not underflow); of its negative when `targeted`, y being the targets (a step up it moves
    toward them)."""
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(-loss if targeted else loss, x)
    return grad


def per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-example values shaped (N, 1, ..., 1) to broadcast against `like`."""
    return values.reshape(-1, *[1] * (like.dim() - 1))


def l2_norms(t: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each example of `t`, shaped (N, 1, ..., 1)."""
    return per_example(torch.linalg.vector_norm(t.flatten(1), dim=1), t)


def clip(t: torch.Tensor, box: Box) -> torch.Tensor:
    return t.clamp(box[0], box[1])


def project_linf(x: torch.Tensor, point: torch.Tensor, epsilon: float, box: Box) -> torch.Tensor:
    """`point` projected onto the L-infinity ball of radius epsilon around x, then the box."""
    return clip(torch.minimum(torch.maximum(point, x - epsilon), x + epsilon), box)


def project_l2(x: torch.Tensor, point: torch.Tensor, epsilon: float, box: Box) -> torch.Tensor:
    """`point` projected onto the L2 ball of radius epsilon around x (its offset scaled by
    min(epsilon / norm, 1), as torchattacks' PGDL2), then the box."""
    delta = point - x
    norms = l2_norms(delta)
    factor = torch.where(norms > epsilon, epsilon / norms, torch.ones_like(norms))
    return clip(x + delta * factor, box)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float,
         box: Box = (0.0, 1.0), targeted: bool = False) -> torch.Tensor:
    """Fast gradient sign method: x + epsilon * sign(∇x loss), clipped to the box."""
    return clip(x + epsilon * input_gradient(model, x, y, targeted).sign(), box)


def pgd_iterates(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float,
                 alpha: float, steps: int, random_start: bool = True,
                 generator: torch.Generator | None = None, box: Box = (0.0, 1.0),
                 targeted: bool = False) -> Iterator[torch.Tensor]:
    """Projected gradient descent in the L-infinity ball (Madry et al. 2018): its start, then
    each iterate.

    From a uniform random point of the ball (or from x), `steps` signed-gradient ascent steps of
    size `alpha`, each projected back onto the ball and the box.
    """
    adversarial = x.detach()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        adversarial = clip(x + epsilon * (2 * noise - 1), box)
    yield adversarial
    for _ in range(steps):
        adversarial = adversarial + alpha * input_gradient(model, adversarial, y,
                                                           targeted).sign()
        adversarial = project_linf(x, adversarial, epsilon, box)
        yield adversarial.detach()


def pgd_l2_iterates(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float,
                    alpha: float, steps: int, random_start: bool = True,
                    generator: torch.Generator | None = None, box: Box = (0.0, 1.0),
                    targeted: bool = False) -> Iterator[torch.Tensor]:
    """PGD in the L2 ball, as torchattacks' PGDL2: its start, then each iterate.

    The start: a Gaussian direction scaled to a radius r * epsilon, r ~ U(0, 1) per example.
    Each step: alpha along the gradient divided by its norm, then the projection onto the ball
    (`project_l2`) and the box.
    """
    adversarial = x.detach()
    if random_start:
        direction = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        radius = torch.rand(len(x), generator=generator, dtype=x.dtype).to(x.device)
        delta = direction * (per_example(radius, x) / l2_norms(direction) * epsilon)
        adversarial = clip(x + delta, box)
    yield adversarial
    for _ in range(steps):
        grad = input_gradient(model, adversarial, y, targeted)
        adversarial = adversarial + alpha * (grad / (l2_norms(grad) + PGD_L2_GUARD))
        adversarial = project_l2(x, adversarial, epsilon, box)
        yield adversarial.detach()


def last(iterates: Iterator[torch.Tensor]) -> torch.Tensor:
    *_, final = iterates
    return final


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float, alpha: float,
        steps: int, random_start: bool = True, generator: torch.Generator | None = None,
        box: Box = (0.0, 1.0), targeted: bool = False) -> torch.Tensor:
    """PGD's last iterate (`pgd_iterates`)."""
    return last(pgd_iterates(model, x, y, epsilon, alpha, steps, random_start, generator, box,
                             targeted))


def apgd_checkpoints(steps: int) -> list[int]:
    """The iteration counts after which APGD reviews each step size, as torchattacks computes
    them: a first window of int(0.22 steps), each next one shorter by int(0.03 steps) down to
    int(0.06 steps) (each at least 1). For steps a multiple of 100 these are Croce & Hein's
    w_j = p_j steps, p_0 = 0, p_1 = 0.22, p_(j+1) = p_j + max(p_j - p_(j-1) - 0.03, 0.06)."""
    window = max(int(0.22 * steps), 1)
    shorter, shortest = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    points, at = [], window
    while at <= steps:
        points.append(at)
        window = max(window - shorter, shortest)
        at += window
    return points


@dataclass
class ApgdRun:
    """What one APGD run found per example: the point of highest loss, the last iterate that
    fooled the model (the start where none did) and whether the model still resisted."""

    best: torch.Tensor
    best_adversarial: torch.Tensor
    robust: torch.Tensor  # bool: right at every iterate (not on target, when targeted)

    @property
    def adversarial(self) -> torch.Tensor:
        """The fooling iterate where one was found, else the point of highest loss."""
        return torch.where(per_example(self.robust, self.best), self.best, self.best_adversarial)


def apgd_start(x: torch.Tensor, epsilon: float, norm: str, generator: torch.Generator | None,
               box: Box) -> torch.Tensor:
    """APGD's start: a random point on the sphere of radius epsilon (L-infinity: a uniform draw
    scaled to max |t| = epsilon; L2: a Gaussian direction), clipped to the box."""
    if norm == "linf":
        t = 2 * torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) - 1
        scale = per_example(t.flatten(1).abs().amax(dim=1), t)
    else:
        t = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        scale = summed_norms(t) + APGD_GUARD
    return clip(x + epsilon * t / scale, box)


def summed_norms(t: torch.Tensor) -> torch.Tensor:
    """L2 norms per example as APGD computes them, sqrt of the summed squares (N, 1, ..., 1)."""
    return (t**2).sum(dim=tuple(range(1, t.dim())), keepdim=True).sqrt()


def apgd_project(x: torch.Tensor, point: torch.Tensor, epsilon: float, norm: str, box: Box,
                 pad: float = 0.0) -> torch.Tensor:
    """APGD's projection onto the ball and the box; L2 as torchattacks writes it, the offset's
    norm capped at epsilon (`pad` added to the norm in the cap, as its second projection)."""
    if norm == "linf":
        return project_linf(x, point, epsilon, box)
    delta = point - x
    norms = summed_norms(delta)
    return clip(x + delta / (norms + APGD_GUARD) * (norms + pad).clamp(max=epsilon), box)


def apgd_step(x: torch.Tensor, current: torch.Tensor, previous: torch.Tensor,
              grad: torch.Tensor, step_size: torch.Tensor, momentum: float, epsilon: float,
              norm: str, box: Box) -> torch.Tensor:
    """One APGD step: z = P(x_k + eta * direction), x_(k+1) = P(x_k + a (z - x_k) + (1 - a)
    (x_k - x_(k-1))), the direction sign(grad) (L-infinity) or grad / |grad| (L2)."""
    direction = grad.sign() if norm == "linf" else grad / (summed_norms(grad) + APGD_GUARD)
    z = apgd_project(x, current + step_size * direction, epsilon, norm, box)
    moved = current + (z - current) * momentum + (current - previous) * (1 - momentum)
    return apgd_project(x, moved, epsilon, norm, box, pad=APGD_GUARD if norm == "l2" else 0.0)


def example_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor, targeted: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example objective (cross-entropy to y; its negative toward targets y), its input
    gradient and whether the prediction still resists (differs from the targets)."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    losses = F.cross_entropy(logits, y, reduction="none")
    losses = -losses if targeted else losses
    (grad,) = torch.autograd.grad(losses.sum(), x)
    predicted = logits.detach().argmax(dim=1)
    return losses.detach(), grad, predicted != y if targeted else predicted == y


def oscillating(history: torch.Tensor, i: int, window: int) -> torch.Tensor:
    """Per example: whether at most rho of the `window` steps up to step i raised the loss.
    `history` starts as zeros, and the first window compares its first step with the last row
    (still zero), as AutoAttack's and torchattacks' index i - window wraps around."""
    rises = sum((history[i - c] > history[i - c - 1]).to(history.dtype)
                for c in range(window))
    return rises <= window * APGD_RHO


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float, steps: int,
         norm: str = "linf", generator: torch.Generator | None = None, box: Box = (0.0, 1.0),
         targeted: bool = False) -> ApgdRun:
    """APGD-CE (Croce & Hein 2020), step for step as torchattacks' APGD (one restart, no EOT).

    From `apgd_start`, step size 2 epsilon per example, momentum 0.75 after the first step; at
    each of `apgd_checkpoints` an example's step size is halved, and it restarts from its best
    point, when its loss rose in at most rho of the steps since the last checkpoint, or when
    its step size was kept there and its best loss has not improved since.
    """
    current = apgd_start(x, epsilon, norm, generator, box)
    losses, grad, robust = example_losses(model, current, y, targeted)
    best, best_grad, best_loss = current.clone(), grad.clone(), losses.clone()
    best_adversarial = current.clone()
    step_size = per_example(torch.full((len(x),), 2 * epsilon, dtype=x.dtype,
                                       device=x.device), x)
    history = torch.zeros(steps, len(x), dtype=losses.dtype, device=x.device)
    checkpoints = apgd_checkpoints(steps)
    windows = dict(zip(checkpoints, np.diff([0, *checkpoints]).tolist(), strict=True))
    previous = current.clone()
    best_at_check, reduced_at_check = best_loss.clone(), torch.ones_like(robust)
    for i in range(steps):
        current, previous = apgd_step(x, current, previous, grad, step_size,
                                      APGD_MOMENTUM if i > 0 else 1.0, epsilon, norm,
                                      box), current
        losses, grad, resisting = example_losses(model, current, y, targeted)
        robust = robust & resisting
        best_adversarial[~resisting] = current[~resisting]
        history[i] = losses
        improved = losses > best_loss
        best[improved], best_grad[improved] = current[improved], grad[improved]
        best_loss[improved] = losses[improved]
        if i + 1 in windows:
            reduce = (oscillating(history, i, windows[i + 1])
                      | (~reduced_at_check & (best_at_check >= best_loss)))
            reduced_at_check, best_at_check = reduce.clone(), best_loss.clone()
            step_size[reduce] /= 2.0
            current[reduce], grad[reduce] = best[reduce], best_grad[reduce]
    return ApgdRun(best, best_adversarial, robust)


def apgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float, steps: int,
                norm: str = "linf", generator: torch.Generator | None = None,
                box: Box = (0.0, 1.0), targeted: bool = False) -> torch.Tensor:
    """`apgd` on the inputs the model resists (right; off target when targeted), as
    torchattacks' APGD attacks them (so its random draws match); the others, already fooled,
    are returned as they are."""
    with torch.no_grad():
        predicted = model(x).argmax(dim=1)
    resisting = predicted != y if targeted else predicted == y
    adversarial = x.detach().clone()
    if resisting.any():
        adversarial[resisting] = apgd(model, x[resisting], y[resisting], epsilon, steps, norm,
                                      generator, box, targeted).adversarial
    return adversarial


def ball_excess(x: torch.Tensor, adversarial: torch.Tensor, epsilon: float, norm: str = "linf",
                box: Box = (0.0, 1.0)) -> float:
    """How far `adversarial` leaves the ball (L-infinity or L2) of radius `epsilon` around x
    or the box (0 inside both)."""
    delta = (adversarial - x).flatten(1)
    size = (delta.abs().amax(dim=1) if norm == "linf"
            else torch.linalg.vector_norm(delta, dim=1))
    return max(size.max().item() - epsilon, box[0] - adversarial.min().item(),
               adversarial.max().item() - box[1], 0.0)


def start_spread(x: torch.Tensor, start: torch.Tensor, epsilon: float,
                 box: Box = (0.0, 1.0)) -> tuple[float, int]:
    """Mean |start - x| / epsilon over the pixels free to move (x ± epsilon inside the box,
    so clipping cannot bind), and their count. A uniform start in the ball gives 1/2 with
    standard deviation sqrt(1/12) per pixel."""
    free = (x >= box[0] + epsilon) & (x <= box[1] - epsilon)
    count = int(free.sum()) if epsilon > 0 else 0
    if not count:
        return math.nan, count
    return ((start - x).abs()[free] / epsilon).mean().item(), count


@dataclass
class Shown:
    """One attacked example kept for the figure."""

    x: torch.Tensor
    adversarial: torch.Tensor
    label: int
    target: int | None
    clean: torch.Tensor  # class probabilities
    attacked: torch.Tensor
    fooled: bool


@dataclass
class Tally:
    """Counts and sums over the attacked test split, batch by batch, and a few examples."""

    keep: int
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("count", "clean_correct", "robust_correct", "fooled", "targetable", "hits", "linf",
         "l2", "confidence_drop", "clean_loss", "attacked_loss", "clean_target_loss",
         "attacked_target_loss"), 0.0))
    labels: list[torch.Tensor] = field(default_factory=list)
    clean_pred: list[torch.Tensor] = field(default_factory=list)
    attacked_pred: list[torch.Tensor] = field(default_factory=list)
    shown: list[Shown] = field(default_factory=list)

    def add(self, x: torch.Tensor, y: torch.Tensor, adversarial: torch.Tensor,
            clean_logits: torch.Tensor, attacked_logits: torch.Tensor,
            targets: torch.Tensor | None) -> None:
        """One attacked batch."""
        clean, attacked = clean_logits.softmax(dim=1), attacked_logits.softmax(dim=1)
        clean_pred, attacked_pred = clean.argmax(dim=1), attacked.argmax(dim=1)
        correct = clean_pred == y
        fooled = correct & (attacked_pred != y)
        rows = torch.arange(len(y), device=y.device)
        delta = (adversarial - x).flatten(1)
        add = {"count": len(y), "clean_correct": correct.sum(),
               "robust_correct": (attacked_pred == y).sum(), "fooled": fooled.sum(),
               "linf": delta.abs().amax(dim=1).sum(),
               "l2": torch.linalg.vector_norm(delta, dim=1).sum(),
               "confidence_drop": (clean[rows, y] - attacked[rows, y]).sum(),
               "clean_loss": F.cross_entropy(clean_logits, y, reduction="sum"),
               "attacked_loss": F.cross_entropy(attacked_logits, y, reduction="sum")}
        if targets is not None:
            aimed = targets != y
            add |= {"targetable": aimed.sum(), "hits": (aimed & (attacked_pred == targets)).sum(),
                    "clean_target_loss": F.cross_entropy(clean_logits, targets,
                                                         reduction="sum"),
                    "attacked_target_loss": F.cross_entropy(attacked_logits, targets,
                                                            reduction="sum")}
        for name, value in add.items():
            self.sums[name] += float(value)
        self.labels.append(y.cpu())
        self.clean_pred.append(clean_pred.cpu())
        self.attacked_pred.append(attacked_pred.cpu())
        for i in itertools.chain(fooled.nonzero().flatten().tolist(),
                                 (correct & ~fooled).nonzero().flatten().tolist()):
            self.offer(Shown(x[i].cpu(), adversarial[i].cpu(), int(y[i]),
                             None if targets is None else int(targets[i]), clean[i].cpu(),
                             attacked[i].cpu(), bool(fooled[i])))

    def offer(self, example: Shown) -> None:
        """Keep up to `keep` examples, fooled ones first."""
        if len(self.shown) < self.keep:
            self.shown.append(example)
        elif example.fooled:
            replaceable = [j for j, s in enumerate(self.shown) if not s.fooled]
            if replaceable:
                self.shown[replaceable[-1]] = example
        self.shown.sort(key=lambda s: not s.fooled)

    def mean(self, name: str, over: str = "count") -> float:
        return self.sums[name] / self.sums[over] if self.sums[over] else 0.0

    def predictions(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Labels, clean and attacked predictions over the split."""
        return torch.cat(self.labels), torch.cat(self.clean_pred), torch.cat(self.attacked_pred)


class Adversarial(Experiment):
    """Attack a trained classifier (L-infinity or L2, radius epsilon) on its whole test split."""

    headline = ("robust_accuracy", "clean_accuracy", "attack_success_rate")
    proves = ("every perturbation stays within epsilon and the input range, the attack raises "
              "the loss (lowers it toward the target), and FGSM equals one-step PGD bit for bit")

    def __init__(self, attack: str = "pgd", epsilon: float = 0.1, steps: int = 10,
                 alpha: float | None = None, random_start: bool = True,
                 targeted: bool = False, target_class: int | None = None,
                 input_range: list[float] = (0.0, 1.0), examples: int = 6, epochs: int = 8,
                 batch_size: int = 64, learning_rate: float = 5e-3,
                 test_fraction: float = 0.2, attack_batch_size: int = 512, cache: bool = True,
                 attack_seed: int = 0):
        self.attack = choice("experiment.attack", attack, ATTACKS)
        self.norm = NORMS[self.attack]
        self.box = range_of("experiment.input_range", input_range)
        self.epsilon = number("experiment.epsilon", epsilon, minimum=0.0,
                              maximum=self.box[1] - self.box[0] if self.norm == "linf" else None)
        self.steps = integer("experiment.steps", steps, minimum=1)
        self.alpha = (ALPHA_FACTOR * self.epsilon / self.steps if alpha is None
                      else number("experiment.alpha", alpha, positive=True))
        self.random_start = boolean("experiment.random_start", random_start)
        self.targeted = boolean("experiment.targeted", targeted)
        self.target_class = (None if target_class is None
                             else integer("experiment.target_class", target_class))
        if self.target_class is not None and not self.targeted:
            raise ConfigError(f"experiment.target_class={self.target_class} needs "
                              "experiment.targeted=true")
        self.examples = integer("experiment.examples", examples, minimum=1)
        self.epochs = integer("experiment.epochs", epochs, minimum=1)
        self.batch_size = integer("experiment.batch_size", batch_size, minimum=1)
        self.learning_rate = number("experiment.learning_rate", learning_rate, positive=True)
        self.test_fraction = number("experiment.test_fraction", test_fraction, minimum=0.05,
                                    maximum=0.5)
        self.attack_batch_size = integer("experiment.attack_batch_size", attack_batch_size,
                                         minimum=1)
        self.cache = boolean("experiment.cache", cache)
        self.attack_seed = integer("experiment.attack_seed", attack_seed, minimum=0)
        self.workload: Workload | None = None

    def prepare(self, ctx: RunContext) -> None:
        """The classifier's data (own: the digits split by the seed), model (own: the digits
        CNN) and loss, refused unless the data are labelled, lie in `input_range` and have the
        target class."""
        seed = ctx.generator.initial_seed()

        def own_data() -> dict[str, TensorDataset]:
            split = digits(seed, self.test_fraction, ctx.dtype,
                           ctx.cache_dir if self.cache else None)
            return {"train": TensorDataset(split.train_x, split.train_y),
                    "test": TensorDataset(split.test_x, split.test_y)}

        def own_model(input_shape: tuple[int, ...], outputs: int) -> nn.Module:
            return conv_net(input_shape, outputs, generator=torch.Generator().manual_seed(seed))

        try:
            workload = ctx.components.resolve(ctx, own_data, own_model, task="classification")
        except ConfigError as error:
            raise ConfigError(f"adversarial: {error}") from None
        for split in ("train", "test"):
            self.check_range(workload, split)
        if self.target_class is not None and not self.target_class < workload.classes:
            raise ConfigError(f"experiment.target_class={self.target_class} must be < "
                              f"{workload.classes} (the classes of data="
                              f"{ctx.components.names['data']})")
        self.workload = workload

    def check_range(self, workload: Workload, split: str) -> None:
        """Refuse data whose `split` inputs leave `input_range` (the attack's box)."""
        low = high = None
        for x, _ in workload.data.batches(split, self.attack_batch_size):
            low = x.min().item() if low is None else min(low, x.min().item())
            high = x.max().item() if high is None else max(high, x.max().item())
        if low is not None and (low < self.box[0] or high > self.box[1]):
            raise ConfigError(
                f"experiment.input_range={list(self.box)} does not hold data="
                f"{workload.data.name}: its {split} inputs span [{low:.4g}, {high:.4g}]; set "
                "experiment.input_range to the range of your data")

    @single_threaded()
    def run(self, ctx: RunContext) -> Result:
        if self.workload is None:
            self.prepare(ctx)
        workload, names = self.workload, ctx.components.names
        spec = TrainSpec(training_components(ctx, self.test_fraction), self.epochs,
                         self.batch_size, self.learning_rate, TRAINING_OPTIMIZER,
                         ctx.generator.initial_seed(), str(ctx.dtype), ctx.device.type)
        model, entry = trained_classifier(spec, workload, ctx.cache_dir if self.cache else None)
        ctx.log.info("adversarial: classifier %s (cache %s)", entry.key, entry.status)
        model.requires_grad_(False)
        tally, checks = self.attack_split(model, workload)
        metrics = {**self.metrics(tally), "parameters": float(parameter_count(model))}
        return Result(
            metrics=metrics,
            series={"train_loss": list(entry.payload["epoch_loss"])},
            checks=checks,
            figures={"examples": self.plot_examples(tally, names, workload.class_names),
                     "confusion": self.plot_confusion(tally, metrics, workload.class_names)},
            summary={"test_size": int(tally.sums["count"]),
                     "train_size": workload.data.size("train"), "cache_entry": entry.key,
                     "cache": entry.status, **names,
                     "parameters": int(metrics["parameters"])},
            tags={"cache": entry.status, "cache_entry": entry.key},
            objective=metrics["robust_accuracy"],
        )

    def attack_split(self, model: nn.Module, workload: Workload
                     ) -> tuple[Tally, dict[str, Check]]:
        """The attack over the test split in batches of `attack_batch_size`, and its checks."""
        starts = torch.Generator().manual_seed(self.attack_seed)
        draws = torch.Generator().manual_seed(self.attack_seed)  # targets, apart from starts
        tally = Tally(self.examples)
        excess = {"epsilon_ball": 0.0, "fgsm_equals_one_step_pgd": 0.0, "iterates_in_ball": 0.0}
        spread = [0.0, 0]  # |start - x| / epsilon summed over free pixels, and their count
        size = workload.data.size("test")
        for x, y in track(workload.data.batches("test", self.attack_batch_size),
                          None if size is None else math.ceil(size / self.attack_batch_size),
                          f"adversarial: {self.attack} on the test split", "batches"):
            aims = self.targets(y, workload.classes, draws)
            labels = y if aims is None else aims
            adversarial = self.perturb(model, x, labels, starts, excess, spread)
            one_step = pgd(model, x, labels, self.epsilon, self.epsilon, 1, random_start=False,
                           box=self.box, targeted=self.targeted)
            excess["fgsm_equals_one_step_pgd"] = max(
                excess["fgsm_equals_one_step_pgd"],
                (fgsm(model, x, labels, self.epsilon, self.box, self.targeted)
                 - one_step).abs().max().item())
            excess["epsilon_ball"] = max(excess["epsilon_ball"], ball_excess(
                x, adversarial, self.epsilon, self.norm, self.box))
            with torch.no_grad():
                tally.add(x, y, adversarial, model(x), model(adversarial), aims)
        return tally, self.checks(tally, excess, spread, workload)

    def targets(self, y: torch.Tensor, classes: int, generator: torch.Generator
                ) -> torch.Tensor | None:
        """The batch's targets: `target_class`, or a random other class per example (None
        when untargeted)."""
        if not self.targeted:
            return None
        if self.target_class is not None:
            return torch.full_like(y, self.target_class)
        shift = torch.randint(1, classes, y.shape, generator=generator).to(y.device)
        return (y + shift) % classes

    def perturb(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                generator: torch.Generator, excess: dict[str, float], spread: list) -> torch.Tensor:
        """The adversarial batch; PGD's start and iterates checked against the ball on the
        way (in `excess`) and, L-infinity, its start's spread summed into `spread`."""
        if self.attack == "fgsm":
            return fgsm(model, x, labels, self.epsilon, self.box, self.targeted)
        if self.attack.startswith("apgd"):
            return apgd_attack(model, x, labels, self.epsilon, self.steps, self.norm, generator,
                               self.box, self.targeted)
        walk = pgd_iterates if self.attack == "pgd" else pgd_l2_iterates
        iterates = walk(model, x, labels, self.epsilon, self.alpha, self.steps,
                        self.random_start, generator, self.box, self.targeted)
        start = adversarial = next(iterates)
        worst = ball_excess(x, start, self.epsilon, self.norm, self.box)
        for adversarial in iterates:
            worst = max(worst, ball_excess(x, adversarial, self.epsilon, self.norm, self.box))
        excess["iterates_in_ball"] = max(excess["iterates_in_ball"], worst)
        if self.attack == "pgd":
            mean, count = start_spread(x, start, self.epsilon, self.box)
            if count:
                spread[0] += mean * count
                spread[1] += count
        return adversarial

    def checks(self, tally: Tally, excess: dict[str, float], spread: list,
               workload: Workload) -> dict[str, Check]:
        """The ball and box, FGSM = one-step PGD, the loss moved the attack's way, and PGD's
        iterates and start."""
        rounding = torch.finfo(workload.dtype).eps * max(1.0, *map(abs, self.box))
        ball_tolerance = 2 * rounding * (math.sqrt(math.prod(workload.input_shape))
                                         if self.norm == "l2" else 1.0)
        checks = {"epsilon_ball": Check(excess["epsilon_ball"], ball_tolerance),
                  "fgsm_equals_one_step_pgd": Check(excess["fgsm_equals_one_step_pgd"], 0.0)}
        if self.targeted:
            checks["target_loss_lowered"] = self.loss_check(
                tally.mean("attacked_target_loss"), tally.mean("clean_target_loss"),
                workload.dtype)
        else:
            checks["loss_raised"] = self.loss_check(
                tally.mean("clean_loss"), tally.mean("attacked_loss"), workload.dtype)
        if self.attack in STEPPED:
            checks["iterates_in_ball"] = Check(excess["iterates_in_ball"], ball_tolerance)
        if self.attack == "pgd" and self.random_start and spread[1] >= START_MIN_PIXELS:
            checks["random_start"] = Check(abs(spread[0] / spread[1] - 0.5),
                                           START_SIGMAS * math.sqrt(1 / 12 / spread[1]))
        return checks

    @staticmethod
    def loss_check(before: float, after: float, dtype: torch.dtype) -> Check:
        """The mean cross-entropy moved the attack's way, `before` not above `after` (a step
        along the loss's signed gradient moves it so to first order), up to its rounding."""
        return Check(max(before - after, 0.0),
                     LOSS_ROUNDING * torch.finfo(dtype).eps * max(abs(before), abs(after)))

    def metrics(self, tally: Tally) -> dict[str, float]:
        metrics = {
            "clean_accuracy": tally.mean("clean_correct"),
            "robust_accuracy": tally.mean("robust_correct"),
            "attack_success_rate": tally.mean("fooled", over="clean_correct"),
            "linf": tally.mean("linf"), "l2": tally.mean("l2"),
            "confidence_drop": tally.mean("confidence_drop"),
            "clean_loss": tally.mean("clean_loss"), "attacked_loss": tally.mean("attacked_loss"),
        }
        if self.targeted:
            metrics["targeted_success_rate"] = tally.mean("hits", over="targetable")
            metrics["clean_target_loss"] = tally.mean("clean_target_loss")
            metrics["attacked_target_loss"] = tally.mean("attacked_target_loss")
        if self.attack in STEPPED:
            metrics["alpha"] = self.alpha  # the step size used, default or not
        return metrics

    def describe(self) -> str:
        ball = f"{'L2' if self.norm == 'l2' else 'L-inf'} ε = {self.epsilon:g}"
        goal = ("a random other class" if self.target_class is None
                else f"class {self.target_class}")
        aim = f", targeted at {goal}" if self.targeted else ""
        if self.attack == "fgsm":
            return f"FGSM, {ball}{aim}"
        if self.attack.startswith("apgd"):
            return f"APGD-CE, {ball}, {self.steps} steps{aim}"
        start = "random start" if self.random_start else "no random start"
        return (f"{self.attack.upper()}, {ball}, {self.steps} steps of α = {self.alpha:.3g}, "
                f"{start}{aim}")

    def plot_examples(self, tally: Tally, names: dict[str, str], classes: list[str]
                      ) -> Figure:
        """Originals, perturbations and adversarial inputs, successful attacks first, each
        labelled by its class name."""
        chosen = tally.shown or []
        columns = max(len(chosen), 1)
        what = f"model={names['model']} on data={names['data']}"
        fig, axes = figure(f"{what} under {self.describe()}", 3, columns,
                           size=(2.1 * columns + 1.6, 7.6), layout=None)
        axes = np.asarray(axes).reshape(3, columns)
        fig.subplots_adjust(left=0.09, right=0.86, top=0.84, bottom=0.03, wspace=0.15,
                            hspace=0.5)
        low, high = self.box
        deltas = [s.adversarial - s.x for s in chosen]
        limit = max((d.abs().max().item() for d in deltas), default=0.0) or 1.0
        image = delta = None
        for column, example in enumerate(chosen):
            clean_image = as_image(example.x)
            attacked_image = as_image(example.adversarial)
            image = axes[0, column].imshow(clean_image, cmap="gray", vmin=low, vmax=high)
            axes[0, column].set_title(f"true {classes[example.label]}\npred "
                                      f"{classes[example.clean.argmax().item()]} "
                                      f"({example.clean.max().item():.2f})", fontsize=9)
            delta = axes[1, column].imshow(attacked_image - clean_image, cmap="RdBu_r",
                                           vmin=-limit, vmax=limit)
            axes[2, column].imshow(attacked_image, cmap="gray", vmin=low, vmax=high)
            predicted = classes[example.attacked.argmax().item()]
            aim = "" if example.target is None else f" (target {classes[example.target]})"
            axes[2, column].set_title(
                f"pred {predicted} ({example.attacked.max().item():.2f}){aim}\n"
                f"{'fooled' if example.fooled else 'still right'}", fontsize=9,
                color="tab:red" if example.fooled else "black")
        for row, name in enumerate(("original", "perturbation", "adversarial")):
            axes[row, 0].set_ylabel(name, fontsize=10, fontweight="bold")
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        if image is not None:
            for row, (mappable, label) in enumerate(((image, "input"), (delta, "x_adv − x"),
                                                     (image, "input"))):
                box = axes[row, -1].get_position()
                cax = fig.add_axes((box.x1 + 0.02, box.y0, 0.012, box.height))
                fig.colorbar(mappable, cax=cax, label=label)
        return fig

    def plot_confusion(self, tally: Tally, metrics: dict[str, float], names: list[str]
                       ) -> Figure:
        """True class against predicted class, before and after the attack."""
        classes = len(names)
        fig, axes = figure(f"Predictions before and after the attack ({self.describe()})", 1, 2,
                           size=(13, 6), layout=None)
        longest = max(map(len, names), default=0)
        named = longest if classes <= 20 and longest > 2 else 0  # names, not indices
        fig.subplots_adjust(left=0.05 + 0.007 * named, right=0.94, bottom=0.1 + 0.014 * named,
                            top=0.89, wspace=0.21 + 0.02 * named)  # room for the names
        labels, clean, attacked = tally.predictions()
        views = ((clean, f"clean: accuracy {metrics['clean_accuracy']:.3f}"),
                 (attacked, f"attacked: accuracy {metrics['robust_accuracy']:.3f}"))
        for ax, (predicted, title) in zip(axes, views, strict=True):
            counts = confusion(labels, predicted, classes)
            image = ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(counts.sum(axis=1).max(), 1))
            if classes <= 20:
                for (row, column), count in np.ndenumerate(counts):
                    if count:
                        ax.text(column, row, str(count), ha="center", va="center", fontsize=8,
                                color="white" if count > counts.max() / 2 else "black")
            ax.set(title=title, xlabel="predicted class", ylabel="true class")
            if classes <= 20:
                ax.set_xticks(range(classes), names, rotation=90 if named else 0)
                ax.set_yticks(range(classes), names)
            ax.grid(False)
            fig.colorbar(image, ax=ax, fraction=0.046, label="test inputs")
        return fig

    @classmethod
    def sweep_figure(cls, jobs: list[dict[str, Any]]) -> Figure | None:
        """Robust accuracy against epsilon, one line per attack, clean accuracy at epsilon 0."""
        done = [j for j in jobs if "robust_accuracy" in j["metrics"]
                and "experiment.epsilon" in j["params"]]
        if not done:
            return None
        fig, ax = figure("Robust accuracy against the attack radius ε", size=(9, 6))
        by_attack: dict[str, list[dict[str, Any]]] = {}
        for job in done:
            by_attack.setdefault(job["params"].get("experiment.attack", "?"), []).append(job)
        for (attack, group), marker in zip(sorted(by_attack.items()), itertools.cycle("osD^v")):
            group.sort(key=lambda j: float(j["params"]["experiment.epsilon"]))
            norm = {"linf": "L-inf", "l2": "L2"}.get(NORMS.get(attack, ""), "?")
            ax.plot([float(j["params"]["experiment.epsilon"]) for j in group],
                    [j["metrics"]["robust_accuracy"] for j in group], marker=marker,
                    label=f"{attack.upper()} ({norm})")
        clean = sorted({round(j["metrics"]["clean_accuracy"], 6) for j in done})
        ax.plot([0.0] * len(clean), clean, "*", color="black", markersize=16,
                label=f"clean accuracy {', '.join(f'{c:.3f}' for c in clean)}")
        failed = len(jobs) - len(done)
        ax.set(xlabel="ε (radius in the attack's norm, in input units)",
               ylabel="accuracy on the attacked test set", ylim=(-0.03, 1.03),
               title=f"{len(done)} jobs" + (f", {failed} not completed (not shown)" if failed
                                             else ""))
        ax.legend()
        return fig


def range_of(key: str, value: Sequence[float]) -> Box:
    """[low, high] with low < high."""
    low, high = vector(key, value, 2)
    if not low < high:
        raise ConfigError(f"{key}={[low, high]} must be [low, high] with low < high")
    return low, high


def training_components(ctx: RunContext, test_fraction: float) -> dict[str, Any]:
    """What the classifier is trained on, for the cache key: the chosen model, data and loss
    configs (None: the own ones) and how the data is split."""
    components = ctx.components
    chosen = {key: getattr(components, key).config for key in ("model", "data", "loss")}
    split = ({"validation": components.validation, "test": components.test}
             if components.data.chosen else {"own_test_fraction": test_fraction})
    return {**chosen, "split": split}


def as_image(t: torch.Tensor) -> np.ndarray:
    """One input as a grey image: (H, W), the first channel of (C, H, W), anything else a row."""
    if t.dim() == 3:
        t = t[0]
    elif t.dim() != 2:
        t = t.reshape(1, -1)
    return t.float().numpy()


def confusion(true: torch.Tensor, predicted: torch.Tensor, classes: int) -> np.ndarray:
    """Counts of (true class, predicted class)."""
    flat = (true * classes + predicted).cpu()
    return torch.bincount(flat, minlength=classes**2).reshape(classes, classes).numpy()
