"""Adversarial attacks, end to end: runs in this process against a real MLflow store."""

from __future__ import annotations

import pytest
import torch
from conftest import CONF_DIR, runs_of
from hydra import compose, initialize_config_dir

FAST = ("experiment.model=mlp", "experiment.epochs=2", "experiment.examples=3")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread


def test_runs_train_once_then_read_the_cache(cli, store):
    for extra in ((), (), ("experiment.cache=false",), ("dtype=float64",)):
        code, err = cli("experiment=adversarial", *FAST, *extra)
        assert code == 0, err

    runs = sorted(runs_of(store, "adversarial"), key=lambda r: r.info.start_time)
    assert [r.data.tags["cache"] for r in runs] == ["miss", "hit", "off", "miss"]
    assert len({r.data.tags["cache_entry"] for r in runs[:3]}) == 1
    assert runs[3].data.tags["cache_entry"] != runs[0].data.tags["cache_entry"]  # own weights
    entries = {p.stem for p in (store / "cache").glob("*.pt")}
    weights = {r.data.tags["cache_entry"] for r in runs}
    assert weights <= entries and len(entries - weights) == 1  # and the digits split
    runs = runs[:3]
    first = runs[0].data.metrics
    assert all(r.data.metrics == first for r in runs[1:])  # same weights, same attack
    assert all(r.info.status == "FINISHED" and r.data.tags["checks"] == "passed" for r in runs)
    assert first["check.epsilon_ball.error"] <= 2 * torch.finfo(torch.float32).eps
    assert first["check.fgsm_equals_one_step_pgd.error"] == 0.0
    assert first["robust_accuracy"] < first["clean_accuracy"]
    assert first["linf"] == pytest.approx(0.1, abs=1e-6)
    assert 0 < first["attack_success_rate"] <= 1
    assert first["l2"] > first["linf"]
    assert first["objective"] == first["robust_accuracy"]


def test_another_attack_seed_reuses_the_trained_model_and_draws_another_start(cli, store):
    for seed in (0, 1):
        code, err = cli("experiment=adversarial", *FAST, f"experiment.attack_seed={seed}")
        assert code == 0, err

    first, second = sorted(runs_of(store, "adversarial"), key=lambda r: r.info.start_time)
    assert [r.data.tags["cache"] for r in (first, second)] == ["miss", "hit"]
    assert first.data.tags["cache_entry"] == second.data.tags["cache_entry"]
    assert first.data.metrics["clean_accuracy"] == second.data.metrics["clean_accuracy"]
    assert first.data.metrics["l2"] != second.data.metrics["l2"]  # another perturbation
    for run in (first, second):
        metrics = run.data.metrics
        assert run.data.tags["checks"] == "passed"
        for check in ("epsilon_ball", "iterates_in_ball", "random_start"):
            assert metrics[f"check.{check}.error"] <= metrics[f"check.{check}.tolerance"]
        assert metrics["check.random_start.tolerance"] < 0.05  # of a mean |δ| / ε of 1/2


@pytest.mark.parametrize(("override", "message"), [
    ("experiment.epsilon=1.5", "experiment.epsilon=1.5 must be <= 1.0"),
    ("experiment.steps=0", "experiment.steps=0 must be >= 1"),
    ("experiment.attack=cw", "experiment.attack='cw' is not allowed; choose one of: fgsm, pgd"),
])
def test_bad_input_fails_before_any_training(override, message, cli, store):
    code, err = cli("experiment=adversarial", override)

    assert code != 0
    assert message in err
    assert runs_of(store, "adversarial") == []
    assert not (store / "cache").exists()


def test_preset_sweeps_two_attacks_by_six_epsilons():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["sweep=adversarial_epsilons"],
                      return_hydra_config=True)
    assert dict(cfg.hydra.sweeper.params) == {
        "experiment.attack": "fgsm,pgd", "experiment.epsilon": "0.0,0.02,0.05,0.1,0.2,0.3"}
    assert cfg.experiment._target_.endswith("Adversarial")
    assert cfg.experiment.cache is True
