"""Adversarial attacks, end to end: runs in this process against a real MLflow store."""

from __future__ import annotations

import pytest
import torch
from conftest import CONF_DIR, runs_of, untimed
from hydra import compose, initialize_config_dir

FAST = ("model=mlp", "experiment.epochs=2", "experiment.examples=3")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread


def test_runs_train_once_then_read_the_cache(cli, store):
    """The weights are trained once per training setting; another attack seed reuses them
    and draws another start."""
    for extra in ((), (), ("experiment.cache=false",), ("dtype=float64",),
                  ("experiment.attack_seed=1",)):
        code, err = cli("experiment=adversarial", *FAST, *extra)
        assert code == 0, err

    runs = sorted(runs_of(store, "adversarial"), key=lambda r: r.info.start_time)
    assert [r.data.tags["cache"] for r in runs] == ["miss", "hit", "off", "miss", "hit"]
    assert len({r.data.tags["cache_entry"] for r in runs[:3]}) == 1
    assert runs[3].data.tags["cache_entry"] != runs[0].data.tags["cache_entry"]  # own weights
    entries = {p.stem for p in (store / "cache").glob("*.pt")}
    weights = {r.data.tags["cache_entry"] for r in runs}
    assert weights <= entries and len(entries - weights) == 1  # and the digits split
    first, reseeded = runs[0], runs[4]  # attack seeds 0 (the default) and 1
    assert first.data.tags["cache_entry"] == reseeded.data.tags["cache_entry"]
    assert first.data.metrics["clean_accuracy"] == reseeded.data.metrics["clean_accuracy"]
    assert first.data.metrics["l2"] != reseeded.data.metrics["l2"]  # another perturbation
    for run in (first, reseeded):
        metrics = run.data.metrics
        assert run.data.tags["checks"] == "passed"
        for check in ("epsilon_ball", "iterates_in_ball", "random_start"):
            assert metrics[f"check/{check}/error"] <= metrics[f"check/{check}/tolerance"]
        assert metrics["check/random_start/tolerance"] < 0.05  # of a mean |δ| / ε of 1/2
    runs = runs[:3]
    first = runs[0].data.metrics
    assert all(untimed(r.data.metrics) == untimed(first) for r in runs[1:])  # same attack
    assert all(r.info.status == "FINISHED" and r.data.tags["checks"] == "passed" for r in runs)
    assert first["check/epsilon_ball/error"] <= 2 * torch.finfo(torch.float32).eps
    assert first["check/fgsm_equals_one_step_pgd/error"] == 0.0
    assert first["robust_accuracy"] < first["clean_accuracy"]
    assert first["linf"] == pytest.approx(0.1, abs=1e-6)
    assert 0 < first["attack_success_rate"] <= 1
    assert first["l2"] > first["linf"]
    assert first["objective"] == first["robust_accuracy"]


def test_model_and_data_choices_key_their_own_weights(cli, store):
    for extra in (("model=mlp",), ("model=mlp", "model.hidden=[32]"), ()):
        code, err = cli("experiment=adversarial", "experiment.epochs=2",
                        "experiment.examples=3", *extra)
        assert code == 0, err

    runs = sorted(runs_of(store, "adversarial"), key=lambda r: r.info.start_time)
    assert [r.data.tags["cache"] for r in runs] == ["miss", "miss", "miss"]
    assert len({r.data.tags["cache_entry"] for r in runs}) == 3
    assert [r.data.tags["model"] for r in runs] == ["mlp", "mlp", "own"]


@pytest.mark.parametrize(("override", "message"), [
    ("experiment.epsilon=1.5", "experiment.epsilon=1.5 must be <= 1.0"),
    ("experiment.steps=0", "experiment.steps=0 must be >= 1"),
    ("experiment.attack=cw", "experiment.attack='cw' is not allowed; choose one of: fgsm, pgd, "
                             "pgd_l2, apgd, apgd_l2"),
])
def test_bad_input_fails_before_any_training(override, message, cli, store):
    code, err = cli("experiment=adversarial", override)

    assert code != 0
    assert [line for line in err.splitlines() if line.startswith("gradkit:")] == [
        f"gradkit: {message}"]
    assert runs_of(store, "adversarial") == []
    assert not (store / "cache").exists()


@pytest.mark.parametrize(("override", "message"), [
    ("data=synthetic_regression", "adversarial: data=synthetic_regression has no class labels"),
    ("experiment.input_range=[0.0,0.5]", "experiment.input_range=[0.0, 0.5] does not hold "
                                         "data=own: its train inputs span [0, 1]"),
    ("data=synthetic_classification model=mlp", "experiment.input_range=[0.0, 1.0] does not "
                                                "hold data=synthetic_classification"),
])
def test_data_the_attack_cannot_serve_is_refused_before_a_run_opens(override, message, cli,
                                                                    store):
    code, err = cli("experiment=adversarial", *override.split())

    assert code != 0
    [line] = [line for line in err.splitlines() if line.startswith("gradkit:")]
    assert message in line
    assert runs_of(store, "adversarial") == []
    assert not [p for p in (store / "cache").glob("*.pt")
                if "state" in torch.load(p, weights_only=True)["payload"]]  # nothing trained


def test_a_target_class_beyond_the_data_is_refused(cli, store):
    code, err = cli("experiment=adversarial", "data=synthetic_classification", "model=mlp",
                    "experiment.input_range=[-10,10]", "experiment.targeted=true",
                    "experiment.target_class=3")

    assert code != 0
    assert "experiment.target_class=3 must be < 3 (the classes of data=synthetic_classification)" \
        in err
    assert runs_of(store, "adversarial") == []


def test_a_targeted_attack_on_tabular_data_in_its_own_range(cli, store):
    code, err = cli("experiment=adversarial", "data=synthetic_classification", "model=mlp",
                    "experiment.input_range=[-10,10]", "experiment.targeted=true",
                    "experiment.epsilon=1.0", "experiment.examples=2", "experiment.epochs=4")
    assert code == 0, err

    [run] = runs_of(store, "adversarial")
    metrics = run.data.metrics
    assert run.data.tags["checks"] == "passed"
    assert metrics["targeted_success_rate"] > 0.5
    assert metrics["attacked_target_loss"] < metrics["clean_target_loss"]


def test_epsilon_sweep_over_three_attacks_reports_robust_accuracy(cli, store):
    code, err = cli("experiment=adversarial", *FAST, "experiment.epsilon=0.05,0.2",
                    "experiment.attack=pgd,pgd_l2,apgd", "plotting.figures=false",
                    multirun=True)
    assert code == 0, err

    runs = runs_of(store, "adversarial")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 6
    assert sorted(c.data.tags["cache"] for c in children) == ["hit"] * 5 + ["miss"]
    robust = {(c.data.params["experiment.attack"], float(c.data.params["experiment.epsilon"])):
              c.data.metrics["robust_accuracy"] for c in children}
    for attack in ("pgd", "pgd_l2", "apgd"):
        assert robust[attack, 0.2] < robust[attack, 0.05]
    assert robust["apgd", 0.2] <= robust["pgd", 0.2]


def test_preset_sweeps_four_attacks_by_six_epsilons():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["sweep=adversarial_epsilons"],
                      return_hydra_config=True)
    assert dict(cfg.hydra.sweeper.params) == {
        "experiment.attack": "fgsm,pgd,pgd_l2,apgd",
        "experiment.epsilon": "0.0,0.02,0.05,0.1,0.2,0.3"}
    assert cfg.experiment._target_.endswith("Adversarial")
    assert cfg.experiment.cache is True
