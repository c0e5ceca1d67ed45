"""Loss curvature, end to end: runs in this process against a real MLflow store."""

from __future__ import annotations

from conftest import client_for, runs_of


def test_cli_run_logs_curvature(cli, store):
    code, err = cli("experiment=loss_curvature", "experiment.hidden=[8]")

    assert code == 0, err
    [run] = runs_of(store, "loss_curvature")
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert metrics["parameters"] == 49.0
    assert {"top_eigenvalue.0", "top_eigenvalue.1", "top_eigenvalue.2", "trace_estimate",
            "stability_limit", "check.top_eigenvalues.error", "check.trace.error",
            "check.trace_probes.error"} <= set(metrics)
    assert run.data.tags["checks"] == "passed"
    for check in ("top_eigenvalues", "trace", "trace_probes"):  # logged beside each error
        assert 0 <= metrics[f"check.{check}.error"] <= metrics[f"check.{check}.tolerance"]
    assert metrics["check.top_eigenvalues.tolerance"] == 1e-6
    assert run.data.tags["exact_comparison"] == "done"
    history = client_for(store).get_metric_history(run.info.run_id, "ritz_value.0")
    assert len(history) == metrics["lanczos_iterations"]


def test_cli_top_k_above_the_parameter_count_fails_before_any_run(cli, store):
    code, err = cli("experiment=loss_curvature", "experiment.hidden=[1]", "experiment.top_k=8")

    assert code != 0
    assert "experiment.top_k" in err and "7 parameters" in err
    assert "Traceback" not in err
    assert runs_of(store, "loss_curvature") == []


def test_preset_first_jobs_run_as_a_smoke_sweep(cli, store):
    code, err = cli("sweep=loss_curvature_widths", "experiment.hidden=[8],[16,16]",
                    "experiment.hutchinson_samples=20", multirun=True)

    assert code == 0, err
    runs = runs_of(store, "loss_curvature")
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r is not parent]
    assert parent.info.status == "FINISHED"
    assert sorted(c.data.metrics["parameters"] for c in children) == [49.0, 369.0]
    artifacts = {a.path for a in client_for(store).list_artifacts(parent.info.run_id, "report")}
    assert "report/comparison.png" in artifacts
