"""Shared fixtures: a fast empty MLflow store per test and an in-process CLI runner.

torch, MLflow, Hydra's compose and matplotlib load where a fixture or helper needs them: the
process that only hands tests to the xdist workers then starts in a fraction of a second.
"""

from __future__ import annotations

import copy
import importlib.resources
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
# runs left open by a failing store are remembered here, not in the user's ~/.local/state
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="gradkit-state-")

import pytest

from gradkit.core.configs import CONFIG_MODULE
from gradkit.core.names import sqlite_uri

if TYPE_CHECKING:
    from gradkit.core.experiment import RunContext

CONF_DIR = Path(str(importlib.resources.files(CONFIG_MODULE)))  # the checkout's conf/
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.fixture(scope="session", autouse=True)
def _test_process():
    """Before a process's first test: the experiments' generated configs, for tests that
    compose directly, and one torch thread per xdist worker (each has a core; more threads
    would only contend with the other workers, 10-100x slower)."""
    import torch

    from gradkit.core.parameters import register_builtins

    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
    register_builtins()


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables made once (creating them takes seconds)."""
    from gradkit.tracking.store import Tracker

    root = tmp_path_factory.mktemp("template")
    Tracker.from_config({"kind": "local", "root": str(root)}).client.search_experiments()
    return root / "mlflow.db"


@pytest.fixture
def store(tmp_path, empty_store) -> Path:
    """A fresh store folder for one test, to pass as tracking.root."""
    root = tmp_path / "mlruns"
    root.mkdir()
    shutil.copy(empty_store, root / "mlflow.db")
    return root


@pytest.fixture(autouse=True)
def _compact_hydra_errors(monkeypatch):
    """HYDRA_FULL_ERROR=1 in the caller's shell would turn one-line errors into tracebacks."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny networks: a second only adds contention."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def ctx(tmp_path) -> RunContext:
    """A float32 CPU context seeded with 0, writing to the test's folder."""
    import torch

    from gradkit.core.experiment import RunContext

    return RunContext(torch.device("cpu"), torch.float32, torch.Generator().manual_seed(0),
                      tmp_path, logging.getLogger("test"))


@pytest.fixture(autouse=True)
def _close_figures():
    """Figures a test made are closed after it."""
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


PARENT_TAG = "mlflow.parentRunId"
USER_PROJECT = Path(__file__).parents[1] / "examples" / "user_project"


@pytest.fixture
def user_project(monkeypatch) -> Path:
    """The example user project importable, as when gradkit runs in its folder; returns its
    `conf/`, for `--config-dir` (models `small_convnet`, data `stripes`)."""
    monkeypatch.syspath_prepend(str(USER_PROJECT))
    return USER_PROJECT / "conf"


@contextmanager
def composed_once(module, name: str) -> Iterator[None]:
    """While it lasts, `module.name` (a function of the config folders that composes every
    option of some groups: about a second a call) computes once per list of folders; each
    later call gets a copy of that result."""
    real = getattr(module, name)
    composed: dict[tuple[str, ...], object] = {}

    def once(config_dirs=()):
        key = tuple(str(folder) for folder in config_dirs)
        if key not in composed:
            composed[key] = real(config_dirs)
        return copy.deepcopy(composed[key])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, name, once)
        yield


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def family(store: Path, experiment: str) -> tuple:
    """The one parent run of `experiment` and its children, by job number."""
    runs = runs_of(store, experiment)
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    [parent] = parents
    children = [r for r in runs if r is not parent]
    assert all(c.data.tags[PARENT_TAG] == parent.info.run_id for c in children)
    return parent, sorted(children, key=lambda c: int(c.data.tags["job_num"]))


def untimed(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics without wall-clock timings (`job_seconds`, `seconds/<method>`, ...): the
    only ones that differ between two runs of one config."""
    from gradkit.core.experiment import is_timing

    return {key: value for key, value in metrics.items() if not is_timing(key)}


def client_for(root: Path):
    """An MLflow client of the store at `root`."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(sqlite_uri(root / "mlflow.db"))


def runs_of(root: Path, experiment: str) -> list:
    """Every run of MLflow experiment `experiment` in the store at `root`."""
    client = client_for(root)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def compose_config(*overrides: str):
    """The composed job config (without the hydra node), as the entry point would see it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.fixture
def gradkit(monkeypatch, capsys):
    """Run `gradkit run ARGS` in this process; returns (exit code, stderr)."""
    from gradkit.cli.run import main

    def run(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["gradkit run", *args])
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code or 0
        captured = capsys.readouterr()
        run.out = captured.out  # what the command printed on stdout, for the tests that read it
        return code, captured.err

    return run


@pytest.fixture
def cli(tmp_path, store, gradkit):
    """`gradkit` into the test's store, with its output in the test's folder."""

    def run(*args: str, multirun: bool = False) -> tuple[int, str]:
        where = (f"hydra.sweep.dir={tmp_path / 'sweep'}" if multirun
                 else f"hydra.run.dir={tmp_path / 'run'}")
        return gradkit(*(["--multirun"] if multirun else []), *args, f"tracking.root={store}",
                       where)

    return run
