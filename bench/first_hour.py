"""What a new user waits for, measured side by side in one run.

  startup     `python -c "import gradkit.core.job"`, what every job loads (median of 3 processes)
  misspelt    a misspelt key answered with its one-line error (median of 3 processes)
  per job     the cost of a job beyond its computation: a no-op experiment swept 22 times
              minus 2 times, / 20, in-process, with the planned and the basic sweeper; and
              with the planned sweeper for a no-op that returns a descent's series (5 x 2000
              points: 200 of each in MLflow's metric history, all in series.csv)
  figure      the six-panel gradient descent figure, from a finished descent: build and PNG
              write (medians over 3 descents: default, diverging, slow; 5 rounds)
  preset      `sweep=descent_lr_start` (18 jobs, per-job figures), basic and joblib launchers;
              basic without per-job PNGs: the difference / 18 is what a figure adds to a job
              of the preset (a child process draws it while the next job computes)
  make run    every experiment once (`make run`'s command), caches warm (second of two runs);
              then again with `threads=auto` (torch's default thread count for a single job)
  notebook    the reference notebook's code run as one script with the same torch, when
              `--notebook FILE` names its text (Markdown with ```python blocks)

Prints a table and writes bench/results/first_hour.json.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import save_results

from gradkit.cli.run import main as gradkit_main
from gradkit.core.experiment import Experiment, Result, RunContext
from gradkit.experiments.gradient_descent import GradientDescent, descend
from gradkit.plotting import save
from gradkit.tracking.store import Tracker

PRESET_JOBS = 18
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
# Lets the notebook's code run headless as a script: no display, no seaborn (it only picks a
# palette there), pandas imported (the notebook uses it without importing it).
PRELUDE = """import matplotlib
matplotlib.use("Agg")
import sys, types
sys.modules.setdefault("seaborn", types.SimpleNamespace(set_palette=lambda *a, **k: None))
import pandas as pd
"""


class NoOp(Experiment):
    """An experiment that computes nothing: what is left of a job is the pipeline's cost."""

    series_length = 0

    def __init__(self, **_: float):
        pass

    @property
    def name(self) -> str:
        return "noop"

    def run(self, ctx: RunContext) -> Result:
        series = {name: [float(i) for i in range(self.series_length)]
                  for name in ("loss", "grad_norm", "step_size", "x", "y")}
        return Result(metrics={"value": 0.0}, series=series if self.series_length else {},
                      objective=0.0)


class NoOpWithSeries(NoOp):
    """A no-op that returns as many series points as a 2000-step descent."""

    series_length = 2000


