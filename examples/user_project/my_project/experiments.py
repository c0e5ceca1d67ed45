"""Section 9.1: the derivative of a cubic, by autograd, against the analytic one."""

import torch

from gradkit.core.experiment import Check, Experiment, Result, RunContext


class Cubic(Experiment):
    """f(x) = x^3 at a point: autograd's derivative against 3x^2."""

    proves = "autograd's derivative of x^3 equals 3x^2"

    def __init__(self, x: float = 2.0):
        self.x = float(x)

    def run(self, ctx: RunContext) -> Result:
        x = torch.tensor(self.x, dtype=torch.float64, requires_grad=True)
        (x**3).backward()
        error = abs(x.grad.item() - 3 * self.x**2)
        return Result(metrics={"gradient": x.grad.item()}, objective=x.grad.item(),
                      checks={"analytic": Check(error, 1e-12)})
