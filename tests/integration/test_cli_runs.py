"""The gradkit command, end to end: runs in this process against a real MLflow store."""

from __future__ import annotations

import ast
import csv
import importlib.util

import pytest
from conftest import EXPERIMENTS, client_for, runs_of, untimed
from hydra.utils import get_class

from gradkit.cli.catalog import describe_module
from gradkit.tracking.store import Tracker

# Metrics each experiment documents (experiments not listed are held to the common ones only).
METRICS = {
    "basic_gradients": {"value", "grad", "analytic_grad", "check/grad/error"},
    "computational_graph": {"grad", "manual_grad", "check/chain_rule/error"},
    "jacobian": {"jacobian_norm", "determinant", "check/backward_rows/error",
                 "check/jacrev/error", "check/jacfwd/error"},
}


COMMON_METRICS = {"objective"}


TAGS = {"checks", "git_commit", "version.torch", "seed", "device", "dtype", "overrides"}


def artifact_paths(store, run_id: str, path: str | None = None) -> set[str]:
    return {a.path for a in client_for(store).list_artifacts(run_id, path)}


def all_runs(store) -> list:
    client = client_for(store)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_a_run_lands_in_its_experiment_and_the_same_command_repeats_it(name, cli, store):
    for _ in range(2):
        code, err = cli(f"experiment={name}")
        assert code == 0, err

    run, again = sorted(runs_of(store, name), key=lambda r: r.info.start_time)
    assert run.info.run_id != again.info.run_id
    assert untimed(run.data.metrics) == untimed(again.data.metrics)
    assert run.data.params == again.data.params
    assert run.info.status == "FINISHED"
    params, tags = run.data.params, run.data.tags
    assert params["seed"] == "42"
    assert tags["experiment_target"].rsplit(".", 2)[-2] == name
    assert not [key for key in params if key.startswith(("tracking.", "plotting."))
                or key.endswith("_target_")]  # in config.yaml only (no model chosen here)
    for key in [key for key in params if key.endswith(".hidden")]:  # e.g. experiment.hidden
        widths = ast.literal_eval(params[key])
        assert (params[f"{key}.depth"], params[f"{key}.width"]) == (
            str(len(widths)), str(max(widths)))
    headline = get_class(tags["experiment_target"]).headline
    assert headline and set(headline) <= set(run.data.metrics)  # named as they are logged
    experiment = client_for(store).get_experiment(run.info.experiment_id)
    section, purpose = describe_module(tags["experiment_target"].rpartition(".")[0])
    assert {key: experiment.tags.get(key) for key in ("mlflow.note.content", "section")} == {
        "mlflow.note.content": purpose, "section": section}
    assert experiment.tags["proves"] and not purpose.endswith("cannot be found)")
    assert METRICS.get(name, set()) | COMMON_METRICS <= set(run.data.metrics)
    assert set(tags) >= TAGS
    assert (tags["checks"], tags["seed"], tags["device"]) == ("passed", "42", "cpu")
    assert tags["version.torch"] != "not installed"
    assert "mlflow.parentRunId" not in tags
    artifacts = artifact_paths(store, run.info.run_id)
    assert {"config.yaml", "summary.json", "figures", ".hydra"} <= artifacts
    assert any(p.endswith(".png") for p in artifact_paths(store, run.info.run_id, "figures"))
    assert {".hydra/config.yaml", ".hydra/overrides.yaml"} <= artifact_paths(
        store, run.info.run_id, ".hydra")


@pytest.mark.parametrize(("args", "metric", "expected"), [
    (["experiment=basic_gradients", "experiment.x=-1", "experiment.a=2"], "grad", -1.0),
    (["experiment=jacobian", "experiment.point=[2,-3,0.5]"], "determinant", -24.0),
])
def test_overrides_change_the_result(args, metric, expected, cli, store):
    code, err = cli(*args)

    assert code == 0, err
    [run] = runs_of(store, args[0].split("=")[1])
    assert run.data.metrics[metric] == pytest.approx(expected, abs=1e-12)
    assert run.data.tags["overrides"].startswith(" ".join(args))


