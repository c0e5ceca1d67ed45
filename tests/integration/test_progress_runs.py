"""What a run shows during long work and a sweep while its jobs run: log lines (not on a
terminal), through the gradkit logger that Hydra writes to stdout and the job's log."""

from __future__ import annotations

import re

import pytest

from gradkit.lib import progress

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread


def test_a_sweep_logs_job_k_of_n_with_the_time_left_as_each_job_starts(cli, gradkit, store):
    code, err = cli("experiment=basic_gradients", "experiment.x=1,2,3", multirun=True)

    assert code == 0, err
    lines = [line.split(" - ", 1)[1] for line in gradkit.out.splitlines()
             if "[gradkit]" in line and " - job " in line]
    assert lines[0] == "job 1 of 3 (basic_gradients x=1)"
    assert [re.sub(r"about .* left", "about T left", line) for line in lines[1:]] == [
        "job 2 of 3 (basic_gradients x=2), about T left",
        "job 3 of 3 (basic_gradients x=3), about T left"]


def test_a_long_lr_finder_run_logs_its_progress_off_a_terminal(cli, gradkit, monkeypatch):
    """Made long by a log interval of 0 s: a line each tenth of each loop."""
    monkeypatch.setattr(progress, "INTERVAL", 0.0)
    code, err = cli("experiment=lr_finder", "experiment.num_iter=40", "experiment.end_lr=1",
                    "experiment.skip_start=5", "experiment.skip_end=3",
                    "experiment.validation_steps=30")

    assert code == 0, err
    out = gradkit.out
    ranged = re.findall(r"lr_finder: range test: (\d+) of 40 steps \(\d+%\), \d+ s so far, "
                        r"about \d+ s left", out)
    assert ranged == [str(n) for n in range(4, 40, 4)]
    assert re.search(r"lr_finder: range test: 40 of 40 steps in \d+ s\n", out)
    finals = re.findall(r"lr_finder: validation training at lr=\S+: 30 of 30 steps in", out)
    assert len(finals) == 3
    assert "\r" not in out + err
