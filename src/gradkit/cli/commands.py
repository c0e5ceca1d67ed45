"""Command lines of the store tools (report, reproduce): Hydra overrides, one-line errors;
and how every command's process ends."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gradkit.core import configs
from gradkit.core.errors import one_line
from gradkit.core.validation import ConfigError
from gradkit.tracking import unclosed


def run_command(main: Callable[[], None]) -> None:
    """Run a command's `main` as its process's last work, then freeze what is left for the
    garbage collector: the interpreter's final collections would take 0.5-1 s more to exit."""
    try:
        main()
    finally:
        gc.freeze()


def say_left_open() -> None:
    """The runs the command could not end (its store stopped answering), as its last line."""
    if left := unclosed.take_left_open():
        print(f"gradkit: {left}", file=sys.stderr)


def compose_config(name: str, overrides: list[str], config_dirs: Sequence[str] = ()
                   ) -> DictConfig:
    """Primary config `name` with `overrides` (and the user's `config_dirs`); a bad one raises a
    one-line ConfigError."""
    try:
        return configs.compose(name, overrides, config_dirs)
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(f"{one_line(str(error))} ({name}.yaml has no such key or option)"
                          ) from None


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `gradkit: message` on stderr and exit with `code`."""
    print(f"gradkit: {message}", file=sys.stderr)
    raise SystemExit(code)


def plain(value: Any) -> Any:
    """A config node as plain Python (lists and dicts), other values as they are."""
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def split_config_dirs(args: list[str]) -> tuple[list[str], list[str]]:
    """`--config-dir DIR` (or `-cd DIR`, `--config-dir=DIR`) taken out of `args`: the
    folders, then the other arguments."""
    dirs, rest, it = [], [], iter(args)
    for arg in it:
        if arg in ("--config-dir", "-cd"):
            value = next(it, None)
            if value is None:
                fail(f"{arg} needs a folder: {arg} DIR", 2)
            dirs.append(value)
        elif arg.startswith("--config-dir="):
            dirs.append(arg.partition("=")[2])
        else:
            rest.append(arg)
    return dirs, rest
