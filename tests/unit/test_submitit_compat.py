"""submitit's local controllers: isolated only in the submitit versions this was written for."""

from __future__ import annotations

import subprocess

import pytest

from gradkit.sweeps import submitit_compat

local = pytest.importorskip("submitit.local.local")


@pytest.fixture(autouse=True)
def _restore(monkeypatch):
    """submitit's own module to start from (an in-process sweep may have isolated it), put
    back as it was after the test."""
    monkeypatch.setattr(local, "subprocess", subprocess)


def test_a_known_submitit_gets_controllers_in_sessions_of_their_own():
    assert submitit_compat.isolate_controllers()
    assert isinstance(local.subprocess, submitit_compat._Sessions)
    assert local.subprocess.PIPE == subprocess.PIPE  # the rest is subprocess's own


def test_an_unknown_submitit_is_left_as_it_is(monkeypatch):
    monkeypatch.setattr(submitit_compat, "SUPPORTED", ("0.0.",))
    assert not submitit_compat.isolate_controllers()
    assert local.subprocess is subprocess
