"""Tracking end to end: a series logged into a real MLflow store, downsampled there and whole
in series.csv."""

from __future__ import annotations

import csv
import shutil

import pytest
from conftest import client_for, runs_of

from gradkit.experiments.computational_graph import ComputationalGraph
from gradkit.tracking.store import Tracker, metric_entries


def read_series(path) -> dict[str, list[float]]:
    series: dict[str, list[float]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            values = series.setdefault(row["series"], [])
            assert int(row["step"]) == len(values)
            values.append(float(row["value"]))
    return series


def test_series_are_downsampled_in_mlflow_and_complete_in_series_csv(cli, store, tmp_path):
    code, err = cli("experiment=gradient_descent")

    assert code == 0, err
    [run] = runs_of(store, "gradient_descent")
    assert run.data.tags["status"] == "max_iterations"
    client = client_for(store)
    csv_path = client.download_artifacts(run.info.run_id, "series.csv", str(tmp_path / "dl"))
    series = read_series(csv_path)
    assert len(series["loss"]) == 2001
    assert len(series["step_size"]) == 2000

    history = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
    steps = [m.step for m in history]
    assert len(history) <= 200  # tracking.max_series_points
    assert steps[0] == 0 and steps[-1] == 2000
    assert len(set(steps)) == len(steps)
    assert {m.step: m.value for m in history} == {s: series["loss"][s] for s in steps}
    assert run.data.metrics["loss"] == series["loss"][-1] == run.data.metrics["final_loss"]


def test_runs_are_findable_in_mlflow_and_say_where_they_landed(cli, store, tmp_path):
    code, err = cli("experiment=basic_gradients")

    assert code == 0, err
    [run] = runs_of(store, "basic_gradients")
    experiment = client_for(store).get_experiment_by_name("basic_gradients")
    tags = run.data.tags
    assert tags["mlflow.source.name"] == "gradkit run"
    assert tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.source.git.commit"] == tags["git_commit"]
    duration = (run.info.end_time - run.info.start_time) / 1000
    assert 0 < run.data.metrics["job_seconds"] <= duration  # the experiment's own time
    [job_log] = (tmp_path / "run").glob("*.log")
    last = job_log.read_text().strip().splitlines()[-1]
    page = f"#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
    assert last.endswith(f"run {run.info.run_id} in MLflow experiment basic_gradients, store "
                         f"{store}: `gradkit ui --store {store}`, then http://127.0.0.1:5000/{page}"
                         "?workflowType=machine_learning")


def test_a_batch_beyond_mlflow_limits_is_logged_whole(store):
    tracker = Tracker.from_config({"kind": "local", "root": str(store)})
    run_id = tracker.start_run("batches", "big", {})
    params = {f"p{i}": str(i) for i in range(250)}
    tags = {f"t{i}": str(i) for i in range(150)}
    metrics = metric_entries({f"m{i}": float(i) for i in range(2500)})

    tracker.log_batch(run_id, params, metrics, tags)

    data = client_for(store).get_run(run_id).data
    assert data.params == params
    assert {k: v for k, v in data.tags.items() if k.startswith("t")} == tags
    assert data.metrics == {f"m{i}": float(i) for i in range(2500)}


@pytest.mark.parametrize("folder", ["what?", "100%25 sure", "take #2"])
def test_a_store_folder_may_be_named_with_uri_characters(folder, gradkit, empty_store,
                                                         tmp_path):
    """`?`, `%` and `#` are valid in folder names: the store is made there and only there."""
    parent = tmp_path / "stores"
    parent.mkdir()
    store = parent / folder
    store.mkdir()
    shutil.copy(empty_store, store / "mlflow.db")
    code, err = gradkit("experiment=basic_gradients", f"tracking.root='{store}'",
                        f"hydra.run.dir={tmp_path / 'run'}")

    assert code == 0, err
    [run] = runs_of(store, "basic_gradients")
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri == (store / "artifacts" / "basic_gradients" / run.info.run_id
                                     / "artifacts").as_uri()
    assert [p.name for p in parent.iterdir()] == [folder]  # nothing made beside it
    fresh = parent / f"new {folder}"
    code, err = gradkit("experiment=basic_gradients", f"tracking.root='{fresh}'",
                        f"hydra.run.dir={tmp_path / 'run2'}")
    assert code == 0, err
    assert sorted(p.name for p in parent.iterdir()) == sorted([folder, fresh.name])
    assert len(runs_of(fresh, "basic_gradients")) == 1


def test_an_mlflow_experiment_is_described_by_its_demonstration(cli, store):
    """A new experiment gets its purpose, section and proof; one that exists gets those it
    lacks, and a description edited in the UI stays."""
    client = client_for(store)
    edited = client.create_experiment("jacobian", tags={"mlflow.note.content": "mine"})
    client.create_experiment("computational_graph")
    for name in ("basic_gradients", "jacobian", "computational_graph"):
        code, err = cli(f"experiment={name}")
        assert code == 0, err

    tags = {name: client.get_experiment_by_name(name).tags
            for name in ("basic_gradients", "jacobian", "computational_graph")}
    assert tags["basic_gradients"]["mlflow.note.content"] == (
        "the derivative of a quadratic by autograd, checked against the analytic one")
    assert tags["jacobian"]["mlflow.note.content"] == "mine"
    assert client.get_experiment(edited).tags["section"] == "3.1"
    assert (tags["computational_graph"]["section"], tags["computational_graph"]["proves"]) == (
        "2.2", ComputationalGraph.proves)


def test_a_user_experiment_is_described_by_its_own_module(cli, store):
    code, err = cli("experiment=computational_graph", f"experiment._target_={__name__}.Mine")

    assert code == 0, err
    [run] = runs_of(store, "computational_graph")
    assert run.data.tags["experiment_target"] == f"{__name__}.Mine"
    tags = client_for(store).get_experiment(run.info.experiment_id).tags
    assert (tags["mlflow.note.content"], tags["section"], tags["proves"]) == (
        "a series logged into a real MLflow store, downsampled there and whole", "beyond",
        Mine.proves)  # the first line of this module's docstring


class Mine(ComputationalGraph):
    proves = "nothing new"
