"""What a Hessian says: definiteness, the kind of a stationary point, and its spectrum and
trace from Hessian-vector products alone (Lanczos, Hutchinson, stochastic Lanczos
quadrature)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch

from gradkit.lib.progress import track

EIGENVALUE_TOLERANCE = 1e-12  # |λ| ≤ this x the curvature scale counts as zero
STATIONARY_TOLERANCE = 1e-10  # ‖∇f‖ ≤ this x the gradient scale counts as zero

KINDS = ("minimum", "maximum", "saddle", "degenerate")


def definiteness(eigenvalues: Sequence[float], tolerance: float = EIGENVALUE_TOLERANCE,
                 scale: float = 0.0) -> str:
    """positive_definite | negative_definite | positive_semidefinite | negative_semidefinite |
    indefinite, with eigenvalues within `tolerance` x max(`scale`, the largest |λ|) taken as
    zero (`scale`: the function's own curvature scale, where one is known)."""
    zero = tolerance * max([scale, *(abs(v) for v in eigenvalues)])
    positive = sum(v > zero for v in eigenvalues)
    negative = sum(v < -zero for v in eigenvalues)
    if positive and negative:
        return "indefinite"
    if positive == len(eigenvalues):
        return "positive_definite"
    if negative == len(eigenvalues):
        return "negative_definite"
    return "negative_semidefinite" if negative else "positive_semidefinite"


def point_kind(eigenvalues: Sequence[float], grad_norm: float, gradient_scale: float,
               curvature_scale: float = 0.0) -> str:
    """minimum | maximum | saddle | degenerate where ‖∇f‖ ≤ STATIONARY_TOLERANCE x
    `gradient_scale`, else not_critical: a definite Hessian says nothing about a point whose
    gradient does not vanish."""
    if not grad_norm <= STATIONARY_TOLERANCE * gradient_scale:
        return "not_critical"
    return {"positive_definite": "minimum", "negative_definite": "maximum",
            "indefinite": "saddle"}.get(definiteness(eigenvalues, scale=curvature_scale),
                                        "degenerate")


def kind_by_cholesky(hessian: torch.Tensor, grad_norm: float, gradient_scale: float,
                     curvature_scale: float = 0.0) -> str:
    """`point_kind` recomputed without eigenvalues, as an independent check on it: the signs
    of H's eigenvalues against the same zero threshold t, by Sylvester's law of inertia, from
    whether H - tI, -H - tI (all beyond t) and tI - H, tI + H (none beyond t) factorise."""
    if not grad_norm <= STATIONARY_TOLERANCE * gradient_scale:
        return "not_critical"
    norm = torch.linalg.matrix_norm(hessian, 2).item()
    zero = EIGENVALUE_TOLERANCE * max(curvature_scale, norm)
    eye = torch.eye(len(hessian), dtype=hessian.dtype, device=hessian.device)
    slack = (1e-3 * zero + torch.finfo(hessian.dtype).tiny) * eye

    def definite(matrix: torch.Tensor) -> bool:
        return torch.linalg.cholesky_ex(matrix).info.item() == 0

    if definite(hessian - zero * eye):
        return "minimum"
    if definite(-hessian - zero * eye):
        return "maximum"
    some_positive = not definite(zero * eye - hessian + slack)
    some_negative = not definite(zero * eye + hessian + slack)
    return "saddle" if some_positive and some_negative else "degenerate"


def local_gradient_scale(hessian: torch.Tensor, point: torch.Tensor) -> float:
    """‖H‖₂ (‖x‖ + 1): the size of ∇f's change over the point's own length scale, against
    which a gradient counts as vanishing at a single point."""
    return (torch.linalg.matrix_norm(hessian, 2) * (point.norm() + 1)).item()


def lanczos_tridiagonals(matvec: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor,
                         iterations: int) -> Iterator[torch.Tensor]:
    """The Lanczos tridiagonal matrix T_k of a symmetric operator after each step k.

    Only products with the operator are needed (a Hessian-vector product for a Hessian).
    Full reorthogonalisation keeps the basis orthogonal in floating point; the run stops early
    when the Krylov space is invariant (then T's eigenvalues are exact eigenvalues).
    """
    basis = [start / start.norm()]
    alphas: list[torch.Tensor] = []
    betas: list[torch.Tensor] = []
    for _ in range(min(iterations, start.numel())):
        w = matvec(basis[-1])
        alphas.append(torch.dot(w, basis[-1]))
        q = torch.stack(basis)
        for _ in range(2):  # twice is enough (Kahan-Parlett)
            w = w - q.T @ (q @ w)
        tridiagonal = (torch.diag(torch.stack(alphas))
                       + torch.diag(torch.stack(betas), 1) + torch.diag(torch.stack(betas), -1)
                       if betas else torch.stack(alphas).reshape(1, 1))
        yield tridiagonal
        beta = w.norm()
        if beta <= 1e-12 * torch.linalg.matrix_norm(tridiagonal, 2):
            break
        betas.append(beta)
        basis.append(w / beta)


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor,
            iterations: int) -> list[torch.Tensor]:
    """Ritz values (ascending) of a symmetric operator after each Lanczos step: the top ones
    converge to its largest eigenvalues, the bottom ones to its smallest."""
    steps = lanczos_tridiagonals(matvec, start, iterations)
    return [torch.linalg.eigvalsh(t)
            for t in track(steps, min(iterations, start.numel()), "Lanczos", "iterations")]


