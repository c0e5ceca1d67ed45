"""Gradient and activation statistics of any module, the health rules that read them, their
independent recomputation, and the search for the operation that first produced a NaN or Inf
(in the forward pass or in the backward pass).

Gradients: every trainable parameter, named by its path in `model.named_parameters()`
(`features.0.weight`, `0.bias` in an nn.Sequential): Linear, conv, norm, embedding or a custom
module's own nn.Parameter alike. The rules on r = ‖∂L/∂W‖ / ‖W‖ (vanishing, exploding,
imbalance) read the weight tensors of two or more dimensions (Linear and conv weights,
embedding tables); a 1-D parameter (a bias, a norm's scale or shift) gets its statistics but
no r rule, as it often starts at 0, where r is undefined.

Activations: while the model's forward runs, a `TorchFunctionMode` sees every call of a known
elementwise activation function (`ACTIVATION_FUNCTIONS`), whether a module makes it (nn.ReLU
calls F.relu) or the model's own forward does (`F.relu(self.mix(x))`, `x.tanh()`), together
with the tensor it is applied to, so the slope is taken on the true pre-activation. Forward
hooks name each call by the module whose output that tensor is (`mix`; `0` for an MLP's first
Linear), else by the module whose forward made the call. Units are channels (dim 1) of a conv
or a channel norm's output and the last dimension of any other; a unit is dead when it is off
on at least DEAD_SAMPLES of its positions over the batch (samples, and pixels for a channel).
The other way considered, recording what each parameterised module receives (forward
pre-hooks), sees an activation's output only: it cannot tell a saturated tanh from a small
value without knowing the function, and it misses activations whose output is pooled first.
"""

from __future__ import annotations

import math
import re
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode, resolve_name

from gradkit.core.experiment import Check
from gradkit.core.validation import number

KINDS = ("vanishing", "exploding", "dead_units", "imbalance", "nan_grad", "inf_grad", "nan_loss")
CRITICAL = frozenset({"exploding", "nan_grad", "inf_grad", "nan_loss"})  # the others warn
SATURATED_SLOPE = 0.01  # a unit is off where its slope is below 1% of the activation's peak
DEAD_SAMPLES = 0.95  # ... and dead when it is off on at least 95% of the batch's positions
# reported vs recomputed in float64: float32 gradients through 8 saturated tanh layers
# (weights ~ N(0, 9)) are off by 4e-4; the planted bugs these checks catch are off by O(1)
STATS_TOLERANCE = {torch.float32: 1e-2, torch.float64: 1e-9}
ROUNDING = 1e3  # machine epsilons of the largest gradient norm: what rounding leaves of a 0
Loss = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class GradStats:
    """Statistics of one parameter's gradient over its finite entries; `matrix`: the
    parameter has two or more dimensions, so the r rules read it."""

    norm: float
    mean: float
    std: float
    min: float
    max: float
    zero_fraction: float
    grad_to_weight: float
    nan_count: int
    inf_count: int
    weight_norm: float = math.nan
    matrix: bool = True


def gradient_stats(grad: torch.Tensor, weight: torch.Tensor) -> GradStats:
    """Norm, mean, std (0 for one element), extremes and the fraction of exact zeros of the
    finite entries of `grad`; grad norm / weight norm; and how many entries are NaN or Inf."""
    grad, weight = grad.detach().double(), weight.detach().double()
    finite = grad[torch.isfinite(grad)]
    norm = finite.norm().item()
    empty = finite.numel() == 0
    weight_norm = weight.norm().item()
    return GradStats(
        norm=norm,
        mean=math.nan if empty else finite.mean().item(),
        std=finite.std().item() if finite.numel() > 1 else 0.0,
        min=math.nan if empty else finite.min().item(),
        max=math.nan if empty else finite.max().item(),
        zero_fraction=(finite == 0).sum().item() / grad.numel(),
        grad_to_weight=norm / weight_norm if weight_norm > 0 else math.inf,
        nan_count=int(torch.isnan(grad).sum().item()),
        inf_count=int(torch.isinf(grad).sum().item()),
        weight_norm=weight_norm,
        matrix=weight.dim() >= 2,
    )


