"""`gradkit reproduce RUN_ID`, end to end: runs in this process against a real MLflow store."""

from __future__ import annotations

import shutil
import time

import pytest
from conftest import PARENT_TAG, client_for, composed_once, runs_of, untimed

from gradkit.reporting import reproduce


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Replays write Hydra output folders under the current directory."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True, scope="module")
def _trusted_targets_composed_once():
    """Each replay composes every option of the trusted groups to know their classes; the
    options do not change within this module: composed by its first replay."""
    with composed_once(reproduce, "trusted_targets"):
        yield


def replay(capsys, store, run_id: str) -> tuple[int, str, str]:
    """`gradkit reproduce RUN_ID tracking.root=STORE`: exit code, stdout, stderr."""
    try:
        reproduce.main([run_id, f"tracking.root={store}"])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def only_run(store, experiment: str):
    [run] = runs_of(store, experiment)
    return run


def replay_of(store, experiment: str, run_id: str):
    [made] = [r for r in runs_of(store, experiment) if r.data.tags.get("reproduces") == run_id]
    return made


def test_identical_replay_exits_0_in_the_same_experiment(cli, store, capsys):
    code, err = cli("experiment=jacobian", "experiment.point=[0.5,-1,2]", "seed=7")
    assert code == 0, err
    original = only_run(store, "jacobian")

    code, out, err = replay(capsys, store, original.info.run_id)

    assert code == 0, err
    made = replay_of(store, "jacobian", original.info.run_id)
    assert made.info.run_id != original.info.run_id
    assert made.info.experiment_id == original.info.experiment_id
    assert untimed(made.data.metrics) == untimed(original.data.metrics)
    assert made.data.params == original.data.params
    assert made.data.tags["overrides"] == original.data.tags["overrides"]
    assert "identical" in out and "warning" not in err


def test_wall_clock_timings_are_shown_but_not_compared(cli, store, capsys):
    code, err = cli("experiment=hessian", "experiment.dim=40")
    assert code == 0, err
    original = only_run(store, "hessian")

    code, out, err = replay(capsys, store, original.info.run_id)

    assert code == 0, err
    made = replay_of(store, "hessian", original.info.run_id)
    timings = [name for name in original.data.metrics if name.startswith("seconds/")]
    assert len(timings) == 3
    assert all(made.data.metrics[name] > 0 for name in timings)
    assert "(4 wall-clock timings, marked ~ where they differ, not compared)" in out


def test_altered_metric_exits_1_and_is_named(cli, store, capsys):
    code, err = cli("experiment=basic_gradients", "experiment.x=-1")
    assert code == 0, err
    original = only_run(store, "basic_gradients")
    client_for(store).log_metric(original.info.run_id, "grad", 99.0,
                                 timestamp=int(time.time() * 1000) + 1000, step=0)

    code, out, err = replay(capsys, store, original.info.run_id)

    assert code == 1
    assert "1 of" in err and "values differ: grad" in err
    [row] = [line for line in out.splitlines() if line.split()[1:2] == ["grad"]]
    assert row.split()[:4] == ["!=", "grad", "99.0", "1.0"]  # 2ax + b at a=1, b=3, x=-1
    assert replay_of(store, "basic_gradients", original.info.run_id).data.metrics["grad"] == 1.0


def test_sweep_child_is_replayed_as_that_one_job(cli, store, capsys):
    code, err = cli("experiment=basic_gradients", "experiment.x=1,5", multirun=True)
    assert code == 0, err
    [child] = [r for r in runs_of(store, "basic_gradients") if r.data.tags.get("job_num") == "1"]

    code, _, err = replay(capsys, store, child.info.run_id)

    assert code == 0, err
    made = replay_of(store, "basic_gradients", child.info.run_id)
    assert made.data.params == child.data.params
    assert made.data.params["experiment.x"] == "5.0"  # a float parameter, as composed
    assert untimed(made.data.metrics) == untimed(child.data.metrics)
    assert PARENT_TAG not in made.data.tags and "sweep_id" not in made.data.tags


