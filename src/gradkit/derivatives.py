"""Derivatives computed several ways: row-wise backward, torch.func, finite differences."""

from __future__ import annotations

from collections.abc import Callable

import torch

VectorFunction = Callable[[torch.Tensor], torch.Tensor]


def jacobian_by_rows(f: VectorFunction, x: torch.Tensor) -> torch.Tensor:
    """The Jacobian of f at x with one backward pass per output (the textbook way)."""
    x = x.detach().requires_grad_(True)
    y = f(x)
    rows = [torch.autograd.grad(y[i], x, retain_graph=True)[0] for i in range(y.numel())]
    return torch.stack(rows)


def finite_difference_jacobian(f: VectorFunction, x: torch.Tensor,
                               step: float = 1e-6) -> torch.Tensor:
    """Central-difference Jacobian of f at x (an oracle that uses no autograd)."""
    x = x.detach()
    columns = []
    for j in range(x.numel()):
        offset = torch.zeros_like(x)
        offset[j] = step
        columns.append((f(x + offset) - f(x - offset)) / (2 * step))
    return torch.stack(columns, dim=-1)
