"""Seeding, determinism and the environment fingerprint a run records."""

from __future__ import annotations

import functools
import platform
import random
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

from gradkit import __version__

PACKAGES = ("torch", "numpy", "hydra-core", "omegaconf", "mlflow", "matplotlib")


def seed_everything(seed: int, deterministic: bool = False) -> torch.Generator:
    """Seed python, numpy and torch; return a torch Generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.are_deterministic_algorithms_enabled() != deterministic:  # the call costs ~1 s
        torch.use_deterministic_algorithms(deterministic)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def _git(where: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True,
                              timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


@functools.cache
def fingerprint(where: Path) -> dict[str, str]:
    """What makes a run reproducible, as MLflow tags: the git commit and dirty flag of the
    project in `where` (the directory the command runs in), gradkit's and the main packages'
    versions, python and platform."""
    tags = {"python": platform.python_version(), "platform": platform.platform(),
            "version.gradkit": __version__}
    commit = _git(where, "rev-parse", "HEAD")
    tags["git_commit"] = commit or "unknown"
    if commit:
        tags["git_dirty"] = str(bool(_git(where, "status", "--porcelain",
                                          "--untracked-files=no")))
    for package in PACKAGES:
        try:
            tags[f"version.{package}"] = version(package)
        except PackageNotFoundError:
            tags[f"version.{package}"] = "not installed"
    return tags
