"""Gradient flow, end to end: runs in this process against a real MLflow store."""

from __future__ import annotations

import pytest
from conftest import CONF_DIR, compose_config, runs_of
from hydra import compose, initialize_config_dir


def test_default_run_end_to_end(cli, store):
    code, err = cli("experiment=gradient_flow")

    assert code == 0, err
    [run] = runs_of(store, "gradient_flow")
    metrics, tags = run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED"
    assert tags["checks"] == "passed" and tags["health"] == "healthy"
    assert tags["findings"] == ""
    assert {"grad_norm/0.weight", "grad_mean/6.weight", "grad_std/2.bias", "act_mean/4",
            "dead_fraction/0", "dead_units/2", "weight_norm/0.weight", "total_grad_norm",
            "max_min_ratio", "check/per_parameter_stats/error"} <= set(metrics)
    assert metrics["check/per_parameter_stats/error"] <= 1e-6
    assert {"check/per_parameter/error", "check/dead_units/error", "check/rules/error",
            "grad_to_weight/0.weight", "min_grad_to_weight"} <= set(metrics)


def test_kaiming_relu_net_is_healthy_from_the_command_line(cli, store):
    code, err = cli("experiment=gradient_flow", "experiment.hidden=[32,32,32]",
                    "experiment.init=kaiming_normal")

    assert code == 0, err
    [run] = runs_of(store, "gradient_flow")
    assert run.data.tags["health"] == "healthy" and run.data.tags["checks"] == "passed"
    assert run.data.metrics["max_grad_norm"] > 10 > run.data.metrics["max_grad_to_weight"] / 10


@pytest.mark.parametrize(("override", "key"), [
    ("experiment.hidden=[]", "experiment.hidden"),
    ("experiment.activation=swish", "experiment.activation"),
    ("experiment.init=uniform", "experiment.init"),
    ("experiment.vanishing=-1", "experiment.vanishing"),
])
def test_bad_input_fails_before_any_run(override, key, cli, store):
    code, err = cli("experiment=gradient_flow", override)

    assert code != 0
    assert any(key in line for line in err.splitlines()), err
    assert "Traceback" not in err
    assert runs_of(store, "gradient_flow") == []


def test_preset_sweeps_four_depths_by_three_activations():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["sweep=flow_depth_activation"],
                      return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    depths = [len(h.split(",")) for h in params["experiment.hidden"].split("],[")]
    assert depths == [2, 5, 10, 20]
    assert params["experiment.activation"] == "relu,tanh,sigmoid"
    assert compose_config("experiment=gradient_flow").experiment.hidden == [4, 6, 4]


def test_preset_smoke_sweep_shows_vanishing_in_the_deep_sigmoid_net_only(cli, store):
    code, err = cli("sweep=flow_depth_activation", "experiment.activation=sigmoid",
                    "experiment.hidden=[32,32],[32,32,32,32,32,32,32,32,32,32]", multirun=True)

    assert code == 0, err
    runs = runs_of(store, "gradient_flow")
    children = {int(r.data.metrics["depth"]): r for r in runs
                if "mlflow.parentRunId" in r.data.tags}
    assert set(children) == {2, 10}
    assert "vanishing" in children[10].data.tags["findings"].split(",")
    assert children[2].data.tags["health"] == "healthy"
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FINISHED"
