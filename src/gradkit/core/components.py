"""What a network demonstration runs on: the `model`, `data` and `loss` config groups.

Each is a `_target_` that Hydra instantiates: an option of the group (gradkit's, or one from
`--config-dir`), or a plain `model._target_=my_package.MyNet`. Left unset, a demonstration
uses its own. gradkit offers a target the keyword arguments it accepts and its config does
not set: `seed` (the run's seed), `split` (then it is called once per split) and, for a model,
`input_shape` and `outputs` (the shape of one input and the classes or target size).
"""

from __future__ import annotations

import importlib
import inspect
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from gradkit.core.validation import ConfigError, number
from gradkit.lib.datasets import SPLITS, Data, Part, is_map_style, split_by_seed

KEYS = ("model", "data", "loss")
OWN = "own"  # the name of a demonstration's own model, data or loss
ModelFactory = Callable[[tuple[int, ...], int], nn.Module]


@dataclass(frozen=True)
class Choice:
    """One chosen component: its key, the name runs show, its config (None: the own one)."""

    key: str
    name: str = OWN
    config: dict[str, Any] | None = None

    @property
    def chosen(self) -> bool:
        return self.config is not None

    def factory(self) -> Any:
        """The class or function its `_target_` names, imported."""
        assert self.config is not None
        target = self.config["_target_"]
        return locate(f"{self.key}._target_", target)

    def accepts(self, argument: str) -> bool:
        """Whether its target takes `argument` and its config leaves it to gradkit."""
        return argument in _parameters(self.factory()) and argument not in self.config

    def build(self, **offered: Any) -> Any:
        """The instantiated target, given the `offered` arguments it accepts and does not set;
        any failure raised as a ConfigError naming the key."""
        self.factory()  # an unimportable target said as such
        target = self.config["_target_"]
        try:
            return hydra.utils.instantiate(
                self.config, _convert_="all",
                **{k: v for k, v in offered.items() if self.accepts(k)})
        except Exception as error:  # Hydra's InstantiationException: say its cause
            error = error.__cause__ or error
            if isinstance(error, ConfigError):
                raise error from None
            raise ConfigError(f"{self.key}={self.name} could not be built "
                              f"({target}): {type(error).__name__}: {error}") from None


@dataclass(frozen=True)
class Components:
    """The run's model, data and loss choices, and how a dataset is split."""

    model: Choice = field(default_factory=lambda: Choice("model"))
    data: Choice = field(default_factory=lambda: Choice("data"))
    loss: Choice = field(default_factory=lambda: Choice("loss"))
    validation: float = 0.2  # shares of a dataset held out, by the seed
    test: float = 0.2

    @classmethod
    def from_config(cls, cfg: DictConfig, choices: dict[str, Any]) -> Components:
        """The components `cfg` chose (`choices`: Hydra's runtime choices of each group)."""
        chosen = {}
        for key in KEYS:
            node = cfg.get(key)
            config = (OmegaConf.to_container(node, resolve=True)
                      if node is not None and node.get("_target_") else None)
            if node is not None and config is None and len(node) > 1:
                raise ConfigError(f"{key} sets {', '.join(k for k in node if k != '_target_')}"
                                  f" but no {key}._target_; choose {key}=<option>")
            name = choices.get(key) or (config["_target_"] if config else OWN)
            chosen[key] = Choice(key, name, config)
        split = cfg.get("split") or {}
        validation = number("split.validation", split.get("validation", 0.2), positive=True,
                            maximum=0.9)  # every chosen dataset has all three splits
        test = number("split.test", split.get("test", 0.2), positive=True, maximum=0.9)
        if validation + test >= 1:
            raise ConfigError(f"split.validation={validation} + split.test={test} must "
                              "leave a train split (sum < 1)")
        return cls(**chosen, validation=validation, test=test)

    @property
    def chosen(self) -> dict[str, Choice]:
        """The components the config chose, by key."""
        return {key: getattr(self, key) for key in KEYS if getattr(self, key).chosen}

    @property
    def names(self) -> dict[str, str]:
        """`{"model": "cnn", "data": "own", "loss": "own"}`: what runs are tagged with."""
        return {key: getattr(self, key).name for key in KEYS}

    def resolve(self, ctx: Any, own_data: Callable[[], Any], own_model: ModelFactory,
                *, task: str | None = None) -> Workload:
        """The run's data, model factory and loss (the chosen ones, else the demonstration's
        own), checked on one batch: refused in one line naming each if they do not fit.
        `task` (`classification` or `regression`) refuses data of the other kind."""
        seed = ctx.generator.initial_seed()
        data = self.load_data(own_data, seed, ctx)
        classes = data.classes
        if task == "classification" and classes is None:
            raise ConfigError(f"data={self.data.name} has no class labels; this demonstration "
                              "needs a classification dataset (e.g. data=digits)")
        if task == "regression" and classes is not None:
            raise ConfigError(f"data={self.data.name} has class labels; this demonstration "
                              "needs a regression dataset (e.g. data=synthetic_regression)")
        inputs, targets = data.first
        outputs = classes if classes is not None else (
            1 if targets is None or targets.dim() < 2 else math.prod(targets.shape[1:]))
        workload = Workload(self, data, own_model, tuple(inputs.shape[1:]), outputs, seed,
                            self.build_loss(classes), ctx.device, ctx.dtype)
        workload.probe()
        return workload

    def load_data(self, own: Callable[[], Any], seed: int, ctx: Any) -> Data:
        """The chosen dataset (else `own()`), split into train, validation and test."""
        if not self.data.chosen:
            return Data(OWN, self._parts(own(), seed), ctx.device, ctx.dtype, ctx.log)
        if self.data.accepts("split"):
            parts = {split: Part(self.data.build(split=split, seed=seed)) for split in SPLITS}
        else:
            parts = self._parts(self.data.build(seed=seed), seed)
        return Data(self.data.name, parts, ctx.device, ctx.dtype, ctx.log)

    def _parts(self, source: Any, seed: int) -> dict[str, Part]:
        if isinstance(source, Mapping):  # a demonstration's own data, already split
            return {split: Part(dataset) for split, dataset in source.items()}
        if is_map_style(source):
            return split_by_seed(self.data.name, source, self.validation, self.test, seed)
        if not hasattr(source, "__iter__"):
            raise ConfigError(f"data={self.data.name} built a {type(source).__name__}; it must "
                              "be a map-style dataset, a DataLoader or an iterable of batches")
        return {split: Part(source) for split in SPLITS}  # a loader without splits: one for all

    def build_loss(self, classes: int | None) -> nn.Module:
        """The chosen loss, else cross-entropy for class labels and MSE otherwise."""
        if self.loss.chosen:
            return self.loss.build()
        return nn.CrossEntropyLoss() if classes is not None else nn.MSELoss()


