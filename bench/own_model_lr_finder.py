"""Benchmark: the LR range test on the example project's own conv net and data.

Prints a table and writes bench/results/own_model_lr_finder.json. Both ways are measured side
by side in this one run (the machine is shared and noisy; compare within a run):
  - gradkit: `range_test` over `Data.cycled` batches of the split dataset, the validation
    split scored by `evaluate_split` after each step (what `experiment=lr_finder
    model=small_convnet data=stripes` runs);
  - naive: the range test as written by hand around torch DataLoaders (torch-lr-finder's
    way): a DataLoader over the train Subset collating items per batch, restarted when it
    runs out, and the validation Subset evaluated through its own DataLoader after each step.
Same initial weights, same schedule and the same batch order: both draw one permutation per
pass from a generator seeded alike (torch's RandomSampler draws a second, unused one at the
end of each pass, `randperm(n)[:0]`, so with it the orders part after the first pass; the
naive loader here samples one permutation per pass instead). The scored losses are compared
step by step. Timings are the best of several calls after a warm-up call, one torch thread.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from common import PROJECT_ROOT, best_of, save_results
from torch.utils.data import DataLoader, Sampler, Subset

from gradkit.core.components import Choice, Components
from gradkit.core.experiment import RunContext
from gradkit.experiments.lr_finder import (
    LrFinder,
    RangeTest,
    evaluate_split,
    lr_schedule,
    range_test,
)
from gradkit.lib.training import make_optimizer

sys.path.insert(0, str(PROJECT_ROOT / "examples" / "user_project"))

SEED, BATCH, NUM_ITER, SMOOTH_F, DIVERGE_TH = 0, 64, 100, 0.05, 5.0
MODEL = {"_target_": "my_project.models.SmallConvNet", "in_channels": 1, "classes": 4,
         "width": 8}
DATA = {"_target_": "my_project.data.Stripes", "size": 800, "noise": 0.3}



class OnePermutationPerPass(Sampler[int]):
    """A fresh permutation of the indices each pass, drawn from `generator` (one draw a pass,
    as gradkit's batches; RandomSampler makes two)."""

    def __init__(self, size: int, generator: torch.Generator):
        self.size, self.generator = size, generator

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        yield from torch.randperm(self.size, generator=self.generator).tolist()


def naive_range_test(model, optimizer, train: Subset, validation: Subset,
                     schedule: list[float]) -> RangeTest:
    """The range test around DataLoaders, as one writes it by hand (torch-lr-finder's loop)."""
    sampler = OnePermutationPerPass(len(train), torch.Generator().manual_seed(SEED))
    train_loader = DataLoader(train, batch_size=BATCH, sampler=sampler)
    validation_loader = DataLoader(validation, batch_size=BATCH)
    saved = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
    trace, batches = RangeTest(), iter(train_loader)
    for lr in schedule:
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(train_loader)
            x, y = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            total = sum(F.cross_entropy(model(vx), vy).item() * len(vy)
                        for vx, vy in validation_loader)
        value = total / len(validation)
        smoothed = value if not trace.smoothed else (
            SMOOTH_F * value + (1 - SMOOTH_F) * trace.smoothed[-1])
        trace.lrs.append(lr)
        trace.losses.append(value)
        trace.smoothed.append(smoothed)
        if not math.isfinite(smoothed) or smoothed > DIVERGE_TH * min(trace.smoothed):
            trace.diverged = True
            break
    model.load_state_dict(saved[0])
    optimizer.load_state_dict(saved[1])
    return trace


def main() -> None:
    torch.set_num_threads(1)  # on a shared machine two threads contend with other processes
    components = Components(model=Choice("model", "small_convnet", MODEL),
                            data=Choice("data", "stripes", DATA))
    ctx = RunContext(torch.device("cpu"), torch.float32, torch.Generator().manual_seed(SEED),
                     Path("."), logging.getLogger("bench"), components=components)
    experiment = LrFinder(num_iter=NUM_ITER, batch_size=BATCH)
    experiment.prepare(ctx)
    workload = experiment.workload
    initial = workload.new_model()
    optimizer = make_optimizer("sgd", initial.parameters(), 1e-7)
    schedule = lr_schedule(1e-7, 10.0, NUM_ITER)
    source = workload.data.parts["train"].source  # the Stripes dataset gradkit split by seed
    train, validation = (Subset(source, workload.data.parts[split].indices.tolist())
                         for split in ("train", "validation"))

    def gradkit_way() -> RangeTest:
        loader = workload.data.cycled("train", BATCH, NUM_ITER,
                                      torch.Generator().manual_seed(SEED))
        return range_test(initial, optimizer, loader, schedule, SMOOTH_F, DIVERGE_TH,
                          lambda m: evaluate_split(m, workload, "validation")[0],
                          workload.loss_of)

    def naive_way() -> RangeTest:
        return naive_range_test(initial, optimizer, train, validation, schedule)

    ours, theirs = gradkit_way(), naive_way()
    steps = min(len(ours.lrs), len(theirs.lrs))
    gap = max(abs(a - b) / abs(b) for a, b in zip(ours.losses[:steps], theirs.losses[:steps],
                                                   strict=True))
    gradkit_s, naive_s = best_of(gradkit_way, 3), best_of(naive_way, 3)
    results = {"cpus": os.cpu_count(), "threads": 1, "num_iter": NUM_ITER, "batch_size": BATCH,
               "train_size": len(train), "validation_size": len(validation),
               "gradkit_s": gradkit_s, "naive_dataloader_s": naive_s,
               "naive_over_gradkit": naive_s / gradkit_s,
               "steps": [len(ours.lrs), len(theirs.lrs)],
               "same_lrs": ours.lrs == theirs.lrs,
               "largest_relative_loss_gap": gap}
    save_results("own_model_lr_finder", results)
    print(f"LR range test, SmallConvNet on Stripes ({len(train)} train / {len(validation)} "
          f"validation), {NUM_ITER} steps of batch {BATCH}, 1 torch thread, best of 3")
    print(f"  gradkit (Data.cycled + evaluate_split): {gradkit_s:.3f} s")
    print(f"  naive (DataLoaders, validation loader each step): {naive_s:.3f} s "
          f"(x{naive_s / gradkit_s:.2f} of gradkit)")
    print(f"  same curve: steps {len(ours.lrs)} / {len(theirs.lrs)}, lrs identical "
          f"{ours.lrs == theirs.lrs}, largest relative gap of the scored losses {gap:.2g}")


if __name__ == "__main__":
    main()
