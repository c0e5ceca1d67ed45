"""gradkit: gradient computation experiments, configured by Hydra and tracked by MLflow."""

from importlib.metadata import version

__version__ = version("gradkit")
