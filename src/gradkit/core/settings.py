"""The global config keys, checked before any work, and the RunContext built from them."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gradkit.core.components import Components
from gradkit.core.experiment import RunContext
from gradkit.core.reproducibility import seed_everything
from gradkit.core.validation import ConfigError, boolean, choice, integer

DTYPES = {"float32": torch.float32, "float64": torch.float64}
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
MAX_DPI = 1000


@dataclass(frozen=True)
class Settings:
    """Every global key of a job, validated."""

    device: torch.device
    dtype: str
    threads: int | str
    seed: int
    deterministic: bool
    dpi: int
    figures: bool
    max_series_points: int


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


def read_settings(cfg: Any) -> Settings:
    """The global keys of `cfg`, each checked; a bad one raises a ConfigError naming it."""
    seed = integer("seed", cfg.seed)
    if seed > MAX_SEED:
        raise ConfigError(f"seed={seed} must be <= {MAX_SEED}")
    dpi = integer("plotting.dpi", cfg.plotting.dpi, minimum=1)
    if dpi > MAX_DPI:
        raise ConfigError(f"plotting.dpi={dpi} must be <= {MAX_DPI}")
    return Settings(
        device=resolve_device(str(cfg.device)),
        dtype=choice("dtype", cfg.dtype, DTYPES),
        threads=cfg.threads if cfg.threads == "auto" else resolve_threads(cfg.threads, None),
        seed=seed,
        deterministic=boolean("deterministic", cfg.deterministic),
        dpi=dpi,
        figures=boolean("plotting.figures", cfg.plotting.figures),
        max_series_points=integer("tracking.max_series_points", cfg.tracking.max_series_points),
    )


def build_context(settings: Settings, output_dir: Path, parallel_jobs: int | None = None,
                  cache_dir: Path | None = None,
                  components: Components | None = None) -> RunContext:
    """Seed everything, set the torch threads and return the run's context."""
    threads = resolve_threads(settings.threads, parallel_jobs)
    torch.set_num_threads(threads)
    generator = seed_everything(settings.seed, settings.deterministic)
    return RunContext(device=settings.device, dtype=DTYPES[settings.dtype], generator=generator,
                      output_dir=output_dir, log=logging.getLogger("gradkit"), threads=threads,
                      cache_dir=cache_dir, components=components or Components())
