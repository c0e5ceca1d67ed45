"""Benchmarks: the descent_lr_start sweep with the basic and joblib launchers.

Prints a table and writes bench/results/sweep.json. Everything is measured in this one run,
side by side, so the ratios hold even on a noisy machine:
  - startup:  a Python process that imports gradkit.core.job (paid once per sweep process)
  - compute:  the 18 experiments run in-process (descent + figure building), no tracking
  - store:    creating an empty MLflow store (once per store, so outside the sweep timings)
  - basic:    `gradkit run sweep=descent_lr_start` into an existing empty store
  - joblib:   the same with hydra/launcher=joblib, 2 workers
  - no PNGs:  basic launcher with plotting.figures=false (the report figure is still made)
The per-job cost beyond the computation is (no PNGs - startup - compute) / jobs; the PNGs'
cost to the sweep (basic - no PNGs) is less than writing them in-process, as a child process
draws each job's figure while the next job computes.
"""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import PROJECT_ROOT, save_results
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from gradkit.core.experiment import RunContext
from gradkit.experiments.gradient_descent import GradientDescent
from gradkit.plotting import save

PRESET = PROJECT_ROOT / "conf" / "sweep" / "descent_lr_start.yaml"
STORE = ("from gradkit.tracking.store import Tracker; "
         "Tracker.from_config({{'kind': 'local', 'root': '{}'}}).client.search_experiments()")


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=PROJECT_ROOT,
                   env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    return time.perf_counter() - start


def sweep_grid() -> list[dict]:
    """The preset's jobs as experiment keyword arguments, parsed as Hydra parses them."""
    params = OmegaConf.load(PRESET).hydra.sweeper.params
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    axes = {o.key_or_group.removeprefix("experiment."): list(o.sweep_iterator())
            for o in overrides}
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


def compute_seconds(grid: list[dict], folder: Path) -> tuple[float, float]:
    """Seconds to run every job's experiment in-process, and to write its figures."""
    ctx = RunContext(torch.device("cpu"), torch.float32, torch.Generator(), folder,
                     logging.getLogger("bench"))
    GradientDescent().run(ctx)  # warm-up: first-call costs belong to startup
    run_s = save_s = 0.0
    for i, params in enumerate(grid):
        start = time.perf_counter()
        result = GradientDescent(**params).run(ctx)
        run_s += time.perf_counter() - start
        start = time.perf_counter()
        for name, fig in result.figures.items():
            save(fig, folder / f"{i}-{name}.png")
        save_s += time.perf_counter() - start
    return run_s, save_s


def main() -> None:
    grid = sweep_grid()
    jobs = len(grid)
    python = [sys.executable, "-m", "gradkit", "run"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        startup = wall([sys.executable, "-c", "import gradkit.core.job"])
        store = wall([sys.executable, "-c", STORE.format(tmp / "basic")])
        for name in ("joblib", "no-figures"):
            wall([sys.executable, "-c", STORE.format(tmp / name)])
        run_s, save_s = compute_seconds(grid, tmp)
        basic = wall([*python, "sweep=descent_lr_start", f"tracking.root={tmp}/basic",
                      f"hydra.sweep.dir={tmp}/sweep-basic"])
        joblib = wall([*python, "sweep=descent_lr_start", "hydra/launcher=joblib",
                       "hydra.launcher.n_jobs=2", f"tracking.root={tmp}/joblib",
                       f"hydra.sweep.dir={tmp}/sweep-joblib"])
        no_figures = wall([*python, "sweep=descent_lr_start", "plotting.figures=false",
                           f"tracking.root={tmp}/no-figures",
                           f"hydra.sweep.dir={tmp}/sweep-no-figures"])
    overhead = (no_figures - startup - run_s) / jobs
    results = {
        "jobs": jobs, "cpus": os.cpu_count(), "startup_s": startup, "store_creation_s": store,
        "compute_s": run_s, "figures_s": save_s,
        "basic_s": basic, "joblib_2_workers_s": joblib, "joblib_speedup": basic / joblib,
        "basic_without_figures_s": no_figures, "figures_in_sweep_s": basic - no_figures,
        "tracking_and_hydra_per_job_s": overhead,
    }
    save_results("sweep", results)
    print(f"descent_lr_start: {jobs} jobs on {os.cpu_count()} CPUs")
    print(f"  process startup (imports)        {startup:6.2f} s")
    print(f"  creating an empty store (once)   {store:6.2f} s  (includes a startup)")
    print(f"  compute, in-process (all jobs)   {run_s:6.2f} s  ({run_s / jobs:.3f} s/job)")
    print(f"  writing figures (all jobs)       {save_s:6.2f} s  ({save_s / jobs:.3f} s/job)")
    print(f"  basic launcher, whole sweep      {basic:6.2f} s")
    print(f"  joblib launcher, 2 workers       {joblib:6.2f} s  (x{basic / joblib:.2f} vs basic)")
    print(f"  basic launcher, no per-job PNGs  {no_figures:6.2f} s")
    print(f"  the PNGs' cost to the sweep      {basic - no_figures:6.2f} s  (basic - no PNGs)")
    print(f"  tracking + Hydra per job         {overhead:6.3f} s")


if __name__ == "__main__":
    main()
