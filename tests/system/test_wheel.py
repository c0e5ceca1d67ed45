"""gradkit as a user installs it: a wheel in a fresh venv, run from a project of their own.

The wheel is built from this checkout and installed without dependencies into a new venv
that borrows the test environment's packages (torch, mlflow, hydra) through a path file, so
only gradkit itself comes from the wheel. The project is `examples/user_project`, copied to a
temporary git repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import CONF_DIR
from mlflow.tracking import MlflowClient

CHECKOUT = CONF_DIR.parent
EXAMPLE = CHECKOUT / "examples" / "user_project"


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert not check or done.returncode == 0, f"{args}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this checkout (built from a copy: a build leaves build/ behind)."""
    folder = tmp_path_factory.mktemp("wheel")
    source = folder / "source"
    shutil.copytree(CHECKOUT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "mlruns", "outputs", "build", "*.egg-info", "__pycache__"))
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", folder, source, cwd=folder)
    (built,) = folder.glob("gradkit-*.whl")
    return built


@pytest.fixture(scope="module")
def gradkit(wheel, tmp_path_factory) -> Path:
    """The `gradkit` command of a fresh venv with the wheel installed."""
    venv = tmp_path_factory.mktemp("venv")
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=venv)
    python = venv / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                    cwd=venv).stdout.strip())
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
        "--target", site, wheel, cwd=venv)
    script = venv / "bin" / "gradkit"
    script.write_text(f"#!{python}\nfrom gradkit.cli import main\nmain()\n")
    script.chmod(0o755)
    return script


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """examples/user_project as a git repository of its own."""
    folder = tmp_path_factory.mktemp("project") / "user_project"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    for command in (["init", "-q"], ["add", "-A"],
                    ["-c", "user.name=u", "-c", "user.email=u@x", "commit", "-qm", "start"]):
        run("git", *command, cwd=folder)
    return folder


@pytest.fixture(scope="module")
def env(project) -> dict[str, str]:
    environment = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(project)}
    environment.pop("HYDRA_FULL_ERROR", None)
    return environment


def bare(env: dict[str, str]) -> dict[str, str]:
    """`env` without PYTHONPATH: the project importable only as the folder gradkit runs in."""
    return {key: value for key, value in env.items() if key != "PYTHONPATH"}


@pytest.fixture(scope="module")
def listed(gradkit, project, env) -> str:
    """`gradkit list` of the project, run from its folder without PYTHONPATH."""
    return run(gradkit, "list", "--config-dir", "conf", cwd=project, env=bare(env)).stdout


def test_the_wheel_ships_the_configs_the_sources_and_the_sweeper(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())

    shipped = {f"gradkit/conf/{p.relative_to(CONF_DIR)}" for p in CONF_DIR.rglob("*.yaml")}
    assert shipped and shipped <= names
    package = CHECKOUT / "src" / "gradkit"  # every file of it, the report's templates included
    sources = {f"gradkit/{p.relative_to(package)}" for p in package.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert "gradkit/reporting/templates/report.html.j2" in sources
    assert sources <= names, sorted(sources - names)
    assert "hydra_plugins/gradkit_sweeper/__init__.py" in names
    assert not any(name.startswith(("tests/", "conf/")) for name in names)


def test_a_user_project_runs_lists_sweeps_reports_and_reproduces(gradkit, project, env,
                                                                 listed):
    assert "cubic (9.1)" in listed and "fast_descent (4.2)" in listed
    assert "cubic_points" in listed and "descent_lr_start" in listed

    run(gradkit, "run", "--config-dir", "conf", "experiment=cubic", "experiment.x=3",
        cwd=project, env=env)
    run(gradkit, "run", "--config-dir", "conf", "-m", "experiment=gradient_descent,fast_descent",
        "experiment.max_iterations=50,100", "plotting.figures=false", cwd=project, env=env)
    run(gradkit, "run", "--config-dir", "conf", "sweep=cubic_points", "plotting.figures=false",
        cwd=project, env=env)

    assert (project / "outputs").is_dir()
    client = MlflowClient(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    commit = run("git", "rev-parse", "HEAD", cwd=project).stdout.strip()
    runs = {}
    for name, jobs in [("cubic", 1 + 3), ("gradient_descent", 2), ("fast_descent", 2)]:
        found = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
        parents = {r.info.run_id for r in found if r.data.tags.get("sweep_dir")}
        assert len(found) - len(parents) == jobs, name
        assert {r.data.tags["mlflow.parentRunId"] for r in children} <= parents
        assert all(r.info.status == "FINISHED" and r.data.tags["git_commit"] == commit
                   and r.data.tags["version.gradkit"] for r in found)
        runs[name] = children or found
    rates = [r.data.params["experiment.learning_rate"] for r in runs["fast_descent"]]
    assert rates == ["0.002"] * 2  # the variant's own value over gradient_descent's

    report = run(gradkit, "report", "--config-dir", "conf", cwd=project, env=env)
    assert "summary of" in report.stdout and (project / "outputs/report/report.html").is_file()
    assert "cubic" in (project / "outputs/report/report.md").read_text()

    replayed = run(gradkit, "reproduce", runs["fast_descent"][0].info.run_id, cwd=project,
                   env=env)  # the run's own --config-dir is found in its Hydra record
    assert "identical" in replayed.stdout


def test_a_user_projects_model_and_data_run_from_its_folder_without_pythonpath(
        gradkit, project, env, listed, empty_store):
    assert "model=small_convnet" in listed and "data=stripes" in listed

    (project / "own_model_store").mkdir()  # a made store: this test is about the model
    shutil.copy(empty_store, project / "own_model_store" / "mlflow.db")
    run(gradkit, "run", "--config-dir", "conf", "experiment=gradient_flow",
        "model=small_convnet", "data=stripes", "tracking.root=own_model_store",
        "plotting.figures=false", cwd=project, env=bare(env))

    client = MlflowClient(f"sqlite:///{project / 'own_model_store' / 'mlflow.db'}")
    [made] = client.search_runs([client.get_experiment_by_name("gradient_flow").experiment_id])
    assert made.info.status == "FINISHED"
    assert (made.data.tags["model"], made.data.tags["data"]) == ("small_convnet", "stripes")


def test_the_command_names_its_subcommands(gradkit, project, env):
    assert "reproduce" in run(gradkit, "--help", cwd=project, env=env).stdout
    wrong = run(gradkit, "runn", cwd=project, env=env, check=False)
    assert wrong.returncode == 2
    assert wrong.stderr.strip() == ("gradkit: 'runn' is not a gradkit command; choose one of: "
                                    "run, list, report, reproduce, ui")
