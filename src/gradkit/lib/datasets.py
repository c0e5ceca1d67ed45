"""A dataset split into train, validation and test, served as batches on the run's device.

`Data` wraps what a `data` config option builds: a map-style dataset (split here by the
seed, stratified when the targets are class labels), or one dataset or DataLoader per split.
Items are input tensors or (input, target) pairs; floating inputs take the run's dtype.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property

import torch
from torch.utils.data import Dataset, TensorDataset
from torch.utils.data.dataloader import default_collate

from gradkit.core.validation import ConfigError

SPLITS = ("train", "validation", "test")
Batch = tuple[torch.Tensor, torch.Tensor | None]


def is_map_style(source: object) -> bool:
    """Whether `source` can be indexed and sized (a map-style dataset)."""
    return hasattr(source, "__getitem__") and hasattr(source, "__len__")


@dataclass(frozen=True)
class Part:
    """One split: a map-style dataset with the indices it keeps, or an iterable of batches."""

    source: Dataset | Iterable
    indices: torch.Tensor | None = None  # None: every item of a map-style source

    def __len__(self) -> int:
        if not is_map_style(self.source):
            raise TypeError("an iterable split has no length")
        return len(self.source) if self.indices is None else len(self.indices)

    def items(self, positions: torch.Tensor) -> Batch:
        """The batch of the items at `positions` (positions within this split)."""
        chosen = positions if self.indices is None else self.indices[positions]
        if isinstance(self.source, TensorDataset):  # the fast path: one gather per tensor
            return as_batch([t[chosen] for t in self.source.tensors])
        return as_batch(default_collate([self.source[int(i)] for i in chosen]))


def as_batch(collated: object) -> Batch:
    """(input, target) from a collated batch: a tensor alone, or a pair (longer tuples keep
    their first two entries)."""
    if isinstance(collated, torch.Tensor):
        return collated, None
    if isinstance(collated, (list, tuple)) and len(collated) >= 2 and all(
            isinstance(t, torch.Tensor) for t in collated[:2]):
        return collated[0], collated[1]
    if isinstance(collated, Mapping):
        raise ValueError("items are dicts; gradkit takes tensors or (input, target) pairs")
    raise ValueError(f"items are {type(collated).__name__}; gradkit takes tensors or "
                     "(input, target) pairs")


class Data:
    """Train, validation and test splits of one dataset, named `name` in messages."""

    def __init__(self, name: str, parts: dict[str, Part], device: torch.device,
                 dtype: torch.dtype, log: logging.Logger | None = None):
        self.name, self.parts, self.device, self.dtype = name, parts, device, dtype
        self.log = log or logging.getLogger("gradkit")
        self.cycles_told: set[tuple[str, int, int]] = set()  # (split, batch size, steps)

    def size(self, split: str) -> int | None:
        """Items in `split` (None for an iterable split)."""
        part = self.parts[split]
        return len(part) if is_map_style(part.source) else None

    def batches(self, split: str, batch_size: int, generator: torch.Generator | None = None
                ) -> Iterator[Batch]:
        """One pass over `split`: shuffled by `generator` (drawn on the CPU), else in order.
        An iterable split yields its own batches."""
        part = self.parts[split]
        if not is_map_style(part.source):
            yield from (self.placed(as_batch(b)) for b in part.source)
            return
        count = len(part)
        order = (torch.randperm(count, generator=generator) if generator is not None
                 else torch.arange(count))
        for start in range(0, count, batch_size):
            yield self.items(part, order[start:start + batch_size])

    def cycled(self, split: str, batch_size: int, steps: int,
               generator: torch.Generator | None = None) -> Iterator[Batch]:
        """`steps` batches of `split`, starting a new pass (reshuffled) whenever one ends; says
        so in the log the first time it does for this split, batch size and number of steps."""
        passes = (self.batches(split, batch_size, generator) for _ in itertools.count())
        yielded = 0
        for number, one_pass in enumerate(passes):
            empty = True
            for batch in one_pass:
                empty = False
                if yielded == steps:
                    return
                yield batch
                yielded += 1
            if empty:
                raise ConfigError(f"data={self.name}: the {split} split is empty")
            if number == 0 and yielded < steps and (split, batch_size, steps) not in (
                    told := self.cycles_told):
                told.add((split, batch_size, steps))
                self.log.info("data=%s: the %s split gives %d batches; cycled for %d steps",
                              self.name, split, yielded, steps)

    def tensors(self, split: str, limit: int | None = None) -> Batch:
        """The first `limit` items of `split` (all by default) as one batch."""
        part = self.parts[split]
        if is_map_style(part.source):
            count = len(part) if limit is None else min(limit, len(part))
            return self.items(part, torch.arange(count))
        collected = list(itertools.islice(self.batches(split, 0), None))
        inputs = torch.cat([x for x, _ in collected])[:limit]
        targets = (None if collected[0][1] is None
                   else torch.cat([y for _, y in collected])[:limit])
        return inputs, targets

    def items(self, part: Part, positions: torch.Tensor) -> Batch:
        """The batch of `part`'s items at `positions`, placed; items that cannot be read or
        stacked into a batch raised as a ConfigError naming the data."""
        try:
            batch = part.items(positions)
        except (ValueError, RuntimeError, TypeError, IndexError, KeyError) as error:
            raise ConfigError(f"data={self.name}: its items do not make a batch: "
                              f"{type(error).__name__}: {str(error).strip()}") from None
        return self.placed(batch)

    def placed(self, batch: Batch) -> Batch:
        """`batch` on the run's device, floating tensors in the run's dtype."""
        return tuple(None if t is None else t.to(
            self.device, self.dtype if t.is_floating_point() else None) for t in batch)

    @property
    def first(self) -> Batch:
        """Two items of the train split (one if it has one): the probe of shapes and fit."""
        part = self.parts["train"]
        if is_map_style(part.source):
            if len(part) == 0:
                raise ConfigError(f"data={self.name}: the train split is empty")
            return self.items(part, torch.arange(min(2, len(part))))
        batch = next(iter(self.batches("train", 0)), None)
        if batch is None:
            raise ConfigError(f"data={self.name}: the train split is empty")
        return batch

    @cached_property
    def classes(self) -> int | None:
        """Number of classes when the targets are integer labels (None: regression); without a
        `classes` attribute the train split is scanned, once."""
        _, target = self.first
        if target is None or target.is_floating_point() or target.dim() != 1:
            return None
        source = self.parts["train"].source
        declared = getattr(source, "classes", None)
        if isinstance(declared, int):
            return declared
        if declared is not None and hasattr(declared, "__len__"):
            return len(declared)
        return int(max(y.max() for _, y in self.batches("train", 1024))) + 1

    @cached_property
    def class_names(self) -> list[str]:
        """The classes' names, as figures label them: the dataset's `classes` attribute when
        it lists them (as torchvision's datasets do), else their indices; [] for regression."""
        if self.classes is None:
            return []
        declared = getattr(self.parts["train"].source, "classes", None)
        if isinstance(declared, (list, tuple)) and len(declared) == self.classes:
            return [str(name) for name in declared]
        return [str(i) for i in range(self.classes)]

    def describe(self) -> str:
        """`train 1150, validation 287, test 360` (`?` for an iterable split)."""
        return ", ".join(f"{split} {self.size(split) or '?'}" for split in SPLITS)


def split_by_seed(name: str, source: Dataset, validation: float, test: float, seed: int
                  ) -> dict[str, Part]:
    """Train, validation and test parts of `source`, drawn by a permutation seeded by `seed`;
    stratified (each class split in the same shares) when its targets are class labels."""
    if len(source) == 0:
        raise ConfigError(f"data={name} is empty")
    generator = torch.Generator().manual_seed(seed)
    labels = _labels(source)
    groups = ([torch.nonzero(labels == c).flatten() for c in torch.unique(labels)]
              if labels is not None else [torch.arange(len(source))])
    chosen: dict[str, list[torch.Tensor]] = {split: [] for split in SPLITS}
    for group in groups:
        group = group[torch.randperm(len(group), generator=generator)]
        held_test = round(test * len(group))
        held_validation = round(validation * len(group))
        chosen["test"].append(group[:held_test])
        chosen["validation"].append(group[held_test:held_test + held_validation])
        chosen["train"].append(group[held_test + held_validation:])
    parts = {}
    for split, pieces in chosen.items():
        indices = torch.cat(pieces)
        parts[split] = Part(source, indices[torch.randperm(len(indices), generator=generator)])
    empty = [split for split in SPLITS if len(parts[split]) == 0]
    if empty:
        raise ConfigError(f"data={name} has {len(source)} items: too few for a {empty[0]} "
                          f"split of split.validation={validation}, split.test={test}")
    return parts


def _labels(source: Dataset) -> torch.Tensor | None:
    """The class labels of a TensorDataset of (inputs, integer labels), or of a dataset's
    `targets` attribute (torchvision's), else None."""
    if isinstance(source, TensorDataset) and len(source.tensors) >= 2:
        labels = source.tensors[1]
    elif getattr(source, "targets", None) is not None:
        labels = torch.as_tensor(source.targets)
    else:
        return None
    return labels if not labels.is_floating_point() and labels.dim() == 1 else None
