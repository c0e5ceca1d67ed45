"""What a Hessian says about a point: definiteness, the kind of a stationary point."""

from __future__ import annotations

from collections.abc import Sequence

EIGENVALUE_TOLERANCE = 1e-10  # |lambda| below this times the largest |lambda| counts as zero
STATIONARY_TOLERANCE = 1e-10  # |grad f| below this counts as zero

KINDS = ("minimum", "maximum", "saddle", "degenerate")


def definiteness(eigenvalues: Sequence[float],
                 tolerance: float = EIGENVALUE_TOLERANCE) -> str:
    """positive_definite | negative_definite | positive_semidefinite | negative_semidefinite |
    indefinite, with eigenvalues within `tolerance` x the largest |lambda| taken as zero."""
    zero = tolerance * max((abs(v) for v in eigenvalues), default=0.0)
    positive = sum(v > zero for v in eigenvalues)
    negative = sum(v < -zero for v in eigenvalues)
    if positive and negative:
        return "indefinite"
    if positive == len(eigenvalues):
        return "positive_definite"
    if negative == len(eigenvalues):
        return "negative_definite"
    return "negative_semidefinite" if negative else "positive_semidefinite"


def point_kind(eigenvalues: Sequence[float], grad_norm: float,
               tolerance: float = STATIONARY_TOLERANCE) -> str:
    """minimum | maximum | saddle | degenerate where the gradient vanishes, else not_critical.

    A positive-definite Hessian says nothing about a point whose gradient is not zero.
    """
    if not grad_norm <= tolerance:
        return "not_critical"
    return {"positive_definite": "minimum", "negative_definite": "maximum",
            "indefinite": "saddle"}.get(definiteness(eigenvalues), "degenerate")
