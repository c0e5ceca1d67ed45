"""Multiruns, end to end: runs in this process against a real MLflow store."""

from __future__ import annotations

import csv
import math
from itertools import pairwise
from pathlib import Path

import pytest
from conftest import CONF_DIR, EXPERIMENTS, PARENT_TAG, client_for, family, runs_of
from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from gradkit.experiments.gradient_descent import GradientDescent
from gradkit.sweeps.compositions import planned_config
from gradkit.sweeps.plan import plan_jobs


def read_report(store, parent, tmp_path) -> list[dict[str, str]]:
    path = client_for(store).download_artifacts(parent.info.run_id, "report/jobs.csv",
                                                str(tmp_path / "download"))
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def artifact_paths(store, run_id: str, path: str) -> set[str]:
    return {a.path for a in client_for(store).list_artifacts(run_id, path)}


def test_learning_rate_sweep_reports_convergence_and_divergence(cli, store, tmp_path):
    code, err = cli("experiment=gradient_descent", "experiment.learning_rate=1e-3,1e-2",
                    "experiment.max_iterations=200", multirun=True)

    assert code == 0, err
    parent, children = family(store, "gradient_descent")
    assert parent.info.status == "FINISHED"
    assert [c.info.status for c in children] == ["FINISHED", "FINISHED"]
    assert [c.data.params["experiment.learning_rate"] for c in children] == ["0.001", "0.01"]
    assert [c.data.tags["status"] for c in children] == ["max_iterations", "diverged"]
    assert {c.data.tags["sweep_id"] for c in children} == {parent.data.tags["sweep_id"]}

    converged = children[0]  # the diverged job's objective is its 1e10 cap
    assert converged.data.metrics["objective"] < children[1].data.metrics["objective"]
    assert parent.data.params == {"grid.experiment.learning_rate": "0.001,0.01"}  # as swept
    assert parent.data.metrics == {"jobs": 2.0, "jobs_failed": 0.0,
                                   "best_objective": converged.data.metrics["objective"]}
    assert (parent.data.tags["best_run_id"], parent.data.tags["best_job"]) == (
        converged.info.run_id, "#0 learning_rate=0.001 max_iterations=200")
    for child in children:  # learning rate x final loss on log axes, as logged
        metrics = child.data.metrics
        assert metrics["log10/learning_rate"] == pytest.approx(
            math.log10(float(child.data.params["experiment.learning_rate"])))
        assert metrics["log10/final_loss"] == pytest.approx(math.log10(metrics["final_loss"]))
    assert artifact_paths(store, parent.info.run_id, "report") == {
        "report/jobs.csv", "report/comparison.png"}
    root = artifact_paths(store, parent.info.run_id, None)
    assert root == {"comparison.png", "report"}
    client = client_for(store)
    assert Path(client.download_artifacts(parent.info.run_id, "comparison.png",
                                          str(tmp_path / "top"))).read_bytes() == Path(
        client.download_artifacts(parent.info.run_id, "report/comparison.png",
                                  str(tmp_path / "report"))).read_bytes()
    rows = read_report(store, parent, tmp_path)
    assert [row["overrides"] for row in rows] == [
        "learning_rate=0.001 max_iterations=200", "learning_rate=0.01 max_iterations=200"]
    assert [row["status"] for row in rows] == ["COMPLETED", "COMPLETED"]
    assert [row["outcome"] for row in rows] == ["max_iterations", "diverged"]
    assert [row["diverged"] for row in rows] == ["0.0", "1.0"]
    assert [row["run_id"] for row in rows] == [c.info.run_id for c in children]


