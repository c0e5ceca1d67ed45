"""gradkit: gradient computation experiments, configured by Hydra and tracked by MLflow."""

__version__ = "0.1.0"
