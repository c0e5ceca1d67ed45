"""A model, data and loss of the user's, end to end: chosen on the command line, swept, tagged,
reproduced; and every bad one refused in one line with nothing left in the store."""

from __future__ import annotations

import pytest
import torch
from conftest import composed_once, family, runs_of
from torch import nn
from torch.utils.data import Dataset

from gradkit.reporting import reproduce


class RaisingNet(nn.Module):
    """A model whose forward fails."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x):
        raise RuntimeError("this forward is broken")


class Empty(Dataset):
    def __len__(self):
        return 0

    def __getitem__(self, index):
        raise IndexError(index)


class Words(Dataset):
    """Items that are strings, not tensors."""

    def __len__(self):
        return 10

    def __getitem__(self, index):
        return f"word {index}"


class Ragged(Dataset):
    """Inputs of a different shape each."""

    def __len__(self):
        return 10

    def __getitem__(self, index):
        return torch.zeros(index + 1), torch.zeros(2)


HERE = __name__


@pytest.fixture(autouse=True, scope="module")
def _trusted_targets_composed_once():
    """Each replay composes every option of the trusted groups to know their classes; the
    options do not change within this module: composed by its first replay."""
    with composed_once(reproduce, "trusted_targets"):
        yield


def replay(capsys, store, run_id: str) -> tuple[int, str]:
    """`gradkit reproduce RUN_ID tracking.root=STORE`: exit code and stderr."""
    try:
        reproduce.main([run_id, f"tracking.root={store}"])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("overrides", "said"), [
    (["+model._target_=no_such_package.Net"],
     "model._target_='no_such_package.Net' cannot be imported"),
    ([f"+model._target_={HERE}.RaisingNet"],
     f"model={HERE}.RaisingNet fails on data=own inputs of shape [2, 3]: RuntimeError: "
     "this forward is broken"),
    ([f"+data._target_={HERE}.Empty"], "is empty"),
    ([f"+data._target_={HERE}.Words"], "gradkit takes tensors or (input, target) pairs"),
    ([f"+data._target_={HERE}.Ragged"], f"data={HERE}.Ragged: its items do not make a batch"),
    (["model=mlp", f"+data._target_={HERE}.Ragged"], "its items do not make a batch"),
    (["model=cnn", "data=synthetic_regression"], "model=cnn takes (channels, height, width)"),
    (["model=mlp", "data=digits", "loss=mse"], "does not fit loss=mse with data=digits"),
])
def test_a_bad_model_or_data_is_one_line_naming_it_and_no_run(cli, store, overrides, said):
    code, err = cli("experiment=gradient_flow", *overrides)

    assert code != 0
    lines = [line for line in err.strip().splitlines() if not line.startswith("Error executing")]
    assert len(lines) == 1 and said in lines[0], err
    assert runs_of(store, "gradient_flow") == []


def test_a_model_for_an_experiment_that_runs_on_none_is_refused(cli, store):
    code, err = cli("experiment=hessian", "model=mlp")

    assert code != 0
    assert "hessian runs on no model, data or loss (model=mlp chosen)" in err
    assert "gradient_flow" in err and runs_of(store, "hessian") == []


def test_a_sweep_over_models_has_a_parent_and_a_tagged_child_per_model(cli, store):
    code, err = cli("experiment=gradient_flow", "model=mlp,cnn", "data=digits", multirun=True)

    assert code == 0, err
    parent, children = family(store, "gradient_flow")
    assert parent.info.status == "FINISHED"
    assert [c.data.tags["model"] for c in children] == ["mlp", "cnn"]
    assert all(c.data.tags["data"] == "digits" and c.data.tags["loss"] == "own"
               for c in children)
    assert [c.info.run_name.split(" ")[1] for c in children] == ["model=mlp", "model=cnn"]
    assert children[0].data.params["model._target_"] == "gradkit.lib.models.mlp_for"


def test_the_example_projects_model_and_data_come_from_its_config_folder(cli, store,
                                                                          user_project):
    code, err = cli("--config-dir", str(user_project), "experiment=gradient_flow",
                    "model=small_convnet", "data=stripes", "model.width=4")

    assert code == 0, err
    [run] = runs_of(store, "gradient_flow")
    assert (run.data.tags["model"], run.data.tags["data"]) == ("small_convnet", "stripes")
    assert run.data.params["model.width"] == "4"
    assert run.data.params["model._target_"] == "my_project.models.SmallConvNet"


def test_a_run_on_chosen_options_is_reproduced_and_a_plain_target_is_not(cli, store, capsys):
    code, err = cli("experiment=gradient_flow", "model=mlp", "model.hidden=[5]",
                    "data=synthetic_classification")
    assert code == 0, err
    code, err = cli("experiment=gradient_flow", "+loss._target_=torch.nn.MultiMarginLoss",
                    "data=synthetic_classification")
    assert code == 0, err
    plain, chosen = sorted(runs_of(store, "gradient_flow"), key=lambda r: r.info.start_time
                           )[::-1]

    code, err = replay(capsys, store, chosen.info.run_id)
    assert code == 0, err
    code, err = replay(capsys, store, plain.info.run_id)
    assert code == 2
    assert "loss._target_=torch.nn.MultiMarginLoss, which is not an option of gradkit" in err
    assert "put it in DIR/model/NAME.yaml" in err