@dataclass
class Workload:
    """Data, a model factory and a loss that fit together."""

    components: Components
    data: Data
    own_model: ModelFactory
    input_shape: tuple[int, ...]
    outputs: int
    seed: int
    loss: nn.Module
    device: torch.device
    dtype: torch.dtype

    @property
    def classes(self) -> int | None:
        return self.data.classes

    @property
    def class_names(self) -> list[str]:
        return self.data.class_names

    def new_model(self, seed: int | None = None) -> nn.Module:
        """A fresh model on the run's device and dtype, its weights fixed by `seed` (the run's
        by default) whatever was drawn before."""
        seed = self.seed if seed is None else seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            choice = self.components.model
            model = (choice.build(input_shape=self.input_shape, outputs=self.outputs,
                                  seed=seed) if choice.chosen
                     else self.own_model(self.input_shape, self.outputs))
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model={choice.name} built a {type(model).__name__}, not a "
                              "torch.nn.Module")
        return model.to(self.device, self.dtype)

    def loss_of(self, output: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """The loss of a batch (a target-free loss takes the output alone)."""
        return self.loss(output) if target is None else self.loss(output, target)

    def probe(self) -> None:
        """One forward pass and loss on two train items; a misfit raised as one line."""
        names = self.components.names
        inputs, targets = self.data.first
        model = self.new_model().eval()
        with torch.no_grad():
            try:
                output = model(inputs)
            except Exception as error:
                raise ConfigError(
                    f"model={names['model']} fails on data={names['data']} inputs of shape "
                    f"{list(inputs.shape)}: {type(error).__name__}: {_first_line(error)}"
                ) from None
            try:
                with warnings.catch_warnings():  # a broadcast of mismatched shapes is a misfit
                    warnings.simplefilter("error", UserWarning)
                    value = self.loss_of(output, targets)
            except Exception as error:
                shape = None if targets is None else list(targets.shape)
                raise ConfigError(
                    f"model={names['model']} output of shape {list(output.shape)} does not fit "
                    f"loss={names['loss']} with data={names['data']} targets of shape "
                    f"{shape}: {type(error).__name__}: {_first_line(error)}") from None
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise ConfigError(f"loss={names['loss']} must reduce a batch to one number; it "
                              f"gave {type(value).__name__} {getattr(value, 'shape', '')}")


def locate(key: str, target: Any) -> Any:
    """The object the dotted path `target` names (`package.module.Name`), imported; a
    ConfigError naming `key` if it cannot be."""
    if not isinstance(target, str) or not target:
        raise ConfigError(f"{key}={target!r} must be a dotted path, e.g. my_package.MyNet")
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as error:
            if error.name is None or not ".".join(parts[:cut]).startswith(error.name):
                raise ConfigError(f"{key}={target!r} cannot be imported: {error}") from None
            continue
        except Exception as error:
            raise ConfigError(f"{key}={target!r} cannot be imported: "
                              f"{type(error).__name__}: {error}") from None
        try:
            for attribute in parts[cut:]:
                found = getattr(found, attribute)
        except AttributeError:
            break
        return found
    raise ConfigError(f"{key}={target!r} cannot be imported: no module or object of that "
                      "name (is its package installed, or in the folder you run in?)")


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else ""


def _parameters(factory: Any) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(factory).parameters)
    except (TypeError, ValueError):  # a builtin without a signature: offer nothing
        return {}

