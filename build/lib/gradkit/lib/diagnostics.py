"""Per-layer gradient and activation statistics, the health rules that read them, and the
search for the backward operation that first produced a non-finite gradient."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn

from gradkit.core.validation import number
from gradkit.lib.models import ACTIVATIONS, linear_layers

KINDS = ("vanishing", "exploding", "dead_units", "imbalance", "nan_grad", "inf_grad")
CRITICAL = frozenset({"exploding", "nan_grad", "inf_grad"})  # the others are warnings


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
    """One hidden layer's activations over a batch; a dead unit outputs 0 for every sample."""

    mean: float
    std: float
    dead_fraction: float


@contextmanager
def recorded_activations(model: nn.Module) -> Iterator[dict[str, ActivationStats]]:
    """Record `ActivationStats` of each activation module's output during forward passes,
    keyed `layer<i>` like the Linear layer that feeds it; the last forward pass wins."""
    found: dict[str, ActivationStats] = {}
    kinds = tuple(ACTIVATIONS.values())
    modules = [m for m in model.modules() if isinstance(m, kinds)]

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            values = output.detach().double().flatten(1)
            found[name] = ActivationStats(
                mean=values.mean().item(),
                std=values.std().item() if values.numel() > 1 else 0.0,
                dead_fraction=(values == 0).all(dim=0).double().mean().item())
        return hook

    handles = [m.register_forward_hook(hook_for(f"layer{i}")) for i, m in enumerate(modules)]
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class Thresholds:
    """Where the health rules draw their lines (see `findings`)."""

    vanishing: float = 1e-4
    exploding: float = 10.0
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
             thresholds: Thresholds) -> list[Finding]:
    """Apply the rules layer by layer:

    - nan_grad / inf_grad: the layer's gradient has NaN / Inf entries (value: how many);
    - vanishing: gradient norm below `thresholds.vanishing`;
    - exploding: gradient norm above `thresholds.exploding`;
    - dead_units: at least `thresholds.dead_units` of the layer's units are dead;
    - imbalance: largest / smallest layer gradient norm above `thresholds.imbalance`
      (reported on the smallest layer).

    A layer with NaN or Inf entries gets only the nan_grad / inf_grad findings.
    """
    found = []
    for layer, stats in grads.items():
        if stats.nan_count:
            found.append(Finding("nan_grad", layer, stats.nan_count, 0))
        if stats.inf_count:
            found.append(Finding("inf_grad", layer, stats.inf_count, 0))
        if stats.nan_count or stats.inf_count:
            continue  # the norm of what is left says nothing
        if stats.norm < thresholds.vanishing:
            found.append(Finding("vanishing", layer, stats.norm, thresholds.vanishing))
        if stats.norm > thresholds.exploding:
            found.append(Finding("exploding", layer, stats.norm, thresholds.exploding))
    for layer, stats in activations.items():
        if stats.dead_fraction >= thresholds.dead_units:
            found.append(Finding("dead_units", layer, stats.dead_fraction, thresholds.dead_units))
    ratio, smallest = max_min_ratio(grads)
    if ratio > thresholds.imbalance:
        found.append(Finding("imbalance", smallest, ratio, thresholds.imbalance))
    return found


def max_min_ratio(grads: dict[str, GradStats]) -> tuple[float, str]:
    """Largest / smallest gradient norm among the layers without NaN or Inf (inf when the
    smallest is 0, NaN when all are 0 or none is finite) and the smallest layer."""
    finite = {k: s.norm for k, s in grads.items() if not (s.nan_count or s.inf_count)}
    if not finite or max(finite.values()) == 0:
        return math.nan, ""
    smallest = min(finite, key=finite.__getitem__)
    low, high = finite[smallest], max(finite.values())
    return (high / low if low > 0 else math.inf), smallest


def health(found: list[Finding]) -> str:
    """`critical` if a critical rule fired, `warning` if another did, else `healthy`."""
    kinds = {f.kind for f in found}
    return "critical" if kinds & CRITICAL else "warning" if kinds else "healthy"


@dataclass(frozen=True)
class NonFiniteOrigin:
    """The first backward operation whose output had NaN or Inf while its input was finite,
    and where its forward operation was created (when the graph was recorded in anomaly mode).
    """

    operation: str
    kind: str
    forward_line: str


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

    def bad(grads) -> str:
        for grad in grads:
            if grad is not None and torch.isnan(grad).any():
                return "nan"
        for grad in grads:
            if grad is not None and torch.isinf(grad).any():
                return "inf"
        return ""

    def hook_for(node):
        def hook(produced, received):
            kind = bad(produced)
            if kind and not first and not bad(received):
                trace = node.metadata.get("traceback_", [])
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
    the largest to the smallest layer gradient norm."""
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
