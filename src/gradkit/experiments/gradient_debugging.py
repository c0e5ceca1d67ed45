"""Section 5.2: a gradient detector run on networks with a planted fault, which it must find
(or, with scenario=none, on any model as it is)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import TensorDataset

from gradkit.core.components import OWN
from gradkit.core.experiment import Check, Experiment, Result, RunContext
from gradkit.core.validation import ConfigError, choice, integer
from gradkit.experiments.gradient_flow import plot_layer_norms
from gradkit.lib.data import regression_batch
from gradkit.lib.diagnostics import (
    HEALTH_LEVELS,
    KINDS,
    STATS_TOLERANCE,
    ActivationStats,
    Finding,
    ForwardOrigin,
    GradStats,
    Loss,
    NonFiniteOrigin,
    Thresholds,
    anomaly_mode,
    backward_with_origin,
    dead_units_check,
    findings,
    parameter_metrics,
    parameter_stats,
    parameter_stats_check,
    recorded_activations,
    rules_check,
    verdict,
)
from gradkit.lib.models import check_widths, linear_layers, mlp, parameter_count
from gradkit.plotting import figure

DEAD_BIAS = -1.0  # hidden biases that switch most ReLU units off for N(0, 1) inputs
EXPLODING_STD = 1.0  # 5x He's std for width 50: activations and gradients grow layer by layer


class AbsAsSqrt(nn.Module):
    """|z| computed as sqrt(z²): right forward, but its backward is 0/0 = NaN where z = 0."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(z * z)

    @staticmethod
    def batch(x: torch.Tensor) -> torch.Tensor:
        """A padding row first: its pre-activations are exactly the (zero) biases."""
        x[0] = 0.0
        return x


