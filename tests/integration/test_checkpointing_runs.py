"""Gradient checkpointing, end to end: runs in this process against a real MLflow store."""

from __future__ import annotations

from conftest import CONF_DIR, runs_of
from hydra import compose, initialize_config_dir


def test_run_end_to_end(cli, store):
    code, err = cli("experiment=checkpointing", "experiment.width=100", "experiment.depth=4",
                    "experiment.segments=2", "experiment.repeats=1")

    assert code == 0, err
    [run_] = runs_of(store, "checkpointing")
    metrics = run_.data.metrics
    assert run_.info.status == "FINISHED"
    for which in ("plain", "checkpointed"):
        assert {f"saved_bytes/{which}", f"peak_bytes/{which}",
                f"seconds/{which}"} <= set(metrics)
    assert {"time_overhead", "output_abs_diff", "grad_max_abs_diff",
            "check/gradients_equal/error", "check/saved_by_segment/error",
            "check/memory_meter/error"} <= set(metrics)
    assert run_.data.tags["checks"] == "passed"
    assert metrics["saved_bytes/checkpointed"] < metrics["saved_bytes/plain"]
    assert metrics["peak_bytes/checkpointed"] < metrics["peak_bytes/plain"]


def test_a_chosen_chain_on_chosen_data_end_to_end(cli, store):
    code, err = cli("experiment=checkpointing", "model=mlp", "data=synthetic_regression",
                    "model.hidden=[64,32]", "experiment.segments=3", "experiment.repeats=1")

    assert code == 0, err
    [run_] = runs_of(store, "checkpointing")
    assert run_.info.status == "FINISHED" and run_.data.tags["checks"] == "passed"
    assert (run_.data.tags["model"], run_.data.tags["data"]) == ("mlp", "synthetic_regression")
    assert run_.data.metrics["check/gradients_equal/error"] == 0.0
    assert run_.data.metrics["loss"] > 0


def test_more_segments_than_the_chosen_chain_has_blocks_fail_before_any_run(cli, store):
    code, err = cli("experiment=checkpointing", "model=mlp", "data=synthetic_regression")

    assert code != 0
    assert "experiment.segments=4 must be <= the 3 blocks of model=mlp" in err
    assert runs_of(store, "checkpointing") == []


def test_segments_larger_than_depth_fail_before_any_run(cli, store):
    code, err = cli("experiment=checkpointing", "experiment.segments=32")

    assert code != 0
    assert "experiment.segments=32 must be <= experiment.depth=16" in err
    assert runs_of(store, "checkpointing") == []


def test_preset_and_its_smoke_sweep(cli, store):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["sweep=checkpoint_segments"],
                      return_hydra_config=True)
    assert cfg.hydra.sweeper.params["experiment.segments"] == "0,1,2,4,8,16"
    assert cfg.experiment.depth == 16

    code, err = cli("sweep=checkpoint_segments", "experiment.segments=0,4",
                    "experiment.width=100", "experiment.depth=8", "experiment.repeats=1",
                    multirun=True)

    assert code == 0, err
    saved = {int(r.data.params["experiment.segments"]): r.data.metrics["saved_bytes/checkpointed"]
             for r in runs_of(store, "checkpointing") if "mlflow.parentRunId" in r.data.tags}
    assert saved[4] < saved[0]