def parameter_stats(model: nn.Module) -> dict[str, GradStats]:
    """`gradient_stats` of every trainable parameter, by its `named_parameters` path (after a
    backward); a parameter the backward did not reach (`.grad` None) has a zero gradient."""
    return {name: gradient_stats(torch.zeros_like(p) if p.grad is None else p.grad, p)
            for name, p in model.named_parameters() if p.requires_grad}


@dataclass(frozen=True)
class ActivationStats:
    """The activations of one module's output over a batch: their mean and std, how many
    units (channels or features) it has and which are dead. A unit is off where its slope is
    below SATURATED_SLOPE of the activation's peak slope (a ReLU at 0, a saturated sigmoid or
    tanh), and dead when it is off on at least DEAD_SAMPLES of its positions."""

    mean: float
    std: float
    dead_fraction: float
    units: int = 0
    dead: tuple[int, ...] = field(default=())


def dead_mask(slopes: torch.Tensor, peak: float) -> torch.Tensor:
    """Which units (columns of `slopes`, positions x units) are off on at least DEAD_SAMPLES
    of the positions."""
    off = (slopes.abs() < SATURATED_SLOPE * peak).double().mean(dim=0)
    return off >= DEAD_SAMPLES


# elementwise activations seen wherever they are called (as a module's or in a forward)
ACTIVATION_FUNCTIONS = frozenset(
    [f"torch.{n}" for n in ("relu", "relu_", "sigmoid", "tanh")]
    + [f"torch.Tensor.{n}" for n in ("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_")]
    + [f"torch.nn.functional.{n}" for n in (
        "relu", "relu_", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish",
        "sigmoid", "tanh", "hardtanh", "hardsigmoid", "hardswish", "softplus")])
# modules whose output has its channels at dim 1, the others their units last
CHANNELS_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm,
                  nn.modules.instancenorm._InstanceNorm)


@dataclass(frozen=True)
class Activation:
    """One elementwise activation call: the function with its other arguments, so that it
    can be applied again to any tensor."""

    function: Callable
    args: tuple
    kwargs: dict

    @classmethod
    def of(cls, function: Callable, args: tuple, kwargs: dict) -> Activation:
        """The call `function(z, *args[1:], **kwargs)`, never in place nor into `out`."""
        kwargs = {k: v for k, v in kwargs.items() if k not in ("inplace", "out")}
        return cls(function, tuple(a for a in args[1:] if not isinstance(a, bool)), kwargs)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.function(z * 1, *self.args, **self.kwargs)  # `* 1`: an in-place one too

    @property
    def key(self) -> str:
        return f"{resolve_name(self.function)}{self.args}{sorted(self.kwargs.items())}"


def units_last(z: torch.Tensor, channels_first: bool) -> torch.Tensor:
    """`z` as positions x units: channels (dim 1) when `channels_first`, else the last dim."""
    if z.dim() < 2:
        return z.reshape(-1, 1)
    if channels_first:
        z = z.movedim(1, -1)
    return z.reshape(-1, z.shape[-1])


