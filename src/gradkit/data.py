"""Seeded synthetic batches: every dataset a demonstration trains or probes on lives here."""

from __future__ import annotations

import torch


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
