"""Every network demonstration logs `parameters`, its model's parameter count, as a metric:
compare views then plot a result against the model's size."""

from __future__ import annotations

import pytest
from conftest import runs_of

HIDDEN = 5
DIGITS_MLP = (64 + 1) * HIDDEN + (HIDDEN + 1) * 10  # 8x8 pixels -> 5 -> 10 classes, biases
REGRESSION_MLP = (10 + 1) * HIDDEN + (HIDDEN + 1) * 1  # synthetic_regression: 10 inputs -> 1


def test_a_sweep_of_network_demonstrations_logs_each_models_parameter_count(cli, store):
    networks = ["accumulation", "adversarial", "gradient_flow", "loss_curvature", "lr_finder"]
    code, err = cli(f"experiment={','.join(networks)}", "model=mlp",
                    f"model.hidden=[{HIDDEN}]", "data=digits", multirun=True)

    assert code == 0, err
    for name in networks:
        [run] = runs_of(store, name)  # one job each: no parent run
        assert run.data.metrics["parameters"] == DIGITS_MLP, name


@pytest.mark.parametrize(("experiment", "extra", "data", "expected"), [
    ("gradient_debugging", "experiment.scenario=none", "digits", DIGITS_MLP),
    ("checkpointing", "experiment.segments=2", "synthetic_regression", REGRESSION_MLP)])
def test_a_chosen_model_run_alone_logs_its_parameter_count(cli, store, experiment, extra, data,
                                                           expected):
    code, err = cli(f"experiment={experiment}", extra, "model=mlp", f"model.hidden=[{HIDDEN}]",
                    f"data={data}")

    assert code == 0, err
    [run] = runs_of(store, experiment)
    assert run.data.metrics["parameters"] == expected
