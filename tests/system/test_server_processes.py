"""A real `mlflow server`: a job, a joblib sweep and a submitit sweep land in it and read back.

One server per test worker (SQLite backend, artifacts proxied by the server), started on a
free 127.0.0.1 port with a bounded wait for readiness and killed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import PARENT_TAG, free_port, untimed
from mlflow.tracking import MlflowClient

from gradkit.reporting import report, reproduce

READY_TIMEOUT = 90.0  # seconds for the server to answer /health





@pytest.fixture(scope="session")
def server(tmp_path_factory, empty_store):
    """The URI of a running tracking server."""
    root = tmp_path_factory.mktemp("server")
    shutil.copy(empty_store, root / "server.db")  # its tables are made: the server starts faster
    with serving(root, free_port()) as uri:
        yield uri


@contextmanager
def serving(root: Path, port: int) -> Iterator[str]:
    """`mlflow server` on `root/server.db` at `port` while the block runs: its URI."""
    uri = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
               "--artifacts-destination", str(root / "artifacts")]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with (root / "server.log").open("a") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    try:
        wait_until_ready(uri, process, root / "server.log")
        yield uri
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and its uvicorn worker
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_until_ready(uri: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited ({process.returncode}): {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not ready after {READY_TIMEOUT:.0f} s")
            time.sleep(0.25)


@pytest.fixture
def on_server(server, tmp_path, monkeypatch, gradkit):
    """`gradkit run ARGS tracking=server tracking.uri=...` in this process."""
    monkeypatch.chdir(tmp_path)

    def run(*args: str, multirun: bool = False) -> tuple[int, str]:
        where = (f"hydra.sweep.dir={tmp_path / 'sweep'}" if multirun
                 else f"hydra.run.dir={tmp_path / 'run'}")
        return gradkit(*(["--multirun"] if multirun else []), *args, "tracking=server",
                       f"tracking.uri={server}", where)

    return run


def runs_where(uri: str, experiment: str, filter_string: str) -> list:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], filter_string) if found else []


def family(uri: str, experiment: str, sweep_dir: Path) -> tuple:
    """The parent run of the sweep in `sweep_dir` and its children, by job number."""
    [parent] = runs_where(uri, experiment, f"tags.sweep_dir = '{sweep_dir.resolve()}'")
    children = runs_where(uri, experiment, f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    return parent, sorted(children, key=lambda run: int(run.data.tags["job_num"]))


def test_one_job_reads_back_through_the_server(server, on_server, tmp_path):
    code, err = on_server("experiment=jacobian", "experiment.point=[2,1,4]")

    assert code == 0, err
    [run] = runs_where(server, "jacobian", "params.`experiment.point` = '[2.0, 1.0, 4.0]'")
    assert run.info.status == "FINISHED"
    assert run.data.tags["checks"] == "passed"
    assert "tracking.uri" not in run.data.params  # where it was stored is no result
    assert run.data.metrics["determinant"] == 8.0  # 2 x1 · x1 · x2 at (2, 1, 4)
    client = MlflowClient(server)
    paths = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "summary.json", "figures", ".hydra"} <= paths
    summary = json.loads(Path(client.download_artifacts(run.info.run_id, "summary.json",
                                                        str(tmp_path / "dl"))).read_text())
    assert summary["metrics"]["determinant"] == 8.0
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server


def test_joblib_sweep_of_four_jobs(server, on_server, tmp_path):
    code, err = on_server("experiment=basic_gradients", "experiment.x=1,2,3,4",
                        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                        "plotting.figures=false", multirun=True)

    assert code == 0, err
    parent, children = family(server, "basic_gradients", tmp_path / "sweep")
    assert parent.info.status == "FINISHED"
    objectives = [c.data.metrics["objective"] for c in children]
    assert parent.data.metrics == {"jobs": 4.0, "jobs_failed": 0.0,
                                   "best_objective": min(objectives)}
    assert [c.info.status for c in children] == ["FINISHED"] * 4
    assert {c.data.tags["sweep_id"] for c in children} == {parent.data.tags["sweep_id"]}
    assert [c.data.metrics["grad"] for c in children] == [5.0, 7.0, 9.0, 11.0]  # 2x + 3
    report_files = {a.path for a in MlflowClient(server).list_artifacts(parent.info.run_id,
                                                                         "report")}
    assert report_files == {"report/jobs.csv", "report/comparison.png"}


def test_submitit_local_sweep_lands_under_one_parent(server, on_server, tmp_path):
    code, err = on_server("experiment=computational_graph", "experiment.x=0.5,1.5",
                        "hydra/launcher=submitit_local", "plotting.figures=false",
                        multirun=True)

    assert code == 0, err
    parent, children = family(server, "computational_graph", tmp_path / "sweep")
    assert parent.info.status == "FINISHED"
    assert [c.data.params["experiment.x"] for c in children] == ["0.5", "1.5"]
    assert [c.info.status for c in children] == ["FINISHED", "FINISHED"]
    assert all(c.data.tags[PARENT_TAG] == parent.info.run_id for c in children)


def test_reproduce_and_report_on_the_server(server, on_server, tmp_path, capsys):
    code, err = on_server("experiment=basic_gradients", "experiment.c=-4",
                          "plotting.figures=false")
    assert code == 0, err
    [original] = runs_where(server, "basic_gradients", "params.`experiment.c` = '-4.0'")
    store = ["tracking=server", f"tracking.uri={server}"]

    with pytest.raises(SystemExit) as exit_:
        reproduce.main([original.info.run_id, *store])
    assert exit_.value.code == 0, capsys.readouterr().err
    [made] = runs_where(server, "basic_gradients",
                        f"tags.reproduces = '{original.info.run_id}'")
    assert untimed(made.data.metrics) == untimed(original.data.metrics)

    report.main([*store, f"output={tmp_path / 'report'}", "experiments=[basic_gradients]"])
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert f"Run [{made.info.run_id}](" in markdown  # the replay is the latest run
    [summary] = runs_where(server, report.REPORT_EXPERIMENT, "")[:1]
    assert "report.html" in {a.path for a in MlflowClient(server).list_artifacts(
        summary.info.run_id)}


def test_runs_left_open_by_a_server_outage_are_ended_once_it_is_back(empty_store, tmp_path):
    """The server dies mid-sweep; the sweep is stopped: its last line names the runs it could
    not end, and the next command that reaches the server ends them."""
    root = tmp_path / "server"
    root.mkdir()
    shutil.copy(empty_store, root / "server.db")
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}  # a dead server fails at once
    store = ["tracking=server", f"tracking.uri=http://127.0.0.1:{port}"]
    with serving(root, port) as uri:
        sweep = subprocess.Popen(
            [sys.executable, "-m", "gradkit", "run", "--multirun", "experiment=gradient_descent",
             "experiment.max_iterations=100000000", "experiment.tolerance=1e-300",
             "experiment.learning_rate=1e-4,2e-4", "plotting.figures=false", *store,
             f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + READY_TIMEOUT
        while len(runs_where(uri, "gradient_descent", "attributes.status = 'RUNNING'")) < 2:
            assert time.monotonic() < deadline and sweep.poll() is None, "no job started"
            time.sleep(0.3)
    sweep.send_signal(signal.SIGTERM)  # the server is gone: nothing can be ended now
    _, err = sweep.communicate(timeout=READY_TIMEOUT)

    assert sweep.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "Retrying" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("gradkit: could not end run ") and "sweep parent of" in last
    assert last.endswith("until the next gradkit command that reaches the store ends them")

    with serving(root, port) as uri:
        assert runs_where(uri, "gradient_descent", "attributes.status = 'RUNNING'")
        done = subprocess.run([sys.executable, "-m", "gradkit", "run",
                               "experiment=basic_gradients", "plotting.figures=false", *store,
                               f"hydra.run.dir={tmp_path / 'next'}"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=READY_TIMEOUT, check=False)
        assert done.returncode == 0, done.stderr
        assert "(left open by an earlier command)" in done.stdout + done.stderr
        runs = runs_where(uri, "gradient_descent", "")
        assert sorted(r.info.status for r in runs) == ["FAILED", "KILLED"]
        assert all("left open" in r.data.tags["error"] for r in runs)
