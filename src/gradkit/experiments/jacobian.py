"""Section 3.1: the Jacobian of a vector function, three ways, against the analytic one."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from gradkit.core.experiment import Check, Experiment, Result, RunContext
from gradkit.core.validation import representable, vector
from gradkit.lib.derivatives import jacobian_by_rows
from gradkit.plotting import figure

TOLERANCE = 1e-12


def f(x: torch.Tensor) -> torch.Tensor:
    """f(x) = [x1^2, x1 x2, x2 x3]."""
    return torch.stack([x[0] ** 2, x[0] * x[1], x[1] * x[2]])


def analytic_jacobian(x: torch.Tensor) -> torch.Tensor:
    """[[2 x1, 0, 0], [x2, x1, 0], [0, x3, x2]]."""
    zero = torch.zeros((), dtype=x.dtype)
    return torch.stack([
        torch.stack([2 * x[0], zero, zero]),
        torch.stack([x[1], x[0], zero]),
        torch.stack([zero, x[2], x[1]]),
    ])


def frobenius_norm(matrix: torch.Tensor) -> float:
    """‖M‖_F computed on M / max|M|, so it is finite whenever the true norm is."""
    scale = matrix.abs().max()
    return (scale * torch.linalg.matrix_norm(matrix / scale)).item() if scale > 0 else 0.0


class Jacobian(Experiment):
    """J of f(x) = [x1^2, x1 x2, x2 x3] by row-wise backward, jacrev and jacfwd."""

    headline = ("jacobian_norm", "determinant")
    proves = "row-wise backward, jacrev and jacfwd each give the analytic Jacobian"

    def __init__(self, point: list[float] = (1.0, 2.0, 3.0)):
        self.point = vector("experiment.point", point, 3)
        x = torch.tensor(self.point, dtype=torch.float64)
        determinant = torch.linalg.det(analytic_jacobian(x)).item()
        representable("experiment.point", list(self.point),
                      **{"f(x)": f(x).abs().max().item(), "det J": determinant})

    def run(self, ctx: RunContext) -> Result:
        x = torch.tensor(self.point, dtype=torch.float64)
        expected = analytic_jacobian(x)
        ways = {
            "backward_rows": jacobian_by_rows(f, x),
            "jacrev": torch.func.jacrev(f)(x),
            "jacfwd": torch.func.jacfwd(f)(x),
        }
        checks = {name: Check((j - expected).abs().max().item(),
                              TOLERANCE * max(1.0, expected.abs().max().item()))
                  for name, j in ways.items()}
        jac = ways["backward_rows"]
        norm = frobenius_norm(jac)
        metrics = {"jacobian_norm": norm, "determinant": torch.linalg.det(jac).item()}
        metrics |= {f"jacobian/{i}{j}": jac[i, j].item() for i in range(3) for j in range(3)}
        return Result(
            metrics=metrics,
            checks=checks,
            figures={"jacobian": plot_jacobian(jac.numpy(), self.point)},
            summary={"point": list(self.point), "value": f(x).tolist(), "jacobian": jac.tolist(),
                     "analytic_jacobian": expected.tolist()},
            objective=norm,
        )


def plot_jacobian(jac: np.ndarray, point: tuple[float, ...]) -> Figure:
    """Heatmap of J with each entry written in its cell."""
    fig, ax = figure(f"Jacobian of f(x) = [x₁², x₁x₂, x₂x₃] at x = {list(point)}", size=(6.5, 5))
    limit = max(abs(jac).max(), 1e-12)
    image = ax.imshow(jac, cmap="RdBu_r", vmin=-limit, vmax=limit)
    fig.colorbar(image, ax=ax, label="∂fᵢ/∂xⱼ")
    for (i, j), value in np.ndenumerate(jac):
        color = "white" if abs(value) > 0.6 * limit else "black"
        ax.text(j, i, f"{value:.4g}", ha="center", va="center", fontsize=12, color=color)
    ax.set_xticks(range(3), ["x₁", "x₂", "x₃"])
    ax.set_yticks(range(3), ["f₁ = x₁²", "f₂ = x₁x₂", "f₃ = x₂x₃"])
    ax.set_xlabel("input xⱼ")
    ax.set_ylabel("output fᵢ")
    ax.grid(False)
    return fig
