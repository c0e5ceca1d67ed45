"""The experiment contract: an Experiment computes a Result from a RunContext."""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from gradkit.core.components import Components
from gradkit.plotting import objective_by_job

# How closely two computations of one network quantity must agree, relative to its size, in
# each precision (accumulated vs full-batch, checkpointed vs plain, per layer vs whole)
DTYPE_TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-12}
TIMING_MARKS = ("seconds", "time_overhead")  # metric names that hold wall-clock measurements


def is_timing(metric: str) -> bool:
    """Whether `metric` is a wall-clock measurement: the one kind of metric that differs
    between two runs of the same config and seed."""
    return any(mark in metric for mark in TIMING_MARKS)


@dataclass(frozen=True)
class Check:
    """An identity the demonstration must satisfy: `error` must not exceed `tolerance`."""

    error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return math.isfinite(self.error) and self.error <= self.tolerance


def headline_first(metrics: dict[str, float], headline: tuple[str, ...]) -> dict[str, float]:
    """`metrics` with the `headline` ones (those present) first, in their order."""
    return {**{name: metrics[name] for name in headline if name in metrics}, **metrics}


@dataclass
class Result:
    """Everything one run produced; tracking logs it, experiments never log themselves."""

    metrics: dict[str, float] = field(default_factory=dict)
    series: dict[str, list[float]] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Check] = field(default_factory=dict)
    objective: float = math.nan
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def failed_checks(self) -> list[str]:
        return [name for name, check in self.checks.items() if not check.passed]


@dataclass(frozen=True)
class RunContext:
    """What a run may use: where to compute, in which precision, with which randomness."""

    device: torch.device
    dtype: torch.dtype
    generator: torch.Generator
    output_dir: Path
    log: logging.Logger
    threads: int = 1
    cache_dir: Path | None = None  # where trained weights are kept between runs (None: nowhere)
    components: Components = field(default_factory=Components)  # the chosen model, data, loss


class Experiment(ABC):
    """A demonstration. Subclasses validate their keyword parameters in `__init__`.

    Its MLflow experiment is named after the Hydra option that chose it (a variant YAML of
    the same class is an experiment of its own). Its parameters, their types and defaults are
    its constructor's keyword arguments (`gradkit.core.parameters`). `proves` says in the
    summary report what its checks prove; its notebook section is the start of its module
    docstring (`Section 4.2: ...`), read by `gradkit list` and the report.
    """

    proves: str = ""  # what its checks prove, in one sentence
    # the metrics a reader looks at first: logged first (MLflow's compare views open on the
    # first metric) and said when the run ends
    headline: tuple[str, ...] = ()
    # metrics, or `experiment.` params, that span decades: also logged as `log10/<name>`
    log_scale: tuple[str, ...] = ()

    @classmethod
    def takes_components(cls) -> bool:
        """Whether it runs on a chosen model, data and loss: a network demonstration, which
        resolves them in `prepare`."""
        return cls.prepare is not Experiment.prepare

    def prepare(self, ctx: RunContext) -> None:
        """Load and check what `run` needs (data, model, loss) before the run opens: a
        ConfigError here refuses the job in one line and leaves no run in the store."""
        return None

    @abstractmethod
    def run(self, ctx: RunContext) -> Result:
        """Compute the demonstration and return its Result."""

    @classmethod
    def sweep_figure(cls, jobs: list[dict[str, Any]]) -> Figure | None:
        """The figure that compares a sweep's jobs (rows of params, metrics, status).

        The default plots each job's objective; experiments override it with a better view.
        """
        return objective_by_job(jobs)
