"""The model, data and loss a network demonstration runs on: built from config, split by the
seed, checked on one batch, every misfit refused in one line."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import ClassVar

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from gradkit.core.components import Choice, Components, locate
from gradkit.core.validation import ConfigError
from gradkit.lib.data import digits_dataset, synthetic_classification, synthetic_regression
from gradkit.lib.datasets import SPLITS, Data, Part, as_batch, split_by_seed
from gradkit.lib.models import conv_net, mlp_for
from gradkit.lib.training import evaluate_batches


def own_data():
    return synthetic_regression(64, 3, 2, seed=1)


def own_model(input_shape, outputs):
    return mlp_for(input_shape, outputs, [4])


def components(**groups) -> Components:
    """Components choosing `groups` ({"model": {"_target_": ...}}), named after their target."""
    chosen = {key: Choice(key, config["_target_"].rpartition(".")[2], config)
              for key, config in groups.items()}
    return Components(**chosen)


def resolved(ctx, task=None, **groups):
    ctx = dataclasses.replace(ctx, components=components(**groups))
    return ctx.components.resolve(ctx, own_data, own_model, task=task)


DIGITS = {"_target_": "gradkit.lib.data.digits_dataset"}
CNN = {"_target_": "gradkit.lib.models.conv_net"}
MLP = {"_target_": "gradkit.lib.models.mlp_for", "hidden": [8]}


class Shaped(nn.Module):
    """A model that accepts only inputs of 5 features."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(5, 3)

    def forward(self, x):
        if x.shape[-1] != 5:
            raise ValueError(f"expected 5 features, got {x.shape[-1]}")
        return self.linear(x)


class PerSplit(Dataset):
    """A dataset of its own per split (sizes 30, 10, 20), recording the calls."""

    calls: ClassVar[list[str]] = []

    def __init__(self, split: str, seed: int = 0):
        PerSplit.calls.append(split)
        self.x = torch.full(({"train": 30, "validation": 10, "test": 20}[split], 3), seed,
                            dtype=torch.float32)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], torch.zeros(2)


# --- built from config ---------------------------------------------------------------------

def test_a_target_gets_the_offered_arguments_it_accepts_and_its_config_does_not_set():
    built = Choice("model", "mlp", {"_target_": "gradkit.lib.models.mlp_for", "outputs": 7}
                   ).build(input_shape=(4,), outputs=2, seed=3)

    assert [m.out_features for m in built if isinstance(m, nn.Linear)] == [64, 7]  # config wins
    assert built[0].in_features == 4  # offered; `seed` not accepted, so not passed


@pytest.mark.parametrize(("target", "said"), [
    ("no_such_package.Net", "no module or object of that name"),
    ("gradkit.lib.models.NoSuchNet", "no module or object of that name"),
    ("", "must be a dotted path"),
])
def test_a_target_that_cannot_be_imported_is_named(target, said):
    with pytest.raises(ConfigError, match=rf"model._target_=.* {said}"):
        locate("model._target_", target)


def test_a_module_whose_own_import_fails_says_what_it_lacks(tmp_path, monkeypatch):
    (tmp_path / "broken_models.py").write_text("import not_installed_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(ConfigError, match="No module named 'not_installed_dependency'"):
        locate("model._target_", "broken_models.Net")


def test_a_target_that_raises_is_one_line_naming_key_and_option():
    choice = Choice("model", "mine", {"_target_": "torch.nn.Linear", "in_features": -1,
                                      "out_features": 2})
    with pytest.raises(ConfigError, match=r"^model=mine could not be built \(torch.nn.Linear\)"):
        choice.build()


def test_from_config_reads_choices_split_and_refuses_keys_without_a_target():
    cfg = OmegaConf.create({"model": {"_target_": "x.Y"}, "data": {"_target_": None},
                            "loss": {"_target_": None}, "split": {"validation": 0.1,
                                                                 "test": 0.3}})
    found = Components.from_config(cfg, {"model": None})
    assert (found.names, found.validation, found.test) == (
        {"model": "x.Y", "data": "own", "loss": "own"}, 0.1, 0.3)
    assert list(found.chosen) == ["model"]

    cfg.split.test = 0.9
    with pytest.raises(ConfigError, match=r"split.validation=0.1 \+ split.test=0.9"):
        Components.from_config(cfg, {})
    cfg.split.test = 0.0
    with pytest.raises(ConfigError, match=r"split.test=0.0 must be > 0"):
        Components.from_config(cfg, {})
    cfg.split.test = 0.2
    cfg.data = {"_target_": None, "size": 3}
    with pytest.raises(ConfigError, match=r"data sets size but no data\._target_"):
        Components.from_config(cfg, {})


# --- the workload --------------------------------------------------------------------------

def test_nothing_chosen_is_the_demonstrations_own_data_model_and_loss(ctx):
    work = resolved(ctx)

    assert (work.input_shape, work.outputs, work.classes) == ((3,), 2, None)
    assert isinstance(work.loss, nn.MSELoss)
    assert sum(work.data.size(split) for split in SPLITS) == 64


def test_a_chosen_model_is_sized_to_chosen_data_with_the_default_loss_for_labels(ctx):
    work = resolved(ctx, model=CNN, data=DIGITS)

    assert (work.input_shape, work.outputs, work.classes) == ((1, 8, 8), 10, 10)
    assert isinstance(work.loss, nn.CrossEntropyLoss)
    assert work.new_model()(work.data.first[0]).shape == (2, 10)


def test_new_models_are_fixed_by_the_seed_and_leave_the_global_generator_alone(ctx):
    work = resolved(ctx, model=MLP, data=DIGITS)
    before = torch.random.get_rng_state()

    first, again, other = work.new_model(), work.new_model(), work.new_model(seed=7)

    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), again.parameters(),
                                                  strict=True))
    assert not torch.equal(first[1].weight, other[1].weight)


