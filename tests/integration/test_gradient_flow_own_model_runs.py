"""Gradient flow on a chosen model and data: the example project's conv net (batch norm, a
functional ReLU) and gradkit's cnn on the digits, end to end against a real MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import client_for, runs_of

CONVNET_PARAMETERS = ["features.0.weight", "features.0.bias", "features.1.weight",
                      "features.1.bias", "mix.weight", "mix.bias", "head.weight", "head.bias"]


def test_the_example_convnet_is_diagnosed_by_module_path(cli, store, user_project, tmp_path):
    code, err = cli("--config-dir", str(user_project), "experiment=gradient_flow",
                    "model=small_convnet", "data=stripes")

    assert code == 0, err
    [run] = runs_of(store, "gradient_flow")
    metrics, tags = run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED" and tags["checks"] == "passed"
    assert (tags["model"], tags["data"]) == ("small_convnet", "stripes")
    assert {f"{stat}/{name}" for stat in ("grad_norm", "grad_to_weight", "weight_norm")
            for name in CONVNET_PARAMETERS} <= set(metrics)
    # the batch norm's output (module ReLU) and the mix conv's (a functional F.relu in forward)
    assert {"dead_units/features.1", "dead_fraction/mix", "dead_units/mix"} <= set(metrics)
    assert not any(name.endswith(".layer0") or "/layer" in name for name in metrics)
    assert metrics["parameters"] == 80 + 16 + 1168 + 68  # conv, batch norm, conv, head
    path = client_for(store).download_artifacts(run.info.run_id, "summary.json",
                                                str(tmp_path / "download"))
    summary = json.loads(Path(path).read_text())
    assert list(summary["gradients"]) == CONVNET_PARAMETERS
    assert summary["activations"]["mix"]["units"] == 16  # per channel
    assert summary["activations"]["features.1"]["units"] == 8
    assert summary["batch"] == [8, 1, 16, 16]


def test_gradkits_cnn_on_the_digits(cli, store):
    code, err = cli("experiment=gradient_flow", "model=cnn", "data=digits",
                    "experiment.batch_size=32")

    assert code == 0, err
    [run] = runs_of(store, "gradient_flow")
    metrics = run.data.metrics
    assert run.info.status == "FINISHED" and run.data.tags["checks"] == "passed"
    assert {"grad_norm/0.weight", "grad_norm/3.bias", "grad_to_weight/7.weight",
            "dead_fraction/0", "dead_fraction/3"} <= set(metrics)
    assert "depth" not in metrics  # the own MLP's hidden layers: not this model's
    assert metrics["loss"] > 0 and metrics["check/per_parameter/error"] <= 1e-6


def test_a_misfit_of_model_and_data_is_refused_before_any_run(cli, store, user_project):
    code, err = cli("--config-dir", str(user_project), "experiment=gradient_flow",
                    "model=small_convnet", "data=synthetic_regression")

    assert code != 0
    assert any("model=small_convnet" in line for line in err.splitlines()), err
    assert "Traceback" not in err
    assert runs_of(store, "gradient_flow") == []
