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


ScalarFunction = Callable[[torch.Tensor], torch.Tensor]


def batched_gradient(f: ScalarFunction, points: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and gradients of f at every point (..., n) with one backward over the sum.

    The points are independent, so d(sum f)/d(point) is each point's own gradient.
    """
    points = points.detach().requires_grad_(True)
    values = f(points)
    (grads,) = torch.autograd.grad(values.sum(), points)
    return values.detach(), grads


def gradient_per_point(f: ScalarFunction, points: torch.Tensor) -> torch.Tensor:
    """Gradients of f at each point of a (m, n) batch, one backward pass each (the slow way)."""
    grads = []
    for point in points:
        point = point.detach().clone().requires_grad_(True)
        f(point).backward()
        grads.append(point.grad)
    return torch.stack(grads)


def hessian_by_rows(f: ScalarFunction, x: torch.Tensor) -> torch.Tensor:
    """The Hessian of f at x by double backward, one row per pass (the textbook way)."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(x), x, create_graph=True)
    rows = [torch.autograd.grad(grad[i], x, retain_graph=i < x.numel() - 1)[0]
            for i in range(x.numel())]
    return torch.stack(rows)


def hessian_torch_func(f: ScalarFunction, x: torch.Tensor) -> torch.Tensor:
    """The Hessian of f at x by torch.func.hessian (forward-over-reverse, vectorised)."""
    return torch.func.hessian(f)(x.detach())


def hessian_autograd_functional(f: ScalarFunction, x: torch.Tensor) -> torch.Tensor:
    """The Hessian of f at x by torch.autograd.functional.hessian(vectorize=True)."""
    return torch.autograd.functional.hessian(f, x.detach(), vectorize=True)


HESSIANS = {"rows": hessian_by_rows, "torch_func": hessian_torch_func,
            "autograd_functional": hessian_autograd_functional}


def batched_hessian(f: ScalarFunction, points: torch.Tensor) -> torch.Tensor:
    """Hessians (m, n, n) of f at each of the points (m, n), in one vectorised call."""
    return torch.func.vmap(torch.func.hessian(f))(points.detach())


def hessian_operator(f: ScalarFunction, x: torch.Tensor
                     ) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> H(x) v without building H: double backward through one retained graph of grad f.

    A batch of vectors (m, n) goes through in one vectorised call. Reusing the graph makes a
    product ~7x cheaper than torch.func.jvp(grad(f)), which retraces f on every call.
    """
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(x), x, create_graph=True)

    def apply(v: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad(grad, x, v, retain_graph=True,
                                   is_grads_batched=v.dim() > 1)[0]

    return apply


ROWS_UP_TO = 4  # below ~5 inputs the row-by-row loop beats the vectorised call (bench/geometry.py)


def default_hessian_method(n: int) -> str:
    """The fastest way to build an n x n Hessian: `rows` when small, else vectorised."""
    return "rows" if n <= ROWS_UP_TO else "autograd_functional"


def hessian(f: ScalarFunction, x: torch.Tensor) -> torch.Tensor:
    """The Hessian of f at x by the fastest method for its size."""
    return HESSIANS[default_hessian_method(x.numel())](f, x)
