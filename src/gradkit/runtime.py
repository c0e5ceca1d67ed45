"""Turn the global config keys (device, dtype, threads, seed) into a RunContext."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from gradkit.experiment import RunContext
from gradkit.reproducibility import PROJECT_ROOT, seed_everything
from gradkit.validation import ConfigError, choice, integer

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str) -> torch.device:
    """The torch device for `name`, refusing one this machine does not have."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here; use device=cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={name!r} is not supported; use cpu, cuda or cuda:N")
    return device


def resolve_threads(threads: int | str, parallel_jobs: int | None) -> int:
    """Torch threads per job: `auto` shares the cores among parallel jobs."""
    if threads == "auto":
        cores = os.cpu_count() or 1
        return max(1, cores // parallel_jobs) if parallel_jobs else torch.get_num_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads={threads!r} must be 'auto' or an integer >= 1")
    return threads


def weights_cache_dir(tracking) -> Path:
    """Where trained weights are cached: `<root>/cache` beside a local store; with a
    server (no root), the project's `mlruns/cache`."""
    root = Path(tracking.get("root") or PROJECT_ROOT / "mlruns").expanduser()
    return (root / "cache").resolve()


def build_context(cfg, output_dir: Path, parallel_jobs: int | None = None,
                  cache_dir: Path | None = None) -> RunContext:
    """Validate the global keys, seed everything and return the run's context."""
    device = resolve_device(str(cfg.device))
    dtype = DTYPES[choice("dtype", cfg.dtype, DTYPES)]
    threads = resolve_threads(cfg.threads, parallel_jobs)
    torch.set_num_threads(threads)
    generator = seed_everything(integer("seed", cfg.seed), bool(cfg.deterministic))
    return RunContext(device=device, dtype=dtype, generator=generator, output_dir=output_dir,
                      log=logging.getLogger("gradkit"), threads=threads, cache_dir=cache_dir)
