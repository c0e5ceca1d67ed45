"""Gradient accumulation on the example project's own model and data: its conv net has batch
norm, so the run reports the gap batch statistics open and ends FINISHED without checks."""

from __future__ import annotations

from conftest import runs_of


def test_small_convnet_on_stripes_reports_the_batch_norm_gap(cli, store, user_project):
    code, err = cli("--config-dir", str(user_project), "experiment=accumulation",
                    "model=small_convnet", "data=stripes", "experiment.optimizer_steps=4")

    assert code == 0, err
    [run_] = runs_of(store, "accumulation")
    metrics = run_.data.metrics
    assert run_.info.status == "FINISHED"
    assert (run_.data.tags["model"], run_.data.tags["data"]) == ("small_convnet", "stripes")
    assert run_.data.tags["equivalence"] == "broken_by_batch_norm"
    assert not any(name.startswith("check/") for name in metrics)
    assert metrics["batchnorm_gap"] > 1e-3
    assert {"grad_diff/features.0.weight", "grad_diff/features.1.weight",
            "grad_diff/mix.weight", "grad_diff/head.bias"} <= set(metrics)
