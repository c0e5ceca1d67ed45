"""The gradkit command, in real processes: subprocesses, signals and workers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
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


# `gradkit run --help`, then a misspelt key, in one interpreter: each one's exit code, then
# which of MLflow's modules and SymPy were loaded by then
HELP_THEN_MISSPELT = """
import sys
from gradkit.cli import main

for args in (["run", "--help"], ["run", "experiment=jacobian", "experiment.pont=1"]):
    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    print(f"exit {code}", flush=True)
print(sorted({"mlflow", "sqlalchemy", "sympy"} & set(sys.modules)))
"""


@pytest.fixture(scope="module")
def probed(tmp_path_factory) -> tuple[str, str, list[str]]:
    """The help text, stderr, and the last lines (the exit codes and the loaded modules)."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("HYDRA_FULL_ERROR", None)
    done = subprocess.run([sys.executable, "-c", HELP_THEN_MISSPELT], capture_output=True,
                          text=True, timeout=120, check=True, env=env,
                          cwd=tmp_path_factory.mktemp("probe"))
    *help_text, help_exit, misspelt_exit, modules = done.stdout.splitlines()
    return "\n".join(help_text), done.stderr, [help_exit, misspelt_exit, modules]


def test_help_lists_the_experiments(probed):
    help_text, _, (help_exit, _, _) = probed

    assert help_exit == "exit 0"
    assert "experiment:" in help_text
    assert all(name in help_text for name in EXPERIMENTS)


def test_a_misspelt_key_is_answered_before_mlflow_or_sympy_loads(probed):
    """The experiments' configs come from their classes (torch loads), the store does not
    (not even after `--help`), nor SymPy, which only functions written as expressions need."""
    _, err, (_, misspelt_exit, modules) = probed

    assert misspelt_exit != "exit 0"
    assert "experiment.pont is not a parameter of jacobian" in err
    assert modules == "[]"
