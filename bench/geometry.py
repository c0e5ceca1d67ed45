"""Benchmarks: optimization geometry (landscape gradients, Hessians, loss curvature).

Prints a table and writes bench/results/geometry.json. Every ratio is measured side by side in
this one run (the machine is shared and noisy; compare within a run, not across runs):
  - landscape: the notebook's per-point backward loop against one batched backward on a
    100 x 100 grid, for Rosenbrock and Himmelblau; the batched call on a 1000 x 1000 grid
    with the run's torch threads and with one thread
  - hessian:   row-by-row double backward, torch.func.hessian and
    torch.autograd.functional.hessian(vectorize=True) at dim 2 and dim 200 (quadratic);
    the fastest at each size and the default method's ratio to it
  - loss_curvature: top eigenvalues by Lanczos (Hessian-vector products) against building
    the full Hessian and its eigenvalues, for two MLP widths
Timings are the best of several calls after a warm-up call (first-call costs are start-up),
with one torch thread (on a shared machine a second thread waits on other processes and the
timings scatter tenfold); the 1000 x 1000 call is also timed with the default thread count.
"""

from __future__ import annotations

import os
import time

import torch
from common import best_of, save_results

from gradkit.experiments.hessian import random_spd
from gradkit.experiments.landscape import grid
from gradkit.experiments.loss_curvature import INPUT_DIM, flat_loss
from gradkit.lib.curvature import lanczos
from gradkit.lib.data import regression_batch
from gradkit.lib.derivatives import (
    HESSIANS,
    batched_gradient,
    default_hessian_method,
    gradient_per_point,
    hessian_operator,
)
from gradkit.lib.functions import OBJECTIVES, notebook_quadratic, quadratic
from gradkit.lib.models import mlp


def landscape(threads: int) -> dict:
    results = {}
    for name in ("rosenbrock", "himmelblau"):
        fn = OBJECTIVES[name]
        (xr, yr) = fn.window
        small = grid(xr, yr, 100, torch.device("cpu"))
        large = grid(xr, yr, 1000, torch.device("cpu"))
        start = time.perf_counter()
        gradient_per_point(fn.value, small.reshape(-1, 2))
        loop = time.perf_counter() - start
        batched = best_of(lambda fn=fn, small=small: batched_gradient(fn.value, small), 20)
        large_1 = best_of(lambda fn=fn, large=large: batched_gradient(fn.value, large), 5)
        torch.set_num_threads(threads)
        large_s = best_of(lambda fn=fn, large=large: batched_gradient(fn.value, large), 5)
        torch.set_num_threads(1)
        results[name] = {"loop_100x100_s": loop, "batched_100x100_s": batched,
                         "speedup": loop / batched, "batched_1000x1000_s": large_s,
                         "batched_1000x1000_1_thread_s": large_1, "threads": threads}
    return results


def hessians() -> dict:
    generator = torch.Generator().manual_seed(0)
    problems = {2: (notebook_quadratic(), torch.tensor([2.0, 1.0], dtype=torch.float64))}
    problems[200] = (quadratic(random_spd(200, generator),
                               torch.randn(200, generator=generator, dtype=torch.float64), 5.0),
                     torch.randn(200, generator=generator, dtype=torch.float64))
    results = {}
    for dim, (fn, x) in problems.items():
        seconds = {name: best_of(lambda m=method, fn=fn, x=x: m(fn.value, x), 30)
                   for name, method in HESSIANS.items()}
        fastest = min(seconds, key=seconds.get)
        default = default_hessian_method(dim)
        results[f"dim_{dim}"] = {"seconds": seconds, "fastest": fastest, "default": default,
                                 "default_over_fastest": seconds[default] / seconds[fastest]}
    return results


def curvature() -> dict:
    results = {}
    for hidden in ((16, 16), (32, 32)):
        generator = torch.Generator().manual_seed(0)
        model = mlp(INPUT_DIM, hidden, 1, activation="tanh", generator=generator).double()
        x, y = regression_batch(64, INPUT_DIM, 1, generator, dtype=torch.float64)
        loss, theta = flat_loss(model, x, y)
        start = torch.randn(len(theta), generator=generator, dtype=torch.float64)
        lanczos_s = best_of(lambda loss=loss, theta=theta, start=start: lanczos(
            hessian_operator(loss, theta), start, 60), 5)
        full_s = best_of(lambda loss=loss, theta=theta: torch.linalg.eigvalsh(
            torch.func.hessian(loss)(theta)), 5)
        results[f"hidden_{'x'.join(map(str, hidden))}"] = {
            "parameters": len(theta), "lanczos_60_s": lanczos_s, "full_hessian_eigvalsh_s": full_s}
    return results


def main() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared machine two threads contend with other processes
    results = {"cpus": os.cpu_count(), "threads": 1, "landscape": landscape(threads),
               "hessian": hessians(), "loss_curvature": curvature()}
    save_results("geometry", results)
    print(f"geometry benchmarks on {os.cpu_count()} CPUs, 1 torch thread unless said "
          "(best of several calls)")
    for name, r in results["landscape"].items():
        print(f"  landscape {name:10s} 100x100: loop {r['loop_100x100_s']:7.3f} s, batched "
              f"{r['batched_100x100_s'] * 1e3:7.3f} ms  (x{r['speedup']:.0f})")
        print(f"  landscape {name:10s} 1000x1000 batched: {r['batched_1000x1000_s']:.3f} s "
              f"({r['threads']} threads), {r['batched_1000x1000_1_thread_s']:.3f} s (1 thread)")
    for size, r in results["hessian"].items():
        times = ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in r["seconds"].items())
        print(f"  hessian {size:8s} {times}; fastest {r['fastest']}, default {r['default']} "
              f"(x{r['default_over_fastest']:.2f} of fastest)")
    for size, r in results["loss_curvature"].items():
        print(f"  loss curvature {size} ({r['parameters']} parameters): Lanczos 60 HVPs "
              f"{r['lanczos_60_s']:.3f} s, full Hessian + eigvalsh "
              f"{r['full_hessian_eigvalsh_s']:.3f} s")


if __name__ == "__main__":
    main()
