"""The one timer: it waits for a CUDA device before reading the clock, and keeps the best."""

from __future__ import annotations

import torch

from gradkit.lib import timing


def test_the_clock_is_read_after_the_device_has_synchronised(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device: events.append(("sync", device)))
    monkeypatch.setattr(timing.time, "perf_counter", lambda: events.append("clock") or 1.0)

    timing.now(torch.device("cuda:0"))
    timing.now(torch.device("cpu"))

    assert events == [("sync", torch.device("cuda:0")), "clock", "clock"]


def test_best_of_keeps_the_fastest_call(monkeypatch):
    clock = iter([0.0, 3.0, 10.0, 11.0, 20.0, 22.0])  # calls of 3, 1 and 2 seconds
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    calls = []

    assert timing.best_of(lambda: calls.append(1), 3, torch.device("cpu")) == 1.0
    assert len(calls) == 3
