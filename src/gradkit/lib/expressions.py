"""Functions of x and y written as expressions: parsed against a whitelist (never `eval`),
evaluated with torch, and differentiated exactly by SymPy (the oracle checks compare against).

SymPy (~0.25 s to import) loads only when an expression is built: every other command skips it.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gradkit.core.validation import ConfigError

if TYPE_CHECKING:
    import sympy

MAX_LENGTH = 500
# each function by its torch callable and the name of its SymPy counterpart
FUNCTIONS: dict[str, tuple[Callable, str]] = {
    "sin": (torch.sin, "sin"), "cos": (torch.cos, "cos"), "tan": (torch.tan, "tan"),
    "exp": (torch.exp, "exp"), "log": (torch.log, "log"), "sqrt": (torch.sqrt, "sqrt"),
    "tanh": (torch.tanh, "tanh"), "sinh": (torch.sinh, "sinh"), "cosh": (torch.cosh, "cosh"),
    "atan": (torch.atan, "atan"), "abs": (torch.abs, "Abs"),
}
OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
             ast.Div: operator.truediv, ast.Pow: operator.pow}
SIGNS = {ast.USub: operator.neg, ast.UAdd: operator.pos}
CONSTANTS = {"pi": (math.pi, "pi"), "e": (math.e, "E")}
ALLOWED = ("use x, y, numbers, pi, e, + - * / ** ( ) and " + " ".join(FUNCTIONS))


def parse(text: str, key: str, names: str = "") -> ast.Expression:
    """The syntax tree of `text`, or a ConfigError naming the first thing not allowed (and
    `names`, the built-in functions, as the alternative)."""
    allowed = f"{names} or an expression: {ALLOWED}" if names else ALLOWED
    if len(text) > MAX_LENGTH:
        raise ConfigError(f"{key}: the expression has {len(text)} characters; at most "
                          f"{MAX_LENGTH}")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        reason = getattr(error, "msg", None) or type(error).__name__
        raise ConfigError(f"{key}={text!r} is not an expression ({reason}); {allowed}") from None
    for node in ast.walk(tree):
        problem = _not_allowed(node)
        if problem:
            raise ConfigError(f"{key}={text!r}: {problem} is not allowed; {allowed}")
    return tree


def _not_allowed(node: ast.AST) -> str | None:
    """What about `node` the whitelist refuses, or None."""
    if isinstance(node, (ast.Expression, ast.Load, *OPERATORS, *SIGNS)):
        return None
    if isinstance(node, ast.BinOp):
        return None if type(node.op) in OPERATORS else f"operator {type(node.op).__name__}"
    if isinstance(node, ast.UnaryOp):
        return None if type(node.op) in SIGNS else f"operator {type(node.op).__name__}"
    if isinstance(node, ast.Constant):
        plain = isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
        return None if plain and math.isfinite(node.value) else f"constant {node.value!r}"
    if isinstance(node, ast.Name):
        return None if node.id in {"x", "y", *CONSTANTS, *FUNCTIONS} else f"name {node.id!r}"
    if isinstance(node, ast.Call):
        if not (isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS):
            return f"call {ast.unparse(node.func)!r}"
        if len(node.args) != 1 or node.keywords:
            return f"{node.func.id} with other than one argument"
        return None
    return f"{type(node).__name__.lower()} {ast.unparse(node)!r}"


def build(tree: ast.Expression, names: dict[str, Any], side: int, where: str = "") -> Any:
    """Evaluate a parsed tree with `names` for x and y; side 0 uses torch, 1 SymPy (`where`
    names the expression in the error of a constant part that is not a finite number)."""

    if side:
        import sympy

    def visit(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return visit(node.body)
        if isinstance(node, ast.BinOp):
            left, right = visit(node.left), visit(node.right)
            if side and isinstance(left, sympy.Number) and isinstance(right, sympy.Number):
                return _fold(node.op, left, right, where)
            return OPERATORS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp):
            return SIGNS[type(node.op)](visit(node.operand))
        if isinstance(node, ast.Constant):
            return node.value if side == 0 else sympy.sympify(node.value)
        if isinstance(node, ast.Name):
            if node.id in names:
                return names[node.id]
            value, symbol = CONSTANTS[node.id]
            return getattr(sympy, symbol) if side else value
        torch_function, symbol = FUNCTIONS[node.func.id]
        return (getattr(sympy, symbol) if side else torch_function)(visit(node.args[0]))
    return visit(tree)


def _fold(op: ast.operator, left: sympy.Number, right: sympy.Number, where: str
          ) -> sympy.Number:
    """Arithmetic on two numbers in float64 (exact SymPy powers like 9**9**9 never end)."""
    import sympy

    try:
        return sympy.Float(OPERATORS[type(op)](float(left), float(right)))
    except (OverflowError, ZeroDivisionError):
        shown = ast.unparse(ast.BinOp(ast.Constant(left), op, ast.Constant(right)))
        raise ConfigError(f"{where}: {shown} is not a finite number") from None


class Expression:
    """f(x, y) from its text: torch values, SymPy's exact gradient and Hessian (as numpy)."""

    def __init__(self, text: str, key: str = "experiment.function", names: str = ""):
        self.text = text
        self.tree = parse(text, key, names)
        import sympy

        x, y = sympy.symbols("x y", real=True)
        self.symbolic = sympy.sympify(build(self.tree, {"x": x, "y": y}, 1, f"{key}={text!r}"))
        gradient = [sympy.diff(self.symbolic, v) for v in (x, y)]
        hessian = [[_almost_everywhere(sympy.diff(g, v)) for v in (x, y)] for g in gradient]
        self._gradient = sympy.lambdify((x, y), gradient, modules="numpy")
        self._hessian = sympy.lambdify((x, y), hessian, modules="numpy")

    def value(self, p: torch.Tensor) -> torch.Tensor:
        """f at points (..., 2), by torch (differentiable, any device)."""
        x, y = p.unbind(-1)
        result = build(self.tree, {"x": x, "y": y}, 0)
        return torch.as_tensor(result, dtype=p.dtype, device=p.device).expand(x.shape)

    def gradient(self, p: torch.Tensor) -> torch.Tensor:
        """SymPy's exact gradient at points (..., 2), evaluated in float64 numpy."""
        return self._evaluate(self._gradient, p, (2,))

    def hessian(self, p: torch.Tensor) -> torch.Tensor:
        """SymPy's exact Hessian at points (..., 2): (..., 2, 2)."""
        return self._evaluate(self._hessian, p, (2, 2))

    @staticmethod
    def _evaluate(f: Callable, p: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        x, y = p.detach().cpu().to(torch.float64).numpy()[..., 0], \
            p.detach().cpu().to(torch.float64).numpy()[..., 1]
        with np.errstate(all="ignore"):
            entries = np.asarray(_broadcast(f(x, y), x.shape), dtype=np.float64)
        moved = np.moveaxis(entries.reshape(*shape, *x.shape), range(len(shape)),
                            range(-len(shape), 0))
        return torch.from_numpy(np.ascontiguousarray(moved)).to(p.device, p.dtype)


def _almost_everywhere(derivative: sympy.Expr) -> sympy.Expr:
    """The derivative off the measure-zero kinks of abs: DiracDelta terms dropped."""
    import sympy

    return derivative.replace(sympy.DiracDelta, lambda *_: sympy.S.Zero)


def _broadcast(nested: Any, shape: tuple[int, ...]) -> list:
    """Nested lists of arrays or constants, every leaf broadcast to `shape`."""
    if isinstance(nested, list):
        return [_broadcast(item, shape) for item in nested]
    return np.broadcast_to(np.asarray(nested, dtype=np.float64), shape)
