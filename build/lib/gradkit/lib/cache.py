"""Trained weights cached on disk, keyed by a hash of everything that determines them.

An entry is `<folder>/<key>.pt`: the spec it was built from and its payload (tensors, lists).
Writes go to a temporary file renamed into place, so a reader never sees half an entry, and a
per-key lock file makes concurrent jobs (joblib workers, processes on one machine) build an
entry once: the others wait and then read it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

KEY_LENGTH = 16


def entry_key(spec: Mapping[str, Any]) -> str:
    """A short hex digest of `spec` (JSON, sorted keys) and the torch version."""
    text = json.dumps({**spec, "torch": str(torch.__version__)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


@dataclass(frozen=True)
class Entry:
    """A payload and where it came from: `hit` (read), `miss` (built, then written), `off`."""

    key: str
    payload: dict[str, Any]
    status: str


def cached(folder: Path | None, spec: Mapping[str, Any],
           build: Callable[[], dict[str, Any]]) -> Entry:
    """The payload for `spec`: read from `folder`, or built by `build()` and written there.

    With `folder=None` the payload is always built and nothing is read or written. Tensors
    come back on the CPU, so a hit and a miss return the same values bit for bit.
    """
    key = entry_key(spec)
    if folder is None:
        return Entry(key, _on_cpu(build()), "off")
    path = folder / f"{key}.pt"
    if path.exists():
        return Entry(key, _read(path), "hit")
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / f"{key}.lock"):
        if path.exists():  # built by another process while this one waited
            return Entry(key, _read(path), "hit")
        payload = _on_cpu(build())
        _write_atomically(path, {"spec": dict(spec), "torch": str(torch.__version__),
                                 "payload": payload})
    return Entry(key, payload, "miss")


def _on_cpu(payload: dict[str, Any]) -> dict[str, Any]:
    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.detach().cpu().clone()
        if isinstance(value, Mapping):
            return {k: move(v) for k, v in value.items()}
        return value

    return move(payload)


def _read(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)["payload"]


def _write_atomically(path: Path, content: dict[str, Any]) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(content, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