def quadrature(matvec: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor,
               iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss quadrature of the spectral measure of `start` (one probe of stochastic Lanczos
    quadrature): nodes θ, the eigenvalues of the last Lanczos T, and weights w, the squares of
    its eigenvectors' first entries, so that Σ w f(θ) = uᵀ f(A) u for u = start / ‖start‖,
    exactly for polynomials f of degree < 2 x steps (the weights sum to 1)."""
    *_, last = lanczos_tridiagonals(matvec, start, iterations)
    nodes, vectors = torch.linalg.eigh(last)
    return nodes, vectors[0] ** 2


def gaussian_density(nodes: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
                     grid: torch.Tensor, width: float) -> torch.Tensor:
    """The spectral density estimate of stochastic Lanczos quadrature on `grid`: the mean over
    probes of Σ w N(λ; θ, width²), one Gaussian of standard deviation `width` per node (as
    PyHessian's density). It integrates to 1 over a grid that holds the nodes' Gaussians."""
    theta, w = torch.cat(list(nodes)), torch.cat(list(weights)) / len(nodes)
    gaussians = torch.exp(-0.5 * ((grid[:, None] - theta) / width) ** 2)
    return gaussians @ w / (width * math.sqrt(2 * math.pi))


def mean_operator(products: Sequence[tuple[Callable[[torch.Tensor], torch.Tensor], int]]
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> Σ_b (n_b / N) H_b v from (v -> H_b v, n_b) per batch, H_b the Hessian of batch b's
    mean loss over its n_b items: the Hessian of the mean loss over all N items."""
    total = sum(size for _, size in products)

    def apply(v: torch.Tensor) -> torch.Tensor:
        return sum(size / total * product(v) for product, size in products)

    return apply


def rademacher(samples: int, size: int, generator: torch.Generator,
               like: torch.Tensor) -> torch.Tensor:
    """`samples` probe vectors of `size` random ±1 entries, drawn on the CPU from `generator`,
    then moved to `like`'s device and dtype."""
    signs = torch.randint(0, 2, (samples, size), generator=generator) * 2 - 1
    return signs.to(dtype=like.dtype, device=like.device)


PROBE_CHUNK = 1000  # probes per batched product: bounds the memory of a batched backward


def hutchinson(matvecs: Callable[[torch.Tensor], torch.Tensor],
               probes: torch.Tensor) -> torch.Tensor:
    """Hutchinson's samples vᵀAv, one per probe v (a row of `probes`, e.g. `rademacher`),
    whose mean estimates tr A; `matvecs` maps a batch of probes to their products with A."""
    chunks = probes.split(PROBE_CHUNK)
    return torch.cat([(chunk * matvecs(chunk)).sum(-1) for chunk in
                      track(chunks, len(chunks), f"Hutchinson trace ({len(probes)} probes)",
                            f"batches of {PROBE_CHUNK}")])


def hutchinson_std(matrix: torch.Tensor, samples: int) -> float:
    """The standard deviation of Hutchinson's mean of `samples` draws for a symmetric matrix:
    Var(vᵀAv) = 2 Σ_{i≠j} A_ij² for Rademacher v."""
    off_diagonal = (matrix**2).sum() - (torch.diagonal(matrix) ** 2).sum()
    return (2 * off_diagonal / samples).sqrt().item()