class ActivationCalls(TorchFunctionMode):
    """While active, call `started()` at the start of each forward of `model` and
    `seen(name, activation, z, output, channels_first)` for every activation function applied
    during it (z copied before it runs: an in-place one changes z). `name`: the path of the
    module whose output z is, else of the module whose forward called it (the function's name
    at the top level), made unique within the forward."""

    def __init__(self, model: nn.Module, seen: Callable[..., None],
                 started: Callable[[], None] = lambda: None):
        super().__init__()
        self.seen, self.started = seen, started
        self.stack: list[nn.Module] = []
        self.outputs: dict[int, tuple[torch.Tensor, str, nn.Module]] = {}  # by id(output)
        self.names: set[str] = set()
        self.paths = {module: path for path, module in model.named_modules()}

    def __enter__(self):
        self.handles = [h for m in self.paths for h in (
            m.register_forward_pre_hook(self._entered), m.register_forward_hook(self._left))]
        return super().__enter__()

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.outputs.clear()
        return super().__exit__(*exc)

    def _entered(self, module, args):
        if not self.stack:  # a new forward pass
            self.outputs.clear()
            self.names.clear()
            self.started()
        self.stack.append(module)

    def _left(self, module, args, output):
        self.stack.pop()
        if isinstance(output, torch.Tensor):  # kept, so that its id is not reused
            self.outputs.setdefault(id(output), (output, self.paths[module], module))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        z = args[0] if args else None
        if (self.stack and isinstance(z, torch.Tensor) and z.is_floating_point()
                and resolve_name(func) in ACTIVATION_FUNCTIONS):
            activation = Activation.of(func, args, kwargs)
            _, name, producer = self.outputs.get(id(z), (None, None, None))
            if name is None:
                name = self.paths[self.stack[-1]] or func.__name__
            unique, k = name, 1
            while unique in self.names:
                k += 1
                unique = f"{name}_{k}"
            self.names.add(unique)
            z = z.detach().clone()
            output = func(*args, **kwargs)
            self.seen(unique, activation, z, output.detach(),
                      isinstance(producer, CHANNELS_FIRST))
            return output
        return func(*args, **kwargs)


def autograd_slopes(activation: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor
                    ) -> torch.Tensor:
    """The elementwise derivative of `activation` at every entry of `z`, by autograd."""
    with torch.enable_grad():
        z = z.detach().double().requires_grad_(True)
        return torch.autograd.grad(activation(z).sum(), z)[0]


_PEAKS: dict[str, float] = {}  # by the activation's function and settings


def peak_slope(activation: Activation) -> float:
    """The largest |slope| of `activation` on [-10, 10] (relu 1, sigmoid 0.25, gelu 1.13)."""
    if activation.key not in _PEAKS:
        grid = torch.linspace(-10, 10, 20001)
        _PEAKS[activation.key] = autograd_slopes(activation, grid).abs().max().item()
    return _PEAKS[activation.key]


@contextmanager
def recorded_activations(model: nn.Module) -> Iterator[dict[str, ActivationStats]]:
    """Record `ActivationStats` of every activation applied during forward passes of
    `model`, by the name `ActivationCalls` gives it; the last forward pass wins."""
    found: dict[str, ActivationStats] = {}

    def seen(name, activation, z, output, channels_first):
        dead = dead_mask(units_last(autograd_slopes(activation, z), channels_first),
                         peak_slope(activation))
        values = output.double()
        found[name] = ActivationStats(
            mean=values.mean().item(), std=values.std().item() if values.numel() > 1 else 0.0,
            dead_fraction=dead.double().mean().item(), units=dead.numel(),
            dead=tuple(torch.nonzero(dead).flatten().tolist()))

    with ActivationCalls(model, seen, found.clear):
        yield found


@dataclass(frozen=True)
class Thresholds:
    """Where the health rules draw their lines (see `findings`). The gradient rules read
    ‖∂L/∂W‖ / ‖W‖, the step per unit learning rate relative to the parameter's weights."""

    vanishing: float = 1e-5
    exploding: float = 100.0
    imbalance: float = 1e3
    dead_units: float = 0.5

    @classmethod
    def checked(cls, prefix: str, vanishing: float, exploding: float, imbalance: float,
                dead_units: float) -> Thresholds:
        """Thresholds from config values, each validated under `<prefix>.<name>`."""
        return cls(vanishing=number(f"{prefix}.vanishing", vanishing, positive=True),
                   exploding=number(f"{prefix}.exploding", exploding, positive=True),
                   imbalance=number(f"{prefix}.imbalance", imbalance, minimum=1.0),
                   dead_units=number(f"{prefix}.dead_units", dead_units, positive=True,
                                     maximum=1.0))


@dataclass(frozen=True)
class Finding:
    """A rule that fired: its kind, the parameter or module it fired on (`layer`), the value
    and the threshold."""

    kind: str
    layer: str
    value: float
    threshold: float

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


