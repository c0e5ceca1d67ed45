"""Checks of experiment parameters that fail early with one line naming the key."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any


class ConfigError(ValueError):
    """A parameter value that cannot be used; the message names the key and what is allowed."""


def number(key: str, value: Any, *, positive: bool = False, minimum: float | None = None,
           maximum: float | None = None) -> float:
    """`value` as a finite float, optionally bounded."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}={value!r} is not a number")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{key}={value} must be finite")
    if positive and value <= 0:
        raise ConfigError(f"{key}={value} must be > 0")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key}={value} must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{key}={value} must be <= {maximum}")
    return value


def integer(key: str, value: Any, *, minimum: int = 0) -> int:
    """`value` as an int of at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value!r} is not an integer")
    if value < minimum:
        raise ConfigError(f"{key}={value} must be >= {minimum}")
    return value


def vector(key: str, value: Any, dim: int) -> tuple[float, ...]:
    """`value` as a point of exactly `dim` finite coordinates."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence | Iterable):
        raise ConfigError(f"{key}={value!r} must be a list of {dim} numbers, e.g. [1.0, 2.0]")
    values = list(value)
    if len(values) != dim:
        raise ConfigError(f"{key}={values} has {len(values)} values; it must have {dim}")
    return tuple(number(f"{key}[{i}]", v) for i, v in enumerate(values))


def boolean(key: str, value: Any) -> bool:
    """`value` if it is a boolean (true or false, unquoted, on the command line)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be true or false")
    return value


def choice(key: str, value: Any, allowed: Iterable[str]) -> str:
    """`value` if it is one of `allowed`."""
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")
    return value


def representable(key: str, value: Any, **quantities: float) -> None:
    """Refuse `value` of `key` when a quantity computed from it overflows float64."""
    overflowing = [name for name, q in quantities.items() if not math.isfinite(q)]
    if overflowing:
        verb = "overflows" if len(overflowing) == 1 else "overflow"
        raise ConfigError(f"{key}={value}: {' and '.join(overflowing)} {verb} float64 there; "
                          "choose values of smaller magnitude")