def test_a_model_failing_on_the_data_is_refused_naming_both(ctx):
    with pytest.raises(ConfigError, match=r"^model=Shaped fails on data=digits_dataset inputs "
                                          r"of shape \[2, 1, 8, 8\]: ValueError: expected 5"):
        resolved(ctx, model={"_target_": f"{__name__}.Shaped"}, data=DIGITS)


def test_an_output_that_does_not_fit_the_loss_is_refused_naming_model_loss_and_data(ctx):
    with pytest.raises(ConfigError, match=r"model=mlp_for output of shape \[2, 10\] does not "
                                          r"fit loss=MSELoss with data=digits_dataset targets"):
        resolved(ctx, model=MLP, data=DIGITS, loss={"_target_": "torch.nn.MSELoss"})


def flat_targets() -> TensorDataset:
    """Regression targets of shape [N], not [N, 1]."""
    return TensorDataset(torch.randn(20, 3), torch.randn(20))


def test_an_output_the_loss_would_broadcast_silently_is_refused(ctx):
    # MSE of [2, 1] outputs against [2] targets is a [2, 2] broadcast: a warning in torch,
    # a wrong loss for every step after it
    with pytest.raises(ConfigError, match=r"output of shape \[2, 1\] does not fit loss=own "
                                          r"with data=flat_targets targets of shape \[2\]"):
        resolved(ctx, model=MLP, data={"_target_": f"{__name__}.flat_targets"})


def test_a_loss_that_does_not_reduce_to_one_number_is_refused(ctx):
    with pytest.raises(ConfigError, match="must reduce a batch to one number"):
        resolved(ctx, loss={"_target_": "torch.nn.MSELoss", "reduction": "none"})


def test_a_model_target_that_is_not_a_module_is_refused(ctx):
    with pytest.raises(ConfigError, match=r"model=dict built a dict, not a torch\.nn\.Module"):
        resolved(ctx, model={"_target_": "builtins.dict"})


@pytest.mark.parametrize(("task", "data", "said"), [
    ("classification", None, "has no class labels"),
    ("regression", DIGITS, "has class labels"),
])
def test_data_of_the_wrong_kind_for_the_demonstration_is_refused(ctx, task, data, said):
    with pytest.raises(ConfigError, match=said):
        resolved(ctx, task, **({"data": data} if data else {}))


def test_a_dataset_factory_taking_split_is_called_once_per_split_with_the_seed(ctx):
    PerSplit.calls = []
    work = resolved(ctx, data={"_target_": f"{__name__}.PerSplit"})

    assert PerSplit.calls == list(SPLITS)
    assert [work.data.size(s) for s in SPLITS] == [30, 10, 20]
    assert work.data.first[0][0, 0].item() == ctx.generator.initial_seed()


# --- splits and batches --------------------------------------------------------------------

def test_split_by_seed_is_disjoint_complete_stratified_and_fixed_by_the_seed():
    dataset = synthetic_classification(600, 4, 3, seed=2)
    labels = dataset.tensors[1]
    parts = split_by_seed("d", dataset, 0.2, 0.3, seed=5)

    indices = torch.cat([parts[s].indices for s in SPLITS])
    assert sorted(indices.tolist()) == list(range(600))
    for split, share in (("validation", 0.2), ("test", 0.3)):
        for c in range(3):  # each class held out in the same share (to rounding)
            count = (labels == c).sum().item()
            held = (labels[parts[split].indices] == c).sum().item()
            assert abs(held - share * count) <= 0.5
    again, other = split_by_seed("d", dataset, 0.2, 0.3, 5), split_by_seed("d", dataset, 0.2,
                                                                            0.3, 6)
    assert torch.equal(again["test"].indices, parts["test"].indices)
    assert not torch.equal(other["test"].indices, parts["test"].indices)


def test_an_empty_dataset_or_one_too_small_to_split_is_refused():
    with pytest.raises(ConfigError, match="data=d is empty"):
        split_by_seed("d", TensorDataset(torch.zeros(0, 2)), 0.2, 0.2, 0)
    with pytest.raises(ConfigError, match="too few for a validation split"):
        split_by_seed("d", TensorDataset(torch.zeros(2, 2)), 0.2, 0.2, 0)


def data_of(dataset, log=None) -> Data:
    return Data("d", {s: Part(dataset) for s in SPLITS}, torch.device("cpu"), torch.float64,
                log)


