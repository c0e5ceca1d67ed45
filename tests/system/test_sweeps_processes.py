"""Multiruns, in real processes: subprocesses, signals and workers."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import family, runs_of


def run_module(*args: str, cwd) -> subprocess.CompletedProcess:
    """`gradkit run --multirun ARGS` in a fresh interpreter."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "gradkit", "run", "--multirun", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=180, check=False)


def test_invalid_job_fails_the_sweep_but_not_the_valid_job(store, tmp_path):
    done = run_module("experiment=gradient_descent", "experiment.learning_rate=1e-3,-1",
                      "experiment.max_iterations=50", "plotting.figures=false",
                      f"tracking.root={store}",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)

    assert done.returncode != 0
    assert "experiment.learning_rate" in done.stderr
    parent, children = family(store, "gradient_descent")
    assert parent.info.status == "FAILED"
    assert "learning_rate=-1" in parent.data.tags["failed_jobs"]
    assert "learning_rate=0.001" not in parent.data.tags["failed_jobs"]
    [valid] = [c for c in children if c.info.status == "FINISHED"]
    assert parent.data.metrics == {"jobs": 2.0, "jobs_failed": 1.0,
                                   "best_objective": valid.data.metrics["objective"]}
    assert valid.data.params["experiment.learning_rate"] == "0.001"
    assert valid.data.metrics["iterations"] == 50
    assert valid.data.tags["status"] == "max_iterations"
    invalid = [r for r in runs_of(store, "gradient_descent") if r.data.tags.get("job_num") == "1"]
    assert all(r.info.status not in ("RUNNING", "FINISHED") for r in invalid)