def test_logged_config_wins_over_todays_defaults(cli, store, capsys):
    """Without its overrides file, the replay pins every key back to the logged config."""
    code, err = cli("experiment=gradient_descent", "experiment.learning_rate=2e-3",
                    "experiment.max_iterations=30", "plotting.figures=false")
    assert code == 0, err
    original = only_run(store, "gradient_descent")
    artifacts = store / "artifacts" / "gradient_descent" / original.info.run_id / "artifacts"
    shutil.rmtree(artifacts / ".hydra")

    code, _, err = replay(capsys, store, original.info.run_id)

    assert code == 0, err
    made = replay_of(store, "gradient_descent", original.info.run_id)
    assert made.data.params == original.data.params
    assert untimed(made.data.metrics) == untimed(original.data.metrics)


def test_environment_changes_warn_but_do_not_fail(cli, store, capsys):
    code, err = cli("experiment=computational_graph")
    assert code == 0, err
    original = only_run(store, "computational_graph")
    client = client_for(store)
    client.set_tag(original.info.run_id, "git_commit", "0" * 40)
    client.set_tag(original.info.run_id, "version.torch", "1.0.0")

    code, _, err = replay(capsys, store, original.info.run_id)

    assert code == 0, err
    assert f"warning: git_commit differs: {'0' * 40} then" in err
    assert "warning: version.torch differs: 1.0.0 then" in err


@pytest.mark.parametrize(("make", "message"), [
    ("unknown", "no run '0123456789abcdef0123456789abcdef' in the MLflow store at sqlite:///"),
    ("foreign", "was not made by gradkit"),
    ("no config", "has no config.yaml artifact: its config is missing"),
    ("killed", "ended KILLED: it has no result to compare"),
])
def test_runs_that_cannot_be_replayed_exit_2(make, message, store, capsys):
    client = client_for(store)
    run_id = "0123456789abcdef0123456789abcdef"
    if make != "unknown":
        run = client.create_run(client.create_experiment("elsewhere"))
        run_id = run.info.run_id
        if make in ("no config", "killed"):
            client.log_param(run_id, "experiment._target_",
                             "gradkit.experiments.jacobian.Jacobian")
        if make == "killed":
            client.set_terminated(run_id, "KILLED")
    count = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))

    code, _, err = replay(capsys, store, run_id)

    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == count


def test_a_folder_without_a_store_is_refused_and_left_alone(tmp_path, capsys):
    code, _, err = replay(capsys, tmp_path / "mlrun", "0123456789abcdef0123456789abcdef")

    assert code == 2
    assert err.startswith(f"gradkit: tracking.root={tmp_path / 'mlrun'} holds no MLflow store")
    assert list(tmp_path.iterdir()) == []  # no store made to look in


EVIL = '''from pathlib import Path
def run(**_):
    Path({mark!r}).touch()
class Callback:
    def __init__(self, **_):
        Path({mark!r}).touch()
'''


@pytest.mark.parametrize(("edit", "named"), [
    ("config", "experiment._target_=evil.run, which is not an option of gradkit"),
    ("overrides", "sets Hydra's own keys (+hydra.callbacks.evil._target_=evil.Callback)"),
])
def test_edited_artifacts_cannot_make_the_replay_run_code(edit, named, cli, store, tmp_path,
                                                          monkeypatch, capsys):
    """A run's artifacts on a shared store can be edited: a replay instantiates only the
    experiments of gradkit and of the user's config folders."""
    mark = tmp_path / "code-ran"
    (tmp_path / "evil.py").write_text(EVIL.format(mark=str(mark)))
    monkeypatch.syspath_prepend(str(tmp_path))
    code, err = cli("experiment=basic_gradients")
    assert code == 0, err
    original = only_run(store, "basic_gradients")
    artifacts = store / "artifacts" / "basic_gradients" / original.info.run_id / "artifacts"
    if edit == "config":
        config = artifacts / "config.yaml"
        config.write_text(config.read_text().replace(
            "_target_: gradkit.experiments.basic_gradients.BasicGradients", "_target_: evil.run"))
    else:
        overrides = artifacts / ".hydra" / "overrides.yaml"
        overrides.write_text(overrides.read_text()
                             + "- +hydra.callbacks.evil._target_=evil.Callback\n")

    code, _, err = replay(capsys, store, original.info.run_id)

    assert code == 2
    assert named in err and len(err.strip().splitlines()) == 1, err
    assert not mark.exists()
    assert len(runs_of(store, "basic_gradients")) == 1
