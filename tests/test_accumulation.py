"""Gradient accumulation: equivalence with full batches, batch norm breaking it, memory, CLI."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import CONF_DIR, runs_of
from hydra import compose, initialize_config_dir
from matplotlib.figure import Figure

from gradkit.core.experiment import RunContext
from gradkit.core.validation import ConfigError
from gradkit.experiments.accumulation import Accumulation

FLOATS_SAVED_PER_SAMPLE = (
    50          # the first Linear saves its input
    + 100 + 100  # ReLU saves its output; dropout multiplies it (same storage) by a saved mask
    + 100       # the second Linear saves its input (the dropout output)
    + 50 + 50   # ReLU output and mask
    + 50        # the last Linear's input
)


def run(dtype=torch.float32, **kwargs):
    ctx = RunContext(torch.device("cpu"), dtype, torch.Generator().manual_seed(0), None,
                     logging.getLogger("test"))
    return Accumulation(**{"optimizer_steps": 3, **kwargs}).run(ctx)


@pytest.mark.parametrize("dropout", [0.0, 0.1, 0.5])
def test_accumulated_gradients_and_parameters_equal_full_batch_ones(dropout):
    result = run(dropout=dropout)

    assert result.checks["equivalence"].passed
    assert result.tags == {"equivalence": "holds"}
    assert result.metrics["grad_rel_diff"] <= 1e-6
    assert result.metrics["param_rel_diff"] <= 1e-6
    assert result.metrics["loss_accumulated"] == pytest.approx(result.metrics["loss_full"],
                                                               rel=1e-6)
    assert result.series["loss_full"] == pytest.approx(result.series["loss_accumulated"],
                                                       rel=1e-5)
    assert isinstance(result.figures["accumulation"], Figure)


def test_float64_gap_is_at_rounding_level():
    result = run(torch.float64)

    assert result.metrics["grad_rel_diff"] < 1e-13
    assert result.checks["equivalence"].tolerance == 1e-12


def test_batch_norm_breaks_the_equivalence_without_failing():
    result = run(batch_norm=True)

    assert result.tags == {"equivalence": "broken_by_batch_norm"}
    assert result.checks == {}
    assert result.metrics["batchnorm_gap"] > 1e-3
    assert result.metrics["loss_accumulated"] != pytest.approx(result.metrics["loss_full"],
                                                               rel=1e-4)


def test_saved_activations_by_hand_and_one_over_steps():
    result = run(accumulation_steps=4, micro_batch=8)

    assert result.metrics["saved_bytes.full_batch"] == 32 * FLOATS_SAVED_PER_SAMPLE * 4
    assert result.metrics["saved_bytes.micro_batch"] == 8 * FLOATS_SAVED_PER_SAMPLE * 4
    assert result.metrics["saved_bytes_ratio"] == 0.25
    assert result.metrics["effective_batch"] == 32


def test_effective_batch_sets_the_micro_batch():
    assert Accumulation(micro_batch=None, effective_batch=128, accumulation_steps=8
                        ).micro_batch == 16


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"accumulation_steps": 0}, "experiment.accumulation_steps"),
    ({"dropout": 1.0}, "experiment.dropout"),
    ({"dropout": -0.1}, "experiment.dropout"),
    ({"micro_batch": 32, "effective_batch": 128}, "experiment.effective_batch"),
    ({"micro_batch": None, "effective_batch": 100, "accumulation_steps": 8},
     "experiment.effective_batch"),
    ({"micro_batch": 1, "batch_norm": True}, "experiment.micro_batch"),
    ({"hidden": []}, "experiment.hidden"),
    ({"learning_rate": 0}, "experiment.learning_rate"),
])
def test_bad_input_names_its_key(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        Accumulation(**kwargs)


def test_default_run_end_to_end(cli, store):
    code, err = cli("experiment=accumulation", "experiment.optimizer_steps=3")

    assert code == 0, err
    [run_] = runs_of(store, "accumulation")
    metrics = run_.data.metrics
    assert run_.info.status == "FINISHED"
    assert run_.data.tags["equivalence"] == "holds"
    assert {"grad_max_abs_diff", "param_max_abs_diff", "loss_full", "loss_accumulated",
            "saved_bytes.full_batch", "saved_bytes.micro_batch", "seconds_per_step.full",
            "seconds_per_step.accumulated", "check.equivalence.error",
            "grad_diff.layer0"} <= set(metrics)


def test_batch_norm_run_is_finished_not_failed(cli, store):
    code, err = cli("experiment=accumulation", "experiment.batch_norm=true",
                    "experiment.optimizer_steps=2")

    assert code == 0, err
    [run_] = runs_of(store, "accumulation")
    assert run_.info.status == "FINISHED"
    assert run_.data.tags["equivalence"] == "broken_by_batch_norm"
    assert run_.data.metrics["batchnorm_gap"] > 1e-3


def test_bad_input_leaves_the_store_empty(cli, store):
    code, err = cli("experiment=accumulation", "experiment.accumulation_steps=0")

    assert code != 0
    assert "experiment.accumulation_steps=0 must be >= 1" in err
    assert runs_of(store, "accumulation") == []


def test_preset_and_its_smoke_sweep(cli, store):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["sweep=accumulation_steps"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params["experiment.accumulation_steps"] == "1,2,4,8,16"
    assert (cfg.experiment.micro_batch, cfg.experiment.effective_batch) == (None, 128)

    code, err = cli("sweep=accumulation_steps", "experiment.accumulation_steps=1,2",
                    "experiment.optimizer_steps=2", multirun=True)

    assert code == 0, err
    children = {int(r.data.params["experiment.accumulation_steps"]): r.data.metrics
                for r in runs_of(store, "accumulation") if "mlflow.parentRunId" in r.data.tags}
    assert children[2]["saved_bytes.micro_batch"] == children[1]["saved_bytes.micro_batch"] / 2
    assert children[1]["micro_batch"] == 128 and children[2]["micro_batch"] == 64
    assert all(m["check.equivalence.error"] <= 1e-6 for m in children.values())


def test_sweep_figure_skips_failed_jobs():
    done = {"job": 0, "status": "COMPLETED", "params": {"experiment.accumulation_steps": "2"},
            "metrics": {"saved_bytes.micro_batch": 1e5, "grad_rel_diff": 1e-7,
                        "param_rel_diff": 0.0, "seconds_per_step.full": 0.01,
                        "seconds_per_step.accumulated": 0.02}}
    failed = {"job": 1, "status": "FAILED", "params": {}, "metrics": {}}

    assert isinstance(Accumulation.sweep_figure([done, failed]), Figure)
    assert Accumulation.sweep_figure([failed]) is None
