"""Hessian, end to end: runs in this process against a real MLflow store."""

from __future__ import annotations

from conftest import client_for, runs_of


def test_cli_run_tags_a_point_that_is_not_critical(cli, store):
    code, err = cli("experiment=hessian", "experiment.function=rosenbrock",
                    "experiment.point=[0,0]")

    assert code == 0, err
    [run] = runs_of(store, "hessian")
    assert run.info.status == "FINISHED"
    assert run.data.tags["definiteness"] == "positive_definite"
    assert run.data.tags["point_kind"] == "not_critical"
    assert run.data.metrics["grad_norm"] == 2.0
    assert {"seconds/rows", "check/rows/error", "check/torch_func/error",
            "check/autograd_functional/error", "condition_number"} <= set(run.data.metrics)


def test_cli_non_symmetric_matrix_fails_before_any_run(cli, store):
    code, err = cli("experiment=hessian", "experiment.matrix=[[1,2],[3,4]]")

    assert code != 0
    assert "experiment.matrix" in err and "symmetric" in err
    assert "Traceback" not in err
    assert runs_of(store, "hessian") == []


def test_preset_first_jobs_run_as_a_smoke_sweep(cli, store):
    code, err = cli("sweep=hessian_points", "experiment.point=[1,1],[0,0]", multirun=True)

    assert code == 0, err
    runs = runs_of(store, "hessian")
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = sorted((r for r in runs if r is not parent),
                      key=lambda r: r.data.tags["job_num"])
    assert parent.info.status == "FINISHED"
    assert [c.data.tags["point_kind"] for c in children] == ["minimum", "not_critical"]
    artifacts = {a.path for a in client_for(store).list_artifacts(parent.info.run_id, "report")}
    assert "report/comparison.png" in artifacts


def test_cli_run_of_an_expression_tags_the_monkey_saddle_degenerate(cli, store):
    code, err = cli("experiment=hessian", "experiment.function='x**3 - 3*x*y**2'",
                    "experiment.point=[0,0]")

    assert code == 0, err
    [run] = runs_of(store, "hessian")
    assert run.info.status == "FINISHED"
    assert run.data.params["experiment.function"] == "x**3 - 3*x*y**2"
    assert run.data.tags["point_kind"] == "degenerate"
    assert run.data.tags["checks"] == "passed"