def test_a_figure_that_cannot_be_written_fails_its_job_not_the_sweep(cli, store, monkeypatch):
    """A run that cannot be closed (its figure failed, drawn after the job returned) ends
    FAILED with the reason; the other jobs finish, the report and the exit status say so."""
    run = GradientDescent.run

    def unwritable_for_job_1(self, ctx):  # a title matplotlib cannot parse, found when drawn
        result = run(self, ctx)
        if ctx.output_dir.name == "1-gradient_descent":
            result.figures["descent"].suptitle(r"$\frac{$")
        return result

    monkeypatch.setattr(GradientDescent, "run", unwritable_for_job_1)
    code, err = cli("experiment=gradient_descent", "experiment.max_iterations=30",
                    "experiment.learning_rate=1e-4,2e-4,3e-4", multirun=True)

    assert code == 1
    assert err.strip().splitlines()[-1].startswith("gradkit: run ")
    figure = f"{store.parent / 'sweep' / '1-gradient_descent' / 'figures'}/descent.png"
    last = err.strip().splitlines()[-1]
    assert f"could not be closed: figure {figure} could not be written: ValueError: " in last
    parent, children = family(store, "gradient_descent")
    assert [c.info.status for c in children] == ["FINISHED", "FAILED", "FINISHED"]
    assert f"{figure} could not be written: ValueError: " in children[1].data.tags["error"]
    assert parent.info.status == "FAILED"
    best = min(children[0], children[2], key=lambda c: c.data.metrics["objective"])
    assert parent.data.metrics == {"jobs": 3.0, "jobs_failed": 1.0,  # of the completed jobs
                                   "best_objective": best.data.metrics["objective"]}
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert parent.data.tags["failed_jobs"] == "#1 max_iterations=30 learning_rate=0.0002 (FAILED)"


def test_sweep_over_two_experiments_has_one_parent_each(cli, store, tmp_path):
    code, err = cli("experiment=basic_gradients,jacobian", "experiment.point=[1,1,1],[2,2,2]",
                    multirun=True)
    assert code != 0  # basic_gradients has no point: refused before any job
    assert "experiment.point" in err
    code, err = cli("experiment=jacobian,gradient_descent", "seed=1,2",
                    "experiment.max_iterations=5", multirun=True)
    assert code != 0  # jacobian has no max_iterations
    code, err = cli("experiment=jacobian,computational_graph", "seed=1,2", multirun=True)

    assert code == 0, err
    sweep_ids = set()
    for experiment in ("jacobian", "computational_graph"):
        parent, children = family(store, experiment)
        assert parent.info.status == "FINISHED"
        assert (parent.data.metrics["jobs"], parent.data.metrics["jobs_failed"]) == (2.0, 0.0)
        assert parent.data.params == {"grid.experiment": "jacobian,computational_graph",
                                      "grid.seed": "1,2"}
        assert [c.info.status for c in children] == ["FINISHED"] * 2
        assert {c.data.tags["experiment_target"].split(".")[-2] for c in children} == {
            experiment}
        rows = read_report(store, parent, tmp_path / experiment)
        assert [row["run_id"] for row in rows] == [c.info.run_id for c in children]
        sweep_ids |= {parent.data.tags["sweep_id"]} | {c.data.tags["sweep_id"] for c in children}
    assert len(sweep_ids) == 1
    assert all(runs_of(store, name) == [] for name in EXPERIMENTS
               if name not in ("jacobian", "computational_graph"))


def test_an_experiment_with_one_job_in_a_sweep_is_a_plain_run(cli, store):
    code, err = cli("experiment=basic_gradients,jacobian", multirun=True)

    assert code == 0, err
    runs = [run for name in ("basic_gradients", "jacobian") for run in runs_of(store, name)]
    assert len(runs) == 2
    assert all(PARENT_TAG not in run.data.tags for run in runs)
    assert len({run.data.tags["sweep_id"] for run in runs}) == 1
    assert [run.info.status for run in runs] == ["FINISHED"] * 2


def test_single_run_has_no_parent(cli, store):
    code, err = cli("experiment=gradient_descent", "experiment.max_iterations=5")

    assert code == 0, err
    [run] = runs_of(store, "gradient_descent")
    assert run.info.status == "FINISHED"
    assert not {PARENT_TAG, "sweep_id", "job_num"} & set(run.data.tags)


def hydra_config(*overrides: str):
    """The composed config with its hydra node; GlobalHydra stays set up for the caller."""
    return compose("config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml")))