def findings(grads: dict[str, GradStats], activations: dict[str, ActivationStats],
             thresholds: Thresholds, loss: float) -> list[Finding]:
    """Apply the rules parameter by parameter, on r = ‖∂L/∂W‖ / ‖W‖:

    - nan_loss: the loss is NaN or Inf, whatever the gradients (layer "loss");
    - nan_grad / inf_grad: the parameter's gradient has NaN / Inf entries (value: how many);
    - vanishing: r below `thresholds.vanishing` (weight tensors of >= 2 dims only);
    - exploding: r above `thresholds.exploding` (likewise);
    - dead_units: at least `thresholds.dead_units` of a module output's units are dead;
    - imbalance: largest / smallest r of the weight tensors above `thresholds.imbalance`
      (reported on the smallest).

    A parameter with NaN or Inf entries gets only the nan_grad / inf_grad findings.
    """
    found = [] if math.isfinite(loss) else [Finding("nan_loss", "loss", loss, 0)]
    for layer, stats in grads.items():
        if stats.nan_count:
            found.append(Finding("nan_grad", layer, stats.nan_count, 0))
        if stats.inf_count:
            found.append(Finding("inf_grad", layer, stats.inf_count, 0))
        if stats.nan_count or stats.inf_count or not stats.matrix:
            continue  # the norm of what is left says nothing; r of a bias is no rule's
        if stats.grad_to_weight < thresholds.vanishing:
            found.append(Finding("vanishing", layer, stats.grad_to_weight, thresholds.vanishing))
        if stats.grad_to_weight > thresholds.exploding:
            found.append(Finding("exploding", layer, stats.grad_to_weight, thresholds.exploding))
    for layer, stats in activations.items():
        if stats.dead_fraction >= thresholds.dead_units:
            found.append(Finding("dead_units", layer, stats.dead_fraction, thresholds.dead_units))
    ratio, smallest = max_min_ratio(grads)
    if ratio > thresholds.imbalance:
        found.append(Finding("imbalance", smallest, ratio, thresholds.imbalance))
    return found


def judged(grads: dict[str, GradStats]) -> dict[str, GradStats]:
    """The weight tensors (>= 2 dims) whose gradients have no NaN or Inf: what the r rules
    compare."""
    return {k: s for k, s in grads.items() if s.matrix and not (s.nan_count or s.inf_count)}


def max_min_ratio(grads: dict[str, GradStats]) -> tuple[float, str]:
    """Largest / smallest ‖∂L/∂W‖ / ‖W‖ among the `judged` parameters (inf when the smallest
    is 0, NaN when all are 0 or none is judged) and the smallest one."""
    finite = {k: s.grad_to_weight for k, s in judged(grads).items()}
    if not finite or max(finite.values()) == 0:
        return math.nan, ""
    smallest = min(finite, key=finite.__getitem__)
    low, high = finite[smallest], max(finite.values())
    return (high / low if low > 0 else math.inf), smallest


def health(found: list[Finding]) -> str:
    """`critical` if a critical rule fired, `warning` if another did, else `healthy`."""
    kinds = {f.kind for f in found}
    return "critical" if kinds & CRITICAL else "warning" if kinds else "healthy"


def _double(t: torch.Tensor | None) -> torch.Tensor | None:
    """A detached float64 copy of a floating tensor; others (labels, indices) as they are."""
    if t is None:
        return None
    return t.detach().double() if t.is_floating_point() else t.detach()


