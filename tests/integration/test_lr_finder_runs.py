"""LR range test, end to end: runs in this process against a real MLflow store."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import CONF_DIR, PARENT_TAG, runs_of
from hydra import compose, initialize_config_dir

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread


SMALL = ("experiment.num_iter=40", "experiment.skip_start=5", "experiment.skip_end=3",
         "experiment.validation_steps=30")


def test_bad_input_fails_before_any_run(cli, store):
    code, err = cli("experiment=lr_finder", "experiment.start_lr=1", "experiment.end_lr=0.1")

    assert code != 0
    assert "experiment.start_lr=1 must be below experiment.end_lr=0.1" in err
    assert runs_of(store, "lr_finder") == []


@pytest.mark.parametrize(("override", "says", "ends"), [
    ("experiment.step_mode=cubic", "experiment.step_mode='cubic'", "choose one of: exp, linear"),
    ("experiment.amp=true", "experiment.amp=true needs device=cuda", "device is cpu"),
])
def test_an_unknown_ramp_or_mixed_precision_on_the_cpu_is_refused_in_one_line(
        cli, store, override, says, ends):
    code, err = cli("experiment=lr_finder", override)

    assert code != 0
    [line] = [line for line in err.splitlines() if says in line]
    assert line.endswith(ends)
    assert runs_of(store, "lr_finder") == []


def test_a_regression_run_finishes_with_losses_and_no_accuracy(cli, store):
    code, err = cli("experiment=lr_finder", "data=synthetic_regression", "model=mlp",
                    "experiment.num_iter=30", "experiment.skip_start=5",
                    "experiment.skip_end=3", "experiment.validation_steps=10")

    assert code == 0, err
    [run] = runs_of(store, "lr_finder")
    metrics = run.data.metrics
    assert (run.info.status, run.data.tags["checks"]) == ("FINISHED", "passed")
    assert (run.data.tags["model"], run.data.tags["data"]) == ("mlp", "synthetic_regression")
    assert not [name for name in metrics if "accuracy" in name]
    assert {"suggested_lr", "validation/loss/suggested", "test/loss"} <= set(metrics)
    assert metrics["objective"] == metrics["validation/loss/suggested"]


def test_a_test_that_diverges_at_once_is_a_finished_run_without_a_suggestion(cli, store):
    code, err = cli("experiment=lr_finder", "experiment.start_lr=100", "experiment.end_lr=1e4",
                    "experiment.num_iter=20", "experiment.skip_start=3", "experiment.skip_end=3")

    assert code == 0, err
    [run] = runs_of(store, "lr_finder")
    metrics = run.data.metrics
    assert (run.info.status, run.data.tags["status"]) == ("FINISHED", "no_suggestion")
    assert metrics["iterations_run"] < 3 + 3 + 2
    assert metrics["diverged"] == 1.0
    assert not {"suggested_lr", "validation/accuracy/suggested"} & set(metrics)
    assert math.isnan(metrics["objective"])
    assert metrics["check/state_restored/error"] == 0.0


def test_preset_sweeps_optimizers_by_batch_sizes_and_its_first_jobs_run(cli, store, tmp_path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["sweep=lr_finder_optimizers"],
                      return_hydra_config=True)
    assert dict(cfg.hydra.sweeper.params) == {"experiment.optimizer": "sgd,adam",
                                              "experiment.batch_size": "16,64"}
    assert cfg.experiment._target_.endswith("LrFinder")

    code, err = cli("sweep=lr_finder_optimizers", "experiment.batch_size=64", *SMALL,
                    multirun=True)

    assert code == 0, err
    runs = runs_of(store, "lr_finder")
    [parent] = [r for r in runs if PARENT_TAG not in r.data.tags]
    children = [r for r in runs if r is not parent]
    assert parent.info.status == "FINISHED"
    assert sorted(c.data.params["experiment.optimizer"] for c in children) == ["adam", "sgd"]
    for child in children:
        assert_logged_run(child)
    for record in (tmp_path / "sweep" / ".gradkit" / "jobs").glob("*.json"):
        output_dir = Path(json.loads(record.read_text())["output_dir"])
        assert (output_dir / "series.csv").is_file()  # where the report reads the curves


def assert_logged_run(run) -> None:
    """A run of SMALL: the curve, the suggestion on the schedule, its validation, the check."""
    metrics, tags = run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED"
    assert tags["checks"] == "passed"
    for check in ("state_restored", "schedule", "smoothing", "stop_rule", "suggestion"):
        assert metrics[f"check/{check}/error"] <= metrics[f"check/{check}/tolerance"]
    assert (metrics["data/train_size"] + metrics["data/validation_size"],
            metrics["data/test_size"]) == (1437, 360)
    assert tags["status"] in ("completed", "diverged")
    assert metrics["diverged"] == float(tags["status"] == "diverged")
    assert ("diverged_at_lr" in metrics) == (tags["status"] == "diverged")
    steps = int(metrics["iterations_run"])
    assert 5 <= steps <= 40
    schedule = np.geomspace(1e-7, 10.0, 40)
    assert np.isclose(schedule[5:steps - 3], metrics["suggested_lr"], rtol=1e-9).any()
    assert np.isclose(schedule[:steps], metrics["min_loss_lr"], rtol=1e-9).any()
    for which in ("lr_over_10", "suggested", "lr_times_10"):
        assert 0.0 <= metrics[f"validation/accuracy/{which}"] <= 1.0
        assert metrics[f"validation/loss/{which}"] > 0
    assert 0.0 <= metrics["test/accuracy"] <= 1.0 and metrics["test/loss"] > 0
    assert metrics["objective"] == metrics["validation/loss/suggested"]
    assert metrics["lr"] == pytest.approx(schedule[steps - 1], rel=1e-9)  # the last step's lr
