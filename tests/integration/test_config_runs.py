"""Every config group composes and every experiment option runs: in this process, against a
real MLflow store."""

from __future__ import annotations

import pytest
from conftest import CONF_DIR, EXPERIMENTS, compose_config
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from gradkit.core.experiment import Experiment
from gradkit.tracking.store import Tracker

SWEEPS = sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml"))


TRACKING = sorted(p.stem for p in (CONF_DIR / "tracking").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_option_instantiates_an_experiment_of_that_name(name):
    cfg = compose_config(f"experiment={name}")

    experiment = instantiate(cfg.experiment)

    assert isinstance(experiment, Experiment)
    assert type(experiment).__module__ == f"gradkit.experiments.{name}"


def test_global_defaults():
    cfg = compose_config("experiment=basic_gradients")
    assert (cfg.seed, cfg.device, cfg.dtype, cfg.threads) == (42, "cpu", "float32", 1)
    assert cfg.tracking.kind == "local"
    assert "sweep" not in cfg


@pytest.mark.parametrize(("overrides", "attribute", "expected"), [
    (["experiment=basic_gradients", "experiment.x=-1.5", "experiment.a=0"], "x", -1.5),
    (["experiment=computational_graph", "experiment.x=0"], "x", 0.0),
    (["experiment=jacobian", "experiment.point=[0,-1,2.5]"], "point", (0.0, -1.0, 2.5)),
])
def test_overrides_reach_the_constructor(overrides, attribute, expected):
    experiment = instantiate(compose_config(*overrides).experiment)
    assert getattr(experiment, attribute) == expected


@pytest.mark.parametrize("name", TRACKING)
def test_tracking_option_composes(name):
    cfg = compose_config("experiment=basic_gradients", f"tracking={name}")
    assert cfg.tracking.kind == name


def test_local_tracking_puts_the_database_under_root(tmp_path):
    cfg = compose_config("experiment=basic_gradients", f"tracking.root={tmp_path}")

    tracker = Tracker.from_config(cfg.tracking)

    assert tracker.uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert tracker.artifact_root == tmp_path.resolve() / "artifacts"


def sweep_config(name: str):
    """A sweep preset composed with its hydra node (where its swept params live)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[f"sweep={name}"], return_hydra_config=True)


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_preset_composes_and_every_swept_value_is_accepted(name):
    """A preset picks its experiment, and each value it sweeps composes and instantiates."""
    cfg = sweep_config(name)
    assert isinstance(instantiate(cfg.experiment), Experiment)
    params = cfg.hydra.sweeper.get("params") or {}
    assert params, f"sweep preset {name} sweeps nothing"
    overrides = OverridesParser.create().parse_overrides(
        [f"{key}={value}" for key, value in params.items()])

    for override in overrides:
        for value in override.sweep_string_iterator():
            job = compose_config(f"sweep={name}", f"{override.key_or_group}={value}")
            assert isinstance(instantiate(job.experiment), Experiment)


@pytest.mark.parametrize("overrides", [
    ["experiment=basic_gradients", "experiment.xx=1"],
    ["experiment=jacobian", "experiment.pointt=[1,2,3]"],
    ["experiment=basic_gradients", "sed=1"],
    ["experiment=basic_gradients", "plotting.dpii=50"],
])
def test_struct_mode_rejects_misspelt_keys(overrides):
    misspelt = overrides[-1].split("=")[0]
    with pytest.raises(ConfigCompositionException, match=f"Could not override '{misspelt}'"):
        compose_config(*overrides)


def test_the_default_experiment_is_basic_gradients():
    assert compose_config().experiment._target_.endswith("basic_gradients.BasicGradients")
