"""Loss curvature, end to end: runs in this process against a real MLflow store."""

from __future__ import annotations

import pytest
from conftest import client_for, runs_of


def test_cli_run_logs_curvature(cli, store):
    code, err = cli("experiment=loss_curvature", "experiment.hidden=[8]")

    assert code == 0, err
    [run] = runs_of(store, "loss_curvature")
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert metrics["parameters"] == 49.0
    assert {"top_eigenvalue/0", "top_eigenvalue/1", "top_eigenvalue/2", "bottom_eigenvalue/0",
            "lambda_min", "trace_estimate", "stability_limit", "check/top_eigenvalues/error",
            "check/bottom_eigenvalues/error", "check/trace/error",
            "check/trace_probes/error"} <= set(metrics)
    assert run.data.tags["checks"] == "passed"
    checks = ("top_eigenvalues", "bottom_eigenvalues", "trace", "trace_probes")
    for check in checks:  # logged beside each error
        assert 0 <= metrics[f"check/{check}/error"] <= metrics[f"check/{check}/tolerance"]
    assert metrics["check/top_eigenvalues/tolerance"] == 1e-6
    assert run.data.tags["exact_comparison"] == "done"
    history = client_for(store).get_metric_history(run.info.run_id, "ritz_value/0")
    assert len(history) == metrics["lanczos_iterations"]


def test_cli_top_k_above_the_parameter_count_fails_before_any_run(cli, store):
    code, err = cli("experiment=loss_curvature", "experiment.hidden=[1]", "experiment.top_k=8")

    assert code != 0
    assert "experiment.top_k" in err and "7 parameters" in err
    assert "Traceback" not in err
    assert runs_of(store, "loss_curvature") == []


@pytest.mark.parametrize("value", ["-1", "abc"])
def test_cli_bad_batches_is_refused_in_one_line(cli, store, value):
    code, err = cli("experiment=loss_curvature", f"experiment.batches={value}")

    assert code != 0
    [line] = [line for line in err.splitlines() if line.startswith("gradkit:")]
    shown = "'abc'" if value == "abc" else value
    assert line == f"gradkit: experiment.batches={shown} must be all or a number of batches >= 1"
    assert "Traceback" not in err
    assert runs_of(store, "loss_curvature") == []


def test_cli_density_probes_zero_is_refused(cli, store):
    code, err = cli("experiment=loss_curvature", "experiment.density_probes=0")

    assert code != 0
    assert "experiment.density_probes=0 must be >= 1" in err and "Traceback" not in err
    assert runs_of(store, "loss_curvature") == []


# the train split's 308 items (512 less 2 x 102 held out) in batches of 120: all three are
# 120, 120 and 68, unequal, so only a product weighted by batch size agrees with the full
# Hessian; two are 240 items
@pytest.mark.parametrize(("batches", "items", "count"), [("3", 308.0, 3.0), ("all", 308.0, 3.0),
                                                         ("2", 240.0, 2.0)])
def test_cli_hessian_over_batches_of_a_chosen_dataset_with_its_density(cli, store, batches,
                                                                       items, count):
    code, err = cli("experiment=loss_curvature", "data=synthetic_regression",
                    "experiment.hidden=[4]", "experiment.batch_size=120",
                    f"experiment.batches={batches}", "experiment.density=true",
                    "experiment.hutchinson_samples=200")

    assert code == 0, err
    [run] = runs_of(store, "loss_curvature")
    metrics = run.data.metrics
    assert (metrics["items"], metrics["batches"]) == (items, count)
    assert metrics["parameters"] == 4 * 11 + 5  # the own MLP sized to 10 inputs
    assert run.data.tags["checks"] == "passed"
    for check in ("top_eigenvalues", "bottom_eigenvalues", "density_mass", "density_probes",
                  "density_mean"):
        assert 0 <= metrics[f"check/{check}/error"] <= metrics[f"check/{check}/tolerance"]
    assert run.data.tags["data"] == "synthetic_regression"