def test_presets_check_their_jobs_once(preset):
    """Every preset runs on the planned sweeper: its jobs are composed once to check them, at
    the sweep's start, not again by the sweeper before each launch."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_config(f"sweep={preset}")
        assert cfg.hydra.sweeper._target_ == "hydra_plugins.gradkit_sweeper.PlannedSweeper"
        assert len(plan_jobs(cfg)) >= 2


@pytest.mark.parametrize(("preset", "params"), [
    ("sweep=descent_lr_start", {}),  # 6 learning rates x 3 start points
    ("hydra/sweeper=planned", {"experiment": "gradient_descent,jacobian", "seed": "1,2",
                               "plotting.dpi": "50,60"}),
    ("hydra/sweeper=planned", {"seed": "1,2,3", "+tracking.note": "x"}),  # Hydra composes
])
def test_a_planned_job_gets_the_config_hydra_composes(preset, params):
    """Every job's planned config, copied from its group's composition, is the config Hydra
    composes for it, hydra node included (output folder name, overrides)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_config(preset)
        if params:
            cfg.hydra.sweeper.params = params
        jobs = plan_jobs(cfg)
        loader = GlobalHydra.instance().config_loader()
        copied = 0
        for job in jobs:
            planned = planned_config(job["command"])
            composed = loader.load_sweep_config(cfg, job["command"])
            copied += planned is not None
            if planned is not None:
                assert OmegaConf.to_yaml(planned) == OmegaConf.to_yaml(composed)
            assert planned_config(job["command"]) is None  # handed out once
    assert copied == (1 if "+tracking.note" in params else len(jobs))


def test_the_planned_sweeper_composes_each_group_of_jobs_once(cli, store, monkeypatch):
    """With the basic launcher, the plan composes one job per experiment; every job runs on a
    copy of its experiment's composition with its own values, composed by no one again."""
    composed = []
    compose = ConfigLoaderImpl.load_sweep_config

    def counting(self, master_config, sweep_overrides):
        composed.append(" ".join(sweep_overrides))
        return compose(self, master_config, sweep_overrides)

    monkeypatch.setattr(ConfigLoaderImpl, "load_sweep_config", counting)
    code, err = cli("hydra/sweeper=planned", "experiment=basic_gradients,jacobian", "seed=1,2",
                    multirun=True)

    assert code == 0, err
    assert len(composed) == 2  # the plan: one per experiment; the other seeds are copies
    for experiment, metric in (("basic_gradients", "grad"), ("jacobian", "jacobian_norm")):
        runs = [r for r in runs_of(store, experiment) if "mlflow.parentRunId" in r.data.tags]
        assert sorted(r.data.params["seed"] for r in runs) == ["1", "2"]
        assert all(metric in r.data.metrics for r in runs)


def test_a_sweep_without_jobs_is_refused_before_any_work(cli, store):
    code, err = cli("experiment=basic_gradients", "experiment.x=range(0)", multirun=True)

    assert code == 1
    assert err.strip() == "gradkit: the sweep has no jobs: experiment.x=range(0) sweeps no values"
    assert runs_of(store, "basic_gradients") == []


def test_a_sweep_ends_with_a_line_per_job_and_where_to_look(cli, gradkit, store, tmp_path):
    """Each job's figure is drawn while the next job computes; its run ends FINISHED only
    once the PNG and the job's folder are logged, and its log holds its own lines only. Its
    duration in MLflow is its own job's: it ends before the next job starts. The sweep's
    closing lines name every job, the parent run, the comparison figure and the best job."""
    code, err = cli("experiment=gradient_descent", "experiment.max_iterations=30",
                    "experiment.learning_rate=1e-4,2e-3,0.5", multirun=True)

    assert code == 0, err
    parent, children = family(store, "gradient_descent")
    assert [c.info.status for c in children] == ["FINISHED"] * 3
    for earlier, later in pairwise(children):
        assert earlier.info.end_time <= later.info.start_time
    client = client_for(store)
    for num, child in enumerate(children):
        job_dir = tmp_path / "sweep" / f"{num}-gradient_descent"  # named after its experiment
        logged = client.download_artifacts(child.info.run_id, "figures/descent.png",
                                           str(tmp_path / "download" / str(num)))
        assert Path(logged).read_bytes() == (job_dir / "figures" / "descent.png").read_bytes()
        log = (job_dir / "run.log").read_text()
        assert f"running #{num} " in log and log.count("running #") == 1
    summary = gradkit.out[gradkit.out.index("3 jobs:"):].splitlines()
    for line, child in zip(summary[1:4], children, strict=True):
        objective = child.data.metrics["objective"]
        assert line.split()[:2] == [f"#{child.data.tags['job_num']}", "gradient_descent"]
        assert f"COMPLETED  objective={objective:.6g}  checks=passed" in line
    assert parent.info.run_id in summary[4]
    assert summary[5].endswith(str(tmp_path / "sweep/report/gradient_descent/comparison.png"))
    best = min(children, key=lambda c: c.data.metrics["objective"])
    assert summary[6].startswith("  best job (lowest objective): #1 max_iterations=30 "
                                 "learning_rate=0.002")
    assert summary[6].endswith(f"run {best.info.run_id}")
