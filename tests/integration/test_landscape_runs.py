"""Landscape, end to end: runs in this process against a real MLflow store."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import client_for, runs_of

from gradkit.core.experiment import RunContext
from gradkit.experiments.landscape import Landscape


@pytest.fixture(scope="module")
def himmelblau(tmp_path_factory):
    ctx = RunContext(torch.device("cpu"), torch.float32, torch.Generator(),
                     tmp_path_factory.mktemp("himmelblau"), logging.getLogger("test"))
    return Landscape(function="himmelblau", resolution=60).run(ctx)


def test_cli_run_logs_critical_points(cli, store, tmp_path):
    code, err = cli("experiment=landscape", "experiment.function=himmelblau",
                    "experiment.resolution=50")

    assert code == 0, err
    [run] = runs_of(store, "landscape")
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert (metrics["critical_points/minimum"], metrics["critical_points/saddle"],
            metrics["critical_points/maximum"]) == (4.0, 4.0, 1.0)
    assert {"check/gradient/error", "check/loop_agreement/error",
            "check/stationary/error", "gradient_seconds"} <= set(metrics)
    summary = client_for(store).download_artifacts(run.info.run_id, "summary.json",
                                                   str(tmp_path / "download"))
    points = json.loads(Path(summary).read_text())["critical_points"]
    assert len(points) == 9
    assert set(points[0]) == {"x", "y", "value", "kind", "eigenvalues", "grad_norm"}


@pytest.mark.parametrize("args", [["experiment.resolution=1"],
                                  ["experiment.x_range=[1,-1]"]])
def test_cli_bad_input_fails_before_any_run(args, cli, store):
    code, err = cli("experiment=landscape", *args)

    assert code != 0
    assert args[0].split("=")[0] in err
    assert "Traceback" not in err
    assert runs_of(store, "landscape") == []


def test_preset_first_jobs_run_as_a_smoke_sweep(cli, store):
    # the command line's resolution replaces the preset's: 2 jobs, one per function
    code, err = cli("sweep=landscape_functions", "experiment.resolution=30", multirun=True)

    assert code == 0, err
    runs = runs_of(store, "landscape")
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r is not parent]
    assert parent.info.status == "FINISHED"
    assert sorted(c.data.params["experiment.function"] for c in children) == [
        "himmelblau", "rosenbrock"]
    artifacts = {a.path for a in client_for(store).list_artifacts(parent.info.run_id, "report")}
    assert "report/comparison.png" in artifacts


def test_cli_run_of_an_expression_finds_its_degenerate_point(cli, store):
    code, err = cli("experiment=landscape", "experiment.function='x**4 - y**4'",
                    "experiment.resolution=30")

    assert code == 0, err
    [run] = runs_of(store, "landscape")
    assert run.info.status == "FINISHED"
    assert run.data.params["experiment.function"] == "x**4 - y**4"
    assert "x**4 - y**4" in run.info.run_name
    assert run.data.metrics["critical_points/degenerate"] == 1.0
    assert run.data.metrics["check/complete/error"] == 0.0
    assert run.data.tags["checks"] == "passed"


def test_cli_expression_off_the_whitelist_fails_before_any_run(cli, store):
    code, err = cli("experiment=landscape", "experiment.function='__import__(\"os\")'")

    assert code != 0
    assert "experiment.function" in err and "'__import__' is not allowed" in err
    assert "Traceback" not in err
    assert runs_of(store, "landscape") == []
