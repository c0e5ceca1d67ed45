"""How much memory autograd keeps for the backward pass, and the peak of live tensor memory,
measured on any device."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile


class SavedTensorMeter:
    """Counts the bytes of the tensors autograd saves for backward while it is active.

    Built on `torch.autograd.graph.saved_tensors_hooks`: every tensor an operation saves
    passes through `pack`. Parameters are excluded (they live anyway), and a storage saved by
    several operations (or as several views) is counted once. Inside a checkpointed region
    torch's own hooks take over, so what checkpointing does not keep is not counted either.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        self._excluded = {_storage_key(t) for t in exclude}
        self._seen: set[tuple] = set()
        self.bytes = 0
        self.tensors = 0

    def count(self, tensor: torch.Tensor) -> torch.Tensor:
        """Count `tensor` as saved (once per storage, parameters and the excluded left out);
        returns it, as autograd's pack hook must."""
        key = _storage_key(tensor)
        if not isinstance(tensor, torch.nn.Parameter) and key not in self._excluded | self._seen:
            self._seen.add(key)
            self.bytes += tensor.untyped_storage().nbytes()
            self.tensors += 1
        return tensor

    @contextmanager
    def measure(self) -> Iterator[SavedTensorMeter]:
        """Count what is saved inside the block (counts add up over several blocks)."""
        with torch.autograd.graph.saved_tensors_hooks(self.count, lambda tensor: tensor):
            yield self


def _storage_key(tensor: torch.Tensor) -> tuple:
    storage = tensor.untyped_storage()
    return tensor.device.type, tensor.device.index, storage.data_ptr(), storage.nbytes()


@contextmanager
def cuda_peak(device: torch.device) -> Iterator[dict[str, float]]:
    """On CUDA, `{"bytes": torch.cuda.max_memory_allocated}` over the block once it ends
    (measured from a reset peak); empty elsewhere."""
    found: dict[str, float] = {}
    if device.type != "cuda":
        yield found
        return
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    yield found
    torch.cuda.synchronize(device)
    found["bytes"] = float(torch.cuda.max_memory_allocated(device))


@dataclass
class LiveMemory:
    """Tensor memory allocated inside a block, relative to its start: the peak and what is
    still allocated at its end (bytes)."""

    peak: float = 0.0
    final: float = 0.0


@contextmanager
def live_memory(device: torch.device) -> Iterator[LiveMemory]:
    """Measure `LiveMemory` over the block: on CUDA from `torch.cuda.max_memory_allocated`
    and `memory_allocated` less what was allocated at the start; elsewhere from the CPU
    allocation and free events of `torch.profiler` (profile_memory=True), in time order.
    Python's cycle collector is paused over the block: tensors allocated before it (under an
    earlier measure, whose sizes the profiler knows) and freed by a collection inside it
    would count as negative allocations."""
    with _collector_paused(), _measured(device) as found:
        yield found


@contextmanager
def _measured(device: torch.device) -> Iterator[LiveMemory]:
    found = LiveMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield found
        torch.cuda.synchronize(device)
        found.peak = float(torch.cuda.max_memory_allocated(device) - start)
        found.final = float(torch.cuda.memory_allocated(device) - start)
        return
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _native_stderr_silenced():
        prof.start()
    try:
        yield found
    finally:
        with _native_stderr_silenced():
            prof.stop()
    events = sorted((e for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type() == DeviceType.CPU),
                    key=lambda e: e.start_ns())
    live = 0
    for event in events:
        live += event.nbytes()
        found.peak = max(found.peak, float(live))
    found.final = float(live)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off over the block (as it was, afterwards)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 sent to /dev/null over the block: the profiler's native code prints
    `USDT: ... profiler_start` (and `_stop`) there each time it starts and stops."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
