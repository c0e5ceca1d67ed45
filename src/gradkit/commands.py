"""Command lines of the store tools (report, reproduce): Hydra overrides, one-line errors;
and how every command's process ends."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gradkit import PROJECT_ROOT
from gradkit.validation import ConfigError

CONF_DIR = PROJECT_ROOT / "conf"


def run_command(main: Callable[[], None]) -> None:
    """Run a command's `main` as its process's last work, then freeze what is left for the
    garbage collector: the interpreter's final collections would take 0.5-1 s more to exit."""
    try:
        main()
    finally:
        gc.freeze()


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    """Primary config `name` of conf/ with `overrides`; a bad one raises a one-line ConfigError."""
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as error:
        lines = [line.strip() for line in str(error).split("Config search path")[0].splitlines()
                 if line.strip() and not line.strip().startswith("To append")]
        raise ConfigError(f"{' '.join(lines)} (conf/{name}.yaml has no such key or option)"
                          ) from None


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `gradkit: message` on stderr and exit with `code`."""
    print(f"gradkit: {message}", file=sys.stderr)
    raise SystemExit(code)


def plain(value: Any) -> Any:
    """A config node as plain Python (lists and dicts), other values as they are."""
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
