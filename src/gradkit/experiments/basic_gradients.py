"""Section 2.1: the derivative of a quadratic by autograd, checked against the analytic one."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from gradkit.core.experiment import Check, Experiment, Result, RunContext
from gradkit.core.validation import number, representable
from gradkit.plotting import figure

TOLERANCE = 1e-12


class BasicGradients(Experiment):
    """f(x) = a x^2 + b x + c at x; autograd df/dx against 2 a x + b."""

    headline = ("grad", "analytic_grad")
    proves = "autograd's df/dx equals the analytic 2ax + b"

    def __init__(self, a: float = 1.0, b: float = 3.0, c: float = 1.0, x: float = 2.0):
        self.a = number("experiment.a", a)
        self.b = number("experiment.b", b)
        self.c = number("experiment.c", c)
        self.x = number("experiment.x", x)
        representable("experiment.x", f"{self.x:g} (with a={self.a:g}, b={self.b:g}, c={self.c:g})",
                      **{"f(x)": self.f(self.x), "f'(x)": 2 * self.a * self.x + self.b})

    def f(self, x):
        return self.a * x * x + self.b * x + self.c

    def run(self, ctx: RunContext) -> Result:
        x = torch.tensor(self.x, dtype=torch.float64, requires_grad=True)
        y = self.f(x)
        y.backward()
        grad = x.grad.item()
        analytic = 2 * self.a * self.x + self.b
        error = abs(grad - analytic)
        return Result(
            metrics={"value": y.item(), "grad": grad, "analytic_grad": analytic},
            checks={"grad": Check(error, TOLERANCE * max(1.0, abs(analytic)))},
            figures={"function_and_tangent": self.plot(y.item(), grad)},
            summary={
                "function": f"{self.a:g} x^2 + {self.b:g} x + {self.c:g}",
                "x": self.x,
                "x_is_leaf": x.is_leaf,
                "y_grad_fn": type(y.grad_fn).__name__,
            },
            objective=y.item(),
        )

    def plot(self, value: float, grad: float) -> Figure:
        """f around x with its tangent line at x."""
        centre = -self.b / (2 * self.a) if self.a else self.x
        half_width = max(3.0, 1.5 * abs(self.x - centre))
        xs = np.linspace(min(self.x, centre) - half_width / 2, max(self.x, centre) + half_width / 2,
                         400)
        fig, ax = figure(f"f(x) = {self.a:g}x² + {self.b:g}x + {self.c:g} and its tangent at x = "
                         f"{self.x:g}")
        ax.plot(xs, self.f(xs), label="f(x)")
        ax.plot(xs, value + grad * (xs - self.x), "--", label=f"tangent, slope f'(x) = {grad:.4g}")
        ax.plot([self.x], [value], "o", color="tab:red", label=f"f({self.x:g}) = {value:.4g}")
        ax.set_xlabel("x")
        ax.set_ylabel("f(x)")
        ax.legend()
        return fig
