"""Every config group composes, every experiment option instantiates, struct mode holds."""

from __future__ import annotations

from conftest import CONF_DIR

SWEEPS = sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml"))


def test_there_are_sweep_presets():
    assert SWEEPS, f"no sweep presets in {CONF_DIR / 'sweep'}"
