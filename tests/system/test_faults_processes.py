"""Faults with real processes and signals: Ctrl-C, SIGTERM and SIGHUP on runs, sweeps,
workers and replays."""

from __future__ import annotations

import csv
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import PARENT_TAG, client_for, family, runs_of
from mlflow.entities import ViewType

from gradkit.tracking.store import Tracker

# A descent that never ends by itself: the work a signal interrupts.
ENDLESS = ["experiment=gradient_descent", "experiment.max_iterations=100000000",
           "experiment.tolerance=1e-300", "plotting.figures=false"]


WAIT = 120  # seconds a subprocess may take to start on a loaded 2-core machine


def start(*args: str, cwd: Path, new_session: bool = False) -> subprocess.Popen:
    """`gradkit run ARGS` in the background."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen([sys.executable, "-m", "gradkit", "run", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=new_session)


def all_runs(store: Path) -> list:
    client = client_for(store)
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return client.search_runs(ids, run_view_type=ViewType.ALL) if ids else []


def wait_for_running(store: Path, children: int = 0) -> None:
    """Until a plain run (children=0) or that many sweep children are RUNNING."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if (store / "mlflow.db").exists():
            running = [r for r in all_runs(store) if r.info.status == "RUNNING"
                       and (PARENT_TAG in r.data.tags) == bool(children)]
            if len(running) >= max(children, 1):
                return
        time.sleep(0.3)
    raise AssertionError("no run started")


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=WAIT)
    return process.returncode, err


def report_rows(sweep_dir: Path, experiment: str) -> list[dict[str, str]]:
    with (sweep_dir / "report" / experiment / "jobs.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_or_a_hangup_ends_a_single_run_killed(signum, store, tmp_path):
    """SIGHUP (a closed terminal or ssh session) is handled as SIGTERM is."""
    process = start(*ENDLESS, f"tracking.root={store}", f"hydra.run.dir={tmp_path / 'run'}",
                    cwd=tmp_path)
    wait_for_running(store)
    process.send_signal(signum)
    code, err = finish(process)

    name = signal.Signals(signum).name
    assert code == 128 + signum
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"gradkit: stopped by {name}; run ")
    [run] = all_runs(store)
    assert run.info.status == "KILLED"
    assert run.data.tags["error"] == f"Interrupted: {name}"
    assert run.data.params["experiment.function"] == "rosenbrock"  # what ran is kept
    artifacts = {a.path for a in client_for(store).list_artifacts(run.info.run_id)}
    assert {"config.yaml", ".hydra", "run.log"} <= artifacts


def test_ctrl_c_stops_a_sweep_and_accounts_for_every_job(store, tmp_path):
    sweep_dir = tmp_path / "sweep"
    process = start("--multirun", *ENDLESS, "experiment.learning_rate=1e-4,2e-4,3e-4",
                    f"tracking.root={store}", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path,
                    new_session=True)
    wait_for_running(store, children=1)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends: the whole process group
    code, err = finish(process)

    assert code == 128 + signal.SIGINT
    assert "Traceback" not in err
    assert "ended FAILED: 0 of 3 jobs completed, 3 killed or not run" in err.splitlines()[-1]
    assert err.splitlines()[-1].endswith(" completed") and "0 of 3 jobs of sweep " in err
    parent, [child] = family(store, "gradient_descent")
    assert (parent.info.status, child.info.status) == ("FAILED", "KILLED")
    assert parent.data.tags["sweep_stopped"] == "interrupted"
    assert parent.data.metrics == {"jobs": 3.0, "jobs_failed": 3.0}
    assert "(NOT_RUN)" in parent.data.tags["failed_jobs"]
    rows = report_rows(sweep_dir, "gradient_descent")
    assert [row["status"] for row in rows] == ["KILLED", "NOT_RUN", "NOT_RUN"]
    assert rows[0]["run_id"] == child.info.run_id
    rerun = (sweep_dir / "report" / "gradient_descent" / "rerun.sh").read_text().splitlines()
    assert len(rerun) == 4 and "experiment.learning_rate=0.0003" in rerun[3]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_sweep_still_closes_the_finished_job_with_its_figure(signum, store,
                                                                       tmp_path):
    """Stopped while a finished job's run is open (its figure drawn by the renderer as the
    next job computes): that run still ends FINISHED with its PNG, the running one KILLED;
    nothing stays RUNNING and no process is left behind, the renderer included."""
    sweep_dir = tmp_path / "sweep"
    process = start("--multirun", "experiment=gradient_descent", "experiment.tolerance=1e-300",
                    "experiment.max_iterations=20,100000000", f"tracking.root={store}",
                    f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, new_session=True)
    wait_for_running(store, children=2)  # job 0's run, still open, and job 1's
    helpers = descendants(process.pid)
    assert any(b"gradkit.plotting.pngs" in _read(Path(f"/proc/{pid}/cmdline")) for pid in helpers)
    if signum == signal.SIGINT:
        os.killpg(process.pid, signum)  # Ctrl-C: to the terminal's process group
    else:
        process.send_signal(signum)
    code, err = finish(process)

    assert code == 128 + signum
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"gradkit: stopped by {signal.Signals(signum).name}; run ")
    assert "ended FAILED: 1 of 2 jobs completed, 1 killed or not run" in last
    parent, children = family(store, "gradient_descent")
    assert parent.info.status == "FAILED"
    assert [c.info.status for c in children] == ["FINISHED", "KILLED"]
    figures = {a.path for a in client_for(store).list_artifacts(children[0].info.run_id,
                                                                 "figures")}
    assert figures == {"figures/descent.png"}
    assert not [r for r in all_runs(store) if r.info.status == "RUNNING"]
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline")
                if str(sweep_dir).encode() in _read(p) and alive(int(p.parent.name))]
    assert not [pid for pid in helpers if alive(pid)]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def test_sigterm_stops_a_joblib_sweep_and_its_workers(store, tmp_path):
    sweep_dir = tmp_path / "sweep"
    process = start("--multirun", *ENDLESS, "experiment.learning_rate=1e-4,2e-4,3e-4",
                    "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                    f"tracking.root={store}", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    wait_for_running(store, children=2)
    workers = descendants(process.pid)
    process.send_signal(signal.SIGTERM)  # to the main process only, as `timeout` does
    code, err = finish(process)

    assert code == 128 + signal.SIGTERM
    assert "Traceback" not in err
    assert workers
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if alive(pid)]
    assert "RUNNING" not in {run.info.status for run in all_runs(store)}
    parent, children = family(store, "gradient_descent")
    assert parent.info.status == "FAILED"
    assert parent.data.tags["sweep_stopped"] == "interrupted"
    assert [c.info.status for c in children] == ["KILLED", "KILLED"]
    assert [row["status"] for row in report_rows(sweep_dir, "gradient_descent")] == [
        "KILLED", "KILLED", "NOT_RUN"]


