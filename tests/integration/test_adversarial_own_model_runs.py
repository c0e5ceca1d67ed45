"""Adversarial attacks on the example project's own conv net and data, end to end."""

from __future__ import annotations

import json

import pytest
from conftest import runs_of

pytestmark = pytest.mark.usefixtures("one_thread")  # small networks: one thread


@pytest.mark.parametrize(("attack", "epsilon"), [("pgd", 0.1), ("apgd_l2", 1.0)])
def test_attacks_run_on_the_projects_conv_net_and_stripes(attack, epsilon, cli, store,
                                                          user_project, tmp_path):
    code, err = cli("--config-dir", str(user_project), "experiment=adversarial",
                    "model=small_convnet", "data=stripes", "experiment.epochs=3",
                    f"experiment.attack={attack}", f"experiment.epsilon={epsilon}",
                    "experiment.attack_batch_size=50")

    assert code == 0, err
    [run] = runs_of(store, "adversarial")
    metrics, tags = run.data.metrics, run.data.tags
    assert (run.info.status, tags["checks"]) == ("FINISHED", "passed")
    assert (tags["model"], tags["data"]) == ("small_convnet", "stripes")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["train_size"], summary["test_size"]) == (480, 160)  # 800, split 0.2 / 0.2
    assert metrics["clean_accuracy"] > 0.8  # stripes are easy: 3 epochs suffice
    assert metrics["robust_accuracy"] < metrics["clean_accuracy"]
    assert metrics["attacked_loss"] > metrics["clean_loss"]
    for check in ("epsilon_ball", "loss_raised"):
        assert metrics[f"check/{check}/error"] <= metrics[f"check/{check}/tolerance"]
    assert (tmp_path / "run" / "figures" / "examples.png").is_file()