class LogInputs(nn.Module):
    """Log-scaled features: NaN in the forward pass wherever an input is negative."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)

    @staticmethod
    def batch(x: torch.Tensor) -> torch.Tensor:
        """Positive features, but one negative."""
        x = x.abs() + 0.1
        x[0, 0] = -1.0
        return x


@dataclass(frozen=True)
class Scenario:
    """How a scenario builds its network, and the finding its fault must produce."""

    init: str
    expected: str | None
    hidden_bias: float = 0.0
    planted: type[AbsAsSqrt | LogInputs] | None = None  # inserted at `planted_at`
    planted_at: int = 0
    origin: str | None = None  # the operation the non-finite origin must name
    description: str = ""


SCENARIOS = {
    "none": Scenario("xavier_normal", None, description="no fault planted: the model as it is"),
    "healthy": Scenario("xavier_normal", None, description="Xavier init: nothing to find"),
    "problematic": Scenario("problematic", "vanishing",
                            description="the notebook's init: std 5, 0.01, 0.001"),
    "dead_relu": Scenario("xavier_normal", "dead_units", hidden_bias=DEAD_BIAS,
                          description=f"hidden biases {DEAD_BIAS:g} switch ReLUs off"),
    "exploding": Scenario(f"normal:{EXPLODING_STD}", "exploding",
                          description=f"weights ~ N(0, {EXPLODING_STD}²)"),
    "nan": Scenario("xavier_normal", "nan_grad", planted=AbsAsSqrt, planted_at=1,
                    origin="SqrtBackward0",
                    description="|z| written as sqrt(z²), a zero (padding) input row"),
    "nan_forward": Scenario("xavier_normal", "nan_loss", planted=LogInputs, planted_at=0,
                            origin="torch.log",
                            description="log-scaled inputs, one of them negative"),
}


@dataclass
class Diagnosis:
    """What the detector found on one forward/backward pass."""

    loss: float
    grads: dict[str, GradStats]
    activations: dict[str, ActivationStats]
    found: list[Finding]
    origin: NonFiniteOrigin | None


def diagnose(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None,
             thresholds: Thresholds, loss_fn: Loss = F.mse_loss) -> Diagnosis:
    """Forward in anomaly mode (so a faulty operation's forward line is known) watching for
    the first torch function that makes a NaN or Inf, backward with the non-finite origin
    search (it does not stop at the first NaN), then the rules. The origin is the forward
    one when the forward made the NaN, else the backward one."""
    with anomaly_mode(), recorded_activations(model) as activations:
        with ForwardOrigin() as forward:
            loss = loss_fn(model(x), y)
        origin = backward_with_origin(loss)
    grads = parameter_stats(model)
    return Diagnosis(loss.item(), grads, dict(activations),
                     findings(grads, activations, thresholds, loss.item()),
                     forward.origin or origin)


def missed_faults(spec: Scenario, diagnosis: Diagnosis) -> list[str]:
    """What the detector got wrong: the expected finding if it is missing (every finding for
    a scenario that expects none), and the origin if it names another operation."""
    kinds = {f.kind for f in diagnosis.found}
    missed = sorted(kinds) if spec.expected is None else (
        [] if spec.expected in kinds else [spec.expected])
    found = diagnosis.origin.operation if diagnosis.origin else None
    if spec.origin != found and (spec.origin or found):
        missed.append(f"origin {spec.origin} (found {found})")
    return missed


class GradientDebugging(Experiment):
    """Run the gradient detector on a DiagnosticNet (input -> hidden ReLU layers -> 1) that has
    the fault of `scenario` planted, or (`scenario=none`) on any model as it is."""

    headline = ("health_level",)
    proves = ("the detector finds each scenario's planted fault, and nothing in the healthy "
              "network; its statistics equal a float64 recomputation")

    def __init__(self, scenario: str = "problematic", input_dim: int = 10,
                 hidden: list[int] = (50, 50, 50), batch_size: int = 16,
                 vanishing: float = Thresholds.vanishing,
                 exploding: float = Thresholds.exploding,
                 imbalance: float = Thresholds.imbalance,
                 dead_units: float = Thresholds.dead_units):
        if isinstance(scenario, float) and math.isnan(scenario):
            scenario = "nan"  # Hydra reads `scenario=nan` on a command line as a float
        self.scenario = choice("experiment.scenario", scenario, SCENARIOS)
        self.input_dim = integer("experiment.input_dim", input_dim, minimum=1)
        self.hidden = check_widths("experiment.hidden", hidden)
        self.batch_size = integer("experiment.batch_size", batch_size, minimum=2)
        self.thresholds = Thresholds.checked("experiment", vanishing, exploding, imbalance,
                                             dead_units)

    def build(self, generator: torch.Generator, input_shape: tuple[int, ...] | None = None,
              outputs: int = 1) -> nn.Sequential:
        """The scenario's network (on the CPU, weights drawn from `generator`), for inputs of
        `input_shape` (flattened; default: `input_dim` features) and `outputs` outputs."""
        spec = SCENARIOS[self.scenario]
        features = self.input_dim if input_shape is None else math.prod(input_shape)
        model = mlp(features, self.hidden, outputs, init=spec.init, generator=generator)
        with torch.no_grad():
            for _, layer in linear_layers(model)[:-1]:
                layer.bias.fill_(spec.hidden_bias)
        if spec.planted:
            model.insert(spec.planted_at, spec.planted())
        return nn.Sequential(nn.Flatten(), *model) if input_shape and len(input_shape) > 1 \
            else model

    def own_data(self, seed: int, dtype: torch.dtype) -> dict[str, TensorDataset]:
        """`batch_size` regression samples drawn after the network's weights from one
        generator seeded by `seed`, with the inputs that trigger the planted fault."""
        generator = torch.Generator().manual_seed(seed)
        self.build(generator)  # the weights come first
        x, y = regression_batch(self.batch_size, self.input_dim, 1, generator, dtype=dtype)
        planted = SCENARIOS[self.scenario].planted
        return {"train": TensorDataset(planted.batch(x) if planted else x, y)}

    def prepare(self, ctx: RunContext) -> None:
        """The scenarios plant their faults in the own network and batch, where what they
        must yield was measured; with a chosen model, data or loss only `none` runs."""
        chosen = [f"{key}={name}" for key, name in ctx.components.names.items() if name != OWN]
        if chosen and self.scenario != "none":
            raise ConfigError(
                f"experiment.scenario={self.scenario} plants its fault in gradkit's own network "
                f"and batch, where its finding was measured; with {', '.join(chosen)} use "
                "experiment.scenario=none (the detector on the model as it is)")
        seed = ctx.generator.initial_seed()
        self.workload = ctx.components.resolve(
            ctx, lambda: self.own_data(seed, ctx.dtype),
            lambda shape, outputs: self.build(torch.Generator().manual_seed(seed), shape,
                                              outputs))
        self.names = ctx.components.names

    def run(self, ctx: RunContext) -> Result:
        spec = SCENARIOS[self.scenario]
        workload = self.workload
        model = workload.new_model()
        x, y = workload.data.tensors("train", self.batch_size)
        diagnosis = diagnose(model, x, y, self.thresholds, workload.loss_of)
        health_metrics, tags = verdict(diagnosis.found)
        origin = diagnosis.origin
        if origin:
            tags["nonfinite_origin"] = f"{origin.operation} ({origin.kind}, {origin.phase})"
        metrics = {**parameter_metrics(diagnosis.grads, diagnosis.activations),
                   **health_metrics, "loss": diagnosis.loss,
                   "nonfinite_origin_found": float(origin is not None),
                   "parameters": float(parameter_count(model))}
        planted = self.scenario != "none"
        missed = missed_faults(spec, diagnosis) if planted else None
        checks = {
            "per_parameter_stats": parameter_stats_check(
                model, x, y, workload.loss_of, diagnosis.grads, STATS_TOLERANCE[ctx.dtype]),
            "dead_units": dead_units_check(model, x, diagnosis.activations),
            "rules": rules_check(self.thresholds),
        }
        if planted:
            checks = {"detects_planted_fault": Check(float(len(missed)), 0.0), **checks}
        return Result(
            metrics=metrics,
            checks=checks,
            figures={"gradient_debugging": self.plot(diagnosis, tags)},
            summary={**self.names, "scenario": self.scenario, "description": spec.description,
                     "expected_finding": spec.expected, "missed": missed,
                     "findings": [f.as_dict() for f in diagnosis.found],
                     "nonfinite_origin": vars(origin) if origin else None,
                     "gradients": {k: vars(s) for k, s in diagnosis.grads.items()},
                     "activations": {k: vars(s) for k, s in diagnosis.activations.items()},
                     "thresholds": vars(self.thresholds)},
            tags=tags,
            objective=health_metrics["health_level"],
        )

    def plot(self, diagnosis: Diagnosis, tags: dict[str, str]) -> Figure:
        """The per-layer statistics as a table with each finding's cell highlighted, and the
        gradient norms by layer against the thresholds."""
        models = ", ".join(f"{k}={v}" for k, v in self.names.items() if v != OWN)
        title = f"Gradient debugging, {models or 'scenario ' + self.scenario}: {tags['health']}"
        title += f" ({tags['findings'].replace(',', ', ')})" if tags["findings"] else ""
        fig, (table_ax, norms_ax) = figure(title, 1, 2, size=(17, 6.5), layout=None)
        longest = max(map(len, diagnosis.grads), default=0)  # the table's row labels
        fig.subplots_adjust(left=0.01 + 0.0047 * longest, right=0.985, bottom=0.24, top=0.9,
                            wspace=0.12)
        stats_table(table_ax, diagnosis)
        origin = diagnosis.origin
        if origin:
            where = "forward pass" if origin.phase == "forward" else "backward pass, created"
            table_ax.set_xlabel(f"first NaN/Inf: {origin.operation} ({origin.kind})"
                                f"\n{where} at {origin.forward_line}", fontsize=10)
        plot_layer_norms(norms_ax, diagnosis.grads, diagnosis.found, self.thresholds)
        return fig

    @classmethod
    def sweep_figure(cls, jobs: list[dict[str, Any]]) -> Figure | None:
        """One row per job: its scenario, how many layers each rule flagged, its health."""
        if not jobs:
            return None
        fig, ax = figure("Gradient debugging sweep: findings per scenario",
                         size=(12, 1.6 + 0.45 * len(jobs)))
        header = ["scenario", *KINDS, "health"]
        rows, colours = [], []
        for job in jobs:
            metrics = job["metrics"]
            scenario = job["params"].get("experiment.scenario", job["overrides"])
            if "health_level" not in metrics:
                rows.append([scenario, *["" for _ in KINDS], job["status"].lower()])
                colours.append(["white", *["white" for _ in KINDS], "lightgray"])
                continue
            counts = [int(metrics.get(f"findings/{kind}", 0)) for kind in KINDS]
            level = HEALTH_LEVELS[int(metrics["health_level"])]
            rows.append([scenario, *[str(c) if c else "" for c in counts], level])
            colours.append(["white", *[_HIGHLIGHT[kind] if c else "white"
                                       for kind, c in zip(KINDS, counts, strict=True)],
                            _LEVEL_COLOUR[level]])
        table = ax.table(cellText=rows, colLabels=header, cellColours=colours, loc="center",
                         cellLoc="center")
        table.scale(1, 1.6)
        ax.set_axis_off()
        ax.set_title("cells: number of layers the rule flagged (empty: none)")
        return fig


_HIGHLIGHT = {"vanishing": "#fdd9a0", "imbalance": "#fdd9a0", "dead_units": "#fdd9a0",
              "exploding": "#f4a0a0", "nan_grad": "#f4a0a0", "inf_grad": "#f4a0a0"}
_LEVEL_COLOUR = {"healthy": "#b7e4b0", "warning": "#fdd9a0", "critical": "#f4a0a0"}
_COLUMNS = {  # column -> (rule kinds shown in it, value of a layer's stats)
    "‖grad‖": ((), lambda g, a: f"{g.norm:.2e}"),
    "mean": ((), lambda g, a: f"{g.mean:.1e}"),
    "std": ((), lambda g, a: f"{g.std:.1e}"),
    "zeros": ((), lambda g, a: f"{g.zero_fraction:.0%}"),
    "‖grad‖/‖W‖": (("vanishing", "exploding", "imbalance"),
                   lambda g, a: f"{g.grad_to_weight:.1e}"),
    "dead units": (("dead_units",), lambda g, a: f"{a.dead_fraction:.0%}" if a else "-"),
    "NaN": (("nan_grad",), lambda g, a: str(g.nan_count)),
    "Inf": (("inf_grad",), lambda g, a: str(g.inf_count)),
}


def stats_table(ax, diagnosis: Diagnosis) -> None:
    """A table of each parameter's gradient statistics (the dead units of its module's
    output on the module's first row), finding cells coloured by severity."""
    flagged = {(f.layer, f.kind) for f in diagnosis.found}
    rows, colours, shown = [], [], set()
    for name, stats in diagnosis.grads.items():
        module = name.rpartition(".")[0]
        activation = diagnosis.activations.get(module) if module not in shown else None
        shown.add(module)
        rows.append([value(stats, activation) for _, value in _COLUMNS.values()])
        colours.append([next((_HIGHLIGHT[k] for k in kinds if (name, k) in flagged
                              or (activation and (module, k) in flagged)), "white")
                        for kinds, _ in _COLUMNS.values()])
    table = ax.table(cellText=rows, colLabels=list(_COLUMNS), rowLabels=list(diagnosis.grads),
                     cellColours=colours, loc="center", cellLoc="center")
    table.scale(1, 1.8)
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    ax.set_title("Gradients by parameter (orange: warning, red: critical)")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
