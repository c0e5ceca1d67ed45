"""Benchmarks of the training diagnostics: what the instruments cost and what they measure.

Prints a table and writes bench/results/training_diagnostics.json. Runs on one torch thread;
each ratio is measured side by side in this one run (interleaved, best of REPEATS), so it
holds on a noisy machine:
  - detector:      gradient debugging's diagnose() (anomaly-mode forward, hooked backward,
                   statistics, rules) against a plain forward/backward of the same net
  - meter:         a forward pass inside SavedTensorMeter against one without
  - checkpointing: the notebook's chain (16 blocks, 100 x 1000): saved bytes and time of
                   0 (plain), 4 and 8 segments
  - accumulation:  one optimizer step on 128 samples at once against 4 x 32 accumulated
  - default runs:  each experiment's default run(), in-process (compute and figures)
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import save_results

from gradkit.core.experiment import RunContext
from gradkit.experiments.accumulation import Accumulation
from gradkit.experiments.checkpointing import Checkpointing, build, forward_backward, seconds
from gradkit.experiments.gradient_debugging import GradientDebugging, diagnose
from gradkit.experiments.gradient_flow import GradientFlow
from gradkit.lib.data import regression_batch
from gradkit.lib.diagnostics import Thresholds
from gradkit.lib.memory import SavedTensorMeter
from gradkit.plotting import discard

REPEATS = 20


def best(fn, repeats: int = REPEATS) -> float:
    """Fastest of `repeats` calls of fn, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def side_by_side(first, second, repeats: int = REPEATS, block: int = 5) -> tuple[float, float]:
    """Best times of two functions, called in alternating blocks (a call right after the other
    function pays for freeing and re-faulting its memory, so single alternation is unfair)."""
    a, b = [], []
    for _ in range(repeats // block):
        a.append(best(first, block))
        b.append(best(second, block))
    return min(a), min(b)


def detector() -> dict[str, float]:
    net = GradientDebugging(scenario="healthy").build(torch.Generator().manual_seed(0))
    x, y = regression_batch(16, 10, 1, torch.Generator().manual_seed(1))

    def plain():
        net.zero_grad()
        F.mse_loss(net(x), y).backward()

    def diagnosed():
        net.zero_grad()
        diagnose(net, x, y, Thresholds())

    plain_s, diagnosed_s = side_by_side(plain, diagnosed)
    return {"plain_backward_s": plain_s, "diagnose_s": diagnosed_s,
            "detector_overhead": diagnosed_s / plain_s}


def meter() -> dict[str, float]:
    model = build("chain", 16, 1000, "relu", torch.Generator())
    x = torch.randn(100, 1000, requires_grad=True)

    def measured():
        with SavedTensorMeter().measure():
            model(x)

    plain_s, measured_s = side_by_side(lambda: model(x), measured)
    return {"forward_s": plain_s, "forward_metered_s": measured_s,
            "meter_overhead": measured_s / plain_s}


def checkpointing() -> dict[str, float]:
    model = build("chain", 16, 1000, "relu", torch.Generator())
    x = torch.randn(100, 1000, generator=torch.Generator().manual_seed(0))
    found = {}
    for segments in (0, 4, 8):
        found[f"saved_mib.segments_{segments}"] = forward_backward(
            model, x, segments).saved_bytes / 2**20
    times = [[], [], []]
    for _ in range(REPEATS // 2):
        for i, segments in enumerate((0, 4, 8)):
            times[i].append(seconds(model, x, segments))
    for i, segments in enumerate((0, 4, 8)):
        found[f"seconds.segments_{segments}"] = min(times[i])
    for segments in (4, 8):
        found[f"memory_ratio.segments_{segments}"] = (found[f"saved_mib.segments_{segments}"]
                                                      / found["saved_mib.segments_0"])
        found[f"time_ratio.segments_{segments}"] = (found[f"seconds.segments_{segments}"]
                                                    / found["seconds.segments_0"])
    return found


def context() -> RunContext:
    return RunContext(torch.device("cpu"), torch.float32, torch.Generator().manual_seed(42),
                      Path("."), logging.getLogger("bench"), threads=torch.get_num_threads())


def accumulation() -> dict[str, float]:
    result = Accumulation(optimizer_steps=REPEATS).run(context())
    for fig in result.figures.values():
        discard(fig)
    full, accumulated = (result.metrics[f"seconds_per_step/{w}"] for w in ("full", "accumulated"))
    return {"step_full_s": full, "step_accumulated_s": accumulated,
            "accumulated_time_ratio": accumulated / full,
            "saved_bytes_ratio": result.metrics["saved_bytes_ratio"]}


def default_runs() -> dict[str, float]:
    found = {}
    for name, experiment in (("gradient_flow", GradientFlow()),
                             ("gradient_debugging", GradientDebugging()),
                             ("accumulation", Accumulation()), ("checkpointing", Checkpointing())):
        ctx = context()
        experiment.prepare(ctx)  # as the job does: the own model and data
        experiment.run(ctx)  # first-call costs (imports, dispatch) out of the timing
        start = time.perf_counter()
        result = experiment.run(ctx)
        found[f"run_s.{name}"] = time.perf_counter() - start
        for fig in result.figures.values():
            discard(fig)
    return found


def main() -> None:
    torch.set_num_threads(1)  # one thread: steadier timings on a small shared machine
    results = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               **detector(), **meter(), **checkpointing(), **accumulation(), **default_runs()}
    save_results("training_diagnostics", results)
    print(f"training diagnostics on {os.cpu_count()} CPUs, {torch.get_num_threads()} threads "
          f"(best of {REPEATS}; ratios measured side by side)")
    for key, value in results.items():
        print(f"  {key:38s} {value:12.5g}")


if __name__ == "__main__":
    main()
