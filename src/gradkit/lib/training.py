"""Training a classifier: optimizers, cycled mini-batches, evaluation, and the trained model a
run reuses from the weight cache."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradkit.core.components import Workload
from gradkit.lib.cache import Entry, cached
from gradkit.lib.datasets import Data
from gradkit.lib.progress import track

OPTIMIZERS = ("sgd", "adam")
SGD_MOMENTUM = 0.9


@contextmanager
def single_threaded() -> Iterator[None]:
    """One intra-op torch thread for the block (usable as a decorator), then the previous count.

    The digits networks are tiny (about 6k parameters, 8x8 inputs): a second thread only adds
    synchronisation, and on a busy machine its spin-waits made a run up to 15x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """`sgd` (momentum 0.9) or `adam` at learning rate `lr`."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM)
    return torch.optim.Adam(params, lr=lr)


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer,
                loader: Iterator[tuple[torch.Tensor, torch.Tensor]], steps: int,
                loss_fn: Callable[..., torch.Tensor] = F.cross_entropy,
                what: str = "training") -> list[float]:
    """`steps` optimizer steps on `loss_fn` (cross-entropy by default), their progress
    shown as `what`; the loss of each step's batch."""
    model.train()
    losses = []
    for x, y in track(itertools.islice(loader, steps), steps, what):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on (x, y)."""
    model.eval()
    logits = model(x)
    return F.cross_entropy(logits, y).item(), (logits.argmax(dim=1) == y).float().mean().item()


@torch.no_grad()
def evaluate_batches(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     loss_fn: Callable[..., torch.Tensor]) -> tuple[float, float]:
    """Mean `loss_fn` over the items of `loader` (weighted by batch size) and accuracy (NaN
    unless the targets are class labels of 2-D logits; batches without targets have none)."""
    model.eval()
    total = correct = count = 0.0
    labelled = True
    for x, y in loader:
        output = model(x)
        total += loss_fn(output, y).item() * len(x)
        labelled = (labelled and y is not None and output.dim() == 2
                    and not y.is_floating_point())
        if labelled:
            correct += (output.argmax(dim=1) == y).sum().item()
        count += len(x)
    if not count:
        raise ValueError("evaluate_batches: no batches")
    return total / count, correct / count if labelled else math.nan


@dataclass(frozen=True)
class TrainSpec:
    """Everything that determines a trained classifier's weights (with the code's torch):
    `components` holds the configs of the chosen model, data and loss (None: the
    demonstration's own) and how the data is split; the rest is the training."""

    components: dict[str, Any]
    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str
    seed: int
    dtype: str
    device: str


def passes_of(data: Data, split: str, batch_size: int) -> int:
    """Batches in one pass over `split` (counted for an iterable split)."""
    size = data.size(split)
    if size is not None:
        return -(-size // batch_size)
    return sum(1 for _ in data.batches(split, batch_size))


def trained_classifier(spec: TrainSpec, workload: Workload, cache_dir: Path | None
                       ) -> tuple[nn.Module, Entry]:
    """The workload's model trained as `spec` says on its train split, or read from
    `cache_dir` (None: trained afresh, nothing read or written).

    Initial weights and batch order come from `spec.seed`, so a cache entry never depends on
    what the run drew before; the key holds the spec and the model's repr.
    """
    def train() -> dict:
        model = workload.new_model(spec.seed)
        optimizer = make_optimizer(spec.optimizer, model.parameters(), spec.learning_rate)
        per_epoch = passes_of(workload.data, "train", spec.batch_size)
        loader = workload.data.cycled("train", spec.batch_size, spec.epochs * per_epoch,
                                      torch.Generator().manual_seed(spec.seed))
        losses = train_steps(model, optimizer, loader, spec.epochs * per_epoch,
                             workload.loss_of, f"training the classifier ({spec.epochs} epochs)")
        epoch_loss = [sum(losses[i:i + per_epoch]) / per_epoch
                      for i in range(0, len(losses), per_epoch)]
        return {"state": model.state_dict(), "epoch_loss": epoch_loss}

    model = workload.new_model(spec.seed)
    key_spec = {**asdict(spec), "architecture": repr(model)}
    entry = cached(cache_dir, key_spec, train)
    model.load_state_dict(entry.payload["state"])
    return model.eval(), entry
