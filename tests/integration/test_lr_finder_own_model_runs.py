"""LR range test on the example project's own conv net and data, end to end."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import runs_of

pytestmark = pytest.mark.usefixtures("one_thread")  # small networks: one thread


def test_the_range_test_runs_on_the_projects_conv_net_and_stripes(cli, store, user_project,
                                                                  tmp_path):
    code, err = cli("--config-dir", str(user_project), "experiment=lr_finder",
                    "model=small_convnet", "data=stripes", "experiment.num_iter=30",
                    "experiment.skip_start=5", "experiment.skip_end=3",
                    "experiment.validation_steps=10", "experiment.step_mode=linear",
                    "experiment.end_lr=1", "experiment.accumulation_steps=2")

    assert code == 0, err
    [run] = runs_of(store, "lr_finder")
    metrics, tags = run.data.metrics, run.data.tags
    assert (run.info.status, tags["checks"]) == ("FINISHED", "passed")
    assert (tags["model"], tags["data"]) == ("small_convnet", "stripes")
    assert (metrics["data/train_size"], metrics["data/validation_size"],
            metrics["data/test_size"]) == (480, 160, 160)  # 800 stripes, split 0.2 / 0.2
    assert metrics["check/schedule/error"] <= metrics["check/schedule/tolerance"]
    steps = int(metrics["iterations_run"])
    linear = np.linspace(1e-7, 1.0, 30)
    assert np.isclose(linear[5:steps - 3], metrics["suggested_lr"], rtol=1e-9).any()
    for which in ("lr_over_10", "suggested", "lr_times_10"):
        assert 0.0 <= metrics[f"validation/accuracy/{which}"] <= 1.0
    assert 0.0 <= metrics["test/accuracy"] <= 1.0
    assert (tmp_path / "run" / "figures" / "lr_finder.png").is_file()
