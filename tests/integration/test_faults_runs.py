"""Faults in this process: interrupted or concurrent stores, broken stores, a signal as a run
ends."""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
from pathlib import Path

import pytest
from conftest import PARENT_TAG, client_for, free_port, runs_of
from mlflow.entities import ViewType

from gradkit.core import interrupts
from gradkit.tracking.store import Tracker


def all_runs(store: Path) -> list:
    client = client_for(store)
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return client.search_runs(ids, run_view_type=ViewType.ALL) if ids else []


def report_rows(sweep_dir: Path, experiment: str) -> list[dict[str, str]]:
    with (sweep_dir / "report" / experiment / "jobs.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def make_broken(kind: str, folder: Path) -> Path:
    """A tracking.root that cannot be used; returns the path whose bytes must not change."""
    folder.mkdir()
    database = folder / "mlflow.db"
    if kind == "file":
        (folder / "notes").write_text("a file, not a folder")
        return folder / "notes"
    if kind == "under_a_file":
        (folder / "notes").write_text("a file, not a folder")
        return folder / "notes"
    if kind == "garbage":
        database.write_bytes(b"not a database at all\n" * 100)
        return database
    with sqlite3.connect(database) as db:
        if kind == "half_built":
            db.execute("CREATE TABLE experiments (id INTEGER)")
            db.execute("CREATE TABLE _alembic_tmp_experiments (id INTEGER)")
        else:  # another program's database
            db.execute("CREATE TABLE notes (body TEXT)")
    return database


ROOTS = {"file": "notes", "under_a_file": "notes/mlruns", "garbage": "", "half_built": "",
         "foreign": ""}


@pytest.mark.parametrize("kind", ROOTS)
@pytest.mark.parametrize("multirun", [False, True], ids=["run", "sweep"])
def test_unusable_store_gets_one_line_before_any_work(kind, multirun, gradkit, tmp_path):
    untouched = make_broken(kind, tmp_path / "store")
    before = untouched.read_bytes()
    root = tmp_path / "store" / ROOTS[kind]
    sweep_dir = tmp_path / "sweep"
    args = ["experiment=basic_gradients", f"tracking.root={root}",
            f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={sweep_dir}"]
    code, err = gradkit(*(["--multirun", "experiment.x=1,2"] if multirun else []), *args)

    assert code != 0
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines()
              if "tracking.root=" in line and not line.startswith("Error executing job")]
    assert str(tmp_path / "store") in line
    assert untouched.read_bytes() == before
    assert not list(sweep_dir.glob("0-*"))  # no job folder


def test_relative_root_is_relative_to_where_the_command_started(gradkit, tmp_path,
                                                               monkeypatch, empty_store):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "mlflow.db").write_bytes(empty_store.read_bytes())
    code, err = gradkit("--multirun", "experiment=basic_gradients", "experiment.x=1,2",
                        "tracking.root=here", "hydra.job.chdir=true", "hydra.sweep.dir=sweep")

    assert code == 0, err
    assert len(runs_of(tmp_path / "here", "basic_gradients")) == 3
    assert not list((tmp_path / "sweep").rglob("mlflow.db"))



@pytest.mark.parametrize("multirun", [False, True], ids=["run", "sweep"])
def test_no_server_listening_fails_fast_with_one_line(multirun, gradkit, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    code, err = gradkit(*(["--multirun", "experiment.x=1,2"] if multirun else []),
                        "experiment=basic_gradients", "tracking=server", f"tracking.uri={uri}",
                        f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 's'}")

    assert code != 0
    assert "Traceback" not in err
    assert f"no MLflow server at {uri}: connection refused; start one with `make server`" in err
    assert not list((tmp_path / "s").glob("0-*"))


def test_a_bogus_server_uri_is_named(gradkit, tmp_path):
    code, err = gradkit("tracking=server", "tracking.uri=bogus",
                        f"hydra.run.dir={tmp_path / 'run'}")

    assert code != 0
    assert "tracking.uri='bogus' is not a tracking server URL" in err


def test_a_reused_sweep_folder_reports_only_its_own_jobs(cli, store, tmp_path):
    code, _ = cli("experiment=gradient_descent", "experiment.learning_rate=1e-3,-1",
                  "experiment.max_iterations=5", multirun=True)
    assert code != 0
    code, err = cli("experiment=gradient_descent", "experiment.learning_rate=1e-3,2e-3",
                    "experiment.max_iterations=5", multirun=True)

    assert code == 0, err
    parents = sorted((r for r in runs_of(store, "gradient_descent")
                      if PARENT_TAG not in r.data.tags), key=lambda r: r.info.start_time)
    assert [p.info.status for p in parents] == ["FAILED", "FINISHED"]
    assert "sweep_stopped" not in parents[0].data.tags  # every job ran; one failed
    assert {k: v for k, v in parents[1].data.metrics.items() if k != "best_objective"} == {
        "jobs": 2.0, "jobs_failed": 0.0}  # its own two jobs, not the earlier sweep's
    rows = report_rows(tmp_path / "sweep", "gradient_descent")
    assert [(row["status"], row["overrides"]) for row in rows] == [
        ("COMPLETED", "learning_rate=0.001 max_iterations=5"),
        ("COMPLETED", "learning_rate=0.002 max_iterations=5")]


@pytest.mark.parametrize(("args", "named"), [
    (["experiment=jacobian,nonexistent"], "experiment=nonexistent"),
    (["experiment=basic_gradients", "experiment.xx=1,2"], "experiment.xx"),
    (["sweep=descent_lr_start", "experiment.learnin_rate=1"], "experiment.learnin_rate"),
    (["experiment=basic_gradients", "experiment.x=1,2", "plotting.dpi=0"], "plotting.dpi=0"),
    (["experiment=basic_gradients", "experiment.x=1,2", "deterministic=no"], "deterministic"),
    (["experiment=basic_gradients", "experiment.x=1,abc"],  # a later job's value, wrong type
     "): experiment.x=abc must be a number"),  # after `job #1 (its overrides`
])
def test_a_sweep_hydra_or_we_refuse_writes_nothing(args, named, cli, store, tmp_path):
    code, err = cli(*args, multirun=True)

    assert code != 0
    assert named in err
    assert "Traceback" not in err
    client = client_for(store)
    assert [e.name for e in client.search_experiments(view_type=ViewType.ALL)] == ["Default"]
    assert all_runs(store) == []
    assert not list((tmp_path / "sweep").glob("0-*"))


def test_a_signal_as_a_run_ends_is_taken_once_the_run_has_ended(store, monkeypatch):
    """SIGTERM arriving while a run is being ended FINISHED (as it hit `gradkit report`'s
    summary run) interrupts the command only once the run is closed: it never stays RUNNING."""
    monkeypatch.setattr(interrupts, "_received", [])
    previous = {signum: signal.getsignal(signum) for signum in interrupts.HANDLED}
    interrupts.install()
    tracker = Tracker.from_config({"kind": "local", "root": str(store)})
    end = tracker.client.set_terminated

    def signalled_while_ending(run_id, status, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        end(run_id, status, **kwargs)

    monkeypatch.setattr(tracker.client, "set_terminated", signalled_while_ending)
    try:
        with pytest.raises(interrupts.Interrupted), tracker.run("summary", "a run", {}) as run_id:
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    assert client_for(store).get_run(run_id).info.status == "FINISHED"
