"""The weight cache: keys, hits and misses, atomic writes, concurrent builders, and the trained
classifier read back bit for bit."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gradkit import cache
from gradkit.cache import cached, entry_key
from gradkit.data import digits
from gradkit.experiment import RunContext
from gradkit.training import TrainSpec, trained_classifier

SPEC = {"model": "mlp", "epochs": 2, "seed": 0}


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


# A process that asks for the same entry as its siblings at the same moment; it imports only
# the cache module, so it starts quickly.
BUILDER = """
import sys, time
from pathlib import Path
import torch
from gradkit.cache import cached
folder, log, start = sys.argv[1], sys.argv[2], float(sys.argv[3])

def build():
    with open(log, "a") as handle:
        handle.write("built\\n")
    time.sleep(0.5)
    return {"w": torch.arange(6.0) * 7}

time.sleep(max(0.0, start - time.time()))
entry = cached(Path(folder), {"model": "mlp", "epochs": 2, "seed": 0}, build)
print(entry.status, entry.payload["w"].tolist())
"""


def test_concurrent_processes_build_once_and_read_the_same_entry(tmp_path):
    log, folder = tmp_path / "builds.log", tmp_path / "cache"
    start = time.time() + 2.5  # after both have imported torch
    workers = [subprocess.Popen([sys.executable, "-c", BUILDER, str(folder), str(log),
                                 str(start)], stdout=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = [worker.communicate(timeout=60)[0].split(" ", 1) for worker in workers]

    assert all(worker.returncode == 0 for worker in workers)
    assert log.read_text() == "built\n"
    assert sorted(status for status, _ in outputs) == ["hit", "miss"]
    assert all(weights.strip() == "[0.0, 7.0, 14.0, 21.0, 28.0, 35.0]" for _, weights in outputs)
    assert leftovers(folder) == [f"{entry_key(SPEC)}.pt"]


# --- the trained classifier ------------------------------------------------------------------

def context(tmp_path: Path) -> RunContext:
    return RunContext(torch.device("cpu"), torch.float32, torch.Generator().manual_seed(5),
                      tmp_path, logging.getLogger("test"), cache_dir=tmp_path / "cache")


def test_cached_classifier_equals_a_fresh_training_bit_for_bit(tmp_path):
    ctx = context(tmp_path)
    data = digits(0)
    spec = TrainSpec("mlp", 1, 64, 1e-2, "adam", 0.2, 0, "torch.float32", "cpu")

    trained, miss = trained_classifier(spec, data, ctx)
    read, hit = trained_classifier(spec, data, ctx)
    retrained, off = trained_classifier(spec, data, ctx, use_cache=False)
    other, _ = trained_classifier(TrainSpec(**{**spec.__dict__, "epochs": 2}), data, ctx)

    assert (miss.status, hit.status, off.status) == ("miss", "hit", "off")
    assert miss.key == hit.key == off.key
    for name, tensor in trained.state_dict().items():
        assert torch.equal(tensor, read.state_dict()[name])
        assert torch.equal(tensor, retrained.state_dict()[name])
    assert any(not torch.equal(t, other.state_dict()[n]) for n, t in trained.state_dict().items())
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2
    assert len(miss.payload["epoch_loss"]) == 1
