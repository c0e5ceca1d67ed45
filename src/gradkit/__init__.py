"""gradkit: gradient computation experiments, configured by Hydra and tracked by MLflow."""

from pathlib import Path

__version__ = "0.1.0"

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # conf/, mlruns/, outputs/ live here