def test_batches_cover_the_split_once_shuffled_by_the_generator_in_the_runs_dtype():
    dataset = TensorDataset(torch.arange(10.0).unsqueeze(1), torch.arange(10))
    batches = list(data_of(dataset).batches("train", 4, torch.Generator().manual_seed(0)))

    assert [len(x) for x, _ in batches] == [4, 4, 2]
    seen = torch.cat([y for _, y in batches])
    assert sorted(seen.tolist()) == list(range(10)) and seen.tolist() != list(range(10))
    assert batches[0][0].dtype == torch.float64 and batches[0][1].dtype == torch.long


def test_cycled_gives_exactly_the_steps_asked_and_says_once_that_it_cycles(caplog):
    dataset = TensorDataset(torch.arange(10.0).unsqueeze(1), torch.arange(10))
    data = data_of(dataset, logging.getLogger("test.cycle"))
    with caplog.at_level(logging.INFO, logger="test.cycle"):
        batches = list(data.cycled("train", 4, 7, torch.Generator().manual_seed(0)))
        again = list(data.cycled("train", 4, 7, torch.Generator().manual_seed(1)))  # a retrain
        longer = list(data.cycled("train", 4, 9))

    assert len(batches) == len(again) == 7 and len(longer) == 9
    assert [r.getMessage() for r in caplog.records] == [
        "data=d: the train split gives 3 batches; cycled for 7 steps",
        "data=d: the train split gives 3 batches; cycled for 9 steps"]


def test_items_of_another_dataset_kind_are_collated_and_a_dataloader_serves_every_split():
    class Pairs(Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return torch.full((2,), float(i)), i

    x, y = data_of(Pairs()).tensors("train")
    assert x.shape == (5, 2) and y.tolist() == [0, 1, 2, 3, 4]

    loader = DataLoader(TensorDataset(torch.ones(6, 2), torch.zeros(6, 1)), batch_size=4)
    data = data_of(loader)
    assert [len(b[0]) for b in data.batches("test", 99)] == [4, 2]
    assert data.size("test") is None and data.tensors("train")[0].shape == (6, 2)


@pytest.mark.parametrize("item", [{"x": torch.ones(2)}, "text"])
def test_items_that_are_not_tensors_or_pairs_are_refused(item):
    with pytest.raises(ValueError, match="gradkit takes tensors or \\(input, target\\) pairs"):
        as_batch(item)


def test_classes_come_from_a_classes_attribute_or_the_largest_label():
    dataset = TensorDataset(torch.zeros(4, 2), torch.tensor([0, 2, 1, 2]))
    assert data_of(dataset).classes == 3
    dataset.classes = ["a", "b", "c", "d", "e"]
    assert data_of(dataset).classes == 5
    assert data_of(TensorDataset(torch.zeros(4, 2), torch.zeros(4))).classes is None


# --- the built-ins -------------------------------------------------------------------------

def test_the_digits_dataset_is_scikit_learns_scaled_to_the_unit_interval():
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    dataset = digits_dataset()

    assert dataset.tensors[0].shape == (1797, 1, 8, 8)
    np.testing.assert_array_equal(dataset.tensors[0].reshape(1797, 64).numpy(), images / 16)
    np.testing.assert_array_equal(dataset.tensors[1].numpy(), labels)


def test_the_built_in_models_fit_the_data_they_are_sized_to():
    assert conv_net((3, 16, 8), 5)(torch.zeros(2, 3, 16, 8)).shape == (2, 5)
    assert mlp_for((2, 3), 4, [5])(torch.zeros(6, 2, 3)).shape == (6, 4)
    with pytest.raises(ConfigError, match=r"model.channels=\[16, 32\] halves the 6x8 inputs"):
        conv_net((1, 6, 8), 2)
    with pytest.raises(ConfigError, match="takes \\(channels, height, width\\) inputs"):
        conv_net((10,), 2)


def test_evaluation_of_batches_without_targets_has_a_loss_and_no_accuracy():
    model = nn.Linear(3, 2)
    batches = [(torch.ones(4, 3), None), (torch.zeros(2, 3), None)]

    loss, accuracy = evaluate_batches(model, batches, lambda out, y: out.pow(2).mean())

    expected = (4 * model(torch.ones(1, 3)).pow(2).mean() + 2 * model(torch.zeros(1, 3)).pow(
        2).mean()).item() / 6
    assert loss == pytest.approx(expected) and math.isnan(accuracy)


def test_class_names_come_from_the_datasets_list_of_them_else_their_indices():
    x, y = torch.zeros(6, 2), torch.tensor([0, 1, 2, 0, 1, 2])

    class Named(TensorDataset):
        classes = ("cat", "dog", "owl")

    class Counted(TensorDataset):
        classes = 3

    assert data_of(Named(x, y)).class_names == ["cat", "dog", "owl"]
    assert data_of(Counted(x, y)).class_names == ["0", "1", "2"]
    assert data_of(TensorDataset(x, y)).class_names == ["0", "1", "2"]
    assert data_of(TensorDataset(x, torch.rand(6))).class_names == []  # regression
