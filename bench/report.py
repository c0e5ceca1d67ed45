"""Benchmark: the summary report on a store of 5,000 runs, against one of 500.

Prints a table and writes bench/results/report.json. The stores are built through the MLflow
client (create_run + one log_batch + set_terminated a run), with the params, metrics and tags
real runs of each demonstration have, 10 sweeps of 100 jobs among them, a few FAILED runs and
failed checks, and a PNG on each demonstration's latest run and each sweep parent. Measured
side by side in one run (the machine is shared and noisy: compare within a run):
  - build:      seconds to build the 5,000-run store (what 5,000 real jobs would take hours for)
  - search:     reading every run of the selected demonstrations, a page of 1,000 at a time
  - report:     search + figures + HTML/Markdown + the `summary` run, in-process
  - command:    `gradkit report` as a user runs it (adds the process start-up)
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import save_results
from hydra.utils import instantiate
from mlflow.entities import Metric, Param, RunTag
from omegaconf import OmegaConf

from gradkit.cli.commands import compose_config
from gradkit.core.experiment import RunContext
from gradkit.core.reproducibility import fingerprint
from gradkit.plotting import figure, save
from gradkit.reporting import report
from gradkit.tracking.store import PARENT_TAG, Tracker, flatten

SWEEPS, JOBS = 10, 99  # of gradient_descent: 10 parents with 99 children each


def templates(folder: Path) -> dict[str, tuple[dict, dict]]:
    """Each demonstration's params and metrics, from one real in-process run of its defaults."""
    ctx = RunContext(torch.device("cpu"), torch.float32, torch.Generator(), folder,
                     logging.getLogger("bench"))
    shapes = {}
    for name in report.configured():
        cfg = compose_config("config", [f"experiment={name}"])
        result = instantiate(cfg.experiment).run(ctx)
        for fig in result.figures.values():
            save(fig, folder / "figure.png")
        metrics = {**result.metrics, "objective": result.objective,
                   **{f"check/{c}/error": check.error for c, check in result.checks.items()}}
        shapes[name] = (flatten(OmegaConf.to_container(cfg, resolve=True)), metrics)
    return shapes


def build(root: Path, runs: int, shapes: dict[str, tuple[dict, dict]], png: Path) -> float:
    """A store of `runs` runs spread over the demonstrations; seconds it took."""
    start = time.perf_counter()
    tracker = Tracker.from_config({"kind": "local", "root": str(root)})
    client, base_tags = tracker.client, fingerprint(Path.cwd())
    per_demo = runs // len(shapes)
    for name, (params, metrics) in shapes.items():
        experiment_id = tracker.experiment_id(name)
        sweeps = SWEEPS * runs // 5000 if name == "gradient_descent" else 0
        parents = []
        for i in range(per_demo):
            sweep = i // (JOBS + 1) if i < sweeps * (JOBS + 1) else None
            is_parent = sweep is not None and i % (JOBS + 1) == 0
            tags = {**base_tags, "overrides": f"seed={i}", "seed": str(i), "device": "cpu"}
            if is_parent:
                tags = {"sweep_id": f"bench-{sweep}", "sweep_dir": f"/bench/{sweep}"}
            elif sweep is not None:
                tags |= {PARENT_TAG: parents[-1], "sweep_id": f"bench-{sweep}",
                         "job_num": str(i % (JOBS + 1) - 1)}
            failed_checks = not is_parent and i % 97 == 5
            tags["checks"] = "failed" if failed_checks else "passed"
            run = client.create_run(experiment_id, run_name=f"{name} #{i}", tags=tags)
            run_id = run.info.run_id
            if is_parent:
                parents.append(run_id)
                client.log_artifact(run_id, str(png), "report")
            else:
                now = int(time.time() * 1000)
                client.log_batch(run_id, [Metric(k, v * (1 + i * 1e-6), now, 0)
                                          for k, v in metrics.items()],
                                 [Param(k, v) for k, v in params.items()],
                                 [RunTag("status", "bench")])
            if i == per_demo - 1:
                client.log_artifact(run_id, str(png), "figures")
            client.set_terminated(run_id, "FAILED" if failed_checks or i % 50 == 7
                                  else "FINISHED")
    return time.perf_counter() - start


def timed_report(root: Path, output: Path) -> tuple[float, float, int]:
    """Seconds to search the store, seconds for the whole report, runs covered."""
    cfg = compose_config("report", [f"tracking.root={root}", f"output={output}", "sweeps=all"])
    options = report.read_options(cfg, Path.cwd())
    tracker = Tracker.from_config(cfg.tracking)
    start = time.perf_counter()
    demos = report.collect(tracker, options)
    searched = time.perf_counter() - start
    report.write_report(tracker, demos, options)
    return searched, time.perf_counter() - start, sum(len(d.runs) for d in demos)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shapes = templates(tmp)
        png = tmp / "figure.png"
        if not png.exists():
            fig, ax = figure("placeholder")
            ax.set(xlabel="x", ylabel="y")
            save(fig, png)
        small_build = build(tmp / "small", 500, shapes, png)
        large_build = build(tmp / "large", 5000, shapes, png)
        small = timed_report(tmp / "small", tmp / "out-small")
        large = timed_report(tmp / "large", tmp / "out-large")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "gradkit", "report", f"tracking.root={tmp / 'large'}",
                        f"output={tmp / 'out-cli'}", "sweeps=all"], check=True,
                       capture_output=True, cwd=tmp,
                       env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
        command = time.perf_counter() - start
    results = {
        "cpus": os.cpu_count(), "runs_large": large[2], "runs_small": small[2],
        "build_5000_s": large_build, "build_500_s": small_build,
        "search_5000_s": large[0], "report_5000_s": large[1],
        "search_500_s": small[0], "report_500_s": small[1],
        "report_ratio_5000_vs_500": large[1] / small[1], "command_5000_s": command,
    }
    save_results("report", results)
    print(f"summary report on {os.cpu_count()} CPUs: stores of 5,000 runs ({large[2]} job runs "
          f"+ sweep parents) and 500 runs ({small[2]} + parents)")
    print(f"  building the 5,000-run store          {large_build:6.1f} s "
          f"({1000 * large_build / 5000:.1f} ms a run)")
    print(f"  search, 5,000 runs                    {large[0]:6.2f} s")
    print(f"  whole report, 5,000 runs (in-process) {large[1]:6.2f} s")
    print(f"  search, 500 runs                      {small[0]:6.2f} s")
    print(f"  whole report, 500 runs (in-process)   {small[1]:6.2f} s  "
          f"(5,000 runs take x{large[1] / small[1]:.1f})")
    print(f"  gradkit report, 5,000 runs  {command:6.2f} s  (with start-up)")


if __name__ == "__main__":
    main()
