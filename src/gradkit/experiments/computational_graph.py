"""Section 2.2: a chain of operations, its autograd graph and the chain rule along it."""

from __future__ import annotations

import math

import torch
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from gradkit.core.experiment import Check, Experiment, Result, RunContext
from gradkit.core.validation import number, representable
from gradkit.plotting import figure

TOLERANCE = 1e-10
NODES = ("x", "a", "b", "c", "d", "e")
FORMULAS = {"x": "x", "a": "a = 3x", "b": "b = a + 1", "c": "c = b²", "d": "d = sin(c)",
            "e": "e = mean(d)"}


def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every node of the chain a = 3x, b = a + 1, c = b^2, d = sin(c), e = mean(d)."""
    a = x * 3
    b = a + 1
    c = b**2
    d = torch.sin(c)
    e = d.mean()
    return {"x": x, "a": a, "b": b, "c": c, "d": d, "e": e}


def chain_rule(x: float) -> dict[str, float]:
    """de/dnode for every node, by hand: de/dd = 1, de/dc = cos c, de/db = 2b cos c, ..."""
    b = 3 * x + 1
    c = b**2
    de_dc = math.cos(c)
    de_db = de_dc * 2 * b
    return {"e": 1.0, "d": 1.0, "c": de_dc, "b": de_db, "a": de_db, "x": 3 * de_db}


class ComputationalGraph(Experiment):
    """Values, grad_fn names and gradients of every node, checked against the chain rule."""

    headline = ("grad", "manual_grad")
    proves = "every node's autograd gradient equals the hand-derived chain rule"

    def __init__(self, x: float = 2.0):
        self.x = number("experiment.x", x)
        b = 3 * self.x + 1
        representable("experiment.x", self.x, **{"c = (3x + 1)²": b * b})

    def run(self, ctx: RunContext) -> Result:
        x = torch.tensor(self.x, dtype=torch.float64, requires_grad=True)
        nodes = forward(x)
        for tensor in nodes.values():
            if not tensor.is_leaf:
                tensor.retain_grad()
        nodes["e"].backward()
        manual = chain_rule(self.x)
        table = [{
            "node": name,
            "formula": FORMULAS[name],
            "grad_fn": type(t.grad_fn).__name__ if t.grad_fn is not None else "leaf",
            "value": t.item(),
            "grad": t.grad.item(),
            "manual_grad": manual[name],
        } for name, t in nodes.items()]
        error = max(abs(row["grad"] - row["manual_grad"]) / max(1.0, abs(row["manual_grad"]))
                    for row in table)
        metrics = {"grad": x.grad.item(), "manual_grad": manual["x"]}
        metrics |= {f"node_value/{row['node']}": row["value"] for row in table}
        metrics |= {f"node_grad/{row['node']}": row["grad"] for row in table}
        return Result(
            metrics=metrics,
            checks={"chain_rule": Check(error, TOLERANCE)},
            figures={"graph": plot_graph(table)},
            summary={"nodes": table},
            objective=nodes["e"].item(),
        )


def plot_graph(table: list[dict]) -> Figure:
    """The chain as boxes (node, formula, grad_fn, value, gradient) joined by arrows."""
    fig, ax = figure("Computational graph: forward values and backward gradients",
                     size=(13, 3.6))
    width, gap = 1.7, 0.5
    for i, row in enumerate(table):
        left = i * (width + gap)
        ax.add_patch(FancyBboxPatch((left, 0), width, 1.6, boxstyle="round,pad=0.05",
                                    facecolor="tab:blue" if row["node"] == "x" else "aliceblue",
                                    alpha=0.25 if row["node"] == "x" else 1.0,
                                    edgecolor="tab:blue"))
        text = (f"{row['formula']}\n{row['grad_fn']}\nvalue = {row['value']:.4g}\n"
                f"∂e/∂{row['node']} = {row['grad']:.4g}")
        ax.text(left + width / 2, 0.8, text, ha="center", va="center", fontsize=9)
        if i:
            ax.annotate("", xy=(left - 0.05, 1.1), xytext=(left - gap + 0.05, 1.1),
                        arrowprops={"arrowstyle": "->", "color": "tab:blue"})
            ax.annotate("", xy=(left - gap + 0.05, 0.5), xytext=(left - 0.05, 0.5),
                        arrowprops={"arrowstyle": "->", "color": "tab:red"})
    ax.text(0, 1.95, "forward →", color="tab:blue", fontsize=9)
    ax.text(0, -0.35, "← backward (gradients)", color="tab:red", fontsize=9)
    ax.set_xlim(-0.2, len(table) * (width + gap) - gap + 0.2)
    ax.set_ylim(-0.5, 2.1)
    ax.set_axis_off()
    return fig
