"""Benchmarks for the applications on the digits: the weight cache, batched attacks, threads.

Prints a table and writes bench/results/applications.json. Everything is measured in this one
run, side by side, so the ratios hold even on a noisy shared machine:
  - training vs cache: the default CNN trained (a cache miss) against read back (a hit)
  - attack, batched vs per image: PGD (10 steps, no random start) on the 360 test images as
    one batch against one image at a time, as the notebook attacks its single image
  - threads: a default adversarial run (cached model) with 1 and with 2 intra-op threads
  - end to end: `gradkit run experiment=adversarial` into a new store (trains), the
    same command again (cached), and `experiment=lr_finder`
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import PROJECT_ROOT, save_results

from gradkit.core.experiment import RunContext
from gradkit.experiments.adversarial import Adversarial, pgd, training_components
from gradkit.lib.training import TrainSpec, trained_classifier
from gradkit.plotting import discard

REPEATS = 3


def best_of(action, repeats: int = REPEATS) -> float:
    """The fastest of `repeats` timings (the least disturbed by other processes)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=PROJECT_ROOT,
                   env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    return time.perf_counter() - start


def context(folder: Path, cache_dir: Path | None) -> RunContext:
    return RunContext(torch.device("cpu"), torch.float32, torch.Generator().manual_seed(42),
                      folder, logging.getLogger("bench"), cache_dir=cache_dir)


def default_run(folder: Path, cache_dir: Path, unpinned: bool = False) -> None:
    """A default adversarial run; `unpinned` skips its one-thread pin (keeps torch's count)."""
    run = Adversarial.run.__wrapped__ if unpinned else Adversarial.run
    for fig in run(Adversarial(), context(folder, cache_dir)).figures.values():
        discard(fig)


def main() -> None:
    torch.set_num_threads(1)
    defaults = Adversarial()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ctx = context(tmp, None)
        defaults.prepare(ctx)
        workload = defaults.workload
        spec = TrainSpec(training_components(ctx, defaults.test_fraction), defaults.epochs,
                         defaults.batch_size, defaults.learning_rate, "adam", 42,
                         str(torch.float32), "cpu")
        trained_classifier(spec, workload, None)  # warm-up: first-call costs
        train_s = best_of(lambda: trained_classifier(spec, workload, None))
        trained_classifier(spec, workload, tmp / "cache")  # writes the entry
        hit_s = best_of(lambda: trained_classifier(spec, workload, tmp / "cache"))

        model, _ = trained_classifier(spec, workload, tmp / "cache")
        model.requires_grad_(False)
        x, y = workload.data.tensors("test")
        batched_s = best_of(lambda: pgd(model, x, y, 0.1, 0.025, 10, random_start=False))
        per_image_s = best_of(lambda: [pgd(model, x[i:i + 1], y[i:i + 1], 0.1, 0.025, 10,
                                           random_start=False) for i in range(len(x))], 1)
        batched = pgd(model, x, y, 0.1, 0.025, 10, random_start=False)
        per_image = torch.cat([pgd(model, x[i:i + 1], y[i:i + 1], 0.1, 0.025, 10,
                                   random_start=False) for i in range(len(x))])
        differing = int((batched != per_image).flatten(1).any(dim=1).sum())

        threads = {}
        for count in (1, 2):
            torch.set_num_threads(count)
            threads[count] = best_of(lambda: default_run(tmp, tmp / "cache", unpinned=True))
        torch.set_num_threads(1)

        python = [sys.executable, "-m", "gradkit", "run"]
        wall([sys.executable, "-c", "from gradkit.tracking.store import Tracker; "
              "Tracker.from_config("
              f"{{'kind': 'local', 'root': '{tmp / 'store'}'}}).client.search_experiments()"])
        cli = [f"tracking.root={tmp / 'store'}", f"hydra.run.dir={tmp / 'run'}"]
        first_s = wall([*python, "experiment=adversarial", *cli])
        cached_s = wall([*python, "experiment=adversarial", *cli])
        lr_finder_s = wall([*python, "experiment=lr_finder", *cli])
        startup_s = wall([sys.executable, "-c", "import gradkit.cli.run"])

    results = {
        "cpus": os.cpu_count(), "torch": torch.__version__,
        "train_default_cnn_s": train_s, "cache_hit_s": hit_s, "cache_speedup": train_s / hit_s,
        "pgd_batched_s": batched_s, "pgd_per_image_s": per_image_s,
        "pgd_batched_speedup": per_image_s / batched_s, "pgd_images_differing": differing,
        "adversarial_run_1_thread_s": threads[1], "adversarial_run_2_threads_s": threads[2],
        "cli_adversarial_first_s": first_s, "cli_adversarial_cached_s": cached_s,
        "cli_lr_finder_s": lr_finder_s, "process_startup_s": startup_s,
    }
    save_results("applications", results)
    print(f"applications on the digits ({os.cpu_count()} CPUs, best of {REPEATS})")
    print(f"  train the default CNN (cache miss)      {train_s:7.3f} s")
    print(f"  read it from the cache (hit)            {hit_s:7.3f} s  (x{train_s / hit_s:.0f})")
    print(f"  PGD-10 on 360 test images, one batch    {batched_s:7.3f} s")
    print(f"  PGD-10, one image at a time             {per_image_s:7.3f} s  "
          f"(x{per_image_s / batched_s:.0f}; {differing} images differ)")
    print(f"  adversarial run body, 1 thread          {threads[1]:7.3f} s")
    print(f"  adversarial run body, 2 threads         {threads[2]:7.3f} s")
    print(f"  CLI adversarial, new store (trains)     {first_s:7.2f} s")
    print(f"  CLI adversarial, cached model           {cached_s:7.2f} s")
    print(f"  CLI lr_finder                           {lr_finder_s:7.2f} s")
    print(f"  process startup (imports)               {startup_s:7.2f} s")


if __name__ == "__main__":
    main()
