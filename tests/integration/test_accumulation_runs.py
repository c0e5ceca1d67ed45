"""Gradient accumulation, end to end: runs in this process against a real MLflow store."""

from __future__ import annotations

import pytest
from conftest import CONF_DIR, runs_of
from hydra import compose, initialize_config_dir


def test_default_run_end_to_end(cli, store):
    code, err = cli("experiment=accumulation", "experiment.optimizer_steps=3")

    assert code == 0, err
    [run_] = runs_of(store, "accumulation")
    metrics = run_.data.metrics
    assert run_.info.status == "FINISHED"
    assert run_.data.tags["equivalence"] == "holds"
    assert {"grad_max_abs_diff", "param_max_abs_diff", "loss_full", "loss_accumulated",
            "saved_bytes/full_batch", "saved_bytes/micro_batch", "seconds_per_step/full",
            "seconds_per_step/accumulated", "check/equivalence/error",
            "param_rel_diff/sgd", "check/equivalence_sgd/error", "grad_diff/0.weight",
            "grad_diff/6.bias"} <= set(metrics)
    for check in ("equivalence", "loss", "equivalence_sgd"):
        assert metrics[f"check/{check}/error"] <= metrics[f"check/{check}/tolerance"]
        assert metrics[f"check/{check}/tolerance"] == pytest.approx(1e-6 * 128**0.5)


def test_a_chosen_model_and_data_keep_the_identity(cli, store):
    code, err = cli("experiment=accumulation", "model=cnn", "data=digits",
                    "experiment.optimizer_steps=2")

    assert code == 0, err
    [run_] = runs_of(store, "accumulation")
    assert run_.info.status == "FINISHED"
    assert (run_.data.tags["model"], run_.data.tags["data"]) == ("cnn", "digits")
    assert run_.data.tags["equivalence"] == "holds"
    assert run_.data.metrics["check/equivalence/error"] <= 1e-6
    assert {"grad_diff/0.weight", "grad_diff/7.bias"} <= set(run_.data.metrics)


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
    assert children[2]["saved_bytes/micro_batch"] == children[1]["saved_bytes/micro_batch"] / 2
    assert children[1]["micro_batch"] == 128 and children[2]["micro_batch"] == 64
    assert all(m["check/equivalence/error"] <= 1e-6 for m in children.values())
