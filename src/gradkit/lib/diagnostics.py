"""Per-layer gradient and activation statistics, the health rules that read them, their
independent recomputation, and the search for the operation that first produced a NaN or Inf
(in the forward pass or in the backward pass)."""

from __future__ import annotations

import math
import re
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode, resolve_name

from gradkit.core.experiment import Check
from gradkit.core.validation import number
from gradkit.lib.models import ACTIVATIONS, linear_layers

KINDS = ("vanishing", "exploding", "dead_units", "imbalance", "nan_grad", "inf_grad", "nan_loss")
CRITICAL = frozenset({"exploding", "nan_grad", "inf_grad", "nan_loss"})  # the others warn
SATURATED_SLOPE = 0.01  # a unit is off where its slope is below 1% of the activation's peak
DEAD_SAMPLES = 0.95  # ... and dead when it is off on at least 95% of the batch's samples
# reported vs recomputed in float64: float32 gradients through 8 saturated tanh layers
# (weights ~ N(0, 9)) are off by 4e-4; the planted bugs these checks catch are off by O(1)
STATS_TOLERANCE = {torch.float32: 1e-2, torch.float64: 1e-9}


@dataclass(frozen=True)
class GradStats:
    """Statistics of one layer's weight gradient over its finite entries."""

    norm: float
    mean: float
    std: float
    min: float
    max: float
    zero_fraction: float
    grad_to_weight: float
    nan_count: int
    inf_count: int


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
    )


def layer_gradient_stats(model: nn.Module) -> dict[str, GradStats]:
    """`gradient_stats` of every Linear layer's weight, by `layer<i>` (after a backward)."""
    return {name: gradient_stats(layer.weight.grad, layer.weight)
            for name, layer in linear_layers(model) if layer.weight.grad is not None}


@dataclass(frozen=True)
class ActivationStats:
    """One hidden layer's activations over a batch; a dead unit is off (slope below
    SATURATED_SLOPE of the activation's peak slope) on at least DEAD_SAMPLES of the samples:
    a ReLU stuck at 0, or a saturated sigmoid or tanh."""

    mean: float
    std: float
    dead_fraction: float


def dead_fraction(slopes: torch.Tensor, peak: float) -> float:
    """Share of units (columns of `slopes`, samples x units) that are off on at least
    DEAD_SAMPLES of the samples."""
    off = (slopes.abs() < SATURATED_SLOPE * peak).double().mean(dim=0)
    return (off >= DEAD_SAMPLES).double().mean().item()