def float64_copy(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The model's parameters and (copies of) its buffers, floating ones in float64: a
    forward through them never changes the model's own running statistics."""
    params = {name: _double(p) for name, p in model.named_parameters()}
    buffers = {name: _double(b).clone() for name, b in model.named_buffers()}
    return params, buffers


def parameter_stats_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None,
                          loss_fn: Loss, grads: dict[str, GradStats], tolerance: float) -> Check:
    """The reported ‖∂L/∂W‖ and ‖∂L/∂W‖ / ‖W‖ of every parameter against a recomputation in
    float64: torch.func.grad over functional_call on float64 copies of the parameters, the
    buffers and the batch. Error: the largest gap relative to the recomputed norm, or to
    ROUNDING of the largest one where a gradient is ~0 by an identity (a conv bias before a
    batch norm gets 1e-7 in float32 for 1e-17 in float64); r is compared as the gradient norm
    it implies. inf when the reported parameters are not the model's trainable ones, or one
    reported non-finite is not so in the recomputation (or the other way round)."""
    params, buffers = float64_copy(model)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    if list(grads) != trainable:
        return Check(math.inf, tolerance)
    x64, y64 = _double(x), _double(y)

    def loss_of(weights, buffers):
        return loss_fn(torch.func.functional_call(model, {**weights, **buffers}, (x64,)), y64)

    expected = torch.func.grad(loss_of)(params, buffers)
    if any(bool(torch.isfinite(expected[name]).all()) != (grads[name].nan_count ==
                                                          grads[name].inf_count == 0)
           for name in trainable):
        return Check(math.inf, tolerance)
    norms = {name: torch.linalg.vector_norm(expected[name]).item() for name in trainable
             if torch.isfinite(expected[name]).all()}
    dtype = next(p.dtype for p in model.parameters())
    floor = ROUNDING * torch.finfo(dtype).eps * max(norms.values(), default=0.0)
    error = 0.0
    for name, norm in norms.items():
        stats, weight_norm = grads[name], torch.linalg.vector_norm(params[name]).item()
        implied = stats.grad_to_weight * weight_norm if weight_norm > 0 else (
            norm if stats.grad_to_weight == math.inf else math.inf)
        error = max(error, _gap(stats.norm, norm, floor), _gap(implied, norm, floor))
    return Check(error, tolerance)


def _gap(reported: float, expected: float, floor: float) -> float:
    """|reported - expected| / max(|expected|, floor) (0 when they are equal; inf when the
    reported is not finite and the expected is)."""
    if reported == expected:
        return 0.0
    return abs(reported - expected) / (max(abs(expected), floor) or 1.0)


def dead_units_check(model: nn.Module, x: torch.Tensor,
                     activations: dict[str, ActivationStats]) -> Check:
    """Each recorded dead fraction against a recomputation: a float64 forward pass on copies
    of the parameters and buffers, slopes by backward differences, a unit alive when it is
    on for more than 1 - DEAD_SAMPLES of its positions (a NaN slope counts as on, as in
    `dead_mask`). Error: the largest gap (inf when other activations are found), against a
    tolerance of one unit of the narrowest output (a unit may sit on the line)."""
    params, buffers = float64_copy(model)
    recomputed: dict[str, float] = {}
    units: list[int] = []

    def seen(name, activation, z, output, channels_first):
        grid = torch.linspace(-10, 10, 20001, dtype=torch.float64)
        peak = _backward_slopes(activation, grid).abs().max()
        slopes = units_last(_backward_slopes(activation, z), channels_first)
        on = (~(slopes.abs() < SATURATED_SLOPE * peak)).sum(dim=0)
        recomputed[name] = (on <= (1 - DEAD_SAMPLES) * slopes.shape[0]).double().mean().item()
        units.append(slopes.shape[1])

    with torch.no_grad(), ActivationCalls(model, seen):
        torch.func.functional_call(model, {**params, **buffers}, (_double(x),))
    if set(recomputed) != set(activations):
        return Check(math.inf, 1.0)
    error = max((abs(activations[k].dead_fraction - v) for k, v in recomputed.items()),
                default=0.0)
    return Check(error, 1 / min(units, default=1))


def _backward_slopes(activation: Activation, z: torch.Tensor, step: float = 1e-7
                     ) -> torch.Tensor:
    """(f(z) - f(z - step)) / step: one-sided from the left, so relu's slope at 0 is 0, as
    torch takes it."""
    with torch.no_grad():
        return (activation(z) - activation(z - step)) / step


