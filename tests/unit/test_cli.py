"""End to end: `gradkit run ...` into a temporary MLflow store."""

from __future__ import annotations

import gc
import sys

import pytest

from gradkit.cli.commands import run_command


def test_a_command_freezes_what_is_left_when_it_ends_however_it_ends(monkeypatch):
    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    run_command(lambda: None)
    with pytest.raises(SystemExit):
        run_command(lambda: sys.exit(2))
    assert frozen == [True, True]
