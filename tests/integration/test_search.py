"""Optuna searches (the optional `search` extra): presets compose, trials land as child runs."""

from __future__ import annotations

import pytest
from conftest import CONF_DIR, PARENT_TAG, runs_of
from hydra import compose, initialize_config_dir

from gradkit.reporting import report

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper",
                    reason="the search extra (pip install -e '.[search]') is not installed")




def test_descent_preset_searches_learning_rate_and_momentum_in_memory():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["search=descent_lr_momentum"],
                      return_hydra_config=True)

    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert (sweeper.direction, sweeper.storage) == ("minimize", None)
    assert set(sweeper.params) == {"experiment.learning_rate", "experiment.momentum"}
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.experiment._target_.endswith("GradientDescent")
    assert cfg.experiment.function == "rosenbrock"


def test_trials_are_children_of_one_parent_and_the_report_names_the_best(cli, store, tmp_path,
                                                                          capsys):
    code, err = cli("search=descent_lr_momentum", "hydra.sweeper.n_trials=3",
                    "experiment.max_iterations=100", "plotting.figures=false", multirun=True)

    assert code == 0, err
    runs = runs_of(store, "gradient_descent")
    [parent] = [r for r in runs if PARENT_TAG not in r.data.tags]
    trials = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert parent.info.status == "FINISHED"
    assert len(trials) == 3 and all(t.info.status == "FINISHED" for t in trials)
    assert len({t.data.params["experiment.learning_rate"] for t in trials}) == 3
    best = min(trials, key=lambda t: t.data.metrics["objective"])

    report.main([f"tracking.root={store}", f"output={tmp_path / 'report'}"])

    markdown = (tmp_path / "report" / "report.md").read_text()
    assert f"Best job by objective (lowest): {best.info.run_name}," in markdown