def rules_check(thresholds: Thresholds) -> Check:
    """The rules on probe statistics with a known answer: every weight at the geometric middle
    of `vanishing` and `exploding` (nothing fires), then one 10x past a line (vanishing or
    exploding, and imbalance), a bias at r = inf (nothing fires), all units dead, a NaN loss.
    Error: the probes answered wrong."""
    middle = math.sqrt(thresholds.vanishing * thresholds.exploding)
    calm = {f"{i}.weight": _with_ratio(middle) for i in range(3)}
    alive = {"0": ActivationStats(0.0, 1.0, 0.0)}
    spread = 10 * math.sqrt(thresholds.exploding / thresholds.vanishing)  # max/min of a tilt
    imbalanced = {"imbalance"} if spread > thresholds.imbalance else set()
    probes = [
        (calm, alive, 0.0, set()),
        ({**calm, "1.weight": _with_ratio(thresholds.vanishing / 10)}, alive, 0.0,
         {"vanishing"} | imbalanced),
        ({**calm, "1.weight": _with_ratio(thresholds.exploding * 10)}, alive, 0.0,
         {"exploding"} | imbalanced),
        ({**calm, "1.bias": replace(_with_ratio(math.inf), matrix=False)}, alive, 0.0, set()),
        (calm, {"0": ActivationStats(0.0, 0.0, 1.0)}, 0.0, {"dead_units"}),
        (calm, alive, math.nan, {"nan_loss"}),
    ]
    wrong = sum({f.kind for f in findings(grads, acts, thresholds, loss)} != expected
                for grads, acts, loss, expected in probes)
    return Check(float(wrong), 0.0)


def _with_ratio(ratio: float) -> GradStats:
    return GradStats(ratio, 0, 0, 0, 0, 0, ratio, 0, 0, 1.0)


@dataclass(frozen=True)
class NonFiniteOrigin:
    """The first operation whose output had NaN or Inf while its inputs were finite: a torch
    function of the forward pass (`torch.log`) and the line that called it, or a backward node
    (`SqrtBackward0`) and where its forward operation was created (in anomaly mode)."""

    operation: str
    kind: str
    forward_line: str
    phase: str = "backward"


def _nonfinite(tensors) -> str:
    """"nan" if a floating tensor among `tensors` has a NaN, else "inf" if one has an Inf."""
    floating = [t for t in tensors if isinstance(t, torch.Tensor)
                and (t.is_floating_point() or t.is_complex())]
    if any(torch.isnan(t).any() for t in floating):
        return "nan"
    return "inf" if any(torch.isinf(t).any() for t in floating) else ""


def _flat(value) -> list:
    """The tensors in a value, a tuple/list of values or a dict of values."""
    if isinstance(value, dict):
        value = list(value.values())
    return [t for v in value for t in _flat(v)] if isinstance(value, (tuple, list)) else [value]


class ForwardOrigin(TorchFunctionMode):
    """While active, remember the first torch function whose output has NaN or Inf while its
    tensor inputs are finite (`origin`, None until one does)."""

    def __init__(self):
        super().__init__()
        self.origin: NonFiniteOrigin | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.origin is None:
            kind = _nonfinite(_flat(out))
            if kind and not _nonfinite(_flat([args, kwargs])):
                name = resolve_name(func) or getattr(func, "__name__", str(func))
                self.origin = NonFiniteOrigin(name, kind, _caller_line(), "forward")
        return out


_SKIPPED = (str(Path(torch.__file__).parent), __file__)


def _caller_line() -> str:
    """`file.py:line: code` of the innermost frame outside torch and this module."""
    for frame in reversed(traceback.extract_stack()):
        if not frame.filename.startswith(_SKIPPED):
            name = Path(frame.filename).name
            return f"{name}:{frame.lineno}: {' '.join((frame.line or '').split())}"
    return ""


def graph_nodes(root: torch.autograd.graph.Node) -> list[torch.autograd.graph.Node]:
    """Every backward node reachable from `root`."""
    seen, stack = {root}, [root]
    while stack:
        for child, _ in stack.pop().next_functions:
            if child is not None and child not in seen:
                seen.add(child)
                stack.append(child)
    return list(seen)


