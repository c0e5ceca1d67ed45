"""Loss curvature of the example project's conv net (batch norm, a functional ReLU) on its
stripes: the Hessian with respect to all its parameters, checked against the full Hessian."""

from __future__ import annotations

from conftest import runs_of

CHECKS = ("top_eigenvalues", "bottom_eigenvalues", "trace", "trace_probes", "density_mass",
          "density_probes", "density_mean")


def test_small_convnet_on_stripes_finishes_with_its_checks_and_density(cli, store,
                                                                       user_project):
    code, err = cli("--config-dir", str(user_project), "experiment=loss_curvature",
                    "model=small_convnet", "data=stripes", "experiment.batch_size=16",
                    "experiment.batches=1", "experiment.iterations=30",
                    "experiment.hutchinson_samples=100", "experiment.density=true",
                    "experiment.density_probes=3")

    assert code == 0, err
    [run] = runs_of(store, "loss_curvature")
    assert run.info.status == "FINISHED"
    assert run.data.tags["checks"] == "passed"
    assert (run.data.tags["model"], run.data.tags["data"]) == ("small_convnet", "stripes")
    assert run.data.tags["exact_comparison"] == "done"
    metrics = run.data.metrics
    # conv 1->8 (80), batch norm (16), conv 8->16 (1168), linear 16->4 (68)
    assert metrics["parameters"] == 1332
    assert (metrics["items"], metrics["batches"]) == (16.0, 1.0)
    for check in CHECKS:
        assert 0 <= metrics[f"check/{check}/error"] <= metrics[f"check/{check}/tolerance"]
    assert metrics["lambda_min"] < 0 < metrics["top_eigenvalue/0"]
    assert abs(metrics["density_mass"] - 1) < 1e-4
