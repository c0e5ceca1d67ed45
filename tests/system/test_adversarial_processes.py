"""Adversarial attacks, in real processes: subprocesses, signals and workers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import PARENT_TAG, client_for, runs_of

FAST = ("model=mlp", "experiment.epochs=2", "experiment.examples=3")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread


def test_epsilon_smoke_sweep_with_parallel_workers(store, tmp_path):
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("HYDRA_FULL_ERROR", None)
    done = subprocess.run(
        [sys.executable, "-m", "gradkit", "run", "sweep=adversarial_epsilons",
         "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "experiment.attack=fgsm",
         "experiment.epsilon=0.05,0.2", *FAST, "plotting.figures=false",
         f"tracking.root={store}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False)

    assert done.returncode == 0, done.stderr
    runs = runs_of(store, "adversarial")
    [parent] = [r for r in runs if PARENT_TAG not in r.data.tags]
    children = sorted((r for r in runs if r is not parent),
                      key=lambda r: float(r.data.params["experiment.epsilon"]))
    assert parent.info.status == "FINISHED"
    assert [c.info.status for c in children] == ["FINISHED", "FINISHED"]
    assert sorted(c.data.tags["cache"] for c in children) == ["hit", "miss"]  # trained once
    assert len({c.data.tags["cache_entry"] for c in children}) == 1
    low, high = (c.data.metrics for c in children)
    assert low["clean_accuracy"] == high["clean_accuracy"]
    assert high["robust_accuracy"] <= low["robust_accuracy"]
    report = {a.path for a in client_for(store).list_artifacts(parent.info.run_id, "report")}
    assert report == {"report/jobs.csv", "report/comparison.png"}
