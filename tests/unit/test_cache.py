"""The weight cache: keys, hits and misses, atomic writes, concurrent builders, and the trained
classifier read back bit for bit."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from gradkit.core.components import Choice, Components
from gradkit.core.experiment import RunContext
from gradkit.lib import cache, models
from gradkit.lib.cache import cached, entry_key
from gradkit.lib.data import digits
from gradkit.lib.models import conv_net
from gradkit.lib.training import TrainSpec, trained_classifier

SPEC = {"model": "mlp", "epochs": 2, "seed": 0}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread


def payload() -> dict:
    return {"state": {"w": torch.randn(4, 3, dtype=torch.float64)}, "losses": [1.0, 0.5]}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix != ".lock")


def test_key_follows_every_field_and_the_torch_version(monkeypatch):
    assert entry_key(SPEC) == entry_key(dict(reversed(SPEC.items())))
    keys = {entry_key(SPEC), entry_key({**SPEC, "epochs": 3}), entry_key({**SPEC, "seed": 1}),
            entry_key({**SPEC, "model": "cnn"}), entry_key({**SPEC, "extra": None})}
    assert len(keys) == 5
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert entry_key(SPEC) not in keys


def test_miss_writes_and_hit_reads_the_same_bits(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return payload()

    first = cached(tmp_path, SPEC, build)
    second = cached(tmp_path, SPEC, build)

    assert (first.status, second.status, len(calls)) == ("miss", "hit", 1)
    assert first.key == second.key == entry_key(SPEC)
    assert torch.equal(first.payload["state"]["w"], second.payload["state"]["w"])
    assert first.payload["state"]["w"].dtype == torch.float64
    assert second.payload["losses"] == [1.0, 0.5]
    assert leftovers(tmp_path) == [f"{first.key}.pt"]
    assert cached(tmp_path, {**SPEC, "seed": 1}, build).status == "miss"
    assert len(calls) == 2


def test_no_folder_always_builds_and_writes_nothing(tmp_path):
    entries = [cached(None, SPEC, payload) for _ in range(2)]

    assert [e.status for e in entries] == ["off", "off"]
    assert not torch.equal(entries[0].payload["state"]["w"], entries[1].payload["state"]["w"])
    assert list(tmp_path.iterdir()) == []


def test_a_failed_build_or_write_leaves_no_entry(tmp_path, monkeypatch):
    def broken():
        raise RuntimeError("training crashed")

    with pytest.raises(RuntimeError, match="training crashed"):
        cached(tmp_path, SPEC, broken)
    assert leftovers(tmp_path) == []

    def half_write(content, file):
        file.write(b"half an entry")
        raise OSError("disk full")

    monkeypatch.setattr(cache.torch, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        cached(tmp_path, SPEC, payload)
    assert leftovers(tmp_path) == []  # the temporary file is gone, no entry appeared
    monkeypatch.undo()
    assert cached(tmp_path, SPEC, payload).status == "miss"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "another spec",
                                    "no payload"])
def test_a_damaged_entry_is_named_rebuilt_and_replaced(damage, tmp_path, caplog):
    first = cached(tmp_path, SPEC, payload)
    path = tmp_path / f"{first.key}.pt"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a torch file" * 50)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "another spec":
        torch.save({"spec": {**SPEC, "seed": 9}, "payload": payload()}, path)
    else:
        torch.save({"spec": SPEC, "weights": [1.0]}, path)

    with caplog.at_level(logging.WARNING, logger="gradkit.lib.cache"):
        rebuilt = cached(tmp_path, SPEC, payload)
    again = cached(tmp_path, SPEC, payload)

    assert rebuilt.status == "replaced" and again.status == "hit"
    assert torch.equal(again.payload["state"]["w"], rebuilt.payload["state"]["w"])
    [warning] = caplog.records
    assert str(path) in warning.getMessage() and "building it again" in warning.getMessage()
    assert leftovers(tmp_path) == [path.name]


def test_concurrent_builders_build_once_and_read_the_same_entry(tmp_path):
    """Threads open the lock file separately, so flock serialises them as it does processes
    (the joblib smoke sweep in test_adversarial covers real worker processes)."""
    builds, barrier = [], threading.Barrier(3)

    def build():
        builds.append(1)
        time.sleep(0.3)
        return {"w": torch.arange(6.0) * 7}

    def worker():
        barrier.wait()
        return cached(tmp_path, SPEC, build)

    with ThreadPoolExecutor(3) as pool:
        entries = list(pool.map(lambda _: worker(), range(3)))

    assert len(builds) == 1
    assert sorted(e.status for e in entries) == ["hit", "hit", "miss"]
    assert all(torch.equal(e.payload["w"], torch.arange(6.0) * 7) for e in entries)
    assert leftovers(tmp_path) == [f"{entry_key(SPEC)}.pt"]


def context(tmp_path: Path, **groups: dict) -> RunContext:
    """A context seeded with 5 choosing `groups` ({"model": {"_target_": ...}})."""
    chosen = {key: Choice(key, config["_target_"].rpartition(".")[2], config)
              for key, config in groups.items()}
    return RunContext(torch.device("cpu"), torch.float32, torch.Generator().manual_seed(5),
                      tmp_path, logging.getLogger("test"), cache_dir=tmp_path / "cache",
                      components=Components(**chosen))


def own_digits() -> dict[str, TensorDataset]:
    split = digits(0)
    return {"train": TensorDataset(split.train_x, split.train_y),
            "test": TensorDataset(split.test_x, split.test_y)}


def own_cnn(input_shape, outputs):
    return conv_net(input_shape, outputs, generator=torch.Generator().manual_seed(0))


def trained(ctx: RunContext, epochs: int = 1, use_cache: bool = True):
    """The context's classifier trained (or read) with a spec keyed by its components."""
    workload = ctx.components.resolve(ctx, own_digits, own_cnn, task="classification")
    configs = {key: getattr(ctx.components, key).config for key in ("model", "data", "loss")}
    spec = TrainSpec(configs, epochs, 128, 1e-2, "adam", 0, "torch.float32", "cpu")
    return trained_classifier(spec, workload, ctx.cache_dir if use_cache else None)