def wall(command: list[str], cwd: Path, code: int = 0) -> float:
    """Seconds a command takes (it must exit with `code`)."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    if done.returncode != code:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}, not {code}")
    return time.perf_counter() - start


def in_process_sweep(store: Path, jobs: int, sweeper: str, folder: Path,
                     experiment: type[NoOp] = NoOp) -> float:
    """Seconds for a sweep of `jobs` no-op jobs in this process."""
    values = ",".join(str(i) for i in range(jobs))
    sys.argv = ["gradkit run", "--multirun", "experiment=basic_gradients",
                f"experiment._target_={__name__}.{experiment.__name__}", f"experiment.x={values}",
                f"hydra/sweeper={sweeper}", f"tracking.root={store}",
                f"hydra.sweep.dir={folder}", "hydra/job_logging=disabled",
                "hydra/hydra_logging=disabled"]
    start = time.perf_counter()
    gradkit_main()
    return time.perf_counter() - start


def per_job(store: Path, work: Path) -> dict[str, float]:
    """Per-job pipeline cost by sweeper (and with a descent's series): two rounds,
    alternating, medians."""
    variants = {"planned": ("planned", NoOp), "basic": ("basic", NoOp),
                "planned_with_series": ("planned", NoOpWithSeries)}
    costs: dict[str, list[float]] = {name: [] for name in variants}
    in_process_sweep(store, 2, "planned", work / "warm")
    for round_ in range(2):
        for name, (sweeper, experiment) in variants.items():
            small = in_process_sweep(store, 2, sweeper, work / f"{name}{round_}a", experiment)
            large = in_process_sweep(store, 22, sweeper, work / f"{name}{round_}b", experiment)
            costs[name].append((large - small) / 20)
    return {name: statistics.median(values) for name, values in costs.items()}


FIGURE_DESCENTS = {"default": {}, "diverging": {"learning_rate": 2e-3},
                   "slow": {"learning_rate": 1e-4, "start": [0.5, 0.5]}}


def figure_cost(work: Path) -> dict[str, float]:
    """Median seconds to build and to write the descent figure of a finished descent."""
    experiments = [GradientDescent(**kwargs) for kwargs in FIGURE_DESCENTS.values()]
    traces = [descend(e.objective.value, e.start, e.learning_rate, e.max_iterations,
                      e.tolerance) for e in experiments]
    save(experiments[0].plot(traces[0]), work / "warm.png")  # first-call costs
    builds, writes = [], []
    for round_ in range(5):
        for i, (experiment, trace) in enumerate(zip(experiments, traces, strict=True)):
            start = time.perf_counter()
            fig = experiment.plot(trace)
            builds.append(time.perf_counter() - start)
            start = time.perf_counter()
            save(fig, work / f"descent{round_}-{i}.png")
            writes.append(time.perf_counter() - start)
    build, write = statistics.median(builds), statistics.median(writes)
    return {"build": build, "write_png": write, "total": build + write}


def notebook_script(notebook: Path, work: Path) -> Path:
    """The notebook's python blocks as one script, each block guarded so one crash is not all."""
    blocks = re.findall(r"```python\n(.*?)```", notebook.read_text(), flags=re.S)
    guarded = [f"try:\n    exec({block!r}, globals())\nexcept Exception as error:\n"
               f"    print('block {i} failed:', type(error).__name__, error)\n"
               for i, block in enumerate(blocks)]
    script = work / "notebook" / "run_notebook.py"
    script.parent.mkdir(parents=True)
    script.write_text(PRELUDE + "\n".join(guarded))
    return script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebook", type=Path, help="the reference notebook's text")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gradkit-bench-"))
    store = work / "store"
    Tracker.from_config({"kind": "local", "root": str(store)})
    run = [sys.executable, "-m", "gradkit", "run"]
    results = {
        "startup": statistics.median(
            wall([sys.executable, "-c", "import gradkit.core.job"], work) for _ in range(3)),
        "misspelt_key": statistics.median(
            wall([*run, "experiment=jacobian", "experiment.pont=1"], work, code=1)
            for _ in range(3)),
        "per_job": per_job(store, work / "sweeps"),
        "figure": figure_cost(work),
        "preset_basic": wall([*run, "sweep=descent_lr_start", f"tracking.root={store}",
                              f"hydra.sweep.dir={work}/preset-basic"], work),
        "preset_basic_no_pngs": wall([*run, "sweep=descent_lr_start", "plotting.figures=false",
                                      f"tracking.root={store}",
                                      f"hydra.sweep.dir={work}/preset-no-pngs"], work),
        "preset_joblib": wall([*run, "sweep=descent_lr_start", "hydra/launcher=joblib",
                               f"tracking.root={store}", f"hydra.sweep.dir={work}/preset-joblib"],
                              work),
    }
    results["figure"]["in_preset"] = (results["preset_basic"]
                                      - results["preset_basic_no_pngs"]) / PRESET_JOBS
    every = [*run, "--multirun", "experiment=glob(*)", "hydra/sweeper=planned",
             f"tracking.root={store}"]
    wall([*every, f"hydra.sweep.dir={work}/all-cold"], work)  # fills the weight cache
    results["make_run"] = wall([*every, f"hydra.sweep.dir={work}/all-warm"], work)
    results["make_run_threads_auto"] = wall([*every, "threads=auto",
                                             f"hydra.sweep.dir={work}/all-auto"], work)
    if args.notebook:
        script = notebook_script(args.notebook, work)
        results["notebook"] = wall([sys.executable, str(script)], script.parent)
        results["preset_basic_vs_notebook"] = results["preset_basic"] / results["notebook"]
        results["make_run_vs_notebook"] = results["make_run"] / results["notebook"]
    save_results("first_hour", results)
    print(f"first hour on {os.cpu_count()} CPUs (seconds; ratios are x)")
    for key, value in results.items():
        shown = value if isinstance(value, dict) else {"": value}
        for part, number in shown.items():
            print(f"  {key + (' ' + part if part else ''):<32} {number:8.3f}")


if __name__ == "__main__":
    main()