def autograd_slopes(activation: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The elementwise derivative of `activation` at every entry of `z`, by autograd (its
    `forward`, so that no hook of the module runs)."""
    with torch.enable_grad():
        z = z.detach().double().requires_grad_(True)
        return torch.autograd.grad(activation.forward(z).sum(), z)[0]


_PEAKS: dict[str, float] = {}  # by the activation module's repr (its kind and settings)


def peak_slope(activation: nn.Module) -> float:
    """The largest |slope| of `activation` on [-10, 10] (relu 1, sigmoid 0.25, gelu 1.13)."""
    key = repr(activation)
    if key not in _PEAKS:
        grid = torch.linspace(-10, 10, 20001)
        _PEAKS[key] = autograd_slopes(activation, grid).abs().max().item()
    return _PEAKS[key]


def activation_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Each activation module, by `layer<i>` like the Linear layer that feeds it."""
    kinds = tuple(ACTIVATIONS.values())
    return [(f"layer{i}", m) for i, m in enumerate(m for m in model.modules()
                                                    if isinstance(m, kinds))]


@contextmanager
def recorded_activations(model: nn.Module) -> Iterator[dict[str, ActivationStats]]:
    """Record `ActivationStats` of each activation module during forward passes, keyed
    `layer<i>` like the Linear layer that feeds it; the last forward pass wins."""
    found: dict[str, ActivationStats] = {}

    def hook_for(name: str, peak: float):
        def hook(module, inputs, output):
            values = output.detach().double().flatten(1)
            slopes = autograd_slopes(module, inputs[0]).flatten(1)
            found[name] = ActivationStats(
                mean=values.mean().item(),
                std=values.std().item() if values.numel() > 1 else 0.0,
                dead_fraction=dead_fraction(slopes, peak))
        return hook

    handles = [m.register_forward_hook(hook_for(name, peak_slope(m)))
               for name, m in activation_modules(model)]
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class Thresholds:
    """Where the health rules draw their lines (see `findings`). The gradient rules read
    ‖∂L/∂W‖ / ‖W‖, the step per unit learning rate relative to the layer's weights."""

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
    """A rule that fired: its kind, the layer it fired on, the value and the threshold."""

    kind: str
    layer: str
    value: float
    threshold: float

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


def findings(grads: dict[str, GradStats], activations: dict[str, ActivationStats],
             thresholds: Thresholds, loss: float) -> list[Finding]:
    """Apply the rules layer by layer, on r = ‖∂L/∂W‖ / ‖W‖:

    - nan_loss: the loss is NaN or Inf, whatever the gradients (layer "loss");
    - nan_grad / inf_grad: the layer's gradient has NaN / Inf entries (value: how many);
    - vanishing: r below `thresholds.vanishing`;
    - exploding: r above `thresholds.exploding`;
    - dead_units: at least `thresholds.dead_units` of the layer's units are dead;
    - imbalance: largest / smallest r above `thresholds.imbalance` (reported on the smallest).

    A layer with NaN or Inf entries gets only the nan_grad / inf_grad findings.
    """
    found = [] if math.isfinite(loss) else [Finding("nan_loss", "loss", loss, 0)]
    for layer, stats in grads.items():
        if stats.nan_count:
            found.append(Finding("nan_grad", layer, stats.nan_count, 0))
        if stats.inf_count:
            found.append(Finding("inf_grad", layer, stats.inf_count, 0))
        if stats.nan_count or stats.inf_count:
            continue  # the norm of what is left says nothing
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


def max_min_ratio(grads: dict[str, GradStats]) -> tuple[float, str]:
    """Largest / smallest ‖∂L/∂W‖ / ‖W‖ among the layers without NaN or Inf (inf when the
    smallest is 0, NaN when all are 0 or none is finite) and the smallest layer."""
    finite = {k: s.grad_to_weight for k, s in grads.items() if not (s.nan_count or s.inf_count)}
    if not finite or max(finite.values()) == 0:
        return math.nan, ""
    smallest = min(finite, key=finite.__getitem__)
    low, high = finite[smallest], max(finite.values())
    return (high / low if low > 0 else math.inf), smallest


def health(found: list[Finding]) -> str:
    """`critical` if a critical rule fired, `warning` if another did, else `healthy`."""
    kinds = {f.kind for f in found}
    return "critical" if kinds & CRITICAL else "warning" if kinds else "healthy"


def float64_copy(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, torch.Tensor],
                                                              torch.Tensor]:
    """The model's parameters and `x` as detached float64 tensors."""
    params = {name: p.detach().double() for name, p in model.named_parameters()}
    return params, x.detach().double()


def layer_stats_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                      grads: dict[str, GradStats], tolerance: float) -> Check:
    """The reported ‖∂L/∂W‖ and ‖∂L/∂W‖ / ‖W‖ of every layer against a recomputation in
    float64: torch.func.grad over functional_call on float64 copies of the parameters and
    the batch. Error: the largest relative gap; a layer reported non-finite must be so in the
    recomputation too (and the other way round), else the error is inf."""
    params, x64 = float64_copy(model, x)

    def loss_of(weights):
        return loss_fn(torch.func.functional_call(model, weights, (x64,)), y.double())

    expected = torch.func.grad(loss_of)(params)
    error = 0.0
    for layer, linear in linear_layers(model):
        name = next(n for n, p in model.named_parameters() if p is linear.weight)
        grad, weight = expected[name], params[name]
        finite = bool(torch.isfinite(grad).all())
        stats = grads[layer]
        if finite != (stats.nan_count == stats.inf_count == 0):
            return Check(math.inf, tolerance)
        if not finite:
            continue
        norm = torch.linalg.vector_norm(grad).item()
        ratio = norm / torch.linalg.vector_norm(weight).item()
        error = max(error, _relative(stats.norm, norm), _relative(stats.grad_to_weight, ratio))
    return Check(error, tolerance)


def _relative(reported: float, expected: float) -> float:
    """|reported - expected| / |expected| (the absolute gap when expected is 0)."""
    return abs(reported - expected) / (abs(expected) or 1.0)


