"""Benchmark: the top Hessian eigenvalues of a user's own model, two ways, side by side.

The example project's SmallConvNet (conv, batch norm, a functional ReLU; 1332 parameters) on
a batch of its Stripes images, cross-entropy, float64, eval mode (batch norm by its running
statistics):
  - gradkit: Lanczos (full reorthogonalisation) on Hessian-vector products through one
    retained graph of the gradient (`loss_curvature`'s way), never building the Hessian
  - naive:   the full Hessian by torch.autograd.functional.hessian, then eigvalsh
Prints both times, their ratio and the agreement of the top 3 eigenvalues; writes
bench/results/own_model_curvature.json. One torch thread (the machine is shared); Lanczos is
timed as the best of 3 calls after a warm-up, the full Hessian once (it takes seconds, far
above any first-call cost).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import torch
from common import PROJECT_ROOT, save_results

from gradkit.experiments.loss_curvature import flat_loss
from gradkit.lib.curvature import lanczos
from gradkit.lib.derivatives import hessian_operator

sys.path.insert(0, str(PROJECT_ROOT / "examples" / "user_project"))

from my_project.data import Stripes
from my_project.models import SmallConvNet

SEED, BATCH, ITERATIONS, TOP = 42, 64, 40, 3


def seconds(call: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    """The best wall time of `repeats` calls and the last call's value."""
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = call()
        best = min(best, time.perf_counter() - start)
    return best, value


def main() -> None:
    torch.set_num_threads(1)  # on a shared machine two threads contend with other processes
    torch.manual_seed(SEED)
    model = SmallConvNet().double().eval()
    data = Stripes(seed=SEED)
    x, y = data.images[:BATCH].double(), data.labels[:BATCH]
    loss, theta = flat_loss(model, x, y, torch.nn.functional.cross_entropy)
    start = torch.randn(len(theta), generator=torch.Generator().manual_seed(SEED),
                        dtype=torch.float64)

    def by_lanczos() -> torch.Tensor:
        return lanczos(hessian_operator(loss, theta), start, ITERATIONS)[-1].flip(0)[:TOP]

    def by_full_hessian() -> torch.Tensor:
        full = torch.autograd.functional.hessian(loss, theta)
        return torch.linalg.eigvalsh(full).flip(0)[:TOP]

    by_lanczos()  # warm-up
    lanczos_s, top = seconds(by_lanczos, 3)
    full_s, exact = seconds(by_full_hessian, 1)
    relative = ((top - exact).abs() / exact.abs()).tolist()
    results = {"cpus": os.cpu_count(), "threads": 1, "model": "SmallConvNet",
               "parameters": len(theta), "data": f"Stripes, {BATCH} images", "seed": SEED,
               "lanczos_iterations": ITERATIONS, "lanczos_s": lanczos_s,
               "full_hessian_eigvalsh_s": full_s, "ratio": full_s / lanczos_s,
               "top_lanczos": top.tolist(), "top_exact": exact.tolist(),
               "relative_difference": relative}
    save_results("own_model_curvature", results)
    print(f"top {TOP} Hessian eigenvalues of SmallConvNet ({len(theta)} parameters) on {BATCH}"
          f" Stripes images, float64, {os.cpu_count()} CPUs, 1 torch thread")
    print(f"  gradkit: Lanczos, {ITERATIONS} Hessian-vector products: {lanczos_s:.3f} s")
    print(f"  naive:   torch.autograd.functional.hessian + eigvalsh: {full_s:.3f} s")
    print(f"  ratio:   x{full_s / lanczos_s:.1f}")
    for i, (a, b, r) in enumerate(zip(top.tolist(), exact.tolist(), relative, strict=True)):
        print(f"  eigenvalue {i}: Lanczos {a:.12g}, full Hessian {b:.12g} (relative {r:.1e})")


if __name__ == "__main__":
    main()
