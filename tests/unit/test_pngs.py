"""Figures written by a forked child: the PNG this process would write, errors in one line."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure

from gradkit.plotting import pngs, save
from gradkit.plotting.pngs import FigureError, PNGs


def figure_of(slope: float, title: str = "a line") -> Figure:
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, slope])
    ax.set_title(title)
    return fig


@pytest.mark.parametrize("fork", [True, False], ids=["child", "in-process"])
def test_the_pngs_are_those_this_process_writes(fork, tmp_path, monkeypatch):
    monkeypatch.setattr(pngs, "FORK", fork)
    writing = PNGs({"a": figure_of(2), "b": figure_of(3)}, tmp_path / "written", dpi=50)
    writing.wait()
    for name, slope in (("a", 2), ("b", 3)):
        expected = save(figure_of(slope), tmp_path / "here" / f"{name}.png", dpi=50)
        assert (tmp_path / "written" / f"{name}.png").read_bytes() == expected.read_bytes()
    assert not plt.get_fignums()  # the parent closed its copies


@pytest.mark.parametrize("fork", [True, False], ids=["child", "in-process"])
def test_a_figure_that_cannot_be_drawn_is_named_in_one_line(fork, tmp_path, monkeypatch):
    monkeypatch.setattr(pngs, "FORK", fork)
    writing = PNGs({"fine": figure_of(1), "bad": figure_of(1, r"$\frac{$")}, tmp_path, dpi=50)
    with pytest.raises(FigureError) as raised:
        writing.wait()
    message = str(raised.value)
    assert message.startswith(f"figure {tmp_path / 'bad'}.png could not be written: ValueError")
    assert "\n" not in message
    assert (tmp_path / "fine.png").exists()
    writing.wait()  # waited for once: nothing left to wait for


def test_no_figures_no_child(tmp_path):
    PNGs({}, tmp_path / "none", dpi=50).wait()
    assert not (tmp_path / "none").exists()