@pytest.mark.parametrize(("args", "names", "experiment"), [
    (["experiment=nonexistent"], "jacobian", None),
    (["experiment=jacobian", "experiment.point=[1,2]"], "experiment.point", "jacobian"),
    (["experiment=basic_gradients", "experiment.x=abc"], "experiment.x", "basic_gradients"),
    (["experiment=basic_gradients", "experiment.xx=1"], "experiment.xx", "basic_gradients"),
    (["experiment=basic_gradients", "experiment._target_=no_such_project.Experiment"],
     "experiment._target_='no_such_project.Experiment' cannot be imported", "basic_gradients"),
    (["experiment=basic_gradients", "seed=abc"], "seed", "basic_gradients"),
    (["experiment=basic_gradients", "device=banana"], "device", "basic_gradients"),
    (["experiment=computational_graph", "dtype=float16"], "dtype", "computational_graph"),
    (["experiment=computational_graph", "threads=0"], "threads", "computational_graph"),
    (["experiment=jacobian", "tracking.kind=bogus"], "tracking.kind", "jacobian"),
    (["experiment=jacobian", "plotting.dpi=abc"], "plotting.dpi", "jacobian"),
    (["experiment=jacobian", "plotting.dpi=0"], "plotting.dpi", "jacobian"),
    (["experiment=jacobian", "plotting.figures=maybe"], "plotting.figures", "jacobian"),
    (["experiment=jacobian", "tracking.max_series_points=abc"], "tracking.max_series_points",
     "jacobian"),
    (["experiment=jacobian", "tracking.max_series_points=-5"], "tracking.max_series_points",
     "jacobian"),
    (["experiment=jacobian", "deterministic=no"], "deterministic", "jacobian"),
    (["experiment=jacobian", "deterministic='false'"], "deterministic", "jacobian"),
    (["experiment=jacobian", "seed=4294967296"], "seed", "jacobian"),
    (["experiment=basic_gradients", "experiment.x=1e155"], "experiment.x", "basic_gradients"),
    (["experiment=computational_graph", "experiment.x=1e160"], "experiment.x",
     "computational_graph"),
    (["experiment=jacobian", "experiment.point=[1e200,1e200,1e200]"], "experiment.point",
     "jacobian"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_input_fails_before_any_run(args, names, experiment, cli, store):
    code, err = cli(*args)

    assert code != 0
    [line] = err.splitlines()  # one line, whether composing or the job refused the value
    assert line.startswith("gradkit: ") and names in line
    if experiment:
        assert runs_of(store, experiment) == []
    assert all_runs(store) == []


def test_unknown_experiment_lists_every_option(cli):
    code, err = cli("experiment=nonexistent")

    assert code != 0
    [line] = err.strip().splitlines()
    assert line.startswith("gradkit: In 'config': Could not find 'experiment/nonexistent'")
    assert all(name in err for name in EXPERIMENTS)


def test_multirun_children_under_one_parent(cli, store, tmp_path):
    code, err = cli("experiment=basic_gradients", "experiment.x=1,2", multirun=True)

    assert code == 0, err
    runs = runs_of(store, "basic_gradients")
    assert len(runs) == 3
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r is not parent]
    parent_id = parent.info.run_id
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics == {"jobs": 2.0, "jobs_failed": 0.0,
                                   "best_objective": min(c.data.metrics["objective"]
                                                         for c in children)}
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent_id
        assert child.info.status == "FINISHED"
        assert child.data.tags["sweep_id"] == parent.data.tags["sweep_id"]
    # grad = 2 a x + b with a = 1, b = 3
    by_x = {float(c.data.params["experiment.x"]): c.data.metrics["grad"] for c in children}
    assert by_x == {1.0: 5.0, 2.0: 7.0}
    assert {c.data.tags["job_num"] for c in children} == {"0", "1"}

    assert "report/jobs.csv" in artifact_paths(store, parent_id, "report")
    table = client_for(store).download_artifacts(parent_id, "report/jobs.csv",
                                                 str(tmp_path / "download"))
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["status"] for row in rows] == ["COMPLETED", "COMPLETED"]
    assert {row["run_id"] for row in rows} == {c.info.run_id for c in children}


def test_a_value_for_the_swept_experiments_only_says_how_to_set_it(cli, store):
    """Hydra applies plain values to the default experiment before sweeping the chosen ones:
    the message names that and the one-value sweep that sets the value in each job."""
    code, err = cli("experiment=glob(hess*)", "experiment.point=[0,0]", multirun=True)

    assert code != 0
    assert err == ("gradkit: experiment.point: Hydra applies a sweep's unswept values to the "
                   "default experiment (basic_gradients, which has no point) before it sweeps "
                   "the experiments; make it a sweep of one value to set it in each job: "
                   "'experiment.point=choice([0,0])'\n")
    assert all_runs(store) == []
    code, err = cli("experiment=glob(hess*)", "experiment.point=choice([0,0])", multirun=True)
    assert code == 0, err
    [run] = runs_of(store, "hessian")
    assert run.data.params["experiment.point"] == "[0.0, 0.0]"


@pytest.mark.parametrize("args", [
    ["experiment=jacobian", "experiment.pont=1"],
    ["experiment=jacobian", "+experiment.pont=1"],
    ["experiment=basic_gradients,jacobian", "experiment.pont=1"],
])
def test_a_misspelt_key_names_the_parameters_of_its_experiment(args, cli, store):
    code, err = cli(*args, multirun="," in args[0])

    assert code != 0
    assert "experiment.pont is not a parameter of " in err
    assert ("jacobian; its parameters: point" in err
            or "basic_gradients; its parameters: a, b, c, x" in err)
    assert "use +experiment" not in err
    assert all_runs(store) == []


@pytest.mark.parametrize(("args", "said"), [
    (["seeed=3"], "seeed is not a global key (did you mean seed?); the global keys: "),
    (["plotting.dp=3"], "plotting.dp is not a key of plotting (did you mean dpi?); its keys: "
                        "dpi, figures"),
    (["model=mlp", "model.hiden=3"], "model.hiden is not a key of model=mlp; its keys: hidden"),
    (["model.hidden=3"], "model.hidden: no model is chosen, so the experiment uses its own; "
                         "choose one first (model=cnn | mlp)"),
])
def test_a_misspelt_global_or_component_key_names_the_keys_there_are(args, said, cli, store):
    code, err = cli("experiment=jacobian", *args)

    assert code != 0
    assert said in err and len(err.strip().splitlines()) == 1, err
    assert all_runs(store) == []


def test_a_search_without_its_extra_says_which_to_install(cli):
    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper"):
        pytest.skip("the search extra is installed here")
    code, err = cli("search=descent_lr_momentum", multirun=True)

    assert code != 0
    assert "the optuna sweeper is not installed: pip install 'gradkit[search]'" in err


def test_a_misspelt_key_in_a_preset_names_the_preset_experiment(cli):
    code, err = cli("sweep=descent_lr_start", "experiment.learnin_rate=1", multirun=True)

    assert code != 0
    assert ("experiment.learnin_rate is not a parameter of gradient_descent; its parameters: "
            "function, start, learning_rate") in err


def test_headline_metrics_are_logged_first_and_said_when_the_run_ends(cli, gradkit, store,
                                                                       monkeypatch):
    logged = []
    log_batch = Tracker.log_batch

    def recording(self, run_id, params=None, metrics=None, tags=None):
        logged.extend(metric.key for metric in metrics or [])
        return log_batch(self, run_id, params, metrics, tags)

    monkeypatch.setattr(Tracker, "log_batch", recording)
    code, err = cli("experiment=gradient_descent", "experiment.max_iterations=50")

    assert code == 0, err
    assert logged[:3] == ["final_loss", "iterations", "converged"]
    [run] = runs_of(store, "gradient_descent")
    metrics = run.data.metrics
    assert (f"checks=passed; final_loss={metrics['final_loss']:.6g} iterations=50 "
            "converged=0") in gradkit.out
