"""The gradkit command, in real processes: subprocesses, signals and workers."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import EXPERIMENTS, runs_of


def run_module(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "gradkit", "run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_real_subprocess_run_from_another_directory(store, tmp_path):
    done = run_module("experiment=basic_gradients", f"tracking.root={store}",
                      f"hydra.run.dir={tmp_path}/out", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    [run] = runs_of(store, "basic_gradients")
    assert run.info.status == "FINISHED"
    assert run.data.metrics["grad"] == 7.0
    assert (tmp_path / "out" / "summary.json").is_file()


def test_help_lists_the_experiments(tmp_path):
    done = run_module("--help", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert "experiment:" in done.stdout
    assert all(name in done.stdout for name in EXPERIMENTS)


def test_a_misspelt_key_is_answered_before_mlflow_loads():
    """The experiments' configs come from their classes (torch loads), the store does not."""
    probe = ("import sys\nfrom gradkit.cli.run import main\nsys.argv = ['gradkit run', "
             "'experiment=jacobian', 'experiment.pont=1']\ntry:\n    main()\nexcept SystemExit:\n"
             "    print(sorted({'mlflow', 'sqlalchemy'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60)
    assert "experiment.pont is not a parameter of jacobian" in done.stderr
    assert done.stdout.strip() == "[]"