def backward_with_origin(loss: torch.Tensor) -> NonFiniteOrigin | None:
    """Run `loss.backward()` and return where a non-finite gradient first appeared, if any.

    Each node of the graph gets a hook that compares what flowed in with what it produced, so
    NaN and Inf are both caught and the backward runs to the end (anomaly mode would stop at
    the first NaN and miss Inf). Build `loss` inside `anomaly_mode()` to also get the line of
    the forward pass that created the faulty operation.
    """
    first: list[NonFiniteOrigin] = []

    def hook_for(node):
        def hook(produced, received):
            kind = _nonfinite(produced)
            if kind and not first and not _nonfinite(received):
                # the innermost frame of the forward pass, ForwardOrigin's own left out
                trace = [f for f in node.metadata.get("traceback_", []) if __file__ not in f]
                first.append(NonFiniteOrigin(node.name(), kind,
                                             _frame_line(trace[-1]) if trace else ""))
        return hook

    handles = [node.register_hook(hook_for(node)) for node in graph_nodes(loss.grad_fn)]
    try:
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    return first[0] if first else None


def _frame_line(frame: str) -> str:
    """`file.py:line: code` from one formatted traceback frame."""
    found = re.match(r'\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in \S+\s*(?P<code>.*)',
                     frame, re.DOTALL)
    if not found:
        return " ".join(frame.split())
    name = found["file"].replace("\\", "/").rsplit("/", 1)[-1]
    return f"{name}:{found['line']}: {' '.join(found['code'].split())}"


@contextmanager
def anomaly_mode() -> Iterator[None]:
    """`torch.autograd.detect_anomaly` recording forward tracebacks, without raising on NaN."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Anomaly Detection has been enabled")
        with torch.autograd.detect_anomaly(check_nan=False):
            yield


def parameter_metrics(grads: dict[str, GradStats],
                      activations: dict[str, ActivationStats]) -> dict[str, float]:
    """Metrics `grad_<stat>/<parameter path>`, `weight_norm/<parameter path>`,
    `act_<stat>/<module path>`, `dead_fraction/<module path>` and `dead_units/<module path>`
    (how many), plus the ratio of the largest to the smallest weight ‖∂L/∂W‖ / ‖W‖.
    `grad_nonfinite/<parameter path>` counts its NaN and Inf entries; its `grad_norm` and
    `grad_to_weight` are NaN when there are any (the other statistics are those of its
    finite entries)."""
    metrics = {}
    for name, stats in grads.items():
        nonfinite = stats.nan_count + stats.inf_count
        metrics |= {f"grad_norm/{name}": math.nan if nonfinite else stats.norm,
                    f"grad_nonfinite/{name}": float(nonfinite), f"grad_mean/{name}": stats.mean,
                    f"grad_std/{name}": stats.std, f"grad_min/{name}": stats.min,
                    f"grad_max/{name}": stats.max, f"grad_zeros/{name}": stats.zero_fraction,
                    f"grad_to_weight/{name}": math.nan if nonfinite else stats.grad_to_weight,
                    f"weight_norm/{name}": stats.weight_norm}
    for name, stats in activations.items():
        metrics |= {f"act_mean/{name}": stats.mean, f"act_std/{name}": stats.std,
                    f"dead_fraction/{name}": stats.dead_fraction,
                    f"dead_units/{name}": float(len(stats.dead))}
    metrics["max_min_ratio"] = max_min_ratio(grads)[0]
    return metrics


HEALTH_LEVELS = ("healthy", "warning", "critical")


def verdict(found: list[Finding]) -> tuple[dict[str, float], dict[str, str]]:
    """Metrics (`health_level` 0/1/2, `findings/<kind>` = parameters or modules flagged) and
    tags (`health`, `findings` as comma-separated kinds, empty when healthy)."""
    level = health(found)
    kinds = [kind for kind in KINDS if any(f.kind == kind for f in found)]
    metrics = {"health_level": float(HEALTH_LEVELS.index(level))}
    metrics |= {f"findings/{kind}": float(sum(f.kind == kind for f in found)) for kind in KINDS}
    return metrics, {"health": level, "findings": ",".join(kinds)}
