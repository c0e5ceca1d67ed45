"""Every built-in dataset: seeded synthetic batches and the bundled digits, as tensors and
as the datasets of the `data` config group."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, fields
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from gradkit.lib.cache import cached


def regression_batch(size: int, input_dim: int, output_dim: int, generator: torch.Generator,
                     *, dtype: torch.dtype = torch.float32, noise: float = 0.1
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs x ~ N(0, 1) and targets from a random linear teacher plus Gaussian noise."""
    x = torch.randn(size, input_dim, generator=generator, dtype=dtype)
    teacher = torch.randn(input_dim, output_dim, generator=generator, dtype=dtype)
    y = x @ teacher / input_dim**0.5
    return x, y + noise * torch.randn(y.shape, generator=generator, dtype=dtype)


def classification_batch(size: int, input_dim: int, classes: int, generator: torch.Generator,
                         *, dtype: torch.dtype = torch.float32
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs x ~ N(0, 1) labelled by the argmax of a random linear teacher."""
    x = torch.randn(size, input_dim, generator=generator, dtype=dtype)
    teacher = torch.randn(input_dim, classes, generator=generator, dtype=dtype)
    return x, (x @ teacher).argmax(dim=1)


@dataclass(frozen=True)
class Digits:
    """scikit-learn's 8x8 digits as (N, 1, 8, 8) images in [0, 1], split into train and test."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def to(self, device: torch.device) -> Digits:
        return Digits(*(getattr(self, f.name).to(device) for f in fields(self)))


DIGIT_CLASSES = 10
DIGIT_MAX = 16.0  # the bundled images hold integers 0..16
DIGITS_CSV = Path("datasets", "data", "digits.csv.gz")  # inside the scikit-learn package


def digits(seed: int, test_fraction: float = 0.2, dtype: torch.dtype = torch.float32,
           cache_dir: Path | None = None) -> Digits:
    """The bundled digits (1797 images, no download), stratified split fixed by `seed`.

    The split is kept in `cache_dir` beside the trained weights: making it imports
    scikit-learn, about 1 s of every process that needs the digits.
    """
    spec = {"data": "digits", "seed": seed, "test_fraction": test_fraction,
            "scikit-learn": version("scikit-learn")}
    split = cached(cache_dir, spec, lambda: _split_digits(seed, test_fraction)).payload

    def pixels(images: torch.Tensor) -> torch.Tensor:
        return (images.to(dtype) / DIGIT_MAX).reshape(-1, 1, 8, 8)  # exact: 16 is 2^4

    return Digits(pixels(split["train_x"]), split["train_y"], pixels(split["test_x"]),
                  split["test_y"])


def hold_out(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int
             ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) split into what is kept and a held-out `fraction` (at least one sample), by a
    permutation drawn from a generator seeded with `seed` (a validation split of the training
    data: the test split stays untouched)."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).to(x.device)
    held = max(1, round(fraction * len(x)))
    kept, out = order[held:], order[:held]
    return (x[kept], y[kept]), (x[out], y[out])


def _split_digits(seed: int, test_fraction: float) -> dict[str, torch.Tensor]:
    """scikit-learn's digits, split: pixel values 0..16 as uint8, labels as long."""
    from sklearn.model_selection import train_test_split

    images, labels = _digits_table()
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=test_fraction, stratify=labels, random_state=seed)
    return {"train_x": torch.as_tensor(train_x, dtype=torch.uint8),
            "train_y": torch.as_tensor(train_y, dtype=torch.long),
            "test_x": torch.as_tensor(test_x, dtype=torch.uint8),
            "test_y": torch.as_tensor(test_y, dtype=torch.long)}


def _digits_table() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits, read from its CSV without importing scikit-learn:
    pixel values 0..16 (N, 64) and labels, both uint8."""
    package = importlib.util.find_spec("sklearn")
    if package is None or not package.submodule_search_locations:
        raise ModuleNotFoundError("the digits need scikit-learn (pip install scikit-learn)")
    table = np.loadtxt(Path(package.submodule_search_locations[0]) / DIGITS_CSV,
                       delimiter=",", dtype=np.uint8)
    return table[:, :-1], table[:, -1]


def digits_dataset() -> TensorDataset:
    """The bundled 8x8 digits (1797 images, no download) as (N, 1, 8, 8) images in [0, 1]
    and integer labels."""
    images, labels = _digits_table()
    pixels = torch.from_numpy(images.astype(np.float32) / DIGIT_MAX)
    return TensorDataset(pixels.reshape(-1, 1, 8, 8), torch.from_numpy(labels).long())


def synthetic_regression(size: int = 512, input_dim: int = 10, output_dim: int = 1,
                         noise: float = 0.1, seed: int = 0) -> TensorDataset:
    """`size` samples of `regression_batch`, drawn from a generator seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(*regression_batch(size, input_dim, output_dim, generator, noise=noise))


def synthetic_classification(size: int = 512, input_dim: int = 10, classes: int = 3,
                             seed: int = 0) -> TensorDataset:
    """`size` samples of `classification_batch`, drawn from a generator seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(*classification_batch(size, input_dim, classes, generator))
