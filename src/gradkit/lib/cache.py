"""Trained weights cached on disk, keyed by a hash of everything that determines them.

An entry is `<folder>/<key>.pt`: the spec it was built from and its payload (tensors, lists).
Writes go to a temporary file renamed into place, so a reader never sees half an entry, and a
per-key lock file makes concurrent jobs (joblib workers, processes on one machine) build an
entry once: the others wait and then read it. An entry that cannot be read (truncated,
garbage, another spec's) is said so in the log, rebuilt and replaced (status `replaced`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

KEY_LENGTH = 16
log = logging.getLogger(__name__)


def entry_key(spec: Mapping[str, Any]) -> str:
    """A short hex digest of `spec` (JSON, sorted keys) and the torch version."""
    text = json.dumps({**spec, "torch": str(torch.__version__)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


@dataclass(frozen=True)
class Entry:
    """A payload and where it came from: `hit` (read), `miss` (built, then written),
    `replaced` (built, over an entry that could not be read), `off` (no cache)."""

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
    seen = _identity(path)
    payload = _read(path, spec)
    if payload is not None:
        return Entry(key, payload, "hit")
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / f"{key}.lock"):
        if _identity(path) != seen:  # built or replaced by another process while this waited
            payload = _read(path, spec)
            if payload is not None:
                return Entry(key, payload, "hit")
        status = "replaced" if path.exists() else "miss"
        payload = _on_cpu(build())
        _write_atomically(path, {"spec": dict(spec), "torch": str(torch.__version__),
                                 "payload": payload})
    return Entry(key, payload, status)


def _on_cpu(payload: dict[str, Any]) -> dict[str, Any]:
    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.detach().cpu().clone()
        if isinstance(value, Mapping):
            return {k: move(v) for k, v in value.items()}
        return value

    return move(payload)


def _identity(path: Path) -> tuple[int, int, int] | None:
    """Which file is at `path` (inode, modification time, size); None if none is."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _read(path: Path, spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """The payload of the entry at `path`; None when there is none, or when it cannot be read
    or was built from another spec (said in the log: it is then rebuilt and replaced)."""
    if not path.exists():
        return None
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
        problem = ("it holds no payload" if not isinstance(content, dict)
                   or not isinstance(content.get("payload"), dict) else
                   "it was built from another spec" if content.get("spec") != dict(spec) else "")
    except Exception as error:  # truncated, garbage, or not torch's format: whatever torch raises
        problem = f"{type(error).__name__}: {' '.join(str(error).split()).split('. ')[0]}"
    if problem:
        log.warning("cache entry %s cannot be used (%s); building it again to replace it",
                    path, problem)
        return None
    return content["payload"]


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