CREATE = "from gradkit.tracking.store import Tracker; Tracker.from_config({{'kind': 'local', " \
         "'root': '{}'}})"


@pytest.mark.parametrize(("moment", "signum"), [(0.0, signal.SIGKILL), (0.3, signal.SIGINT)])
def test_store_creation_interrupted_leaves_a_usable_store(moment, signum, tmp_path):
    root = tmp_path / "mlruns"
    process = subprocess.Popen([sys.executable, "-c", CREATE.format(root)],
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + WAIT
    while not list(root.glob(".mlflow.db.*.tmp*")) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert list(root.glob(".mlflow.db.*.tmp*")), "the schema was never being built"
    time.sleep(moment)
    process.send_signal(signum)
    process.wait(timeout=WAIT)

    assert process.returncode != 0 or (root / "mlflow.db").exists()  # interrupted, or made
    # whatever the moment, the store opens: never a half-built mlflow.db
    tracker = Tracker.from_config({"kind": "local", "root": str(root)})
    with tracker.run("store_check", "after the interruption", {}) as run_id:
        tracker.log_metrics(run_id, {"value": 1.0})
    assert runs_of(root, "store_check")[0].data.metrics == {"value": 1.0}
    assert not list(root.glob(".mlflow.db.*"))


def test_two_sweeps_starting_at_once_on_a_fresh_store(tmp_path):
    root = tmp_path / "fresh"
    first = start("--multirun", "experiment=basic_gradients", "experiment.x=1,2",
                  "plotting.figures=false", f"tracking.root={root}",
                  f"hydra.sweep.dir={tmp_path / 'a'}", cwd=tmp_path)
    second = start("--multirun", "experiment=basic_gradients", "experiment.x=3,4",
                   "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "threads=auto",
                   "plotting.figures=false", f"tracking.root={root}",
                   f"hydra.sweep.dir={tmp_path / 'b'}", cwd=tmp_path)
    for process in (first, second):
        code, err = finish(process)
        assert code == 0, err

    runs = runs_of(root, "basic_gradients")
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    assert len(runs) == 6 and len(parents) == 2
    for parent in parents:
        assert parent.info.status == "FINISHED"
        children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
        assert len(children) == 2
        assert {c.data.tags["sweep_id"] for c in children} == {parent.data.tags["sweep_id"]}
    children = sorted((r for r in runs if PARENT_TAG in r.data.tags),
                      key=lambda r: r.data.metrics["grad"])
    assert [c.data.metrics["grad"] for c in children] == [5.0, 7.0, 9.0, 11.0]  # 2 x + 3
    # threads=auto shares the cores among the 2 joblib workers of the second sweep
    assert {c.data.tags["threads"] for c in children[2:]} == {str(max(1, os.cpu_count() // 2))}


class FailingServer(http.server.BaseHTTPRequestHandler):
    """Answers the health check, then fails every API call as an overloaded server would."""

    api_calls = 0

    def do_GET(self):
        if self.path == "/health":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")
            return
        type(self).api_calls += 1
        self.send_response(503)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args):
        pass


def test_a_failing_server_is_retried_a_bounded_number_of_times(gradkit, tmp_path,
                                                               monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")  # the count, not the pauses
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FailingServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code, err = gradkit("tracking=server",
                            f"tracking.uri=http://127.0.0.1:{server.server_port}",
                            f"hydra.run.dir={tmp_path / 'run'}")
    finally:
        server.shutdown()

    assert code != 0
    assert "Traceback" not in err
    assert 1 <= FailingServer.api_calls <= 3  # one call and MLFLOW_HTTP_REQUEST_MAX_RETRIES=2


@pytest.fixture(scope="module")
def slow_original(tmp_path_factory, empty_store) -> tuple[Path, str]:
    """A store with one finished descent long enough that its replay can be stopped midway
    (20000 steps: seconds, against the 0.3 s the signal waits for; made once, in this
    process: only the replay needs a process of its own)."""
    from gradkit.cli.run import main

    root = tmp_path_factory.mktemp("original") / "mlruns"
    root.mkdir()
    shutil.copy(empty_store, root / "mlflow.db")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", [
            "gradkit run", "experiment=gradient_descent", "experiment.max_iterations=20000",
            "experiment.tolerance=1e-300", "plotting.figures=false", f"tracking.root={root}",
            f"hydra.run.dir={root.parent / 'run'}"])
        main()
    [original] = all_runs(root)
    return root, original.info.run_id


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_replay_stopped_by_a_signal_gives_no_verdict(signum, slow_original, tmp_path):
    """`gradkit reproduce` stopped during its replay exits as the signal says, with no
    comparison: the replay's run ends KILLED, the original is untouched."""
    original_store, original = slow_original
    store = tmp_path / "mlruns"  # a copy of the store; the artifacts stay where they were
    store.mkdir()
    shutil.copy(original_store / "mlflow.db", store / "mlflow.db")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gradkit", "reproduce", original, f"tracking.root={store}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    wait_for_running(store)
    os.killpg(process.pid, signum)
    out, err = process.communicate(timeout=WAIT)

    assert process.returncode == 128 + signum
    assert "Traceback" not in err
    name = signal.Signals(signum).name
    assert err.strip().splitlines()[-1].startswith(f"gradkit: stopped by {name}")
    assert "differ" not in err + out and "identical" not in err + out
    statuses = {r.info.run_id: r.info.status for r in all_runs(store)}
    assert statuses.pop(original) == "FINISHED"
    assert list(statuses.values()) == ["KILLED"]


LOST_IN_GC = """
import gc, os, signal, time
from gradkit.core import interrupts

interrupts.install()
fired = []

def callback(phase, info):
    if not fired:
        fired.append(phase)
        os.kill(os.getpid(), signal.{name})
        sum(range(100000))  # the handler runs here, where Python cannot raise

gc.callbacks.append(callback)
try:
    gc.collect()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        sum(range(1000))
    print("ran to the end")
except interrupts.Interrupted as stop:
    print(f"stopped by {{stop}}")
"""


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_during_a_garbage_collector_callback_is_not_lost(name):
    """Python swallows an exception raised in a gc callback ("Exception ignored ..."): the
    interruption is raised again where it can propagate."""
    done = subprocess.run([sys.executable, "-c", LOST_IN_GC.format(name=name)],
                          capture_output=True, text=True, timeout=WAIT, check=False)

    assert done.stdout.strip() == f"stopped by {name}", done.stdout + done.stderr
    assert "Exception ignored" not in done.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stopped_submitit_local_sweep_stops_its_jobs(signum, store, tmp_path):
    """Ctrl-C (to the process group) or SIGTERM (to gradkit alone) stops submitit's local
    job processes too: their runs end KILLED and stay so, and nothing prints a traceback."""
    sweep_dir = tmp_path / "sweep"
    process = start("--multirun", *ENDLESS, "experiment.learning_rate=1e-4,2e-4",
                    "hydra/launcher=submitit_local", f"tracking.root={store}",
                    f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, new_session=True)
    wait_for_running(store, children=2)
    workers = descendants(process.pid)
    assert any(b"submitit" in _read(Path(f"/proc/{pid}/cmdline")) for pid in workers)
    if signum == signal.SIGINT:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    code, err = finish(process)

    assert code == 128 + signum
    assert "Traceback" not in err
    name = signal.Signals(signum).name
    assert err.strip().splitlines()[-1].startswith(f"gradkit: stopped by {name}")
    assert not [pid for pid in workers if alive(pid)]  # no job left to finish later
    parent, children = family(store, "gradient_descent")
    assert parent.info.status == "FAILED"
    assert [c.info.status for c in children] == ["KILLED", "KILLED"]
    assert [row["status"] for row in report_rows(sweep_dir, "gradient_descent")] == [
        "KILLED", "KILLED"]