MLP = {"_target_": "gradkit.lib.models.mlp_for", "hidden": [16]}


def test_cached_classifier_equals_a_fresh_training_bit_for_bit(tmp_path):
    ctx = context(tmp_path, model=MLP)

    model, miss = trained(ctx)
    read, hit = trained(ctx)
    retrained, off = trained(ctx, use_cache=False)
    other, _ = trained(ctx, epochs=2)

    assert (miss.status, hit.status, off.status) == ("miss", "hit", "off")
    assert miss.key == hit.key == off.key
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, read.state_dict()[name])
        assert torch.equal(tensor, retrained.state_dict()[name])
    assert any(not torch.equal(t, other.state_dict()[n]) for n, t in model.state_dict().items())
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2
    assert len(miss.payload["epoch_loss"]) == 1


def test_another_model_or_data_never_reads_anothers_weights(tmp_path):
    """Same architecture (repr) but another init, or the same model on other data: each its
    own entry, trained afresh."""
    kaiming = {**MLP, "init": "kaiming_normal"}
    digits_data = {"_target_": "gradkit.lib.data.digits_dataset"}
    runs = [trained(context(tmp_path, **groups)) for groups in (
        {"model": MLP}, {"model": kaiming}, {"model": MLP, "data": digits_data}, {})]

    assert [entry.status for _, entry in runs] == ["miss"] * 4
    assert len({entry.key for _, entry in runs}) == 4
    assert repr(runs[0][0]) == repr(runs[1][0])  # the repr alone would not tell them apart
    first, kaiming_model = runs[0][0].state_dict(), runs[1][0].state_dict()
    assert any(not torch.equal(t, kaiming_model[n]) for n, t in first.items())


def test_a_changed_architecture_under_the_same_config_trains_afresh(tmp_path, monkeypatch):
    """The model's repr is in the key: a model whose code changed (one more layer) under an
    unchanged config never reads the old weights."""
    ctx = context(tmp_path, model=MLP)
    _, before = trained(ctx)
    original = models.mlp_for

    def deeper_mlp(input_shape, outputs, hidden=(64,)):
        return nn.Sequential(original(input_shape, outputs, hidden), nn.Identity())

    monkeypatch.setattr(models, "mlp_for", deeper_mlp)

    deeper, after = trained(ctx)

    assert isinstance(deeper[-1], nn.Identity)
    assert (before.status, after.status) == ("miss", "miss")
    assert before.key != after.key


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cached_digits_split_equals_scikit_learns_bit_for_bit(tmp_path, dtype):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=0.25, stratify=labels, random_state=3)
    built = digits(3, 0.25, dtype, tmp_path)
    read = digits(3, 0.25, dtype, tmp_path)

    for data in (built, read):
        assert torch.equal(data.train_x, torch.as_tensor(train_x / 16, dtype=dtype)
                           .reshape(-1, 1, 8, 8))
        assert torch.equal(data.test_x, torch.as_tensor(test_x / 16, dtype=dtype)
                           .reshape(-1, 1, 8, 8))
        assert data.train_y.tolist() == train_y.tolist()
        assert data.test_y.tolist() == test_y.tolist()
    assert len(list(tmp_path.glob("*.pt"))) == 1  # the second call read the first one's entry
    assert digits(4, 0.25, dtype, tmp_path).test_y.tolist() != test_y.tolist()
