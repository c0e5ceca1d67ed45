"""Gradient debugging, end to end: runs in this process against a real MLflow store."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import CONF_DIR, client_for, runs_of
from hydra import compose, initialize_config_dir

from gradkit.experiments.gradient_debugging import SCENARIOS


def test_default_run_end_to_end_with_findings_in_the_summary(cli, store, tmp_path):
    code, err = cli("experiment=gradient_debugging", "experiment.scenario=dead_relu")

    assert code == 0, err
    [run_] = runs_of(store, "gradient_debugging")
    assert run_.info.status == "FINISHED"
    assert run_.data.tags["health"] == "warning"
    assert "dead_units" in run_.data.tags["findings"].split(",")
    assert run_.data.metrics["check/detects_planted_fault/error"] == 0.0
    path = client_for(store).download_artifacts(run_.info.run_id, "summary.json",
                                                str(tmp_path / "download"))
    summary = json.loads(Path(path).read_text())
    dead = [f for f in summary["findings"] if f["kind"] == "dead_units"]
    assert dead and all(f["value"] >= 0.5 for f in dead)
    assert {f["layer"] for f in dead} <= {"0", "2", "4"}  # the hidden Linear layers' outputs


def test_a_nan_born_in_the_forward_pass_is_blamed_on_its_op(cli, store):
    code, err = cli("experiment=gradient_debugging", "experiment.scenario=nan_forward")

    assert code == 0, err
    [run_] = runs_of(store, "gradient_debugging")
    assert run_.data.tags["checks"] == "passed"
    assert run_.data.tags["nonfinite_origin"] == "torch.log (nan, forward)"
    assert "nan_loss" in run_.data.tags["findings"].split(",")


@pytest.mark.parametrize(("override", "key"), [
    ("experiment.scenario=broken", "experiment.scenario"),
    ("experiment.hidden=[]", "experiment.hidden"),
    ("experiment.dead_units=0", "experiment.dead_units"),
])
def test_bad_input_fails_before_any_run(override, key, cli, store):
    code, err = cli("experiment=gradient_debugging", override)

    assert code != 0
    assert any(key in line for line in err.splitlines()), err
    assert runs_of(store, "gradient_debugging") == []


def test_preset_runs_every_scenario_and_its_smoke_sweep(cli, store):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["sweep=debug_scenarios"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params["experiment.scenario"].split(",") == list(SCENARIOS)

    code, err = cli("sweep=debug_scenarios", "experiment.scenario=healthy,nan", multirun=True)

    assert code == 0, err
    runs = runs_of(store, "gradient_debugging")
    children = {r.data.params["experiment.scenario"]: r for r in runs
                if "mlflow.parentRunId" in r.data.tags}
    assert children["healthy"].data.tags["findings"] == ""
    assert children["nan"].data.tags["findings"] == "nan_grad"
    for scenario, run_ in children.items():  # NaN entries per layer, as MLflow holds them
        metrics = run_.data.metrics
        broken = {key.removeprefix("grad_nonfinite/") for key, count in metrics.items()
                  if key.startswith("grad_nonfinite/") and count > 0}
        assert broken == ({"0.weight", "0.bias"} if scenario == "nan" else set())
        assert metrics["findings/nan_grad"] == len(broken)
        assert all(math.isnan(metrics[f"grad_norm/{name}"]) for name in broken)
        assert all(value > 0 for key, value in metrics.items() if key.startswith("grad_norm/")
                   and key.removeprefix("grad_norm/") not in broken)


def test_a_planted_scenario_is_refused_on_a_chosen_model_in_one_line(cli, store):
    code, err = cli("experiment=gradient_debugging", "model=cnn", "data=digits")

    assert code != 0
    [line] = [line for line in err.splitlines() if "experiment.scenario" in line]
    assert "experiment.scenario=problematic" in line and "model=cnn" in line
    assert "experiment.scenario=none" in line
    assert runs_of(store, "gradient_debugging") == []


def test_scenario_none_diagnoses_a_chosen_model_as_it_is(cli, store):
    code, err = cli("experiment=gradient_debugging", "model=cnn", "data=digits",
                    "experiment.scenario=none")

    assert code == 0, err
    [run_] = runs_of(store, "gradient_debugging")
    metrics = run_.data.metrics
    assert run_.info.status == "FINISHED" and run_.data.tags["checks"] == "passed"
    assert {"grad_norm/0.weight", "grad_norm/3.weight", "grad_norm/7.weight",
            "dead_units/0", "dead_units/3"} <= set(metrics)
    assert "check/detects_planted_fault/error" not in metrics