def dead_units_check(model: nn.Module, x: torch.Tensor,
                     activations: dict[str, ActivationStats]) -> Check:
    """Each layer's reported dead fraction against a recomputation: a float64 forward pass,
    slopes by backward differences, a unit alive when it is on for more than 1 - DEAD_SAMPLES
    of the samples (a NaN slope counts as on, as in `dead_fraction`). Error: the largest gap,
    against a tolerance of one unit of the narrowest layer (a unit may sit on the line)."""
    params, x64 = float64_copy(model, x)
    inputs: dict[str, torch.Tensor] = {}
    modules = activation_modules(model)
    handles = [m.register_forward_pre_hook(
        lambda _m, args, name=name: inputs.__setitem__(name, args[0].flatten(1)))
        for name, m in modules]
    try:
        with torch.no_grad():
            torch.func.functional_call(model, params, (x64,))
    finally:
        for handle in handles:
            handle.remove()
    error = 0.0
    for name, module in modules:
        z = inputs[name]
        grid = torch.linspace(-10, 10, 20001, dtype=torch.float64)
        peak = _backward_slopes(module, grid).abs().max()
        on = (~(_backward_slopes(module, z).abs() < SATURATED_SLOPE * peak)).sum(dim=0)
        dead = (on <= (1 - DEAD_SAMPLES) * z.shape[0]).double().mean().item()
        error = max(error, abs(activations[name].dead_fraction - dead))
    return Check(error, 1 / min((z.shape[1] for z in inputs.values()), default=1))


def _backward_slopes(activation: nn.Module, z: torch.Tensor, step: float = 1e-7) -> torch.Tensor:
    """(f(z) - f(z - step)) / step: one-sided from the left, so relu's slope at 0 is 0, as
    torch takes it."""
    with torch.no_grad():
        return (activation.forward(z) - activation.forward(z - step)) / step


def rules_check(thresholds: Thresholds) -> Check:
    """The rules on probe statistics with a known answer: every layer at the geometric middle
    of `vanishing` and `exploding` (nothing fires), then one layer 10x past a line (vanishing
    or exploding, and imbalance), all units dead, a NaN loss. Error: the probes answered
    wrong."""
    middle = math.sqrt(thresholds.vanishing * thresholds.exploding)
    calm = {f"layer{i}": GradStats(middle, 0, 0, 0, 0, 0, middle, 0, 0) for i in range(3)}
    alive = {"layer0": ActivationStats(0.0, 1.0, 0.0)}
    spread = 10 * math.sqrt(thresholds.exploding / thresholds.vanishing)  # max/min of a tilt
    imbalanced = {"imbalance"} if spread > thresholds.imbalance else set()
    probes = [
        (calm, alive, 0.0, set()),
        ({**calm, "layer1": _with_ratio(thresholds.vanishing / 10)}, alive, 0.0,
         {"vanishing"} | imbalanced),
        ({**calm, "layer1": _with_ratio(thresholds.exploding * 10)}, alive, 0.0,
         {"exploding"} | imbalanced),
        (calm, {"layer0": ActivationStats(0.0, 0.0, 1.0)}, 0.0, {"dead_units"}),
        (calm, alive, math.nan, {"nan_loss"}),
    ]
    wrong = sum({f.kind for f in findings(grads, acts, thresholds, loss)} != expected
                for grads, acts, loss, expected in probes)
    return Check(float(wrong), 0.0)


def _with_ratio(ratio: float) -> GradStats:
    return GradStats(ratio, 0, 0, 0, 0, 0, ratio, 0, 0)


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


def layer_metrics(grads: dict[str, GradStats],
                  activations: dict[str, ActivationStats]) -> dict[str, float]:
    """Per-layer metrics `grad_<stat>.<layer>` and `act_<stat>.<layer>`, plus the ratio of
    the largest to the smallest layer ‖∂L/∂W‖ / ‖W‖."""
    metrics = {}
    for layer, stats in grads.items():
        metrics |= {f"grad_norm.{layer}": stats.norm, f"grad_mean.{layer}": stats.mean,
                    f"grad_std.{layer}": stats.std, f"grad_min.{layer}": stats.min,
                    f"grad_max.{layer}": stats.max, f"grad_zeros.{layer}": stats.zero_fraction,
                    f"grad_to_weight.{layer}": stats.grad_to_weight}
    for layer, stats in activations.items():
        metrics |= {f"act_mean.{layer}": stats.mean, f"act_std.{layer}": stats.std,
                    f"dead_fraction.{layer}": stats.dead_fraction}
    metrics["max_min_ratio"] = max_min_ratio(grads)[0]
    return metrics


HEALTH_LEVELS = ("healthy", "warning", "critical")


def verdict(found: list[Finding]) -> tuple[dict[str, float], dict[str, str]]:
    """Metrics (`health_level` 0/1/2, `findings.<kind>` = layers flagged) and tags (`health`,
    `findings` as comma-separated kinds, empty when healthy) for a list of findings."""
    level = health(found)
    kinds = [kind for kind in KINDS if any(f.kind == kind for f in found)]
    metrics = {"health_level": float(HEALTH_LEVELS.index(level))}
    metrics |= {f"findings.{kind}": float(sum(f.kind == kind for f in found)) for kind in KINDS}
    return metrics, {"health": level, "findings": ",".join(kinds)}
