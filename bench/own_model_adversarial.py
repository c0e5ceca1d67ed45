"""Benchmark: PGD on the example project's own conv net and data, batched against one example
at a time.

Prints a table and writes bench/results/own_model_adversarial.json. The example project's
`SmallConvNet` (conv + BatchNorm, functional ReLU) is trained on its `Stripes` (800 images
16x16, split 0.2 / 0.2 by the seed: 160 test images) through gradkit's `model=` / `data=`
choices, then PGD-10 (L-infinity, epsilon 0.1, no random start, so both ways attack the same
points) runs over the test split
  - batched, as `experiment=adversarial` does: batches of `attack_batch_size` (512: one batch)
    and of 32,
  - the naive way: one example at a time, as the notebook attacks its single image,
side by side in this one run (the machine is shared and noisy; compare within a run), with the
largest difference between the adversarial examples the two ways give. Timings are the best of
several calls after a warm-up call, with one torch thread.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import PROJECT_ROOT, best_of, save_results

USER_PROJECT = PROJECT_ROOT / "examples" / "user_project"
sys.path.insert(0, str(USER_PROJECT))  # the project's package, as when gradkit runs in it

from gradkit.core.components import Choice, Components  # noqa: E402
from gradkit.core.experiment import RunContext  # noqa: E402
from gradkit.experiments.adversarial import Adversarial, pgd, training_components  # noqa: E402
from gradkit.lib.training import TrainSpec, trained_classifier  # noqa: E402

EPSILON, ALPHA, STEPS = 0.1, 0.025, 10
REPEATS = 3
SAME_TOLERANCE = 1e-6  # inputs in [0, 1]: float32 rounding of a few steps


def project_context(folder: Path) -> RunContext:
    """A float32 CPU context seeded with 42 choosing the project's model and data."""
    model = Choice("model", "small_convnet", {"_target_": "my_project.models.SmallConvNet",
                                              "in_channels": 1, "classes": 4, "width": 8})
    data = Choice("data", "stripes", {"_target_": "my_project.data.Stripes", "size": 800,
                                      "noise": 0.3})
    return RunContext(torch.device("cpu"), torch.float32, torch.Generator().manual_seed(42),
                      folder, logging.getLogger("bench"),
                      components=Components(model=model, data=data))


def batched(model, workload, batch_size: int) -> torch.Tensor:
    return torch.cat([pgd(model, x, y, EPSILON, ALPHA, STEPS, random_start=False)
                      for x, y in workload.data.batches("test", batch_size)])


def one_at_a_time(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.cat([pgd(model, x[i:i + 1], y[i:i + 1], EPSILON, ALPHA, STEPS,
                          random_start=False) for i in range(len(x))])


def main() -> None:
    torch.set_num_threads(1)  # on a shared machine two threads contend with other processes
    experiment = Adversarial(epochs=5)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = project_context(Path(tmp))
        experiment.prepare(ctx)
        workload = experiment.workload
        spec = TrainSpec(training_components(ctx, experiment.test_fraction), experiment.epochs,
                         experiment.batch_size, experiment.learning_rate, "adam", 42,
                         str(torch.float32), "cpu")
        start = time.perf_counter()
        model, _ = trained_classifier(spec, workload, None)
        train_s = time.perf_counter() - start
    model.requires_grad_(False)
    x, y = workload.data.tensors("test")
    sizes = (experiment.attack_batch_size, 32)
    batched_s = {size: best_of(lambda size=size: batched(model, workload, size))
                 for size in sizes}
    naive_s = best_of(lambda: one_at_a_time(model, x, y), 1)
    naive = one_at_a_time(model, x, y)
    difference = {size: (batched(model, workload, size) - naive).abs().max().item()
                  for size in sizes}
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
        robust = (model(naive).argmax(1) == y).float().mean().item()

    results = {
        "cpus": os.cpu_count(), "torch": torch.__version__, "threads": 1,
        **ctx.components.names,
        "test_images": len(x), "train_s": train_s, "clean_accuracy": accuracy,
        "robust_accuracy": robust, "pgd_naive_s": naive_s,
        **{f"pgd_batched_{size}_s": batched_s[size] for size in sizes},
        **{f"speedup_batched_{size}": naive_s / batched_s[size] for size in sizes},
        **{f"max_difference_batched_{size}": difference[size] for size in sizes},
        "same_adversarial_examples": all(d <= SAME_TOLERANCE for d in difference.values()),
    }
    save_results("own_model_adversarial", results)
    print(f"PGD-{STEPS} (L-inf, epsilon {EPSILON}) on SmallConvNet x Stripes, {len(x)} test "
          f"images ({os.cpu_count()} CPUs, 1 torch thread, best of {REPEATS})")
    print(f"  trained 5 epochs in {train_s:.2f} s: clean accuracy {accuracy:.3f}, robust "
          f"{robust:.3f}")
    print(f"  one example at a time (naive)   {naive_s:7.3f} s")
    for size in sizes:
        print(f"  batched, batches of {size:<4d}       {batched_s[size]:7.3f} s  "
              f"(x{naive_s / batched_s[size]:.1f}; max |difference| {difference[size]:.2g})")
    print(f"  same adversarial examples (within {SAME_TOLERANCE:g}): "
          f"{results['same_adversarial_examples']}")


if __name__ == "__main__":
    main()
