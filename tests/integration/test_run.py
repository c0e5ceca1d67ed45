"""The entry point's contract: failed checks fail the run; every run ends with a status."""

from __future__ import annotations

from conftest import client_for, runs_of
from omegaconf import OmegaConf

from gradkit.core.experiment import Check, Experiment, Result, RunContext


class BrokenIdentity(Experiment):
    """An experiment whose identity does not hold: a bug that must fail the job."""

    def __init__(self, x: float = 2.0):
        self.x = x

    def run(self, ctx: RunContext) -> Result:
        return Result(metrics={"value": self.x}, checks={"identity": Check(0.5, 1e-9)},
                      objective=self.x)


class Crashing(Experiment):
    """An experiment that raises halfway."""

    def __init__(self, x: float = 2.0):
        self.x = x

    def run(self, ctx: RunContext) -> Result:
        raise RuntimeError("numerical trouble")


def test_a_failed_check_fails_the_run_and_the_job(cli, store):
    code, err = cli("experiment=computational_graph", "experiment._target_=test_run.BrokenIdentity")
    assert code != 0
    assert "checks failed: identity (error 0.5 > 1e-09)" in err
    (run,) = runs_of(store, "computational_graph")  # the option's name, whatever the class
    assert run.info.status == "FAILED"
    assert run.data.tags["checks"] == "failed"
    assert run.data.metrics["check/identity/error"] == 0.5
    artifacts = {a.path for a in client_for(store).list_artifacts(run.info.run_id)}
    assert {"summary.json", "run.log"} <= artifacts


def test_an_exception_ends_the_run_failed_with_the_error(cli, store):
    code, err = cli("experiment=computational_graph", "experiment._target_=test_run.Crashing")
    assert code != 0
    assert "numerical trouble" in err
    (run,) = runs_of(store, "computational_graph")
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: numerical trouble"
    assert run.data.params["experiment.x"] == "2.0"  # what ran is kept with the failure
    artifacts = {a.path for a in client_for(store).list_artifacts(run.info.run_id)}
    assert {"run.log", "config.yaml", ".hydra"} <= artifacts
    assert "summary.json" not in artifacts


def test_figures_can_be_switched_off(cli, store):
    code, err = cli("experiment=jacobian", "plotting.figures=false")
    assert code == 0, err
    (run,) = runs_of(store, "jacobian")
    artifacts = {a.path for a in client_for(store).list_artifacts(run.info.run_id)}
    assert "figures" not in artifacts
    assert {"summary.json", "config.yaml"} <= artifacts
    assert "plotting.figures" not in run.data.params  # no result: in config.yaml only
    config = client_for(store).download_artifacts(run.info.run_id, "config.yaml",
                                                  str(store.parent / "download"))
    assert OmegaConf.load(config).plotting.figures is False
